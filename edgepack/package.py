"""Package stage: write the bundle folder atomically (temporary folder beside the destination, then rename).

An interrupted or failed build leaves no partial bundle and never damages an existing one: the old bundle is
moved aside only once the new one is complete and verified, and is restored if the swap fails.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgepack_runtime.bundle import BUNDLE_FILES, DIGEST_KEY, MANIFEST, SCHEMA, file_record, manifest_digest

from edgepack.errors import EdgepackError

log = logging.getLogger(__name__)
JSON_SAFE_INT = 2**53 - 1  # beyond this an integer is not exact in a double, so not in RFC 8785 or JavaScript


def bundle_tokenizer_json(tokenizer: Any, max_length: int) -> str:
    """The model's tokenizer as tokenizer.json: truncation at max_length, no fixed padding."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.enable_truncation(max_length=max_length)
    return backend.to_str()


def graph_io(onnx_path: Path) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)

    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            out.append({"name": v.name, "type": dtype, "shape": shape})
        return out

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output), "opset": opset}


def write_files(folder: Path, onnx_path: Path, tokenizer_json: str, labels: list[str]) -> dict[str, Any]:
    """Copy the three payload files into folder; return their manifest `files` entries."""
    payload = {
        "model.onnx": onnx_path.read_bytes(),
        "tokenizer.json": tokenizer_json.encode("utf-8"),
        "labels.json": json.dumps(labels, ensure_ascii=False, indent=1).encode("utf-8"),
    }
    assert tuple(payload) == tuple(BUNDLE_FILES)
    for name, data in payload.items():
        (folder / name).write_bytes(data)
    return {name: file_record(data) for name, data in payload.items()}


def _interoperable(value: Any, path: str, changed: list[str]) -> Any:
    """value (parsed JSON) with what standard JSON and RFC 8785 cannot hold replaced, its path noted in
    `changed`: NaN and infinities become null, integers beyond +-(2**53 - 1) their decimal string."""
    if isinstance(value, dict):
        return {k: _interoperable(v, f"{path}.{k}" if path else k, changed) for k, v in value.items()}
    if isinstance(value, list):
        return [_interoperable(v, f"{path}[{i}]", changed) for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        changed.append(path)
        return None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > JSON_SAFE_INT:
        changed.append(path)
        return str(value)
    return value


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write manifest.json with its own digest (the files' hashes cannot cover the manifest itself); returns
    what was written, as a reader parses it.

    The schema is the runtime's SCHEMA, so the digest is sha256 over the RFC 8785 canonical bytes
    (edgepack_runtime.manifest.digest_serialisation): any language can recompute it.
    """
    body = {"schema": SCHEMA, **{k: v for k, v in manifest.items() if k not in ("schema", DIGEST_KEY)}}
    body = json.loads(json.dumps(body, default=str))  # the digest is over exactly what a reader parses
    changed: list[str] = []
    body = _interoperable(body, "", changed)
    if changed:
        log.warning("package: manifest values JSON cannot hold exactly, written as null or text: %s", changed)
    body[DIGEST_KEY] = manifest_digest(body)
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(body, indent=2, ensure_ascii=False, allow_nan=False), encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)
    return body


def check_destination(destination: Path, force: bool) -> None:
    """Refuse up front (before an hour of training) to replace a bundle without --force."""
    if destination.exists() and not force:
        raise EdgepackError(
            f"{destination} already exists. Pass --force to replace it (the old bundle is kept until the new "
            "one is complete), or choose another --name / --out."
        )
    if destination.exists() and not destination.is_dir():
        raise EdgepackError(f"{destination} exists and is not a folder; remove it or choose another --name.")


@contextmanager
def staged_bundle(destination: Path) -> Iterator[Path]:
    """Yield a temporary folder beside destination; on success swap it into place, on failure remove it."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.building-", dir=destination.parent))
    try:
        yield staging
        _swap_into_place(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(staging: Path, destination: Path) -> None:
    old = None
    if destination.exists():
        old = destination.with_name(f".{destination.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(destination, old)
    try:
        os.rename(staging, destination)
    except BaseException:
        if old is not None:
            os.rename(old, destination)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    log.info("package: wrote %s", destination)
