"""load_labeled: CLINC JSON (file or folder), CSV, JSONL, Parquet; a DataError that says what to fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgepack_runtime.data import DataError, load_labeled

from .bundle_kit import CLINC_DIR

CLINC = {
    "train": [["how do i transfer money", "transfer"], ["what is my pin", "pin_change"]],
    "oos_train": [["tell me a secret", "oos"]],
    "val": [["send cash to mom", "transfer"]],
    "oos_val": [["who won the game", "oos"]],
    "test": [["weather in paris", "weather"]],
    "oos_test": [["sing a song", "oos"], ["how tall is it", "oos"]],
}


@pytest.fixture
def clinc_file(tmp_path: Path) -> Path:
    path = tmp_path / "clinc.json"
    path.write_text(json.dumps(CLINC), encoding="utf-8")
    return path


def test_clinc_split_includes_its_oos_twin(clinc_file: Path) -> None:
    assert load_labeled(clinc_file) == [
        ("weather in paris", "weather"),
        ("sing a song", "oos"),
        ("how tall is it", "oos"),
    ]
    assert load_labeled(clinc_file, split="train")[-1] == ("tell me a secret", "oos")
    assert load_labeled(clinc_file, split="validation") == load_labeled(clinc_file, split="val")
    assert len(load_labeled(clinc_file, split="val")) == 2


def test_clinc_folder(tmp_path: Path) -> None:
    (tmp_path / "data_oos_plus.json").write_text(json.dumps(CLINC), encoding="utf-8")
    assert len(load_labeled(tmp_path, split="train")) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"without data_oos_plus\.json"):
        load_labeled(empty)


def test_unknown_split_lists_available(clinc_file: Path) -> None:
    with pytest.raises(DataError, match=r"no split 'dev'; available: test, train, val") as info:
        load_labeled(clinc_file, split="dev")
    assert str(clinc_file) in str(info.value)


def test_bad_clinc_entries(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"test": [["only text"]]}), encoding="utf-8")
    with pytest.raises(DataError, match=r"split 'test' entry 0: expected \[text, intent\]"):
        load_labeled(path)
    path.write_text(json.dumps({"test": [[1, "label"]]}), encoding="utf-8")
    with pytest.raises(DataError, match="must be strings, got int and str"):
        load_labeled(path)
    path.write_text(json.dumps(["not", "splits"]), encoding="utf-8")
    with pytest.raises(DataError, match="CLINC oos-eval format"):
        load_labeled(path)
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(DataError, match="too deeply"):
        load_labeled(path)
    path.write_text("{broken", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        load_labeled(path)
    path.write_text(json.dumps({"test": [], "oos_test": []}), encoding="utf-8")
    with pytest.raises(DataError, match="no labeled examples in split 'test'"):
        load_labeled(path)


def test_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"hello, world",greet\nbye,farewell\n', encoding="utf-8")
    assert load_labeled(path, split="ignored") == [("hello, world", "greet"), ("bye", "farewell")]
    path.write_text("utterance,intent\nhi,greet\n", encoding="utf-8")
    assert load_labeled(path, text_column="utterance", label_column="intent") == [("hi", "greet")]
    with pytest.raises(DataError, match="has no column 'text', 'label'; columns found: utterance, intent"):
        load_labeled(path)


def test_csv_with_bom_and_short_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes("\ufefftext,label\nhi,greet\n".encode())
    assert load_labeled(path) == [("hi", "greet")]
    path.write_text("text,label\nhi\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2: text and label must be strings"):
        load_labeled(path)


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"text": "hi", "label": "greet"}\n\n{"text": "bye", "label": "farewell", "x": 1}\n', encoding="utf-8"
    )
    assert load_labeled(path) == [("hi", "greet"), ("bye", "farewell")]
    path.write_text('{"text": "hi", "label": 3}\n{"text": "yo", "label": 4.0}\n', encoding="utf-8")
    assert load_labeled(path) == [("hi", "3"), ("yo", "4")], "integer labels become their numbers"
    path.write_text('{"text": "hi", "label": 3.5}\n', encoding="utf-8")
    with pytest.raises(
        DataError,
        match=r"line 1: text and label must be strings, got str and float \(a label may also be",
    ):
        load_labeled(path)
    path.write_text('{"text": "hi", "label": "a"}\n{"sentence": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="columns found: sentence"):
        load_labeled(path)
    path.write_text('{"text": "hi", "label": "a"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_labeled(path)
    path.write_text("[1]\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 1 is not a JSON object"):
        load_labeled(path)


def test_not_utf8_names_offset_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\nhi,greet\ncaf\xe9,food\n")
    with pytest.raises(DataError, match=r"not UTF-8: byte 0xe9 at byte offset 23 \(line 3\); re-save"):
        load_labeled(path)


def test_missing_empty_and_unsupported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_labeled(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="no such file"):
        load_labeled(tmp_path / "missing.txt")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no labeled examples"):
        load_labeled(tmp_path / "empty.jsonl")
    (tmp_path / "d.txt").write_text("x", encoding="utf-8")
    with pytest.raises(
        DataError,
        match=r"unsupported file type '.txt'; use .json \(CLINC oos-eval\), .csv, .jsonl or .parquet",
    ):
        load_labeled(tmp_path / "d.txt")
    assert issubclass(DataError, ValueError)


def test_empty_texts_and_labels_are_refused_with_their_row(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhi,greet\n \t ,greet\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d.csv: line 3: empty text; fill in its text or remove the row"):
        load_labeled(path)
    path.write_text("text,label\nhi,\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: empty label; fill in its label or remove the row"):
        load_labeled(path)
    (tmp_path / "c.json").write_text(json.dumps({"test": [["", "weather"]]}), encoding="utf-8")
    with pytest.raises(DataError, match=r"split 'test' entry 0: empty text"):
        load_labeled(tmp_path / "c.json")


def test_parquet_with_class_label_names(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (not a runtime dependency)")
    import pyarrow.parquet as pq

    features = {"info": {"features": {"intent": {"_type": "ClassLabel", "names": ["greet", "leave"]}}}}
    table = pa.table({"sentence": ["hi", "bye", "hello"], "intent": [0, 1, 0]})
    path = tmp_path / "d.parquet"
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(features)}), path)
    rows = load_labeled(path, text_column="sentence", label_column="intent")
    assert rows == [("hi", "greet"), ("bye", "leave"), ("hello", "greet")]
    pq.write_table(table, path)  # no features: the numbers
    assert load_labeled(path, text_column="sentence", label_column="intent")[1] == ("bye", "1")
    with pytest.raises(DataError, match="has no column 'text', 'label'; columns found: sentence, intent"):
        load_labeled(path)
    pq.write_table(pa.table({"text": ["hi", None], "label": ["a", "b"]}), path)
    with pytest.raises(DataError, match="row 2: text and label must be strings"):
        load_labeled(path)
    path.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="is not a readable Parquet file"):
        load_labeled(path)


def test_parquet_without_pyarrow_names_the_fix(tmp_path: Path) -> None:
    """Without pyarrow (the runtime does not need it), a Parquet file is refused with the fix."""
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    code = (
        "import sys; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None\n"
        "from edgepack_runtime.data import DataError, load_labeled\n"
        f"try:\n    load_labeled({str(path)!r})\nexcept DataError as err:\n    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "d.parquet: is Parquet, which needs pyarrow" in out and "pip install pyarrow" in out
    assert "convert the file to CSV or JSON Lines" in out


@pytest.mark.clinc
def test_real_clinc_plus() -> None:
    if not (CLINC_DIR / "data_oos_plus.json").is_file():
        pytest.skip(f"CLINC150 data not found at {CLINC_DIR}")
    test = load_labeled(CLINC_DIR)
    assert len(test) == 5500
    assert sum(label == "oos" for _, label in test) == 1000
    assert len({label for _, label in test}) == 151
    assert len(load_labeled(CLINC_DIR / "data_oos_plus.json", split="validation")) == 3100
