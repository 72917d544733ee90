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
from edgepack_runtime.signing import (
    SIGNATURE,
    SIGNATURE_MAX_BYTES,
    PublicKeySource,
    Signature,
    load_public_key,
    parse_signature,
    verify_signature,
)

__all__ = [
    "BUNDLE_FILES",
    "DIGEST_KEY",
    "MANIFEST",
    "MANIFEST_MAX_BYTES",
    "SCHEMA",
    "SIGNATURE",
    "BundleError",
    "VerifiedBundle",
    "digest_serialisation",
    "file_record",
    "manifest_digest",
    "read_bundle",
    "signed_digest",
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
    signature: Signature | None = None  # manifest.sig, well-formed (checked against a key only if given)
    signed_by: str | None = None  # the key id whose signature was verified (None: no public key given)


def _read_member(folder: Path, name: str, size: int | None, limit: int = MANIFEST_MAX_BYTES) -> bytes:
    """Read one bundle file: a regular file, not a symlink, with one link, of the expected size (None: an
    unrecorded file, manifest.json or manifest.sig, of at most `limit` bytes)."""
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
            _check_opened(name, st, size, limit)
            data = handle.read(st.st_size + 1)  # one byte more reveals a file that grew after fstat
    except OSError as err:
        raise BundleError(name, f"cannot be read ({err.strerror or err})") from None
    if len(data) != st.st_size:
        raise BundleError(name, "changed while it was being read")
    return data


def _check_opened(name: str, st: os.stat_result, size: int | None, limit: int) -> None:
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
    if size is None and st.st_size > limit:
        raise BundleError(name, f"is {st.st_size} bytes, more than a {name} may be ({limit})")


def _check_entries(folder: Path) -> bool:
    """The folder holds exactly the bundle files, and optionally manifest.sig: nothing missing, nothing
    extra, no subfolders. Returns whether manifest.sig is there."""
    if not folder.is_dir():
        raise BundleError(None, f"bundle folder {folder} does not exist or is not a folder")
    try:
        entries = set(os.listdir(folder))
    except OSError as err:
        raise BundleError(None, f"bundle folder {folder} cannot be listed ({err.strerror})") from None
    expected = {*BUNDLE_FILES, MANIFEST}
    extra = sorted(entries - expected - {SIGNATURE})
    missing = [n for n in (MANIFEST, *BUNDLE_FILES) if n not in entries]
    if extra:
        kind = "folder" if (folder / extra[0]).is_dir() and not (folder / extra[0]).is_symlink() else "entry"
        also = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        hint = f"; missing {', '.join(missing)} (renamed?)" if missing else ""
        raise BundleError(
            extra[0],
            f"unexpected {kind} in bundle {folder}{also}{hint}: a bundle holds exactly "
            f"{', '.join(sorted(expected))} (and optionally {SIGNATURE})",
        )
    if missing:
        raise BundleError(missing[0], f"missing from bundle {folder}")
    return SIGNATURE in entries


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


def signed_digest(manifest: dict[str, Any]) -> str:
    """The manifest digest a signature covers (manifest_digest of the parsed manifest). Raises BundleError
    for a manifest its canonical form cannot hold."""
    try:
        return manifest_digest(manifest)
    except (ValueError, RecursionError) as err:  # rfc8785.CanonicalizationError is a ValueError
        raise BundleError(
            MANIFEST, f"has no canonical form (RFC 8785), so no signature can cover it: {err}"
        ) from None


def read_bundle(
    path: str | os.PathLike[str],
    public_key: PublicKeySource | None = None,
    *,
    check_signature: bool = True,
) -> VerifiedBundle:
    """Verify every file of the bundle at `path` and return the verified contents. Raises BundleError.

    public_key (a PEM file's path, PEM bytes, or a loaded signing.PublicKey): also require manifest.sig to
    be that key's signature over this manifest (signing.SignatureError says why not). Without one, a
    manifest.sig present is checked for form only. check_signature=False leaves manifest.sig unread (for a
    signer about to replace it).
    """
    if public_key is not None and not check_signature:
        raise ValueError("a public_key needs check_signature=True")
    trusted = load_public_key(public_key) if public_key is not None else None
    folder = Path(path)
    signed = _check_entries(folder)
    manifest, spec = parse_manifest(_read_member(folder, MANIFEST, None))
    signature = None
    if signed and check_signature:
        signature = parse_signature(_read_member(folder, SIGNATURE, None, SIGNATURE_MAX_BYTES))
    if trusted is not None:  # before anything else the manifest describes is read
        verify_signature(signature, signed_digest(manifest), trusted)
    data = {name: _verified_file(folder, name, spec.files[name]) for name in BUNDLE_FILES}
    labels = _parse_labels(data["labels.json"], spec)
    tokenizer = _parse_tokenizer(data["tokenizer.json"], spec)
    scan = _scan_graph(data["model.onnx"])
    key_id = trusted.key_id if trusted is not None else None
    return VerifiedBundle(
        folder, manifest, spec, data["model.onnx"], tokenizer, labels, scan, signature, key_id
    )


def verify_bundle(path: str | os.PathLike[str], public_key: PublicKeySource | None = None) -> dict[str, Any]:
    """Check a bundle without running it (files, hashes, manifest, labels, tokenizer, graph, and with
    public_key its signature); return the manifest. `Classifier.load` does this and more (it also runs the
    graph once)."""
    return read_bundle(path, public_key).manifest
