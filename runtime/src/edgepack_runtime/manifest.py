"""The manifest of a bundle: parse `manifest.json` and check every field the runtime relies on."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from edgepack_runtime.errors import BundleError

SCHEMA = "edgepack.bundle/1"
SCHEMA_MAJOR = 1
MANIFEST = "manifest.json"
BUNDLE_FILES = ("model.onnx", "tokenizer.json", "labels.json")
# The graph inputs the runtime knows how to feed; input_ids and attention_mask are required.
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
INPUT_TYPES = ("int64", "int32")
OUTPUT_NAME = "logits"
# Optional self-check of the manifest (the `files` records cannot cover the manifest itself): the sha256 of
# the manifest without this key, serialized canonically (see manifest_digest). Verified when present.
DIGEST_KEY = "manifest_sha256"

_SCHEMA_RE = re.compile(r"edgepack\.bundle/(\d+)(?:\.\d+)?")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    size: int


@dataclass(frozen=True)
class TensorSpec:
    name: str
    type: str
    shape: tuple[str | int, ...]


@dataclass(frozen=True)
class Spec:
    """The checked, typed part of a manifest that the runtime uses."""

    name: str
    files: dict[str, FileRecord]
    inputs: tuple[TensorSpec, ...]
    output: TensorSpec
    num_labels: int
    max_length: int
    vocab_size: int
    max_position_embeddings: int
    target_name: str
    cpu_features: tuple[str, ...]
    oos_label: str | None
    oos_threshold: float | None


def _fail(problem: str) -> BundleError:
    return BundleError(MANIFEST, problem)


def _get(obj: dict[str, Any], path: str | tuple[str, ...], kind: type | tuple[type, ...]) -> Any:
    """obj[a][b]... for path "a.b" (or ("a", "b") when keys hold dots), checked to be present and of the
    given type (bool is never taken for an int)."""
    keys = path.split(".") if isinstance(path, str) else path
    path = ".".join(keys)
    value: Any = obj
    for depth, key in enumerate(keys):
        if not isinstance(value, dict):
            raise _fail(f"field '{'.'.join(keys[:depth])}' must be an object, got {type(value).__name__}")
        if key not in value:
            raise _fail(f"missing required field '{'.'.join(keys[: depth + 1])}'")
        value = value[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise _fail(f"field '{path}' must be {names}, got {type(value).__name__} {value!r:.60}")
    return value


def _positive(obj: dict[str, Any], path: str | tuple[str, ...], minimum: int = 1) -> int:
    value: int = _get(obj, path, int)
    if value < minimum:
        shown = path if isinstance(path, str) else ".".join(path)
        raise _fail(f"field '{shown}' must be at least {minimum}, got {value}")
    return value


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without DIGEST_KEY, as sorted-key compact UTF-8 JSON."""
    body = {key: value for key, value in manifest.items() if key != DIGEST_KEY}
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _check_digest(manifest: dict[str, Any]) -> None:
    if DIGEST_KEY in manifest and manifest[DIGEST_KEY] != manifest_digest(manifest):
        raise _fail(f"'{DIGEST_KEY}' does not match the manifest's content (modified after it was written?)")


def check_schema(manifest: dict[str, Any]) -> None:
    schema = _get(manifest, "schema", str)
    match = _SCHEMA_RE.fullmatch(schema)
    if not match:
        raise _fail(f"schema '{schema:.80}' is not an edgepack bundle schema (expected '{SCHEMA}')")
    if int(match.group(1)) != SCHEMA_MAJOR:
        raise _fail(
            f"unknown major schema version {match.group(1)} ('{schema}'): this runtime reads '{SCHEMA}'; "
            "install the edgepack-runtime that matches the edgepack that built the bundle, or rebuild it"
        )


def is_unsafe_name(name: str) -> bool:
    return name in ("", ".") or ".." in name or any(c in name for c in "/\\\0")


def _files(manifest: dict[str, Any]) -> dict[str, FileRecord]:
    files = _get(manifest, "files", dict)
    for name in files:
        if is_unsafe_name(name):
            raise _fail(f"file name {name!r} in 'files' is not allowed (no path separators or '..')")
    missing = [n for n in BUNDLE_FILES if n not in files]
    extra = sorted(n for n in files if n not in BUNDLE_FILES)
    if missing or extra:
        raise _fail(
            f"'files' must list exactly {', '.join(BUNDLE_FILES)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unexpected {', '.join(extra)}" if extra else "")
        )
    records = {}
    for name in BUNDLE_FILES:
        sha = _get(manifest, ("files", name, "sha256"), str)
        if not _SHA256_RE.fullmatch(sha):
            raise _fail(f"field 'files.{name}.sha256' is not 64 lowercase hex digits: {sha!r:.80}")
        records[name] = FileRecord(sha, _positive(manifest, ("files", name, "size"), 0))
    return records


def _tensor(entry: Any, path: str) -> TensorSpec:
    if not isinstance(entry, dict):
        raise _fail(f"'{path}' entries must be objects with name, type and shape")
    try:
        shape = _get(entry, "shape", list) if "shape" in entry else []
        spec = TensorSpec(_get(entry, "name", str), _get(entry, "type", str), tuple(shape))
    except BundleError as err:
        raise _fail(f"in '{path}': {err.problem}") from None
    if not all(isinstance(d, str | int) and not isinstance(d, bool) for d in shape):
        raise _fail(f"'{path}' shape must hold dimension names or sizes, got {shape!r:.80}")
    return spec


def _inputs(manifest: dict[str, Any]) -> tuple[TensorSpec, ...]:
    inputs = tuple(_tensor(e, "model.inputs") for e in _get(manifest, "model.inputs", list))
    names = [t.name for t in inputs]
    for t in inputs:
        if t.name not in TOKEN_INPUTS:
            raise _fail(f"model input '{t.name}' is not one the runtime can feed ({', '.join(TOKEN_INPUTS)})")
        if t.type not in INPUT_TYPES:
            raise _fail(
                f"model input '{t.name}' has type '{t.type}'; expected one of {', '.join(INPUT_TYPES)}"
            )
    if len(set(names)) != len(names) or not {"input_ids", "attention_mask"} <= set(names):
        raise _fail(f"model.inputs must name input_ids and attention_mask once each, got {names}")
    return inputs


def _output(manifest: dict[str, Any], num_labels: int) -> TensorSpec:
    outputs = [_tensor(e, "model.outputs") for e in _get(manifest, "model.outputs", list)]
    logits = next((t for t in outputs if t.name == OUTPUT_NAME), None)
    if logits is None:
        raise _fail(f"model.outputs has no '{OUTPUT_NAME}' output (found {[t.name for t in outputs]})")
    if logits.type != "float32":
        raise _fail(f"output '{OUTPUT_NAME}' has type '{logits.type}'; expected float32")
    if logits.shape and isinstance(logits.shape[-1], int) and logits.shape[-1] != num_labels:
        raise _fail(
            f"output '{OUTPUT_NAME}' has {logits.shape[-1]} classes but model.num_labels is {num_labels}"
        )
    return logits


def _oos(manifest: dict[str, Any]) -> tuple[str | None, float | None]:
    if manifest.get("oos") is None:
        return None, None
    label = _get(manifest, "oos.label", str)
    threshold = float(_get(manifest, "oos.threshold", (int, float)))
    if not label or not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0:
        raise _fail(f"'oos' needs a non-empty label and a threshold in [0, 1], got {manifest['oos']!r:.80}")
    return label, threshold


def parse_manifest(raw: bytes) -> tuple[dict[str, Any], Spec]:
    """Decode and check manifest.json; return the manifest as written and its typed view."""
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise _fail(f"not valid UTF-8 JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise _fail(f"must be a JSON object, got {type(manifest).__name__}")
    _check_digest(manifest)
    check_schema(manifest)
    name = _get(manifest, "name", str)
    num_labels = _positive(manifest, "model.num_labels")
    max_length = _positive(manifest, "model.max_length", 2)
    max_positions = _positive(manifest, "model.max_position_embeddings")
    if max_length > max_positions:
        raise _fail(
            f"model.max_length {max_length} exceeds model.max_position_embeddings {max_positions}: "
            "the position table is too small for the tokenizer's longest input"
        )
    features = _get(manifest, "target.cpu_features", list)
    if not all(isinstance(f, str) for f in features):
        raise _fail(f"target.cpu_features must be a list of strings, got {features!r:.80}")
    oos_label, oos_threshold = _oos(manifest)
    spec = Spec(
        name=name,
        files=_files(manifest),
        inputs=_inputs(manifest),
        output=_output(manifest, num_labels),
        num_labels=num_labels,
        max_length=max_length,
        vocab_size=_positive(manifest, "model.vocab_size"),
        max_position_embeddings=max_positions,
        target_name=_get(manifest, "target.name", str),
        cpu_features=tuple(features),
        oos_label=oos_label,
        oos_threshold=oos_threshold,
    )
    return manifest, spec
