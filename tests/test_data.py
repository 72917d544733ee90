from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from edgepack_runtime.data import DataError

from edgepack import data, models
from edgepack.data import load_splits
from edgepack.errors import RecipeError
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
    folder = _folder(tmp_path, "text,label\nhi,a\nho,a\n", "text,label\nhi,a\n", "text,label\nyo,a\nyo,b\n")
    with pytest.raises(DataError, match=r"test split .* labels that never occur in train: \['b'\]") as info:
        load_splits(DataConfig(source=str(folder), oos_label=None))
    assert "test.csv line 3" in str(info.value) and "fix the label" in str(info.value)


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "text,label\nhi,a\n", "text,label\nhi,a\n", "text,label\nhi,a\n")
    (folder / "train.csv").write_bytes(b"text,label\ncaf\xe9,a\n")
    with pytest.raises(DataError, match="UTF-8"):
        load_splits(DataConfig(source=str(folder)))


def test_jsonl_folder_and_custom_columns(tmp_path: Path) -> None:
    row = '{"q": "hello there", "intent": "greet"}\n{"q": "bye now", "intent": "leave"}\n' * 2
    folder = _folder(tmp_path, row, row, row, ext="jsonl")
    splits = load_splits(
        DataConfig(source=str(folder), text_column="q", label_column="intent", oos_label=None)
    )
    assert splits.labels == ["greet", "leave"] and splits.oos_id() is None


def test_missing_source_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="nothing-here: no such file or folder; check --data"):
        load_splits(DataConfig(source=str(tmp_path / "nothing-here")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub cannot be reached here: its message is what users see
    for name in ("someone/intents", "clinc_oos:plus"):
        with pytest.raises(
            DataError,
            match=f"'{name}' is not a local file or folder, and the Hugging Face Hub is "
            "offline.*Pass --data with a local folder",
        ):
            load_splits(DataConfig(source=name))


@pytest.mark.clinc
def test_real_clinc_plus_splits() -> None:
    if not CLINC_DIR.is_dir():
        pytest.skip(f"CLINC150 data not found at {CLINC_DIR}")
    splits = load_splits(DataConfig(source=str(CLINC_DIR)))
    assert splits.num_labels == 151 and splits.oos_label == "oos"
    assert {s: len(v) for s, v in splits.texts.items()} == {"train": 15250, "validation": 3100, "test": 5500}


@pytest.mark.clinc
def test_real_clinc_keeps_its_cache_keys() -> None:
    """The default build reads CLINC as it did before data could be carved or lengths measured: the teacher
    cache key hashes these examples and max_length, and hours of cached teachers and students hang on them."""
    from edgepack import teacher
    from edgepack.recipe import load_recipe

    if not CLINC_DIR.is_dir():
        pytest.skip(f"CLINC150 data not found at {CLINC_DIR}")
    recipe = load_recipe("clinc-4l", {"data.source": str(CLINC_DIR)})
    splits, max_length = data.run(recipe.data, recipe.teacher.model)
    assert teacher._data_fingerprint(splits) == "a49a8c4cc940ff28" and max_length == 64
    assert splits.record["carved"] is None and splits.record["truncated"] == {
        "train": 0,
        "validation": 0,
        "test": 0,
    }


# ---------------------------------------------------------------- any labelled data: carving, labels, refusals

WORDS = ["balance", "transfer", "weather", "alarm", "money", "account", "rain", "wake", "set", "send"]


def _rows(counts: dict[int, int]) -> list[tuple[str, int]]:
    """Distinct texts of the tiny vocabulary, `counts[label]` of each integer label."""
    rows = []
    for label, n in counts.items():
        rows += [(f"{WORDS[label]} {WORDS[i % len(WORDS)]} number {i}", label) for i in range(n)]
    return rows


def _csv(path: Path, rows: list[tuple[str, object]], header: str = "utterance,intent_id") -> Path:
    path.write_text(header + "\n" + "".join(f"{t},{lbl}\n" for t, lbl in rows), encoding="utf-8")
    return path


def test_train_and_test_only_carves_a_stratified_seeded_validation_split(tmp_path: Path) -> None:
    train = _rows({0: 20, 1: 20, 2: 10})
    _csv(tmp_path / "train.csv", train)
    _csv(tmp_path / "test.csv", [("test text one", 0), ("test text two", 2)])
    (tmp_path / "labels.txt").write_text("balance\ntransfer\nweather\n", encoding="utf-8")
    config = DataConfig(
        source=str(tmp_path),
        text_column="utterance",
        label_column="intent_id",
        oos_label=None,
        validation_fraction=0.2,
    )
    splits = load_splits(config)
    assert splits.labels == ["balance", "transfer", "weather"]
    assert {s: len(v) for s, v in splits.texts.items()} == {"train": 40, "validation": 10, "test": 2}
    per_class = Counter(splits.labels[i] for i in splits.label_ids["validation"])
    assert per_class == {"balance": 4, "transfer": 4, "weather": 2}, "each class gives its share"
    assert set(splits.texts["validation"]).isdisjoint(splits.texts["train"])
    assert sorted(splits.texts["validation"] + splits.texts["train"]) == sorted(t for t, _ in train)
    carved = splits.record["carved"]
    assert carved["seed"] == 0 and carved["validation"] == {"fraction": 0.2, "size": 10}
    assert "test" not in carved and carved["from"] == str(tmp_path / "train.csv")
    assert carved["from_size"] == 50 and carved["train_size"] == 40
    assert splits.record["files"]["test"] == str(tmp_path / "test.csv")
    assert splits.record["label_names"]["from"] == str(tmp_path / "labels.txt")
    again = load_splits(config)
    assert again.texts == splits.texts, "the same seed carves the same split"
    other = load_splits(dataclasses.replace(config, split_seed=1))
    assert set(other.texts["validation"]) != set(splits.texts["validation"])


def test_one_file_carves_validation_and_test_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "all.jsonl"
    rows = _rows({0: 30, 1: 30})
    path.write_text(
        "".join(json.dumps({"text": t, "label": lbl}) + "\n" for t, lbl in rows), encoding="utf-8"
    )
    with caplog.at_level(logging.WARNING):
        splits = load_splits(DataConfig(source=str(path), oos_label=None))
    assert splits.labels == ["0", "1"], "integer labels without a labels.txt stay the numbers"
    assert splits.record["label_names"]["from"] == "the numbers themselves"
    assert {s: len(v) for s, v in splits.texts.items()} == {"train": 49, "validation": 6, "test": 5}
    carved = splits.record["carved"]
    assert carved["validation"]["size"] == 6 and carved["test"] == {"fraction": 0.1, "size": 5}
    assert "less trustworthy" in carved["warning"] and "less trustworthy" in caplog.text
    assert splits.record["files"]["test"] == f"carved from {path}"


def test_parquet_with_class_label_features(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features(
        {"sentence": datasets.Value("string"), "intent": datasets.ClassLabel(names=["greet", "leave"])}
    )
    for split, n in (("train", 10), ("test", 2)):
        texts = [f"{split} text {i}" for i in range(n)]
        part = datasets.Dataset.from_dict({"sentence": texts, "intent": [i % 2 for i in range(n)]}, features)
        part.to_parquet(str(tmp_path / f"{split}.parquet"))
    config = DataConfig(source=str(tmp_path), text_column="sentence", label_column="intent", oos_label=None)
    splits = load_splits(config)
    assert splits.labels == ["greet", "leave"] and len(splits.texts["test"]) == 2
    assert splits.record["label_names"] is None, "ClassLabel ids are named by the file itself"


def test_a_hub_dataset_is_read_with_its_class_label_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--data name:config` with the Hub reachable: `datasets.load_dataset` (faked: it returns a real in-memory
    DatasetDict of train and test only, a ClassLabel label) gets the name and the config; labels are the
    ClassLabel names, validation is carved from train, and edgepack bench's reader carves the same split."""
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    names = ["leave", "greet", "weather"]  # ClassLabel order, not sorted: ids must be named, not sorted
    features = datasets.Features(
        {"utterance": datasets.Value("string"), "intent": datasets.ClassLabel(names=names)}
    )
    rows = {
        "train": [(f"{WORDS[i]} {name} text {n}", i) for i, name in enumerate(names) for n in range(10)],
        "test": [(f"held out {name}", i) for i, name in enumerate(names)],
    }
    hub = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"utterance": [t for t, _ in pairs], "intent": [i for _, i in pairs]}, features
            )
            for split, pairs in rows.items()
        }
    )
    calls: list[tuple[str, str | None]] = []

    def load_dataset(path: str, name: str | None = None, **kwargs: object) -> datasets.DatasetDict:
        calls.append((path, name))
        return hub

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    config = DataConfig(
        source="acme/intents:en", text_column="utterance", label_column="intent", oos_label=None
    )
    splits = load_splits(config)
    assert calls == [("acme/intents", "en")]
    assert splits.labels == ["greet", "leave", "weather"]
    named = {t: names[i] for pairs in rows.values() for t, i in pairs}
    for split in ("train", "validation", "test"):
        got = [splits.labels[i] for i in splits.label_ids[split]]
        assert got == [named[t] for t in splits.texts[split]], f"{split}: a ClassLabel id named wrongly"
    assert {s: len(v) for s, v in splits.texts.items()} == {"train": 27, "validation": 3, "test": 3}
    record = splits.record
    assert record["source"] == "acme/intents:en" and record["files"]["test"] == "acme/intents:en test"
    assert record["label_names"] == {"from": "the ClassLabel features of acme/intents:en", "names": 3}
    carved = record["carved"]
    assert carved["validation"] == {"fraction": 0.1, "size": 3} and "test" not in carved
    assert carved["from"] == "acme/intents:en train"
    assert sorted(splits.labels[i] for i in splits.label_ids["validation"]) == sorted(names), "stratified"
    pairs, note = data.read_split("acme/intents:en", "validation", "utterance", "intent", record)
    assert [t for t, _ in pairs] == splits.texts["validation"] and note is not None
    load_splits(dataclasses.replace(config, source="acme/intents"))
    assert calls[-1] == ("acme/intents", None), "no :config, no config"


def test_an_integer_label_the_map_does_not_name_is_refused(tmp_path: Path) -> None:
    _csv(tmp_path / "train.csv", [*_rows({0: 4, 1: 4}), ("unnamed one", 2), ("unnamed two", 2)])
    (tmp_path / "labels.json").write_text('["balance", "transfer"]', encoding="utf-8")
    config = DataConfig(
        source=str(tmp_path), text_column="utterance", label_column="intent_id", oos_label=None
    )
    with pytest.raises(
        DataError, match=r"train.csv line 10: label 2 has no name in .*labels.json, which names 2"
    ):
        load_splits(config)


def test_a_class_with_one_example_is_refused(tmp_path: Path) -> None:
    _csv(tmp_path / "train.csv", [*_rows({0: 5, 1: 5}), ("only once", 7)])
    config = DataConfig(
        source=str(tmp_path), text_column="utterance", label_column="intent_id", oos_label=None
    )
    with pytest.raises(
        DataError,
        match=r"train.csv line 12: class '7' has a single training example; it cannot be "
        "split stratified.*Add examples of it, or remove its row",
    ):
        load_splits(config)
    _csv(tmp_path / "validation.csv", [("a", 0)])
    _csv(tmp_path / "test.csv", [("b", 1)])
    with pytest.raises(DataError, match="single training example; a class needs at least two"):
        load_splits(config)


def test_an_empty_text_is_refused_with_its_row(tmp_path: Path) -> None:
    _csv(tmp_path / "train.csv", [*_rows({0: 3, 1: 3}), ("   ", 1)])
    config = DataConfig(
        source=str(tmp_path), text_column="utterance", label_column="intent_id", oos_label=None
    )
    with pytest.raises(DataError, match=r"train.csv: line 8: empty text; fill in its text or remove the row"):
        load_splits(config)


def test_an_oos_label_the_data_lacks_is_refused(tmp_path: Path) -> None:
    _csv(tmp_path / "train.csv", _rows({0: 3, 1: 3}))
    config = DataConfig(source=str(tmp_path), text_column="utterance", label_column="intent_id")
    with pytest.raises(
        DataError, match=r"oos_label = 'oos' is not a label of .*\['0', '1'\]\). Pass --oos-label"
    ):
        load_splits(config)


def test_max_length_auto_and_truncation_counts(
    tmp_path: Path, tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import AutoTokenizer

    texts = {
        0: [" ".join(WORDS[: 2 + i % 9]) for i in range(30)],
        1: ["send money " * (1 + i % 7) for i in range(30)],
    }
    _csv(tmp_path / "train.csv", [(t, label) for label, ts in texts.items() for t in ts])
    _csv(tmp_path / "test.csv", [("send money " * 20, 1), ("balance", 0)])
    config = DataConfig(
        source=str(tmp_path),
        text_column="utterance",
        label_column="intent_id",
        oos_label=None,
        max_length="auto",
    )
    splits, max_length = data.run(config, str(tiny_model))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    lengths = {s: np.array([len(tokenizer(t)["input_ids"]) for t in v]) for s, v in splits.texts.items()}
    assert max_length == int(np.ceil(np.percentile(lengths["train"], 99)))
    assert splits.record["max_length"] == max_length and "99th percentile" in splits.record["max_length_rule"]
    assert splits.record["truncated"] == {s: int((v > max_length).sum()) for s, v in lengths.items()}
    assert splits.record["truncated"]["test"] == 1, "the 42-token test text is cut"
    with caplog.at_level(logging.WARNING):
        data.run(config, str(tiny_model))
    assert "to keep more, set [data] max_length to a number" in caplog.text, "auto: a number keeps more"
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _, fixed = data.run(dataclasses.replace(config, max_length=8), str(tiny_model))
    assert fixed == 8 and "max_length 8 truncates" in caplog.text and 'or set "auto"' in caplog.text
    with pytest.raises(RecipeError, match=r"max_length = 128 is more than the teacher serves \(64 tokens\)"):
        data.run(dataclasses.replace(config, max_length=128), str(tiny_model))


@pytest.mark.parametrize("stated", [None, 48], ids=["position-table", "tokenizer-model-max-length"])
def test_max_length_auto_is_capped_at_the_model_limit(
    tmp_path: Path, tiny_model: Path, stated: int | None
) -> None:
    """Training texts longer than the model serves: "auto" (their 99th percentile, above the limit) is the
    limit: the tiny BERT's 64 positions, or a smaller model_max_length its tokenizer states."""
    model = tiny_model
    if stated is not None:
        model = Path(shutil.copytree(tiny_model, tmp_path / "model"))
        tokenizer = models.load_tokenizer(model)
        tokenizer.model_max_length = stated
        tokenizer.save_pretrained(model)
    limit = stated or 64
    folder = tmp_path / "data"
    folder.mkdir()
    texts = {
        0: ["what is my balance " * (20 + i) for i in range(10)],
        1: ["send money " * (40 + i) for i in range(10)],
    }
    _csv(folder / "train.csv", [(t, label) for label, ts in texts.items() for t in ts])
    _csv(folder / "test.csv", [("balance", 0), ("send money", 1)])
    config = DataConfig(
        source=str(folder),
        text_column="utterance",
        label_column="intent_id",
        oos_label=None,
        max_length="auto",
    )
    splits, max_length = data.run(config, str(model))
    record = splits.record
    assert record["token_lengths"]["train"]["p99"] > 64, "the data asks for more than the model serves"
    assert max_length == record["max_length"] == record["model_limit"] == limit
    assert f"capped at the model's {limit}" in record["max_length_rule"]
    assert record["truncated"] == {"train": 18, "validation": 2, "test": 0}, "every training text is cut"


def test_one_split_file_of_a_folder_says_what_it_leaves_unread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _csv(tmp_path / "train.csv", _rows({0: 10, 1: 10}))
    _csv(tmp_path / "test.csv", [("held out", 0)])
    config = DataConfig(
        source=str(tmp_path / "train.csv"), text_column="utterance", label_column="intent_id", oos_label=None
    )
    with caplog.at_level(logging.WARNING):
        splits = load_splits(config)
    assert splits.record["carved"]["test"]["size"] == 2, "the file alone: test is carved from it"
    assert f"test.csv beside it is not: pass the folder (--data {tmp_path})" in caplog.text
