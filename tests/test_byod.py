"""Bring your own data, end to end: a dataset shipped the way most are (train.csv and test.csv only, the label
column not called `label`, integer labels named by a labels.txt) builds with one command and the generic
recipe, the manifest says what was carved and truncated, and both benches read exactly what the build read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import INTENTS
from edgepack_runtime import Classifier
from edgepack_runtime.cli import main as run_main
from edgepack_runtime.splits import read_split

from edgepack.cli import main
from edgepack.data import split_sha256

NAMES = ["alarm", "balance", "transfer", "weather"]  # labels.txt: line i names label i
COLUMNS = ["--text-column", "utterance", "--label-column", "intent_id"]


def _write(path: Path, rows: list[tuple[str, int]]) -> None:
    lines = ["utterance,intent_id", *(f"{text},{label}" for text, label in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def intents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """intents/train.csv (15 per class) and intents/test.csv; integer labels; no validation split."""
    folder = tmp_path_factory.mktemp("byod") / "intents"
    folder.mkdir()
    train, test = [], []
    for label, name in enumerate(NAMES):
        texts = INTENTS[name]
        train += [(t + end, label) for t in texts[:5] for end in ("", " please", " now")]
        test += [(texts[5], label), (texts[4] + " today", label)]
    _write(folder / "train.csv", train)
    _write(folder / "test.csv", test)
    (folder / "labels.txt").write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    return folder


def _tiny_budget(tmp: Path, model: Path) -> list[str]:
    """The generic recipe's stages on the tiny model, in seconds."""
    settings = {
        "cache_dir": f'"{tmp / "cache"}"',
        "teacher.epochs": "4",
        "teacher.learning_rate": "1e-3",
        "teacher.batch_size": "8",
        "distill.epochs": "2",
        "distill.learning_rate": "1e-3",
        "distill.batch_size": "8",
    }
    options = ["--teacher", str(model), "--trials", "0", "--threads", "1", "--out", str(tmp / "bundles")]
    return options + [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def _build(*args: str) -> Any:
    result = CliRunner().invoke(main, ["build", *args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, intents: Path, tiny_model: Path) -> tuple[Path, Path]:
    """(bundle, work folder) of the one-command build: --data and columns, no --recipe."""
    tmp = tmp_path_factory.mktemp("byod-build")
    result = _build("--data", str(intents), *COLUMNS, *_tiny_budget(tmp, tiny_model))
    assert result.exit_code == 0, result.output
    return tmp / "bundles" / "intents-int8", tmp


def _manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))


def test_one_command_builds_with_the_generic_recipe(built: tuple[Path, Path]) -> None:
    bundle, _ = built
    m = _manifest(bundle)
    assert m["name"] == "intents-int8", "named after the data folder"
    assert m["recipe"]["name"] == "generic" and m["recipe"]["data"]["max_length"] == "auto"
    assert m["recipe"]["distill"]["layers"] == "auto" and m["distillation"]["layers"] == [0]  # of 2 layers
    assert json.loads((bundle / "labels.json").read_text()) == NAMES, "integer labels named by labels.txt"
    assert m["data"]["label_names"]["from"].endswith("labels.txt")
    assert m["oos"] is None and "answers by argmax" in m["oos_detection"]["why"]
    assert m["metrics"]["test"]["accuracy"] >= 0.0 and "test_thresholded" not in m["metrics"]


def test_the_manifest_records_the_carving_and_the_truncation(
    built: tuple[Path, Path], intents: Path, tiny_model: Path
) -> None:
    from transformers import AutoTokenizer

    data = _manifest(built[0])["data"]
    carved = data["carved"]
    assert carved["seed"] == 0 and carved["from"] == str(intents / "train.csv")
    assert carved["validation"] == {"fraction": 0.1, "size": 6} and "test" not in carved
    assert data["sizes"] == {"train": 54, "validation": 6, "test": 8}
    assert data["files"]["validation"] == f"carved from {intents / 'train.csv'}"
    lengths = data["token_lengths"]["train"]
    assert data["max_length"] == max(8, lengths["p99"]) == _manifest(built[0])["model"]["max_length"]
    assert "99th percentile" in data["max_length_rule"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for split in ("train", "validation", "test"):
        pairs, _ = read_split(intents, split, "utterance", "intent_id", data)
        longer = sum(len(tokenizer(text)["input_ids"]) > data["max_length"] for text, _ in pairs)
        assert data["truncated"][split] == longer, split


def test_edgepack_run_bench_reads_what_the_build_read(built: tuple[Path, Path], intents: Path) -> None:
    bundle = built[0]
    digests = _manifest(bundle)["data"]["sha256"]
    base = ["bench", str(bundle), "--data", str(intents), *COLUMNS, "--runs", "3", "--warmup", "0", "--json"]
    result = CliRunner().invoke(run_main, base)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"]["texts"] == 8
    assert json.loads(result.stdout)["accuracy"]["unknown_labels"] == [], "the same label names"
    result = CliRunner().invoke(run_main, [*base, "--split", "validation"])
    assert result.exit_code == 0, result.output
    assert "as the bundle's build carved it" in result.stderr
    assert json.loads(result.stdout)["accuracy"]["texts"] == 6
    built_with = _manifest(bundle)["data"]
    for split in ("test", "validation", "train"):
        pairs, _ = read_split(intents, split, "utterance", "intent_id", built_with)
        assert split_sha256(pairs) == digests[split], f"{split}: not what the build read"


def test_edgepack_bench_reads_what_the_build_read(
    built: tuple[Path, Path], intents: Path, tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib", reason="the bench extra")
    report = tmp_path / "report.json"
    args = [
        str(built[0]),
        "--data",
        str(intents),
        *COLUMNS,
        "--no-teacher",
        "--no-floor",
        "--json",
        str(report),
    ]
    fast = ["--runs", "3", "--block", "1", "--warmup", "0", "--batch-size", "4"]
    result = CliRunner().invoke(main, ["bench", *args, *fast])
    assert result.exit_code == 0, result.output
    (contender,) = json.loads(report.read_text())["contenders"]
    assert contender["accuracy"]["texts"] == 8 and contender["accuracy"]["unknown_labels"] == []
    measured = contender["accuracy"]["accuracy"]
    assert measured == pytest.approx(_manifest(built[0])["metrics"]["test"]["accuracy"])


def test_a_rejection_label_makes_data_without_oos_reject(
    built: tuple[Path, Path], intents: Path, tiny_model: Path
) -> None:
    """The same build (teacher and student from the cache) with [evaluate] rejection_label: the bundle answers
    `unsure` to the texts its threshold rejects, and its model never predicts it."""
    _, tmp = built
    settings = ["--set", "evaluate.rejection_label=unsure", "--set", "evaluate.oos_threshold=reject:0.3"]
    budget = _tiny_budget(tmp, tiny_model)
    result = _build("--data", str(intents), *COLUMNS, *budget, "--name", "unsure-int8", *settings)
    assert result.exit_code == 0, result.output
    bundle = tmp / "bundles" / "unsure-int8"
    m = _manifest(bundle)
    assert json.loads((bundle / "labels.json").read_text()) == [*NAMES, "unsure"]
    assert (
        m["model"]["num_labels"] == 5 and m["oos"]["label"] == "unsure" and m["oos"]["rule"] == "reject:0.3"
    )
    assert "rejection_label" in m["oos_detection"]["why"]
    assert m["metrics"]["validation_thresholded"]["rejected"] > 0
    outputs = {o.name: o for o in onnx.load(str(bundle / "model.onnx")).graph.output}
    assert outputs["logits"].type.tensor_type.shape.dim[1].dim_value == 5
    clf = Classifier.load(bundle)
    texts = [line.split(",")[0] for line in (intents / "test.csv").read_text().splitlines()[1:]]
    probs = clf.predict_proba(texts)
    assert probs.shape == (len(texts), 5) and np.all(probs[:, 4] == 0.0)
    answers = clf.predict_batch(texts)
    assert all(a.label == "unsure" for a in answers if a.rejected)
    assert all(a.top_k[0][0] != "unsure" for a in answers)


def test_dry_run_summarises_and_writes_nothing(intents: Path, tiny_model: Path, tmp_path: Path) -> None:
    single = tmp_path / "all.jsonl"
    rows = [(t, i) for i, name in enumerate(NAMES) for t in INTENTS[name]] * 3
    single.write_text("".join(json.dumps({"q": t, "y": label}) + "\n" for t, label in rows), encoding="utf-8")
    out = tmp_path / "out"
    args = ["--data", str(single), "--text-column", "q", "--label-column", "y", "--teacher", str(tiny_model)]
    ensemble = ["--set", "teacher.ensemble_seeds=[7]"]
    result = _build(
        *args, "--out", str(out), "--set", f'cache_dir="{tmp_path / "cache"}"', *ensemble, "--dry-run"
    )
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "an ensemble: one teacher per seed [42, 7], their probabilities averaged" in text
    assert (
        "# Resolved recipe (generic)" in text
        and 'name = "all-int8"' in text
        and 'max_length = "auto"' in text
    )
    assert "validation" in text and f"carved from {single} (10%, seed 0)" in text
    assert "labels: 4 (0, 1, 2, 3)" in text, "integer labels without a labels.txt stay the numbers"
    assert "balance (train): largest class" in text and "texts it would truncate: train 0" in text
    assert "less trustworthy" in text and "Stages that would run:" in text and "package   " in text
    assert 'layers = "auto"' in text and 'the teacher\'s layers "auto" (of its N layers, k = max(1' in text
    assert not out.exists() and not (tmp_path / "cache").exists(), "a dry run writes nothing"
    result = _build(*args[:-2], "--teacher", str(tmp_path / "no-model"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "token lengths: not measured (the teacher" in result.stdout and "no-model" in result.stdout


def test_build_refusals_name_the_fix(intents: Path, tmp_path: Path) -> None:
    result = _build("--data", str(intents), "--dry-run")
    assert result.exit_code == 1
    assert "has no column 'text', 'label'; columns found: utterance, intent_id" in result.output
    assert "--text-column / --label-column" in result.output
    result = _build("--recipe", "generic")
    assert (
        result.exit_code == 2
        and "[data] source = '' is invalid" in result.output
        and "(--data)" in result.output
    )
    result = _build("--data", str(intents), *COLUMNS, "--oos-label", "oos", "--dry-run")
    assert result.exit_code == 1 and "oos_label = 'oos' is not a label of" in result.output
    settings = ["--set", "evaluate.rejection_label=unsure", "--set", "evaluate.oos_threshold=auto"]
    result = _build("--data", str(intents), *COLUMNS, *settings, "--dry-run")
    assert result.exit_code == 2 and "oos_threshold = 'auto' is invalid" in result.output


# A dataset with its own column names, then one of the four mistakes a dry run refuses: the mistake's file and
# bytes, and what the one `Error:` line must say ({file}: that file; it names the line, the problem and the fix).
REFUSED_TRAIN = (
    b"utterance,intent\nhello there,greet\nhi you,greet\ngood morning,greet\nbye now,leave\nsee you,leave\n"
)
REFUSALS = {
    "test label train never saw": (
        "test.csv",
        b"stop it,halt\n",
        [
            "(first at {file} line 4)",
            "labels that never occur in train: ['halt']",
            "add training examples of it",
        ],
    ),
    "empty text": (
        "train.csv",
        b"   ,leave\n",
        ["{file}: line 7: empty text", "fill in its text or remove the row"],
    ),
    "class with one example": (
        "train.csv",
        b"wave,hello\n",
        [
            "{file} line 7: class 'hello' has a single training example",
            "Add examples of it, or remove its row",
        ],
    ),
    "not UTF-8": (
        "train.csv",
        b"caf\xe9 au lait,greet\n",
        [
            f"{{file}}: is not UTF-8: byte 0xe9 at byte offset {len(REFUSED_TRAIN) + 3} (line 7)",
            "re-save the file as UTF-8",
        ],
    ),
}


@pytest.mark.parametrize("mistake", sorted(REFUSALS))
def test_bad_data_is_one_error_line_naming_file_row_and_fix(tmp_path: Path, mistake: str) -> None:
    """The real `edgepack build --dry-run` (a subprocess: its own stderr, logging included) on train.csv and
    test.csv with non-default columns: exit 1, a single `Error:` line, no traceback."""
    files = {"train.csv": REFUSED_TRAIN, "test.csv": b"utterance,intent\nhello,greet\nbye,leave\n"}
    name, line, expected = REFUSALS[mistake]
    files[name] += line
    for file, content in files.items():
        (tmp_path / file).write_bytes(content)
    args = ["build", "--data", str(tmp_path), "--text-column", "utterance", "--label-column", "intent"]
    result = subprocess.run(
        [sys.executable, "-m", "edgepack.cli", *args, "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    (error,) = result.stderr.splitlines()
    assert error.startswith("Error: ")
    for fragment in expected:
        assert fragment.format(file=tmp_path / name) in error, error
