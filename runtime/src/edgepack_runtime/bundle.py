"""Read a bundle folder and verify it completely before anything in it is used.

Each file is opened once (without following symlinks), checked to be a regular file with a single link,
read whole, hashed, and those same bytes are what the caller gets: what was verified is what gets loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from edgepack_runtime.errors import BundleError
from edgepack_runtime.manifest import (
    BUNDLE_FILES,
    DIGEST_KEY,
    MANIFEST,
    SCHEMA,
    FileRecord,
    Spec,
    digest_serialisation,
    manifest_digest,
    parse_manifest,
)
from edgepack_runtime.protoscan import ModelScan, ProtoError, scan_model

__all__ = [
    "BUNDLE_FILES",
    "DIGEST_KEY",
    "MANIFEST",
    "MANIFEST_MAX_BYTES",
    "SCHEMA",
    "BundleError",
    "VerifiedBundle",
    "digest_serialisation",
    "file_record",
    "manifest_digest",
    "read_bundle",
    "verify_bundle",
]

MANIFEST_MAX_BYTES = 4 * 1024 * 1024  # a manifest is a few KB; refuse to read an absurd one


def file_record(data: bytes) -> dict[str, Any]:
    """The manifest's record of one file: {"sha256": hex digest, "size": bytes}."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


@dataclass(frozen=True)
class VerifiedBundle:
    path: Path
    manifest: dict[str, Any]
    spec: Spec
    model_bytes: bytes
    tokenizer: Tokenizer
    labels: list[str]
    scan: ModelScan


def _read_member(folder: Path, name: str, size: int | None) -> bytes:
    """Read one bundle file: a regular file, not a symlink, with one link, of the expected size."""
    path = folder / name
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise BundleError(name, "missing from the bundle") from None
    except OSError as err:
        raise BundleError(name, f"cannot be examined ({err.strerror})") from None
    if stat.S_ISLNK(mode):
        raise BundleError(name, "is a symbolic link; bundle files must be regular files (copy the target in)")
    if stat.S_ISDIR(mode):
        raise BundleError(name, "is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise BundleError(name, "is not a regular file")
    # O_NOFOLLOW and O_NONBLOCK: a path swapped for a symlink or a FIFO since lstat fails or returns at once.
    flags = os.O_RDONLY
    for extra in ("O_NOFOLLOW", "O_NONBLOCK", "O_BINARY"):  # whichever this platform has
        flags |= getattr(os, extra, 0)
    try:
        with os.fdopen(os.open(path, flags), "rb") as handle:
            st = os.fstat(handle.fileno())  # the file actually opened, whatever happened to the path since
            _check_opened(name, st, size)
            data = handle.read(st.st_size + 1)  # one byte more reveals a file that grew after fstat
    except OSError as err:
        raise BundleError(name, f"cannot be read ({err.strerror or err})") from None
    if len(data) != st.st_size:
        raise BundleError(name, "changed while it was being read")
    return data


def _check_opened(name: str, st: os.stat_result, size: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(name, "is not a regular file")
    if st.st_nlink != 1:
        raise BundleError(
            name,
            f"has {st.st_nlink} hard links; a bundle file must not share its bytes with a file outside "
            "the bundle (replace it with a copy)",
        )
    if size is not None and st.st_size != size:
        raise BundleError(
            name, f"is {st.st_size} bytes but the manifest says {size} (truncated or modified: rebuild it)"
        )
    if size is None and st.st_size > MANIFEST_MAX_BYTES:
        raise BundleError(name, f"is {st.st_size} bytes, more than a manifest may be ({MANIFEST_MAX_BYTES})")


def _check_entries(folder: Path) -> None:
    """The folder holds exactly the bundle files: nothing missing, nothing extra, no subfolders."""
    if not folder.is_dir():
        raise BundleError(None, f"bundle folder {folder} does not exist or is not a folder")
    try:
        entries = set(os.listdir(folder))
    except OSError as err:
        raise BundleError(None, f"bundle folder {folder} cannot be listed ({err.strerror})") from None
    expected = {*BUNDLE_FILES, MANIFEST}
    extra = sorted(entries - expected)
    missing = [n for n in (MANIFEST, *BUNDLE_FILES) if n not in entries]
    if extra:
        kind = "folder" if (folder / extra[0]).is_dir() and not (folder / extra[0]).is_symlink() else "entry"
        also = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        hint = f"; missing {', '.join(missing)} (renamed?)" if missing else ""
        raise BundleError(
            extra[0],
            f"unexpected {kind} in bundle {folder}{also}{hint}: a bundle holds exactly "
            f"{', '.join(sorted(expected))}",
        )
    if missing:
        raise BundleError(missing[0], f"missing from bundle {folder}")


def _verified_file(folder: Path, name: str, record: FileRecord) -> bytes:
    data = _read_member(folder, name, record.size)
    digest = hashlib.sha256(data).hexdigest()
    if digest != record.sha256:
        raise BundleError(
            name,
            f"sha256 mismatch: manifest says {record.sha256[:16]}..., file is {digest[:16]}... "
            "(the file was modified or corrupted: rebuild or re-copy the bundle)",
        )
    return data


def _parse_labels(data: bytes, spec: Spec) -> list[str]:
    try:
        labels = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise BundleError("labels.json", f"not valid UTF-8 JSON ({err})") from None
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise BundleError("labels.json", "must be a JSON list of non-empty label names")
    if len(labels) != spec.num_labels:
        raise BundleError(
            "labels.json", f"has {len(labels)} labels but model.num_labels is {spec.num_labels}"
        )
    if len(set(labels)) != len(labels):
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        raise BundleError("labels.json", f"repeats label(s) {dupes[:5]}")
    if spec.oos_label is not None and spec.oos_label not in labels:
        raise BundleError(MANIFEST, f"oos.label '{spec.oos_label}' is not one of the labels in labels.json")
    return labels


def _parse_tokenizer(data: bytes, spec: Spec) -> Tokenizer:
    name = "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # Rust errors, and pyo3's PanicException (a BaseException) on a panic
        raise BundleError(name, f"not a valid tokenizers file ({str(err)[:200]})") from None
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab > spec.vocab_size:
        raise BundleError(
            name,
            f"vocabulary has {vocab} tokens but the model's embedding table (model.vocab_size) has "
            f"{spec.vocab_size} rows: ids past {spec.vocab_size - 1} would index outside it",
        )
    truncation = tokenizer.truncation
    if not truncation or truncation.get("max_length") != spec.max_length:
        found = truncation.get("max_length") if truncation else "no truncation"
        raise BundleError(
            name,
            f"must truncate at model.max_length ({spec.max_length}), found {found}: "
            f"save it after tokenizer.enable_truncation(max_length={spec.max_length})",
        )
    if tokenizer.padding is not None:
        raise BundleError(
            name,
            "has padding enabled; the runtime pads each batch itself: save it after tokenizer.no_padding()",
        )
    return tokenizer


def _scan_graph(data: bytes) -> ModelScan:
    name = "model.onnx"
    if data[4:8] == b"ORTM":
        raise BundleError(name, "is in ONNX Runtime's ORT format; a bundle carries a standard ONNX graph")
    try:
        scan = scan_model(data)
    except ProtoError as err:
        raise BundleError(name, f"is not a valid ONNX model ({err})") from None
    if not scan.has_graph:
        raise BundleError(name, "is not a valid ONNX model (it has no graph)")
    if scan.external:
        ref = scan.external[0]
        more = f" ({len(scan.external) - 1} more tensors too)" if len(scan.external) > 1 else ""
        raise BundleError(
            name,
            f"tensor '{ref.tensor}' in {ref.where} keeps its data in an external file "
            f"(location {ref.location!r}){more}; external data is not allowed in a bundle: "
            "export the graph with all tensors inside model.onnx",
        )
    return scan


def read_bundle(path: str | os.PathLike[str]) -> VerifiedBundle:
    """Verify every file of the bundle at `path` and return the verified contents. Raises BundleError."""
    folder = Path(path)
    _check_entries(folder)
    manifest, spec = parse_manifest(_read_member(folder, MANIFEST, None))
    data = {name: _verified_file(folder, name, spec.files[name]) for name in BUNDLE_FILES}
    labels = _parse_labels(data["labels.json"], spec)
    tokenizer = _parse_tokenizer(data["tokenizer.json"], spec)
    scan = _scan_graph(data["model.onnx"])
    return VerifiedBundle(folder, manifest, spec, data["model.onnx"], tokenizer, labels, scan)


def verify_bundle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a bundle without running it (files, hashes, manifest, labels, tokenizer, graph); return the
    manifest. `Classifier.load` does this and more (it also runs the graph once)."""
    return read_bundle(path).manifest
