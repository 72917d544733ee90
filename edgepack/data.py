"""Data stage: read the train / validation / test splits, build the label map, refuse bad data early.

Sources: the CLINC `oos-eval` JSON (a file or a folder holding `data_oos_plus.json`); a folder of per-split
CSV or JSON Lines files (`train.csv`, `validation.csv` or `val.csv`, `test.csv`); or a Hub dataset name when
the Hub can be reached. File parsing is shared with the runtime (`edgepack_runtime.data`), so `edgepack-run
bench --data` reads exactly what the build reads.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from edgepack_runtime.data import DataError, load_labeled

from edgepack.recipe import DataConfig

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_SPLIT_FILE_STEMS = {"train": ("train",), "validation": ("validation", "val", "dev"), "test": ("test",)}


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


def _split_file(folder: Path, split: str) -> Path:
    for stem in _SPLIT_FILE_STEMS[split]:
        for ext in (".csv", ".jsonl"):
            if (folder / f"{stem}{ext}").is_file():
                return folder / f"{stem}{ext}"
    wanted = " or ".join(f"{s}.csv/.jsonl" for s in _SPLIT_FILE_STEMS[split])
    raise DataError(f"Data folder {folder} has no {split} split: expected a file named {wanted}.")


def _read_local(config: DataConfig) -> dict[str, list[tuple[str, str]]]:
    source = Path(config.source)
    columns = {"text_column": config.text_column, "label_column": config.label_column}
    is_clinc = source.suffix == ".json" or (source.is_dir() and (source / "data_oos_plus.json").is_file())
    if is_clinc:
        return {split: load_labeled(source, split=split, **columns) for split in SPLITS}
    if source.is_dir():
        return {split: load_labeled(_split_file(source, split), **columns) for split in SPLITS}
    raise DataError(
        f"Data source {source} is neither a CLINC oos-eval JSON file, nor a folder holding data_oos_plus.json "
        "or train/validation/test .csv/.jsonl files. Pass --data with one of those."
    )


def _read_hub(config: DataConfig) -> dict[str, list[tuple[str, str]]]:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise DataError(f"Data source {config.source!r} is not a local path and the Hub is offline.")
    import datasets

    try:
        ds = datasets.load_dataset(config.source)
    except Exception as exc:  # offline, unknown name, ...: one clear message
        raise DataError(
            f"Data source {config.source!r} is not a local file or folder, and loading it from the Hugging Face "
            f"Hub failed ({type(exc).__name__}: {str(exc)[:200]}). Pass --data with a local CLINC JSON, or a "
            "folder of train/validation/test CSV or JSON Lines files."
        ) from None
    out: dict[str, list[tuple[str, str]]] = {}
    for split in SPLITS:
        name = next((s for s in _SPLIT_FILE_STEMS[split] if s in ds), None)
        if name is None:
            raise DataError(f"Hub dataset {config.source!r} has no {split} split (it has {sorted(ds)}).")
        part = ds[name]
        for column in (config.text_column, config.label_column):
            if column not in part.column_names:
                raise DataError(
                    f"Hub dataset {config.source!r} has no column {column!r}; columns: {part.column_names}. "
                    "Set [data] text_column / label_column."
                )
        feature = part.features[config.label_column]
        names = getattr(feature, "names", None)
        labels = [names[v] if names else str(v) for v in part[config.label_column]]
        out[split] = list(zip(part[config.text_column], labels, strict=True))
    return out


def _validate(examples: dict[str, list[tuple[str, str]]], source: str) -> None:
    for split in SPLITS:
        if not examples[split]:
            raise DataError(f"The {split} split of {source} is empty.")
    train_labels = {label for _, label in examples["train"]}
    for split in ("validation", "test"):
        unseen = sorted({label for _, label in examples[split]} - train_labels)
        if unseen:
            raise DataError(
                f"The {split} split of {source} has labels that never occur in train: {unseen[:10]}"
                f"{' ...' if len(unseen) > 10 else ''}. Every label must have training examples."
            )


def load_splits(config: DataConfig) -> LabelledSplits:
    """Read and validate all splits. Raises DataError (a ValueError) naming the file and the problem."""
    local = Path(config.source).exists()
    examples = _read_local(config) if local else _read_hub(config)
    _validate(examples, config.source)
    if config.max_train_samples is not None and len(examples["train"]) > config.max_train_samples:
        rng = np.random.default_rng(0)
        keep = sorted(rng.choice(len(examples["train"]), config.max_train_samples, replace=False))
        examples["train"] = [examples["train"][i] for i in keep]
    labels = sorted({label for _, label in examples["train"]})
    index = {name: i for i, name in enumerate(labels)}
    oos = config.oos_label if config.oos_label in index else None
    record = {
        "source": str(Path(config.source).resolve()) if local else config.source,
        "num_labels": len(labels),
        "oos_label": oos,
        "sizes": {split: len(examples[split]) for split in SPLITS},
        "largest_class_share": round(
            max(Counter(lbl for _, lbl in examples["train"]).values()) / len(examples["train"]), 4
        ),
    }
    log.info("data: %s", record)
    return LabelledSplits(
        labels=labels,
        texts={s: [t for t, _ in examples[s]] for s in SPLITS},
        label_ids={s: np.array([index[lbl] for _, lbl in examples[s]], dtype=np.int64) for s in SPLITS},
        oos_label=oos,
        source=config.source,
        record=record,
    )
