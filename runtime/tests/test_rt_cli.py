"""edgepack-run through click's CliRunner: answers as JSON lines, clean errors, a bench report."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edgepack_runtime import Classifier, __version__, cpu
from edgepack_runtime.cli import main

from .bundle_kit import LABELS, MakeBundle


def run(*args: str, input: bytes | str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input)


def clean_failure(result: Result, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    for needle in needles:
        assert needle in result.output, f"{needle!r} not in {result.output!r}"


def test_version_and_help() -> None:
    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.output
    for args in (["-h"], ["classify", "-h"], ["verify", "--help"], ["bench", "-h"]):
        result = run(*args)
        assert result.exit_code == 0 and "Usage:" in result.output
    assert "Usage:" in run().output  # no command: the usage, not a traceback


def test_classify_texts(bundle: Path) -> None:
    texts = ["what is my pin", "book a flight to paris", ""]
    result = run("classify", str(bundle), *texts, "--top-k", "2")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    clf = Classifier.load(bundle)
    assert [r["text"] for r in records] == texts
    for record, text in zip(records, texts, strict=True):
        expected = clf.predict(text, top_k=2)
        assert record["label"] == expected.label and len(record["top_k"]) == 2
        assert abs(record["score"] - expected.score) <= 1e-5
        assert {item["label"] for item in record["top_k"]} <= set(LABELS)


def test_classify_stdin_one_line_out_per_line_in(bundle: Path) -> None:
    result = run("classify", str(bundle), "--batch-size", "2", input=b"hello\r\nbad \xff bytes\n\nlast line")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in records] == ["hello", "bad \ufffd bytes", "", "last line"]
    assert all(r["label"] in LABELS for r in records)


def test_classify_empty_stdin_prints_nothing(bundle: Path) -> None:
    result = run("classify", str(bundle), input="")
    assert result.exit_code == 0 and result.stdout == ""


def test_classify_bad_options(bundle: Path) -> None:
    clean_failure(run("classify", str(bundle), "x", "--top-k", "0"), 2, "--top-k")
    clean_failure(run("classify", str(bundle), "x", "--threads", "-2"), 2, "--threads")
    clean_failure(run("classify", str(bundle), "x", "--top-k", "many"), 2, "--top-k")


def test_verify_ok(bundle: Path) -> None:
    result = run("verify", str(bundle))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("OK: bundle")
    assert "tiny (edgepack.bundle/1.1)" in result.stdout and "model.onnx" in result.stdout
    assert re.search(r"^labels +5$", result.stdout, re.MULTILINE)


def test_verify_names_what_is_wrong(bundle: Path, tmp_path: Path) -> None:
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[100] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))
    clean_failure(run("verify", str(bundle)), 1, "model.onnx", "sha256 mismatch")
    clean_failure(run("verify", str(tmp_path / "nowhere")), 1, "does not exist")


@pytest.mark.usefixtures("fresh_warnings")
def test_target_warning_is_one_line_and_strict_refuses(make_bundle: MakeBundle) -> None:
    host = cpu.detect()
    lacking = sorted(host.checked - host.present)
    if not lacking:
        pytest.skip("this platform's CPU features cannot be detected")
    path = make_bundle(cpu_features=[lacking[0]])
    result = run("classify", str(path), "hi")
    assert result.exit_code == 0
    assert result.stderr.startswith("warning: bundle 'tiny'") and lacking[0] in result.stderr
    assert len(result.stdout.splitlines()) == 1
    clean_failure(run("verify", str(path), "--strict"), 1, "strict=True", lacking[0])


@pytest.mark.parametrize(("threads", "expected"), [("1", "false"), ("2", None)])
def test_one_thread_tokenizes_on_one_thread(
    bundle: Path, monkeypatch: pytest.MonkeyPatch, threads: str, expected: str | None
) -> None:
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    assert run("classify", str(bundle), "--threads", threads, "hi").exit_code == 0
    assert os.environ.get("TOKENIZERS_PARALLELISM") == expected


def test_bench_table(bundle: Path) -> None:
    result = run("bench", str(bundle), "--runs", "5", "--warmup", "1", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    for word in ("latency, batch 1", "p50", "p90", "p99", "mean", "std", "throughput", "size on disk"):
        assert word in result.stdout
    assert "accuracy" not in result.stdout


def test_bench_json_with_data(bundle: Path, tmp_path: Path) -> None:
    data = tmp_path / "labeled.csv"
    rows = [
        ("what is my pin", "pin_change"),
        ("book a flight", "book_flight"),
        ("weather in paris", "weather"),
    ]
    rows += [("transfer money", "transfer"), ("sing", "no_such_label")]
    data.write_text("text,label\n" + "".join(f"{t},{lb}\n" for t, lb in rows), encoding="utf-8")
    result = run("bench", str(bundle), "--data", str(data), "--json", "--runs", "4", "--warmup", "0")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    latency = report["latency_batch1"]
    assert latency["runs"] == 4 and latency["p50_ms"] <= latency["p99_ms"] and latency["std_ms"] >= 0
    assert report["size"]["total_bytes"] == sum(p.stat().st_size for p in bundle.iterdir())
    assert report["throughput"]["texts_per_s"] > 0 and report["throughput"]["batched"] is True
    clf = Classifier.load(bundle)
    expected = sum(clf.predict(t).label == lb for t, lb in rows) / len(rows)
    assert report["accuracy"]["accuracy"] == pytest.approx(expected)
    assert report["accuracy"]["unknown_labels"] == ["no_such_label"]
    assert report["accuracy"]["oos_label"] == "oos" and report["accuracy"]["oos_recall"] is None


def test_bench_bad_data_file(bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,intent\nhi,greet\n", encoding="utf-8")
    clean_failure(
        run("bench", str(bundle), "--data", str(bad)), 2, "--data", "columns found: sentence, intent"
    )
    clean_failure(run("bench", str(bundle), "--runs", "1"), 2, "--runs")
