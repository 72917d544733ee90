"""The runtime never needs torch, transformers, optimum, datasets or onnx."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import edgepack_runtime

BANNED = ("torch", "transformers", "optimum", "datasets", "onnx")
PACKAGE_DIR = Path(edgepack_runtime.__file__).parent


def test_declared_dependencies() -> None:
    requires = importlib.metadata.requires("edgepack-runtime") or []
    core = {
        r.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip()
        for r in requires
        if "extra ==" not in r
    }
    assert core == {"onnxruntime", "tokenizers", "numpy", "click", "rfc8785"}


def test_no_module_imports_a_banned_package() -> None:
    modules = sorted(PACKAGE_DIR.glob("*.py"))
    assert len(modules) >= 8
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in BANNED, f"{path.name} imports {name}"


def test_using_the_runtime_loads_no_banned_module(bundle: Path) -> None:
    script = f"""
import json, sys
from click.testing import CliRunner
from edgepack_runtime import Classifier
from edgepack_runtime import bench, bundle, cli, cpu, data, manifest, protoscan, textguard
clf = Classifier.load(sys.argv[1])
clf.predict_batch(["hello", "book a flight"])
CliRunner().invoke(cli.main, ["verify", sys.argv[1]])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {BANNED!r})))
"""
    out = subprocess.run(
        [sys.executable, "-c", script, str(bundle)], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.skipif(
    os.environ.get("EDGEPACK_RUNTIME_ONLY") != "1",
    reason="set EDGEPACK_RUNTIME_ONLY=1 in the runtime-only venv",
)
@pytest.mark.parametrize("name", BANNED)
def test_runtime_only_environment_has_no_banned_package(name: str) -> None:
    with pytest.raises(ImportError):
        __import__(name)
