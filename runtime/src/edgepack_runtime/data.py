"""Read labeled text: a CLINC oos-eval JSON file (or a folder holding data_oos_plus.json), CSV or JSON Lines.

`load_labeled` returns [(text, label), ...] or raises DataError, a ValueError whose message names the file,
the problem and what to do about it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

CLINC_FILE = "data_oos_plus.json"
SPLIT_ALIASES = {"validation": "val"}


class DataError(ValueError):
    """A labeled-data file that cannot be read as asked."""


def _fail(path: Path, problem: str) -> DataError:
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


def _pair(path: Path, where: str, text: Any, label: Any) -> tuple[str, str]:
    if not isinstance(text, str) or not isinstance(label, str):
        raise _fail(
            path,
            f"{where}: text and label must be strings, got {type(text).__name__} and {type(label).__name__}",
        )
    if not label:
        raise _fail(path, f"{where}: empty label")
    return text, label


def _clinc(path: Path, split: str) -> list[tuple[str, str]]:
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
            pairs.append(_pair(path, f"split '{name}' entry {i}", *entry))
    return pairs


def _missing_columns(path: Path, found: list[str], wanted: tuple[str, str]) -> DataError:
    missing = [c for c in wanted if c not in found]
    return _fail(
        path,
        f"has no column {', '.join(repr(c) for c in missing)}; columns found: {', '.join(found) or 'none'} "
        "(pass text_column= / label_column=, or --text-column / --label-column)",
    )


def _csv(path: Path, text_column: str, label_column: str) -> list[tuple[str, str]]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    found = list(reader.fieldnames or [])
    if text_column not in found or label_column not in found:
        raise _missing_columns(path, found, (text_column, label_column))
    try:
        return [_pair(path, f"line {reader.line_num}", row[text_column], row[label_column]) for row in reader]
    except csv.Error as err:
        raise _fail(path, f"is not valid CSV (line {reader.line_num}: {err})") from None


def _jsonl(path: Path, text_column: str, label_column: str) -> list[tuple[str, str]]:
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
        pairs.append(_pair(path, f"line {number}", row[text_column], row[label_column]))
    return pairs


def load_labeled(
    path: str | os.PathLike[str], split: str = "test", text_column: str = "text", label_column: str = "label"
) -> list[tuple[str, str]]:
    """(text, label) pairs from a labeled file. For CLINC JSON, `split` picks the split and its out-of-scope
    twin (test + oos_test); `validation` means `val`. A CSV or JSONL file is one split: `split` is ignored."""
    source = Path(path)
    if source.is_dir():
        if not (source / CLINC_FILE).is_file():
            raise _fail(
                source, f"is a folder without {CLINC_FILE}; pass a .json (CLINC), .csv or .jsonl file"
            )
        source = source / CLINC_FILE
    suffix = source.suffix.lower()
    if suffix == ".json":
        pairs = _clinc(source, split)
    elif suffix == ".csv":
        pairs = _csv(source, text_column, label_column)
    elif suffix in (".jsonl", ".ndjson"):
        pairs = _jsonl(source, text_column, label_column)
    elif not source.exists():
        raise _fail(source, "no such file; check the path")
    else:
        raise _fail(source, f"unsupported file type '{suffix}'; use .json (CLINC oos-eval), .csv or .jsonl")
    if not pairs:
        raise _fail(source, f"holds no labeled examples{f' in split {split!r}' if suffix == '.json' else ''}")
    return pairs
