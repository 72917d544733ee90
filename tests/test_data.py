from __future__ import annotations

from pathlib import Path

import pytest
from edgepack_runtime.data import DataError

from edgepack.data import load_splits
from edgepack.recipe import DataConfig

CLINC_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "clinc150"


def _folder(tmp_path: Path, train: str, validation: str, test: str, ext: str = "csv") -> Path:
    for name, text in (("train", train), ("validation", validation), ("test", test)):
        (tmp_path / f"{name}.{ext}").write_text(text, encoding="utf-8")
    return tmp_path


def test_csv_folder_gives_three_splits_and_a_label_map(tiny_data: Path) -> None:
    splits = load_splits(DataConfig(source=str(tiny_data)))
    assert splits.labels == ["alarm", "balance", "oos", "transfer", "weather"]
    assert splits.oos_label == "oos" and splits.oos_id() == 2
    assert {s: len(v) for s, v in splits.texts.items()} == {"train": 40, "validation": 5, "test": 10}
    assert splits.labels[splits.label_ids["test"][0]] == "balance"


def test_missing_column_is_named(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "utterance,label\nhi,a\n", "text,label\nhi,a\n", "text,label\nhi,a\n")
    with pytest.raises(DataError, match="text"):
        load_splits(DataConfig(source=str(folder)))


def test_empty_split_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "text,label\nhi,a\n", "text,label\n", "text,label\nhi,a\n")
    with pytest.raises(DataError, match="validation|empty|no examples"):
        load_splits(DataConfig(source=str(folder)))


def test_test_label_absent_from_train_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "text,label\nhi,a\n", "text,label\nhi,a\n", "text,label\nyo,b\n")
    with pytest.raises(DataError, match=r"test split .* labels that never occur in train: \['b'\]"):
        load_splits(DataConfig(source=str(folder)))


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "text,label\nhi,a\n", "text,label\nhi,a\n", "text,label\nhi,a\n")
    (folder / "train.csv").write_bytes(b"text,label\ncaf\xe9,a\n")
    with pytest.raises(DataError, match="UTF-8"):
        load_splits(DataConfig(source=str(folder)))


def test_jsonl_folder_and_custom_columns(tmp_path: Path) -> None:
    row = '{"q": "hello there", "intent": "greet"}\n{"q": "bye now", "intent": "leave"}\n'
    folder = _folder(tmp_path, row, row, row, ext="jsonl")
    splits = load_splits(
        DataConfig(source=str(folder), text_column="q", label_column="intent", oos_label=None)
    )
    assert splits.labels == ["greet", "leave"] and splits.oos_id() is None


def test_missing_source_is_explained(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a local file or folder|Hub is offline"):
        load_splits(DataConfig(source=str(tmp_path / "nothing-here")))


@pytest.mark.clinc
def test_real_clinc_plus_splits() -> None:
    if not CLINC_DIR.is_dir():
        pytest.skip(f"CLINC150 data not found at {CLINC_DIR}")
    splits = load_splits(DataConfig(source=str(CLINC_DIR)))
    assert splits.num_labels == 151 and splits.oos_label == "oos"
    assert {s: len(v) for s, v in splits.texts.items()} == {"train": 15250, "validation": 3100, "test": 5500}
