"""Data stage: read the train / validation / test splits, build the label map, refuse bad data early, and
measure the texts' token lengths (the max_length that `[data] max_length = "auto"` stands for, and how many
texts each split loses to truncation).

Sources: the CLINC `oos-eval` JSON (a file or a folder holding `data_oos_plus.json`); a folder of per-split
CSV, JSON Lines or Parquet files (`train.csv`, `validation.csv` or `val.csv` or `dev.csv`, `test.csv`); one
such file (the training data); or a Hub dataset `name` or `name:config` when the Hub can be reached. A
missing validation or test split is carved from train (stratified, seeded: `[data] validation_fraction`,
`test_fraction`, `split_seed`), and the data record says what was carved. Reading and carving are shared
with the runtime (`edgepack_runtime.splits`), so `edgepack bench` and `edgepack-run bench --data` read exactly
what the build read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from edgepack_runtime.data import DataError, Example, to_example
from edgepack_runtime.splits import SPLIT_STEMS, Carving, Dataset, complete, read_found, split_file
from edgepack_runtime.splits import read_split as read_local_split

from edgepack.recipe import DataConfig

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
TEST_CARVED_WARNING = (
    "the test split was carved from the training data, so its figures are less trustworthy than a held-out "
    "test set's (same source and collection as the training texts); give a test file for figures to rely on"
)
SUBSAMPLE_SEED = 0  # which training examples `max_train_samples` keeps (recorded in the manifest's seeds)
DIGEST_COVERS = (
    "sha256 over the split's examples as the build used them (after max_train_samples), in that order: one line "
    'per example, the JSON array [text, label name] (compact, non-ASCII as \\u escapes) and "\\n". The same '
    "examples give the same digest from CSV, JSON Lines or CLINC JSON; another order or any other text or "
    "label gives another."
)


def split_sha256(examples: list[tuple[str, str]]) -> str:
    """The canonical digest of one split's (text, label) examples (DIGEST_COVERS says what it covers)."""
    digest = hashlib.sha256()
    for text, label in examples:
        digest.update(json.dumps([text, label], ensure_ascii=True, separators=(",", ":")).encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass
class LabelledSplits:
    """Texts and integer labels per split, with the label map that the bundle ships."""

    labels: list[str]
    texts: dict[str, list[str]]
    label_ids: dict[str, np.ndarray]
    oos_label: str | None
    source: str
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def oos_id(self) -> int | None:
        return self.labels.index(self.oos_label) if self.oos_label in self.labels else None

    def relabelled(self, labels: list[str]) -> LabelledSplits:
        """The same examples under another label order (a fine-tuned teacher's own id2label)."""
        missing = sorted(set(self.labels) - set(labels))
        if missing:
            raise DataError(
                f"The teacher's labels do not cover the data's labels: {missing[:10]} "
                f"({len(missing)} in all) are unknown to it. Use a teacher fine-tuned on these labels, "
                "or a base model (it will be fine-tuned)."
            )
        index = {name: i for i, name in enumerate(labels)}
        ids = {
            s: np.array([index[self.labels[i]] for i in v], dtype=np.int64) for s, v in self.label_ids.items()
        }
        return LabelledSplits(labels, self.texts, ids, self.oos_label, self.source, dict(self.record))


Found = dict[str, list[Example] | None]  # the splits a source holds; None: missing, to be carved


def _looks_local(source: str) -> bool:
    """A path rather than a Hub name (`name`, `org/name`, `name:config`)."""
    return Path(source).suffix.lower() in {".csv", ".jsonl", ".ndjson", ".parquet", ".json"} or (
        source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source
    )


def _carving(config: DataConfig) -> Carving:
    return Carving(config.validation_fraction, config.test_fraction, config.split_seed)


def _read_hub(config: DataConfig) -> tuple[Found, dict[str, str], dict[str, Any] | None]:
    """A Hub dataset `name` or `name:config`: its splits, with ClassLabel ids as their names."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise DataError(
            f"Data source {config.source!r} is not a local file or folder, and the Hugging Face Hub is offline "
            "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is 1). Pass --data with a local folder of train (and "
            "optionally validation / test) .csv, .jsonl or .parquet files, one such file, or a CLINC JSON; or "
            "go online to load it from the Hub."
        )
    import datasets

    name, _, subset = config.source.partition(":")
    try:
        ds = datasets.load_dataset(name, subset or None)
    except Exception as exc:  # offline, unknown name, ...: one clear message
        raise DataError(
            f"Data source {config.source!r} is not a local file or folder, and loading it from the Hugging Face "
            f"Hub failed ({type(exc).__name__}: {str(exc)[:200]}). Pass --data with a local folder of train "
            "(and optionally validation / test) .csv, .jsonl or .parquet files, one such file, or a CLINC JSON."
        ) from None
    found: Found = dict.fromkeys(SPLITS)
    origin: dict[str, str] = {}
    named: dict[str, Any] | None = None
    for split in SPLITS:
        part_name = next((s for s in SPLIT_STEMS[split] if s in ds), None)
        if part_name is None:
            continue
        part = ds[part_name]
        for column in (config.text_column, config.label_column):
            if column not in part.column_names:
                raise DataError(
                    f"Hub dataset {config.source!r} has no column {column!r}; columns: {part.column_names}. "
                    "Pass --text-column / --label-column, or set [data] text_column / label_column."
                )
        names = getattr(part.features[config.label_column], "names", None)
        if names:
            named = {"from": f"the ClassLabel features of {config.source}", "names": len(names)}
        labels = [names[v] if names else v for v in part[config.label_column]]
        where = f"{config.source} {part_name}"
        rows = enumerate(zip(part[config.text_column], labels, strict=True), start=1)
        found[split] = [to_example(where, f"row {i}", text, label) for i, (text, label) in rows]
        origin[split] = where
    if found["train"] is None:
        raise DataError(f"Hub dataset {config.source!r} has no train split (it has {sorted(ds)}).")
    return found, origin, named


def _check_train(train: list[Example], carving: bool) -> None:
    """Refuse a class with a single training example, naming its row."""
    counts = Counter(e.label for e in train)
    single = sorted(label for label, n in counts.items() if n == 1)
    if not single:
        return
    first = next(e for e in train if e.label == single[0])
    more = f" (and {len(single) - 1} more: {single[1:6]})" if len(single) > 1 else ""
    why = (
        "it cannot be split stratified, and validation / test are carved from train here"
        if carving
        else "a class needs at least two training examples"
    )
    raise DataError(
        f"{first.where}: class {single[0]!r} has a single training example{more}; {why}. Add examples of it, "
        "or remove its row."
    )


def _validate(examples: dict[str, list[Example]], source: str) -> None:
    for split in SPLITS:
        if not examples[split]:
            raise DataError(f"The {split} split of {source} is empty.")
    train_labels = {e.label for e in examples["train"]}
    for split in ("validation", "test"):
        unseen = sorted({e.label for e in examples[split]} - train_labels)
        if unseen:
            first = next(e for e in examples[split] if e.label in unseen)
            raise DataError(
                f"The {split} split of {source} has labels that never occur in train: {unseen[:10]}"
                f"{' ...' if len(unseen) > 10 else ''} (first at {first.where}). Every label must have "
                "training examples: fix the label, add training examples of it, or remove those rows."
            )


def _warn_of_split_files_beside(path: Path) -> None:
    """One file is the whole training data: say so when validation / test files beside it go unread."""
    beside = [split_file(path.parent, split) for split in ("validation", "test")]
    unread = [f.name for f in beside if f is not None and f != path]
    if unread:
        log.warning(
            "data: %s is read as the training data alone, %s beside it is not: pass the folder (--data %s) "
            "to use it rather than carve from this file",
            path,
            " and ".join(unread),
            path.parent,
        )


def read(config: DataConfig) -> Dataset:
    """Every split of the data (missing ones carved from train), checked. Raises DataError naming the file,
    the row and the fix."""
    source = Path(config.source)
    if source.exists():
        found, origin, named = read_found(source.resolve(), config.text_column, config.label_column)
    elif _looks_local(config.source):
        raise DataError(f"Data source {source}: no such file or folder; check --data / [data] source.")
    else:
        found, origin, named = _read_hub(config)
    train = found["train"]
    assert train is not None
    if source.is_file():
        _warn_of_split_files_beside(source.resolve())
    _check_train(train, any(found[s] is None for s in SPLITS))
    dataset = complete(found, origin, _carving(config))
    dataset.label_names = named
    _validate(dataset.examples, config.source)
    if dataset.carved is not None and "test" in dataset.carved:
        dataset.carved["warning"] = TEST_CARVED_WARNING
        log.warning("data: %s has no test split: %s", config.source, TEST_CARVED_WARNING)
    return dataset


def load_splits(config: DataConfig) -> LabelledSplits:
    """Read, carve and validate all splits. Raises DataError (a ValueError) naming the file and the problem."""
    local = Path(config.source).exists()
    dataset = read(config)
    examples = {s: [(e.text, e.label) for e in dataset.examples[s]] for s in SPLITS}
    if config.max_train_samples is not None and len(examples["train"]) > config.max_train_samples:
        rng = np.random.default_rng(SUBSAMPLE_SEED)
        keep = sorted(rng.choice(len(examples["train"]), config.max_train_samples, replace=False))
        examples["train"] = [examples["train"][i] for i in keep]
    labels = sorted({label for _, label in examples["train"]})
    index = {name: i for i, name in enumerate(labels)}
    if config.oos_label is not None and config.oos_label not in index:
        raise DataError(
            f"[data] oos_label = {config.oos_label!r} is not a label of {config.source} (its labels: "
            f"{labels[:10]}{' ...' if len(labels) > 10 else ''}). Pass --oos-label with the data's out-of-scope "
            "label, or --set data.oos_label=none when it has none (the bundle then answers by argmax, or "
            "rejects with [evaluate] rejection_label)."
        )
    oos = config.oos_label
    record = {
        "source": str(Path(config.source).resolve()) if local else config.source,
        "source_as_given": config.source,
        "num_labels": len(labels),
        "oos_label": oos,
        "sizes": {split: len(examples[split]) for split in SPLITS},
        "largest_class_share": round(
            max(Counter(lbl for _, lbl in examples["train"]).values()) / len(examples["train"]), 4
        ),
        "sha256": {split: split_sha256(examples[split]) for split in SPLITS},
        "sha256_covers": DIGEST_COVERS,
        "files": dataset.origin,
        "carved": dataset.carved,
        "label_names": dataset.label_names,
    }
    log.info("data: %s", {k: v for k, v in record.items() if k not in ("sha256_covers", "carved")})
    if dataset.carved is not None:
        log.info("data: carved %s", {k: v for k, v in dataset.carved.items() if k != "method"})
    return LabelledSplits(
        labels=labels,
        texts={s: [t for t, _ in examples[s]] for s in SPLITS},
        label_ids={s: np.array([index[lbl] for _, lbl in examples[s]], dtype=np.int64) for s in SPLITS},
        oos_label=oos,
        source=config.source,
        record=record,
    )


def run(config: DataConfig, teacher_model: str) -> tuple[LabelledSplits, int]:
    """The data stage: the splits, then the max_length they are tokenized at (`auto`: from their token
    lengths under the teacher's tokenizer) and how many texts of each split it truncates (in the record)."""
    from edgepack import lengths, models

    splits = load_splits(config)
    folder = models.resolve_model(teacher_model)
    tokenizer = models.load_tokenizer(folder)
    limit = lengths.model_limit(folder, tokenizer)
    max_length, record = lengths.measure(config.max_length, splits.texts, tokenizer, limit)
    splits.record |= record
    return splits, max_length


def read_split(
    source: str, split: str, text_column: str, label_column: str, built: dict[str, Any] | None = None
) -> tuple[list[tuple[str, str]], str | None]:
    """The `split` of `source` as a build on it read it, for `edgepack bench`: a local source through
    edgepack_runtime.splits.read_split (what `edgepack-run bench` reads), a Hub dataset through `datasets`;
    a split the data lacks is carved as `built` (the bundle's manifest data record) says its build carved it.
    Returns the pairs and a note when the split was carved."""
    if Path(source).exists() or _looks_local(source):
        return read_local_split(source, split, text_column, label_column, built)
    config = DataConfig(source=source, text_column=text_column, label_column=label_column, oos_label=None)
    found, origin, _ = _read_hub(config)
    carving = Carving.of_build((built or {}).get("carved"))
    dataset = complete(found, origin, carving or _carving(config))
    split = "validation" if split in SPLIT_STEMS["validation"] else split
    carved = split in (dataset.carved or {})
    note = f"{source}: measuring {split} as carved from its train split" if carved else None
    return dataset.pairs(split), note
