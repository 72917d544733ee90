"""The structure README's layout table promises, read from the source: no import cycles inside edgepack, stage
modules that never import each other, and measuring kept out of building."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edgepack.pipeline import STAGES  # every stage module, in order

PACKAGE = Path(__file__).resolve().parents[1] / "edgepack"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """edgepack modules imported anywhere in the file (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from edgepack import data` imports the module edgepack.data; `from edgepack.x import y` edgepack.x
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    return {name for name in found if name in known}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {name: _imports(path, known) - {name, "edgepack"} for name, path in files.items()}


def test_no_module_imports_one_that_imports_it_back(graph: dict[str, set[str]]) -> None:
    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, start]
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [cycle for name in graph if (cycle := cycle_from(name))]
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_stage_modules_never_import_each_other(graph: dict[str, set[str]]) -> None:
    # Every stage reads the data stage's splits (LabelledSplits); nothing else crosses between stages.
    for stage in STAGES:
        others = {f"edgepack.{s}" for s in STAGES if s not in (stage, "data")}
        assert not graph[f"edgepack.{stage}"] & others, stage


def test_building_never_imports_measuring(graph: dict[str, set[str]]) -> None:
    measuring = {name for name in graph if name.startswith("edgepack.bench")}
    assert measuring, "edgepack.bench is the measuring subpackage"
    for name, imported in graph.items():
        if name not in measuring and name != "edgepack.cli":  # the CLI's bench command is the one door
            assert not imported & measuring, name


def test_targets_is_a_leaf(graph: dict[str, set[str]]) -> None:
    assert graph["edgepack.targets"] <= {"edgepack.errors"}


def test_python_api_is_the_pipeline_and_importing_edgepack_stays_light() -> None:
    import subprocess
    import sys

    import edgepack
    from edgepack import pipeline, recipe

    assert edgepack.build is pipeline.build and edgepack.load_recipe is recipe.load_recipe
    probe = "import sys, edgepack; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
        == "False"
    )
