"""A labeled dataset's train / validation / test splits, read alike by the build and by the benches.

Layouts:
  a CLINC oos-eval JSON file, or a folder holding data_oos_plus.json   its train / val / test (+ oos_*) splits
  a folder of split files     train, validation (or val, dev) and test, each .csv, .jsonl, .ndjson or .parquet
  one .csv / .jsonl / .parquet file   to the build, the training data (validation and test are carved); to a
                              bench, the texts to measure, unless the bundle was built from this very file

Missing splits are carved, never demanded: no validation split -> a share of train; no test split -> the same
share of what is left (`carve`). Carving is stratified by label and seeded, and gives the same split on every
machine and with any numpy: within each class, examples are taken in the order of sha256(seed, label, text),
not from a random generator whose stream may change between versions.

Integer labels (CSV digits, JSON or Parquet integers) are named by a `labels.txt` (one name per line: line 1
names label 0) or `labels.json` (a list, or {"0": name, ...}) beside the data; without one they stay the
numbers. A Parquet ClassLabel column is named by its own features (edgepack_runtime.data).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack_runtime.data import CLINC_FILE, DataError, Example, read_examples

SPLITS = ("train", "validation", "test")
SPLIT_STEMS = {"train": ("train",), "validation": ("validation", "val", "dev"), "test": ("test",)}
EXTENSIONS = (".csv", ".jsonl", ".ndjson", ".parquet")
LABEL_MAPS = ("labels.txt", "labels.json")
CARVE_METHOD = (
    "stratified by label: each class gives its share rounded down, classes with the largest remainders one "
    "more until the total is round(size x fraction); a class keeps at least one example; within a class, "
    "examples go in the order of sha256(seed, label, text)"
)


@dataclass(frozen=True)
class Carving:
    """How missing splits are carved from train (the recipe's [data] validation_fraction, test_fraction and
    split_seed)."""

    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0

    @classmethod
    def of_build(cls, record: dict[str, Any] | None) -> Carving | None:
        """The carving a bundle's build used, from its manifest's data.carved record; None when it carved
        nothing or does not say."""
        if not isinstance(record, dict):
            return None
        fractions = {s: (record.get(s) or {}).get("fraction") for s in ("validation", "test")}
        try:
            return cls(
                float(fractions["validation"] or cls.validation_fraction),
                float(fractions["test"] or cls.test_fraction),
                int(record["seed"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass
class Dataset:
    """Every split's examples, where each split came from, what was carved and how labels were named."""

    examples: dict[str, list[Example]]
    origin: dict[str, str]  # split -> the file it was read from, or "carved from <file>"
    carved: dict[str, Any] | None  # None: every split was in the data
    label_names: dict[str, Any] | None  # None: the labels are names already

    def pairs(self, split: str) -> list[tuple[str, str]]:
        return [(e.text, e.label) for e in self.examples[split]]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def split_file(folder: Path, split: str) -> Path | None:
    """The file holding `split` in a folder of split files, None when there is none."""
    for stem in SPLIT_STEMS[split]:
        for ext in EXTENSIONS:
            if (folder / f"{stem}{ext}").is_file():
                return folder / f"{stem}{ext}"
    return None


def _is_clinc(source: Path) -> bool:
    return source.suffix.lower() == ".json" or (source.is_dir() and (source / CLINC_FILE).is_file())


def read_found(
    source: Path, text_column: str = "text", label_column: str = "label"
) -> tuple[dict[str, list[Example] | None], dict[str, str], dict[str, Any] | None]:
    """The splits `source` holds (None: missing, to be carved), the file of each, and how integer labels
    were named. A single data file is the training data."""
    columns = {"text_column": text_column, "label_column": label_column}
    files: dict[str, Path | None]
    if _is_clinc(source):
        path = source / CLINC_FILE if source.is_dir() else source
        found: dict[str, list[Example] | None] = {s: read_examples(path, s, **columns) for s in SPLITS}
        return found, dict.fromkeys(SPLITS, str(path)), None
    if source.is_dir():
        files = {split: split_file(source, split) for split in SPLITS}
        if files["train"] is None:
            wanted = ", ".join(f"train{ext}" for ext in EXTENSIONS)
            raise DataError(
                f"{source}: no training data: expected a file named {wanted} (validation and test files are "
                f"optional: missing ones are carved from train), or a CLINC {CLINC_FILE}."
            )
    elif source.is_file():
        files = {"train": source, "validation": None, "test": None}
    else:
        raise DataError(f"{source}: no such file or folder; check the path.")
    found = {s: read_examples(f, s, **columns) if f is not None else None for s, f in files.items()}
    named = _name_integer_labels(found, source if source.is_dir() else source.parent)
    return found, {s: str(f) for s, f in files.items() if f is not None}, named


def complete(found: dict[str, list[Example] | None], origin: dict[str, str], carving: Carving) -> Dataset:
    """`found` with its missing validation and test splits carved from train (validation first, then test
    from what is left), and a record of what was carved."""
    train = found["train"]
    assert train is not None, "a dataset always has training data"
    examples = {"train": train}
    origin = dict(origin)
    carved: dict[str, Any] = {}
    size_before = len(train)
    for split, fraction in (("validation", carving.validation_fraction), ("test", carving.test_fraction)):
        given = found[split]
        if given is not None:
            examples[split] = given
            continue
        examples["train"], examples[split] = carve(examples["train"], fraction, carving.seed)
        origin[split] = f"carved from {origin['train']}"
        carved[split] = {"fraction": fraction, "size": len(examples[split])}
    if not carved:
        return Dataset(examples, origin, None, None)
    record = {
        "from": origin["train"],
        "from_size": size_before,
        "seed": carving.seed,
        **carved,
        "train_size": len(examples["train"]),
        "method": CARVE_METHOD,
    }
    if Path(origin["train"]).is_file():
        record["from_sha256"] = sha256_file(Path(origin["train"]))
    return Dataset(examples, origin, record, None)


def read_dataset(
    source: str | Path, text_column: str = "text", label_column: str = "label", carving: Carving = Carving()
) -> Dataset:
    """All three splits of a local `source`, the missing ones carved (see the module docstring)."""
    found, origin, named = read_found(Path(source), text_column, label_column)
    dataset = complete(found, origin, carving)
    dataset.label_names = named
    return dataset


def carve(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(kept, carved): a stratified, seeded share `fraction` of `examples`, both in their original order."""
    by_class: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        by_class.setdefault(example.label, []).append(i)
    quotas = _quotas({label: len(rows) for label, rows in by_class.items()}, fraction)
    chosen: set[int] = set()
    for label, rows in by_class.items():
        ranked = sorted(rows, key=lambda i: (_rank(seed, examples[i]), i))
        chosen.update(ranked[: quotas[label]])
    kept = [e for i, e in enumerate(examples) if i not in chosen]
    return kept, [e for i, e in enumerate(examples) if i in chosen]


def _rank(seed: int, example: Example) -> str:
    key = json.dumps([seed, example.label, example.text], ensure_ascii=True)
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def _quotas(counts: dict[str, int], fraction: float) -> dict[str, int]:
    """How many examples each class gives (CARVE_METHOD)."""
    total = max(1, round(sum(counts.values()) * fraction))
    exact = {label: n * fraction for label, n in counts.items()}
    quotas = {label: min(int(exact[label]), n - 1) for label, n in counts.items()}
    for label in sorted(counts, key=lambda c: (quotas[c] - exact[c], c)):  # largest remainder first
        if sum(quotas.values()) >= total:
            break
        if quotas[label] < counts[label] - 1:
            quotas[label] += 1
    return quotas


# ---------------------------------------------------------------- integer labels


def _label_map(folder: Path) -> tuple[Path, list[str]] | None:
    """The label names of a labels.txt or labels.json in `folder` (index = label id), if there is one."""
    for name in LABEL_MAPS:
        path = folder / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: cannot be read as UTF-8 text ({err}); re-save it as UTF-8.") from None
        names = _parse_label_map(path, text)
        if not names or not all(names) or len(set(names)) != len(names):
            raise DataError(
                f"{path}: label names must be non-empty and distinct (one per label id, from 0); "
                "fix the file."
            )
        return path, names
    return None


def _parse_label_map(path: Path, text: str) -> list[str]:
    if path.suffix == ".txt":
        return [line.strip() for line in text.rstrip("\n").split("\n")]
    try:
        value = json.loads(text)
    except ValueError as err:
        raise DataError(f"{path}: is not valid JSON ({err}); fix the file.") from None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, dict) and all(isinstance(v, str) and k.isdecimal() for k, v in value.items()):
        ids = sorted(int(k) for k in value)
        if ids == list(range(len(ids))):
            return [value[str(i)] for i in ids]
    raise DataError(
        f'{path}: expected a JSON list of label names, or an object {{"0": name, "1": name, ...}} with every '
        "id from 0; fix the file."
    )


def _name_integer_labels(found: dict[str, list[Example] | None], folder: Path) -> dict[str, Any] | None:
    """Replace integer labels by the names a label map beside the data gives them (in place); None when
    the labels are not all integers."""
    splits = {s: v for s, v in found.items() if v is not None}
    if not all(e.label.isdecimal() for examples in splits.values() for e in examples):
        return None
    mapped = _label_map(folder)
    if mapped is None:
        return {"from": "the numbers themselves", "note": f"no {' or '.join(LABEL_MAPS)} in {folder}"}
    path, names = mapped
    for split, examples in splits.items():
        for i, e in enumerate(examples):
            if int(e.label) >= len(names):
                raise DataError(
                    f"{e.where}: label {e.label} has no name in {path}, which names {len(names)} labels "
                    f"(0..{len(names) - 1}); add its name there or fix the label."
                )
            examples[i] = e._replace(label=names[int(e.label)])
        found[split] = examples
    return {"from": str(path), "names": len(names)}


# ---------------------------------------------------------------- what a bench measures


def read_split(
    source: str | Path,
    split: str = "test",
    text_column: str = "text",
    label_column: str = "label",
    built: dict[str, Any] | None = None,
) -> tuple[list[tuple[str, str]], str | None]:
    """The `split` of `source` as a build on it read it, and a note when it was carved (None: read as is).

    `built` is the manifest's "data" record of the bundle being measured: its carving (fractions, seed) is
    the one used when the split must be carved. A single data file is the split to measure, read whole,
    unless `built` says the build carved its splits from this very file (same sha256): then it is carved
    again, the same way.
    """
    path = Path(source)
    split = "validation" if split in SPLIT_STEMS["validation"] else split
    if split not in SPLITS:
        raise DataError(f"{path}: no split {split!r}; use one of {', '.join(SPLITS)}.")
    recorded: dict[str, Any] = (built or {}).get("carved") or {}
    carving = Carving.of_build(recorded)
    found, origin, _ = read_found(path, text_column, label_column)
    single = path.is_file() and not _is_clinc(path)
    if single and (carving is None or recorded.get("from_sha256") != sha256_file(path)):
        return [(e.text, e.label) for e in found["train"] or []], None
    dataset = complete(found, origin, carving or Carving())
    if dataset.carved is None or (split != "train" and split not in dataset.carved):
        return dataset.pairs(split), None
    how = carving or Carving()
    what = "what is left of" if split == "train" else "the texts carved from"
    note = (
        f"{path}: measuring {split} as {what} {origin['train']} ({len(dataset.examples[split])} texts; seed "
        f"{how.seed}, validation {how.validation_fraction}, test {how.test_fraction})"
    )
    if carving is None:
        note += ": the bundle records no carving, so these are the defaults and may not be its build's split"
    elif recorded.get("from_sha256") != dataset.carved.get("from_sha256"):
        note += f": {origin['train']} differs from the file the bundle was built from, so the split does too"
    else:
        note += ", as the bundle's build carved it"
    return dataset.pairs(split), note


def rename_label(pairs: list[tuple[str, str]], old: str, new: str) -> list[tuple[str, str]]:
    """`pairs` with the label `old` called `new` (the data's out-of-scope label -> the bundle's)."""
    return [(text, new if label == old else label) for text, label in pairs]
