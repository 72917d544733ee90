"""edgepack_runtime.splits: the splits a dataset holds, those carved from train (stratified, seeded, the
same on every machine), integer labels named by a map beside the data, and what a bench re-reads."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack_runtime.cli import main
from edgepack_runtime.data import DataError, Example
from edgepack_runtime.splits import Carving, carve, read_dataset, read_split

from .bundle_kit import MakeBundle


def _examples(counts: dict[str, int]) -> list[Example]:
    return [
        Example(f"{label} text {i}", label, f"f line {i}") for label, n in counts.items() for i in range(n)
    ]


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("text,label\n" + "".join(f"{t},{lb}\n" for t, lb in rows), encoding="utf-8")
    return path


def test_carving_is_stratified_and_seeded() -> None:
    examples = _examples({"a": 50, "b": 30, "c": 15, "d": 5})
    kept, carved = carve(examples, 0.2, seed=0)
    assert Counter(e.label for e in carved) == {"a": 10, "b": 6, "c": 3, "d": 1}
    assert sorted(kept + carved) == sorted(examples) and not set(kept) & set(carved)
    assert carve(examples, 0.2, seed=0) == (kept, carved), "same seed, same split"
    assert set(carve(examples, 0.2, seed=1)[1]) != set(carved), "another seed, another split"
    shuffled = examples[:]
    random.Random(7).shuffle(shuffled)
    assert {e.text for e in carve(shuffled, 0.2, seed=0)[1]} == {e.text for e in carved}, (
        "row order is no matter"
    )


def test_carving_rounds_to_the_total_and_keeps_every_class() -> None:
    examples = _examples({"a": 7, "b": 7, "c": 7, "d": 1})
    kept, carved = carve(examples, 0.1, seed=0)
    assert len(carved) == round(22 * 0.1) == 2, "the largest remainders take the rounding"
    assert {e.label for e in kept} == {"a", "b", "c", "d"}, "a class keeps at least one example"


def test_a_train_only_folder_gets_validation_and_test(tmp_path: Path) -> None:
    _csv(tmp_path / "train.csv", [(f"{lb} {i}", lb) for lb in ("x", "y") for i in range(20)])
    dataset = read_dataset(tmp_path, carving=Carving(0.1, 0.25, seed=3))
    sizes = {s: len(v) for s, v in dataset.examples.items()}
    assert sizes == {"train": 27, "validation": 4, "test": 9}
    assert dataset.carved is not None and dataset.carved["seed"] == 3
    assert dataset.carved["validation"] == {"fraction": 0.1, "size": 4}
    assert dataset.carved["test"] == {"fraction": 0.25, "size": 9}
    assert dataset.origin["test"] == f"carved from {tmp_path / 'train.csv'}"
    assert len(dataset.carved["from_sha256"]) == 64


def test_label_maps_name_integer_labels(tmp_path: Path) -> None:
    _csv(tmp_path / "train.csv", [("a", "0"), ("b", "1"), ("c", "1")])
    _csv(tmp_path / "test.csv", [("d", "0")])
    _csv(tmp_path / "validation.csv", [("e", "1")])
    (tmp_path / "labels.json").write_text('{"1": "pos", "0": "neg"}', encoding="utf-8")
    dataset = read_dataset(tmp_path)
    assert dataset.pairs("train") == [("a", "neg"), ("b", "pos"), ("c", "pos")]
    assert dataset.label_names == {"from": str(tmp_path / "labels.json"), "names": 2}
    (tmp_path / "labels.json").write_text('{"0": "neg", "2": "pos"}', encoding="utf-8")
    with pytest.raises(
        DataError, match=r'labels.json: expected a JSON list of label names, or an object \{"0"'
    ):
        read_dataset(tmp_path)
    (tmp_path / "labels.json").unlink()
    (tmp_path / "labels.txt").write_text("neg\nneg\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"labels\.txt: label names must be non-empty and distinct"):
        read_dataset(tmp_path)
    (tmp_path / "labels.txt").write_text("neg\npos\n", encoding="utf-8")
    _csv(tmp_path / "test.csv", [("d", "0"), ("f", "not a number")])
    assert read_dataset(tmp_path).pairs("test")[1] == ("f", "not a number"), "names are left alone"


def test_a_folder_without_training_data_is_refused(tmp_path: Path) -> None:
    _csv(tmp_path / "test.csv", [("a", "x")])
    with pytest.raises(DataError, match=r"no training data: expected a file named train.csv, train.jsonl"):
        read_dataset(tmp_path)


def test_read_split_carves_as_the_build_did(tmp_path: Path) -> None:
    rows = [(f"{lb} {i}", lb) for lb in ("x", "y") for i in range(20)]
    _csv(tmp_path / "train.csv", rows)
    _csv(tmp_path / "test.csv", [("t", "x")])
    built = read_dataset(tmp_path, carving=Carving(0.2, 0.1, seed=5))
    record = {"carved": built.carved}
    assert read_split(tmp_path, "test", built=record) == ([("t", "x")], None), "a split file is read as is"
    pairs, note = read_split(tmp_path, "val", built=record)
    assert (
        pairs == built.pairs("validation") and note is not None and "as the bundle's build carved it" in note
    )
    pairs, note = read_split(tmp_path, "validation")
    assert pairs != built.pairs("validation") and note is not None and "may not be its build's split" in note
    _csv(tmp_path / "train.csv", [*rows, ("new", "x")])
    note = read_split(tmp_path, "validation", built=record)[1]
    assert note is not None and "differs from the file the bundle was built from" in note
    with pytest.raises(DataError, match="no split 'dev2'"):
        read_split(tmp_path, "dev2")


def test_one_file_is_measured_whole_unless_the_bundle_was_built_from_it(tmp_path: Path) -> None:
    path = _csv(tmp_path / "all.csv", [(f"{lb} {i}", lb) for lb in ("x", "y") for i in range(20)])
    assert read_split(path) == ([(f"{lb} {i}", lb) for lb in ("x", "y") for i in range(20)], None)
    built = read_dataset(path)
    pairs, note = read_split(path, "test", built={"carved": built.carved})
    assert pairs == built.pairs("test") and len(pairs) == 4 and note is not None


def test_bench_reads_a_folder_and_the_data_oos_label(make_bundle: MakeBundle, tmp_path: Path) -> None:
    bundle = make_bundle()  # labels include "oos"; no out-of-scope rule
    data = tmp_path / "data"
    data.mkdir()
    _csv(data / "train.csv", [("what is my pin", "pin_change"), ("what is my pin now", "pin_change")])
    _csv(data / "test.csv", [("weather in paris", "weather"), ("sing a song", "out_of_scope")])
    base = ["bench", str(bundle), "--data", str(data), "--json", "--runs", "2", "--warmup", "0"]
    result = CliRunner().invoke(main, base)
    assert result.exit_code == 0, result.output
    accuracy = json.loads(result.stdout)["accuracy"]
    assert accuracy["texts"] == 2 and accuracy["unknown_labels"] == ["out_of_scope"]
    result = CliRunner().invoke(main, [*base, "--oos-label", "out_of_scope"])
    accuracy = json.loads(result.stdout)["accuracy"]
    assert accuracy["unknown_labels"] == [] and accuracy["oos_label"] == "oos"
    assert accuracy["oos_recall"] is not None, "the data's out_of_scope texts count as the bundle's oos"
    result = CliRunner().invoke(main, [*base, "--split", "validation"])
    assert result.exit_code == 0, result.output
    assert "records no carving" in result.stderr, "the folder has no validation split: carved, and said so"
    assert json.loads(result.stdout)["data"]["carved"].startswith(f"{data}: measuring validation")
