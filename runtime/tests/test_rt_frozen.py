"""The program inside a frozen executable (edgepack_runtime.frozen), run unfrozen on a bundle folder.

The frozen executable itself is tested on the build side (tests/test_freeze.py); here its program is checked
directly: answers equal the Classifier's, one output line per input line whatever the input, the bundle
verified at start."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgepack_runtime import Classifier
from edgepack_runtime.frozen import (
    EXIT_BUNDLE,
    EXIT_INPUT_ERRORS,
    EXIT_OK,
    EXIT_USAGE,
    decode,
    main,
    stdin_lines,
)

from .bundle_kit import LABELS


def run(bundle: Path | None, *args: str, stdin: bytes = b"") -> tuple[int, list[dict[str, Any]]]:
    out = io.BytesIO()
    code = main(list(args), bundle=bundle, stdin=io.BytesIO(stdin), stdout=out)
    return code, [json.loads(line) for line in out.getvalue().decode("utf-8").splitlines()]


def same_answer(record: dict[str, Any], clf: Classifier, text: str, top_k: int = 3) -> None:
    expected = clf.predict(text, top_k=top_k)
    assert record["text"] == text and record["label"] == expected.label
    assert record["score"] == pytest.approx(expected.score, abs=1e-6)
    assert [item["label"] for item in record["top_k"]] == [label for label, _ in expected.top_k]
    assert record["rejected"] == expected.rejected


def test_arguments_are_answered_like_the_classifier(bundle: Path) -> None:
    texts = ["what is my account pin number", "book a flight for tomorrow", "", "été ☃ 東京"]
    code, records = run(bundle, *texts, "--top-k", "2")
    assert code == EXIT_OK and len(records) == len(texts)
    clf = Classifier.load(bundle)
    for record, text in zip(records, texts, strict=True):
        same_answer(record, clf, text, top_k=2)
        assert set(record) == {"text", "label", "score", "top_k", "rejected", "oos_score"}
        assert record["oos_score"] == (
            None if clf.oos is None else pytest.approx(clf.predict(text).oos_score)
        )


def test_stdin_lines_one_answer_per_line(bundle: Path) -> None:
    code, records = run(bundle, stdin=b"play some music\r\nset an alarm\n\nlast line without newline")
    assert code == EXIT_OK
    clf = Classifier.load(bundle)
    texts = ["play some music", "set an alarm", "", "last line without newline"]
    for record, text in zip(records, texts, strict=True):
        same_answer(record, clf, text)


def test_bad_lines_get_an_error_or_a_defined_answer_and_the_rest_goes_on(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    huge = b"weather " * 1_000_000  # 8 MB on one line
    stdin = b"cancel order\nbad \xff\xfe bytes\n\n" + huge + b"\n\xed\xa0\x80 surrogate\nplease tell me\n"
    code, records = run(bundle, stdin=stdin)
    assert code == EXIT_INPUT_ERRORS and len(records) == 6
    clf = Classifier.load(bundle)
    same_answer(records[0], clf, "cancel order")
    assert records[1] == {"input": 2, "error": records[1]["error"]}
    assert "not valid UTF-8 (byte 0xff at offset 4)" in records[1]["error"]
    same_answer(records[2], clf, "")
    assert records[3]["truncated"] is True and len(records[3]["text"]) == clf.max_chars
    same_answer(records[3], clf, huge.decode()[: clf.max_chars])
    assert records[4]["input"] == 5 and "not valid UTF-8" in records[4]["error"]  # an encoded surrogate
    same_answer(records[5], clf, "please tell me")
    assert "2 input(s) could not be classified" in capsys.readouterr().err


def test_argument_that_is_not_utf8(bundle: Path) -> None:
    code, records = run(bundle, "set an alarm", "bad \udcff byte")  # how Python passes argv byte 0xff
    assert code == EXIT_INPUT_ERRORS
    assert records[0]["label"] in LABELS and records[1]["input"] == 2 and "0xff" in records[1]["error"]


def test_long_lines_are_cut_without_reading_them_whole() -> None:
    stream = io.BytesIO(b"short\n" + b"x" * 100 + b"\nend")
    assert list(stdin_lines(stream, limit=10)) == [(b"short", False), (b"x" * 10, True), (b"end", False)]
    assert list(stdin_lines(io.BytesIO(b"x" * 10 + b"\n"), limit=10)) == [(b"x" * 10, False)]
    assert decode("é".encode() * 3 + b"\xc3", cut=True) == "ééé"  # a character cut in two is dropped
    with pytest.raises(UnicodeDecodeError):
        decode(b"\xc3", cut=False)


def test_version_shows_the_manifest_summary(bundle: Path) -> None:
    out = io.BytesIO()
    assert main(["--version"], bundle=bundle, stdout=out) == EXIT_OK
    text = out.getvalue().decode()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "edgepack classifier (edgepack-runtime" in text and "onnxruntime" in text
    assert f"{manifest['name']} ({manifest['schema']})" in text
    assert manifest["files"]["model.onnx"]["sha256"][:12] in text
    assert f"labels    {len(LABELS)}" in text


def test_bench_prints_the_runtime_figures(bundle: Path) -> None:
    out = io.BytesIO()
    code = main(["--bench", "--json", "--runs", "5", "--warmup", "1"], bundle=bundle, stdout=out)
    report = json.loads(out.getvalue())
    assert code == EXIT_OK and report["latency_batch1"]["runs"] == 5 and report["frozen"] is False
    assert report["size"]["model_bytes"] == (bundle / "model.onnx").stat().st_size
    out = io.BytesIO()
    assert main(["--bench", "--runs", "3", "--warmup", "0"], bundle=bundle, stdout=out) == EXIT_OK
    assert "latency, batch 1" in out.getvalue().decode()


def test_damaged_bundle_is_refused_at_start(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray((bundle / "labels.json").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "labels.json").write_bytes(bytes(data))
    code, records = run(bundle, "set an alarm")
    err = capsys.readouterr().err
    assert code == EXIT_BUNDLE and records == []
    assert "refusing to run: the embedded bundle failed verification" in err
    assert "labels.json: sha256 mismatch" in err and "freeze it again" in err


@pytest.mark.parametrize(
    "args",
    [["--top-k", "0"], ["--threads", "-1"], ["--runs", "x"], ["--bench", "some text"], ["--version", "x"]],
)
def test_bad_options(bundle: Path, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, records = run(bundle, *args)
    assert code == EXIT_USAGE and records == []
    assert "Traceback" not in capsys.readouterr().err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-h"]) == EXIT_OK
    assert "--top-k" in capsys.readouterr().out


def test_unfrozen_without_a_bundle(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hello"]) == EXIT_USAGE
    assert "edgepack-run classify BUNDLE" in capsys.readouterr().err


def test_frozen_program_imports_neither_click_nor_a_banned_package() -> None:
    script = "import sys, edgepack_runtime.frozen; print(sorted(m for m in sys.modules if m.split('.')[0] in "
    script += "{'click', 'torch', 'transformers', 'optimum', 'datasets', 'onnx'}))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
