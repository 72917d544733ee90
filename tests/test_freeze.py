"""`edgepack freeze`: refusals before PyInstaller runs (fast), and one real freeze of a tiny bundle whose
executable is run the way a user meets it: copied into an empty folder, started with a minimal environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from edgepack_runtime import Classifier
from test_pipeline import _tiny_overrides

from edgepack import freeze as lib
from edgepack.cli import main
from edgepack.pipeline import build
from edgepack.recipe import load_recipe

TEXTS = ["what is my account balance", "set an alarm for seven", "", "wire money to john", "who wrote hamlet"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, tiny_model: Path) -> Path:
    """A tiny bundle built by the pipeline (as tests/test_bench.py builds it)."""
    tmp = tmp_path_factory.mktemp("freeze-bundle")
    return build(
        load_recipe("clinc-4l", _tiny_overrides(tmp, tiny_data, tiny_model) | {"search.trials": 0})
    ).path


def freeze(*args: str) -> Result:
    result = CliRunner().invoke(main, ["freeze", *args])
    assert "Traceback" not in result.output, result.output
    return result


def leftovers(folder: Path) -> list[str]:
    """What a failed freeze must not leave: temporary folders or partial executables."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".freeze.log"))


def damaged_copy(bundle: Path, folder: Path) -> Path:
    copy = folder / "damaged"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.onnx").write_bytes(bytes(data))
    return copy


def never(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("PyInstaller must not run")


# -- refusals: fast ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["empty folder", "missing", "a file"])
def test_not_a_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setattr(lib, "run_pyinstaller", never)
    target = tmp_path / "target"
    if kind == "empty folder":
        target.mkdir()
    elif kind == "a file":
        target.write_text("not a bundle")
    out = tmp_path / "dist" / "clf"
    result = freeze(str(target), "--out", str(out))
    assert result.exit_code == 2
    assert f"{target} is not a valid bundle" in result.output and "nothing was frozen" in result.output
    assert not out.parent.exists()  # refused before anything was written


def test_damaged_bundle_is_refused_before_pyinstaller(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lib, "run_pyinstaller", never)
    out = tmp_path / "dist" / "clf"
    result = freeze(str(damaged_copy(built, tmp_path)), "--out", str(out))
    assert result.exit_code == 2
    assert "model.onnx: sha256 mismatch" in result.output and "edgepack-run verify" in result.output
    assert not out.parent.exists()


def test_existing_output_needs_force(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lib, "run_pyinstaller", never)
    out = tmp_path / "clf"
    out.write_bytes(b"old executable")
    result = freeze(str(built), "--out", str(out))
    assert result.exit_code == 2 and "already exists. Pass --force" in result.output
    assert out.read_bytes() == b"old executable"
    folder = tmp_path / "folder"
    folder.mkdir()
    result = freeze(str(built), "--out", str(folder), "--force")  # a folder is never replaced
    assert result.exit_code == 2 and "is a folder; --out names the executable file" in result.output


def test_pyinstaller_missing(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PyInstaller", None)  # what find_spec reports for a missing package
    result = freeze(str(built), "--out", str(tmp_path / "clf"))
    assert result.exit_code == 1
    assert (
        "PyInstaller is not installed" in result.output and "pip install 'edgepack[freeze]'" in result.output
    )
    assert leftovers(tmp_path) == []


def test_pyinstaller_failure_leaves_nothing_but_its_log(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("PyInstaller")
    failing = [sys.executable, "-c", "print('INFO: Analyzing x'); print('boom: no space left'); exit(3)"]
    monkeypatch.setattr(lib, "pyinstaller_command", lambda *args: failing)
    out = tmp_path / "clf"
    result = freeze(str(built), "--out", str(out))
    assert result.exit_code == 1
    assert "PyInstaller failed (exit code 3)" in result.output and "boom: no space left" in result.output
    assert "analysing imports" in result.output  # progress shown while it ran
    log = tmp_path / "clf.freeze.log"
    assert f"PyInstaller log: {log}" in result.output and "boom" in log.read_text()
    assert leftovers(tmp_path) == []


def test_interrupt_leaves_nothing(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("PyInstaller")

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(lib, "run_pyinstaller", interrupted)
    out = tmp_path / "clf"
    out.write_bytes(b"old executable")
    result = freeze(str(built), "--out", str(out), "--force")
    assert result.exit_code == 130 and "Interrupted: no executable was written" in result.output
    assert out.read_bytes() == b"old executable" and leftovers(tmp_path) == ["clf"]


def test_banned_package_in_the_archive_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lib, "archive_contents", lambda exe: (["torch/lib/libc10.so"], ["torch.nn", "numpy"]))
    with pytest.raises(lib.FreezeError, match="contains torch, which must never be in it"):
        lib.check_contents(tmp_path / "exe", {})


# -- one real freeze: slow --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frozen(built: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result, float]:
    """(executable copied alone into an empty folder, the freeze command's result, seconds it took)."""
    pytest.importorskip("PyInstaller")
    dist = tmp_path_factory.mktemp("dist")
    out = dist / "tiny-classifier"
    out.write_bytes(b"an older executable")  # replaced, with --force
    (dist / "tiny-classifier.freeze.log").write_text("an earlier failure's log")  # removed on success
    start = time.monotonic()
    with pytest.MonkeyPatch.context() as patch:  # a relative --out, as users write it
        patch.chdir(dist.parent)
        result = freeze(str(built), "--out", f"{dist.name}/{out.name}", "--force")
    seconds = time.monotonic() - start
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in dist.iterdir()) == ["tiny-classifier"]  # nothing else left beside it
    user = tmp_path_factory.mktemp("user-folder")
    shutil.copy2(out, user / out.name)
    print(f"\nfreezing the tiny bundle took {seconds:.1f} s")
    return user / out.name, result, seconds


def run_binary(exe: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run as a user would: from its own folder, no PYTHONPATH, no virtual environment on PATH. It unpacks
    into a folder beside it: a damaged executable stops mid-way and leaves its files (about 130 MB) there, in
    pytest's temporary folders, instead of in the system's /tmp at every test run."""
    unpack = exe.parent / "unpack"
    unpack.mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(exe.parent), "TMPDIR": str(unpack)}
    return subprocess.run(
        [str(exe), *args], input=stdin, capture_output=True, env=env, cwd=exe.parent, timeout=120, check=False
    )


def records(result: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.decode("utf-8").splitlines()]


def assert_same(found: list[dict[str, Any]], clf: Classifier, texts: list[str], top_k: int) -> None:
    assert len(found) == len(texts)
    for record, text in zip(found, texts, strict=True):
        expected = clf.predict(text, top_k=top_k)
        assert record["text"] == text and record["label"] == expected.label
        assert record["score"] == pytest.approx(expected.score, abs=1e-5)
        assert [item["label"] for item in record["top_k"]] == [label for label, _ in expected.top_k]
        for item, (_, score) in zip(record["top_k"], expected.top_k, strict=True):
            assert item["score"] == pytest.approx(score, abs=1e-5)


@pytest.mark.freeze
def test_executable_contents(frozen: tuple[Path, Result, float]) -> None:
    exe, result, _ = frozen
    assert os.access(exe, os.X_OK)
    files, modules = lib.archive_contents(exe)
    tops = {name.split("/")[0].split(".")[0] for name in files + modules}
    assert not tops & {"torch", "transformers", "optimum", "datasets", "onnx", "edgepack", "click"}
    assert {"onnxruntime", "tokenizers", "numpy", "edgepack_runtime"} <= tops
    assert {f"bundle/{n}" for n in ("model.onnx", "tokenizer.json", "labels.json", "manifest.json")} <= set(
        files
    )
    assert "Python packages inside:" in result.output and "checked absent: torch" in result.output


@pytest.mark.freeze
def test_executable_answers_like_the_runtime(frozen: tuple[Path, Result, float], built: Path) -> None:
    exe, _, _ = frozen
    clf = Classifier.load(built)
    by_args = run_binary(exe, *TEXTS)
    assert by_args.returncode == 0, by_args.stderr
    assert_same(records(by_args), clf, TEXTS, top_k=3)
    by_stdin = run_binary(exe, "--top-k", "2", stdin="\n".join(TEXTS).encode() + b"\n")
    assert by_stdin.returncode == 0, by_stdin.stderr
    assert_same(records(by_stdin), clf, TEXTS, top_k=2)


@pytest.mark.freeze
def test_executable_keeps_going_on_bad_lines(frozen: tuple[Path, Result, float], built: Path) -> None:
    exe, _, _ = frozen
    clf = Classifier.load(built)
    huge = b"how cold is it " * 400_000  # 6 MB on one line
    result = run_binary(
        exe, stdin=b"cancel my alarm\n\xff\xfe\x00 not utf-8\n\n" + huge + b"\nhow tall is everest\n"
    )
    found = records(result)
    assert result.returncode == 1 and len(found) == 5
    assert_same([found[0]], clf, ["cancel my alarm"], top_k=3)
    assert found[1]["input"] == 2 and "not valid UTF-8 (byte 0xff at offset 0)" in found[1]["error"]
    assert_same([found[2]], clf, [""], top_k=3)
    assert found[3]["truncated"] is True
    assert_same([found[3]], clf, [huge.decode()[: clf.max_chars]], top_k=3)
    assert_same([found[4]], clf, ["how tall is everest"], top_k=3)
    assert b"1 input(s) could not be classified" in result.stderr


@pytest.mark.freeze
def test_executable_version_and_bench(frozen: tuple[Path, Result, float], built: Path) -> None:
    exe, _, _ = frozen
    manifest = json.loads((built / "manifest.json").read_text())
    version = run_binary(exe, "--version")
    assert version.returncode == 0, version.stderr
    text = version.stdout.decode()
    assert f"{exe.name}: edgepack classifier" in text and f"{manifest['name']} ({manifest['schema']})" in text
    assert manifest["files"]["model.onnx"]["sha256"][:12] in text
    bench = run_binary(exe, "--bench", "--json", "--runs", "20", "--warmup", "2")
    assert bench.returncode == 0, bench.stderr
    report = json.loads(bench.stdout)
    assert report["frozen"] is True and report["bundle"] == manifest["name"]
    assert report["latency_batch1"]["runs"] == 20 and report["latency_batch1"]["p50_ms"] > 0


@pytest.mark.freeze
def test_damaged_executable_does_not_answer(frozen: tuple[Path, Result, float], tmp_path: Path) -> None:
    """Bytes of the embedded bundle changed inside the executable: it refuses to start. (The archive's own
    checksum catches this before Python starts; the runtime's verification at start, which also catches a
    bundle that was packed wrong, is tested through edgepack_runtime.frozen in runtime/tests.)"""
    from PyInstaller.archive.readers import CArchiveReader

    exe, _, _ = frozen
    damaged = tmp_path / exe.name
    shutil.copy2(exe, damaged)
    reader = CArchiveReader(str(damaged))
    offset, length, *_ = reader.toc["bundle/model.onnx"]
    data = bytearray(damaged.read_bytes())
    data[reader._start_offset + offset + length // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    result = run_binary(damaged, "set an alarm")
    assert result.returncode != 0 and result.stdout == b""
    assert b"bundle/model.onnx" in result.stderr
