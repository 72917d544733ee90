"""The manifest of a bundle: parse `manifest.json` and check every field the runtime relies on."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import rfc8785

from edgepack_runtime.errors import BundleError

# What a writer puts in `schema` now. Readers take any minor version of SCHEMA_MAJOR; the minor only changes
# how `manifest_sha256` is computed (see digest_serialisation).
SCHEMA = "edgepack.bundle/1.1"
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

_SCHEMA_RE = re.compile(r"edgepack\.bundle/(\d+)(?:\.(\d+))?")
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


DIRECTIONS = ("above", "below")  # which side of an out-of-scope threshold is out of scope


def rejects(scores: Any, threshold: float, direction: str) -> Any:
    """True where a score (a float or a numpy array) is on the out-of-scope side of `threshold`: above it for
    direction "above" (a distance), below it for "below" (a confidence)."""
    return scores > threshold if direction == "above" else scores < threshold


@dataclass(frozen=True)
class OosRule:
    """Out-of-scope rejection as the bundle ships it: a text whose score lies on the out-of-scope side of
    `threshold` is answered with `label`.

    `output` names the graph output that computes the score (one float per text, e.g. "oos_score"), so every
    runtime applies one threshold to one number; None (bundles before schema 1.1's scores) means the top
    softmax probability, computed by the runtime. `direction` says which side is out of scope: "below" (the
    score measures confidence) or "above" (it measures distance).
    """

    label: str
    threshold: float
    method: str
    output: str | None
    direction: str

    def describe(self) -> str:
        """One line for people: which score, which side of which threshold, and the label it gives."""
        score = f"{self.method} score" if self.output else "top probability"
        return f"{score} {self.direction} {self.threshold:.4g} -> '{self.label}'"

    def rejects(self, scores: Any) -> Any:
        """True where a score (a float or a numpy array) is on the out-of-scope side of the threshold."""
        return rejects(scores, self.threshold, self.direction)


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
    oos: OosRule | None

    @property
    def oos_label(self) -> str | None:
        return self.oos.label if self.oos else None

    @property
    def oos_threshold(self) -> float | None:
        return self.oos.threshold if self.oos else None


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


def schema_version(schema: str) -> tuple[int, int]:
    """(major, minor) of a bundle schema: "edgepack.bundle/1" -> (1, 0), "edgepack.bundle/1.1" -> (1, 1).

    Raises BundleError for anything else, and for a major version this runtime does not read.
    """
    match = _SCHEMA_RE.fullmatch(schema)
    if not match:
        raise _fail(f"schema '{schema:.80}' is not an edgepack bundle schema (expected '{SCHEMA}')")
    major, minor = int(match.group(1)), int(match.group(2) or 0)
    if major != SCHEMA_MAJOR:
        raise _fail(
            f"unknown major schema version {match.group(1)} ('{schema}'): this runtime reads major version "
            f"{SCHEMA_MAJOR} ('{SCHEMA}' and its other minor versions); install the edgepack-runtime that "
            "matches the edgepack that built the bundle, or rebuild it"
        )
    return major, minor


def _python_json_bytes(body: dict[str, Any]) -> bytes:
    """Schema minor 0: Python's json.dumps, sorted keys (by code point), compact, UTF-8. Python-only."""
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _jcs_bytes(body: dict[str, Any]) -> bytes:
    """RFC 8785 (JSON Canonicalization Scheme): what any language's JCS implementation gives."""
    return rfc8785.dumps(body)


def digest_serialisation(schema: str) -> Callable[[dict[str, Any]], bytes]:
    """The one place that decides which bytes `manifest_sha256` is the sha256 of, from the manifest's schema.

    - "edgepack.bundle/1" (or "/1.0"): bundles written before schema 1.1; Python's json.dumps with sort_keys,
      ensure_ascii=False and separators (",", ":"), as UTF-8 (checked as before, never written any more);
    - "edgepack.bundle/1.1" and every later minor of major 1: RFC 8785, the JSON Canonicalization Scheme.

    Raises BundleError for a schema that is not an edgepack one or has an unknown major version.
    """
    _, minor = schema_version(schema)
    return _python_json_bytes if minor == 0 else _jcs_bytes


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 (lowercase hex) of the manifest without DIGEST_KEY, serialised as its schema says.

    For schema 1.1 and later: sha256 over the RFC 8785 bytes. Raises BundleError for a missing or unknown
    schema, and rfc8785.CanonicalizationError (a ValueError) for a value RFC 8785 cannot represent: NaN or
    an infinity, an integer beyond +-(2**53 - 1), a string that is not valid Unicode.
    """
    serialise = digest_serialisation(_get(manifest, "schema", str))
    body = {key: value for key, value in manifest.items() if key != DIGEST_KEY}
    return hashlib.sha256(serialise(body)).hexdigest()


def _check_digest(manifest: dict[str, Any]) -> None:
    if DIGEST_KEY not in manifest:
        return
    try:
        digest = manifest_digest(manifest)
    except (ValueError, RecursionError) as err:  # rfc8785.CanonicalizationError is a ValueError
        raise _fail(
            f"'{DIGEST_KEY}' cannot be checked: the manifest holds a value its canonical form cannot hold "
            f"(RFC 8785 allows no NaN, infinity, integer beyond 2**53 - 1 or invalid Unicode): {err}"
        ) from None
    if manifest[DIGEST_KEY] != digest:
        raise _fail(f"'{DIGEST_KEY}' does not match the manifest's content (modified after it was written?)")


def check_schema(manifest: dict[str, Any]) -> None:
    schema_version(_get(manifest, "schema", str))


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


def _outputs(manifest: dict[str, Any], num_labels: int) -> tuple[TensorSpec, dict[str, TensorSpec]]:
    """The logits output, checked, and every output by name."""
    outputs = {
        t.name: t for t in (_tensor(e, "model.outputs") for e in _get(manifest, "model.outputs", list))
    }
    logits = outputs.get(OUTPUT_NAME)
    if logits is None:
        raise _fail(f"model.outputs has no '{OUTPUT_NAME}' output (found {list(outputs)})")
    if logits.type != "float32":
        raise _fail(f"output '{OUTPUT_NAME}' has type '{logits.type}'; expected float32")
    if logits.shape and isinstance(logits.shape[-1], int) and logits.shape[-1] != num_labels:
        raise _fail(
            f"output '{OUTPUT_NAME}' has {logits.shape[-1]} classes but model.num_labels is {num_labels}"
        )
    return logits, outputs


def _oos(manifest: dict[str, Any], outputs: dict[str, TensorSpec]) -> OosRule | None:
    """The out-of-scope rule, checked against the graph's outputs: a score output the rule does not name, or
    a rule naming an output the graph lacks, is refused, naming both."""
    rule = manifest.get("oos")
    named = rule.get("output") if isinstance(rule, dict) else None
    unused = sorted(set(outputs) - {OUTPUT_NAME, named})
    if unused:
        raise _fail(
            f"model.outputs lists {unused}, which 'oos' does not name (oos.output is {named!r}): "
            "the score would be computed and ignored"
        )
    if rule is None:
        return None
    label = _get(manifest, "oos.label", str)
    threshold = float(_get(manifest, "oos.threshold", (int, float)))
    output = rule.get("output")
    method = rule.get("method", "max_probability")
    direction = rule.get("direction", "below")
    if not label or not math.isfinite(threshold) or not isinstance(method, str):
        raise _fail(f"'oos' needs a non-empty label, a finite threshold and a method, got {rule!r:.120}")
    if direction not in DIRECTIONS:
        raise _fail(f"oos.direction must be 'above' or 'below', got {direction!r:.40}")
    if output is None:
        if method != "max_probability" or direction != "below" or not 0.0 <= threshold <= 1.0:
            raise _fail(
                "'oos' without an output must be the top-probability rule (method 'max_probability', "
                f"direction 'below', threshold in [0, 1]), got {rule!r:.120}"
            )
    else:
        score = outputs.get(output) if isinstance(output, str) else None
        if score is None:
            raise _fail(
                f"oos.output is {output!r:.40}, but model.outputs has no such output (found {list(outputs)})"
            )
        if score.type != "float32" or len(score.shape) != 1:
            raise _fail(
                f"output '{output}' (oos.output) must be float32 with one value per text, got {score}"
            )
    return OosRule(label, threshold, method, output, direction)


def parse_manifest(raw: bytes) -> tuple[dict[str, Any], Spec]:
    """Decode and check manifest.json; return the manifest as written and its typed view."""
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise _fail(f"not valid UTF-8 JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise _fail(f"must be a JSON object, got {type(manifest).__name__}")
    check_schema(manifest)  # first: the schema says how the digest is computed
    _check_digest(manifest)
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
    logits, outputs = _outputs(manifest, num_labels)
    spec = Spec(
        name=name,
        files=_files(manifest),
        inputs=_inputs(manifest),
        output=logits,
        num_labels=num_labels,
        max_length=max_length,
        vocab_size=_positive(manifest, "model.vocab_size"),
        max_position_embeddings=max_positions,
        target_name=_get(manifest, "target.name", str),
        cpu_features=tuple(features),
        oos=_oos(manifest, outputs),
    )
    return manifest, spec
