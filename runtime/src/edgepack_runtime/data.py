"""Read labeled text: a CLINC oos-eval JSON file (or a folder holding data_oos_plus.json), CSV, JSON Lines or
Parquet (with pyarrow, which this package does not install).

`load_labeled` returns [(text, label), ...] and `read_examples` the same with where each was read; both raise
DataError, a ValueError whose message names the file, the row and what to do about it. A label may be an
integer (it becomes its decimal string; `edgepack_runtime.splits` names them from a labels.txt beside the
data) or a Hugging Face ClassLabel of a Parquet file (it becomes its name). A text must not be empty.
Datasets of several files (a folder of splits, splits carved from train) are `edgepack_runtime.splits`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

CLINC_FILE = "data_oos_plus.json"
SPLIT_ALIASES = {"validation": "val"}


class DataError(ValueError):
    """A labeled-data file that cannot be read as asked."""


class Example(NamedTuple):
    """One labeled text, and where it was read (file and line, row or entry), for messages."""

    text: str
    label: str
    where: str


def _fail(path: Path | str, problem: str) -> DataError:
    return DataError(f"{path}: {problem}")


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise _fail(path, "no such file; check the path") from None
    except OSError as err:
        raise _fail(path, f"cannot be read ({err.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise _fail(
            path,
            f"is not UTF-8: byte 0x{raw[err.start]:02x} at byte offset {err.start} (line {line}); "
            "re-save the file as UTF-8",
        ) from None


def _label(label: Any) -> Any:
    """An integer label (also a float with no fraction, as pandas writes integers beside a gap) as its
    decimal string; "" for NaN (pandas' missing value); anything else unchanged (refused by to_example)."""
    if isinstance(label, float) and math.isnan(label):
        return ""
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label) if isinstance(label, int) and not isinstance(label, bool) else label


def to_example(path: Path | str, where: str, text: Any, label: Any) -> Example:
    """(text, label) read at `where` of `path` as an Example, or a DataError naming both and the fix."""
    label = _label(label)
    if not isinstance(text, str) or not isinstance(label, str):
        raise _fail(
            path,
            f"{where}: text and label must be strings, got {type(text).__name__} and "
            f"{type(label).__name__} (a label may also be an integer)",
        )
    if not label:
        raise _fail(path, f"{where}: empty label; fill in its label or remove the row")
    if not text.strip():
        raise _fail(path, f"{where}: empty text; fill in its text or remove the row")
    return Example(text, label, f"{path} {where}")


def _clinc(path: Path, split: str) -> list[Example]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise _fail(path, f"is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except RecursionError:
        raise _fail(path, "nests JSON too deeply to be a CLINC file") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise _fail(
            path, "is not in the CLINC oos-eval format (an object of splits, each a list of [text, intent])"
        )
    available = sorted(k for k in data if not k.startswith("oos_"))
    key = SPLIT_ALIASES.get(split, split)
    if key not in data:
        raise _fail(path, f"has no split '{split}'; available: {', '.join(available)}")
    pairs = []
    for name in (key, f"oos_{key}"):
        for i, entry in enumerate(data.get(name, [])):
            if not isinstance(entry, list) or len(entry) != 2:
                raise _fail(path, f"split '{name}' entry {i}: expected [text, intent], got {entry!r:.80}")
            pairs.append(to_example(path, f"split '{name}' entry {i}", *entry))
    return pairs


def _missing_columns(path: Path, found: list[str], wanted: tuple[str, str]) -> DataError:
    missing = [c for c in wanted if c not in found]
    return _fail(
        path,
        f"has no column {', '.join(repr(c) for c in missing)}; columns found: {', '.join(found) or 'none'} "
        "(pass --text-column / --label-column, or set [data] text_column / label_column)",
    )


def _csv(path: Path, text_column: str, label_column: str) -> list[Example]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    found = list(reader.fieldnames or [])
    if text_column not in found or label_column not in found:
        raise _missing_columns(path, found, (text_column, label_column))
    try:
        return [
            to_example(path, f"line {reader.line_num}", row[text_column], row[label_column]) for row in reader
        ]
    except csv.Error as err:
        raise _fail(path, f"is not valid CSV (line {reader.line_num}: {err})") from None


def _jsonl(path: Path, text_column: str, label_column: str) -> list[Example]:
    pairs = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise _fail(path, f"line {number} is not valid JSON ({err.msg})") from None
        except RecursionError:
            raise _fail(path, f"line {number} nests JSON too deeply") from None
        if not isinstance(row, dict):
            raise _fail(path, f"line {number} is not a JSON object")
        if text_column not in row or label_column not in row:
            raise _missing_columns(path, list(row), (text_column, label_column))
        pairs.append(to_example(path, f"line {number}", row[text_column], row[label_column]))
    return pairs


def _class_label_names(schema: Any, column: str) -> list[str] | None:
    """The names of a Hugging Face ClassLabel column, from the schema metadata `datasets` writes."""
    try:
        info = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
        feature = info["info"]["features"][column]
    except (ValueError, KeyError, TypeError):
        return None
    names = feature.get("names") if isinstance(feature, dict) else None
    return names if feature.get("_type") == "ClassLabel" and isinstance(names, list) else None


def _parquet(path: Path, text_column: str, label_column: str) -> list[Example]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise _fail(
            path,
            "is Parquet, which needs pyarrow (edgepack-runtime does not install it): pip install pyarrow, "
            "or convert the file to CSV or JSON Lines",
        ) from None
    try:
        schema = pq.read_schema(path)
        found = list(schema.names)
        if text_column not in found or label_column not in found:
            raise _missing_columns(path, found, (text_column, label_column))
        table = pq.read_table(path, columns=[text_column, label_column])
    except FileNotFoundError:
        raise _fail(path, "no such file; check the path") from None
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        if isinstance(err, DataError):
            raise
        raise _fail(path, f"is not a readable Parquet file ({str(err)[:200]})") from None
    names = _class_label_names(schema, label_column)
    texts, labels = table.column(text_column).to_pylist(), table.column(label_column).to_pylist()
    examples = []
    for row, (text, label) in enumerate(zip(texts, labels, strict=True), start=1):
        if names is not None and isinstance(label, int):
            if not 0 <= label < len(names):
                raise _fail(
                    path,
                    f"row {row}: label {label} is not one of the {len(names)} ClassLabel names of column "
                    f"{label_column!r}; fix the label or the dataset's features",
                )
            label = names[label]
        examples.append(to_example(path, f"row {row}", text, "" if label is None else label))
    return examples


def load_labeled(
    path: str | os.PathLike[str], split: str = "test", text_column: str = "text", label_column: str = "label"
) -> list[tuple[str, str]]:
    """(text, label) pairs from a labeled file. For CLINC JSON, `split` picks the split and its out-of-scope
    twin (test + oos_test); `validation` means `val`. A CSV, JSONL or Parquet file is one split: `split` is
    ignored."""
    return [(e.text, e.label) for e in read_examples(path, split, text_column, label_column)]


def read_examples(
    path: str | os.PathLike[str], split: str = "test", text_column: str = "text", label_column: str = "label"
) -> list[Example]:
    """What load_labeled reads, each example with where it was read."""
    source = Path(path)
    if source.is_dir():
        if not (source / CLINC_FILE).is_file():
            raise _fail(
                source,
                f"is a folder without {CLINC_FILE}; pass a .json (CLINC), .csv, .jsonl or .parquet file",
            )
        source = source / CLINC_FILE
    suffix = source.suffix.lower()
    if suffix == ".json":
        pairs = _clinc(source, split)
    elif suffix == ".csv":
        pairs = _csv(source, text_column, label_column)
    elif suffix in (".jsonl", ".ndjson"):
        pairs = _jsonl(source, text_column, label_column)
    elif suffix == ".parquet":
        pairs = _parquet(source, text_column, label_column)
    elif not source.exists():
        raise _fail(source, "no such file; check the path")
    else:
        raise _fail(
            source, f"unsupported file type '{suffix}'; use .json (CLINC oos-eval), .csv, .jsonl or .parquet"
        )
    if not pairs:
        raise _fail(source, f"holds no labeled examples{f' in split {split!r}' if suffix == '.json' else ''}")
    return pairs
