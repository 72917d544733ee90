"""Detached Ed25519 signatures of bundles: the optional `manifest.sig` beside `manifest.json`.

What is signed: the manifest's canonical digest (`manifest_digest`, sha256 over its RFC 8785 bytes), and the
manifest holds the sha256 and size of every other file, so one signature covers the whole bundle. The
signature is Ed25519 over the ASCII bytes of `signed_message(digest)`:

    edgepack.signature/1 ed25519 manifest_sha256=<64 hex digits>

`manifest.sig` is a small JSON object (see `signature_document`): schema, algorithm, key_id (sha256 of the
raw 32-byte public key), the manifest digest it signs, and the signature in base64.

Without a public key a present `manifest.sig` is checked for form only (`parse_signature`). With one,
`verify_signature` refuses a bundle whose signature is missing, malformed, made by another key, or over a
manifest that changed, each with its own message (`SignatureError.reason`). The `cryptography` package is
imported only when a public key is loaded: the plain runtime does not need it (extra `sign`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack_runtime.errors import BundleError, SignatureError

SIGNATURE = "manifest.sig"
SIGNATURE_SCHEMA = "edgepack.signature/1"
ALGORITHM = "ed25519"
SIGNATURE_MAX_BYTES = 64 * 1024  # the file is about 300 bytes
SIGNATURE_FIELDS = ("schema", "algorithm", "key_id", "manifest_sha256", "signature")
INSTALL_HINT = "pip install 'edgepack-runtime[sign]'"
KEY_MAX_BYTES = 64 * 1024

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Signature:
    """The parsed, well-formed content of manifest.sig (nothing verified yet)."""

    key_id: str
    manifest_sha256: str
    signature: bytes  # 64 raw bytes


@dataclass(frozen=True)
class PublicKey:
    """A trusted Ed25519 public key, loaded (needs `cryptography`). `origin` names it in messages."""

    key: Any  # cryptography's Ed25519PublicKey
    key_id: str
    origin: str


PublicKeySource = str | os.PathLike[str] | bytes | PublicKey


def key_id(raw_public_key: bytes) -> str:
    """The id of a public key: sha256 (hex) of its raw 32 bytes."""
    return hashlib.sha256(raw_public_key).hexdigest()


def signed_message(manifest_sha256: str) -> bytes:
    """The exact bytes an edgepack signature signs, for a manifest digest (domain-separated)."""
    return f"{SIGNATURE_SCHEMA} {ALGORITHM} manifest_sha256={manifest_sha256}".encode("ascii")


def signature_document(key: str, manifest_sha256: str, signature: bytes) -> bytes:
    """manifest.sig's bytes: the JSON object the runtime parses (see parse_signature)."""
    document = {
        "schema": SIGNATURE_SCHEMA,
        "algorithm": ALGORITHM,
        "key_id": key,
        "manifest_sha256": manifest_sha256,
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _malformed(problem: str) -> SignatureError:
    return SignatureError(
        SIGNATURE,
        "malformed",
        f"signature malformed: {problem} (sign the bundle again: edgepack sign BUNDLE --key KEY)",
    )


def _hex_field(document: dict[str, Any], name: str) -> str:
    value = document[name]
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise _malformed(f"field '{name}' must be 64 lowercase hex digits, got {value!r:.80}")
    return value


def parse_signature(raw: bytes) -> Signature:
    """Check manifest.sig's form (JSON object, exactly the expected fields, right schema and algorithm,
    hex digests, a 64-byte base64 signature); raise SignatureError("malformed") otherwise."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise _malformed(f"not valid UTF-8 JSON ({err})") from None
    if not isinstance(document, dict):
        raise _malformed(f"must be a JSON object, got {type(document).__name__}")
    missing = [name for name in SIGNATURE_FIELDS if name not in document]
    extra = sorted(set(document) - set(SIGNATURE_FIELDS))
    if missing or extra:
        found = (f"missing {', '.join(missing)}" if missing else "") + (
            f"{'; ' if missing else ''}unexpected {', '.join(extra)}" if extra else ""
        )
        raise _malformed(f"expected exactly the fields {', '.join(SIGNATURE_FIELDS)}; {found}")
    if document["schema"] != SIGNATURE_SCHEMA:
        raise _malformed(f"schema is {document['schema']!r:.80}, expected {SIGNATURE_SCHEMA!r}")
    if document["algorithm"] != ALGORITHM:
        raise _malformed(
            f"algorithm is {document['algorithm']!r:.80}, this runtime checks only {ALGORITHM!r}"
        )
    encoded = document["signature"]
    try:
        signature = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != 64:
        raise _malformed(f"field 'signature' must be 64 bytes in base64, got {encoded!r:.100}")
    return Signature(_hex_field(document, "key_id"), _hex_field(document, "manifest_sha256"), signature)


def _cryptography() -> tuple[Any, Any, Any]:
    """(serialization, ed25519, InvalidSignature) from `cryptography`, imported only when a key is used."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise BundleError(
            None,
            "checking a bundle's signature needs the 'cryptography' package, which is not installed in "
            f"this environment: {INSTALL_HINT}",
        ) from None
    return serialization, ed25519, InvalidSignature


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(KEY_MAX_BYTES + 1)
    except OSError as err:
        raise BundleError(None, f"public key {path} cannot be read ({err.strerror or err})") from None


def load_public_key(source: PublicKeySource) -> PublicKey:
    """An Ed25519 public key from a PEM file (path) or PEM bytes; a PublicKey is returned as it is.

    Raises BundleError when cryptography is missing or the key is not an Ed25519 public key in PEM form.
    """
    if isinstance(source, PublicKey):
        return source
    serialization, ed25519, _ = _cryptography()
    if isinstance(source, bytes):
        origin, pem = "given as PEM bytes", source
    else:
        origin, pem = str(source), _read_key_file(Path(source))
    if len(pem) > KEY_MAX_BYTES:
        raise BundleError(None, f"public key {origin} is over {KEY_MAX_BYTES} bytes: not a PEM public key")
    if b"PRIVATE KEY" in pem:
        raise BundleError(
            None,
            f"public key {origin} is a private key: give the .pub file (keep the .key file off the machines "
            "that run bundles)",
        )
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as err:
        raise BundleError(
            None, f"public key {origin} is not a PEM public key ({err}); use the .pub file of edgepack keygen"
        ) from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BundleError(
            None,
            f"public key {origin} is a {type(key).__name__}, not an Ed25519 key (make one: edgepack keygen)",
        )
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PublicKey(key, key_id(raw), origin)


def verify_signature(signature: Signature | None, manifest_sha256: str, public_key: PublicKey) -> None:
    """Refuse (SignatureError) unless `signature` is by `public_key` over the manifest digest
    `manifest_sha256` (computed by the caller from the manifest it will use)."""
    if signature is None:
        raise SignatureError(
            SIGNATURE,
            "missing",
            f"signature missing: a public key was given ({public_key.origin}) but the bundle has no "
            f"{SIGNATURE}; sign it (edgepack sign BUNDLE --key KEY) or load it without a public key",
        )
    if signature.key_id != public_key.key_id:
        raise SignatureError(
            SIGNATURE,
            "other-key",
            f"signature made by another key: {SIGNATURE} names key {signature.key_id[:16]}..., the "
            f"public key given ({public_key.origin}) is {public_key.key_id[:16]}...; this bundle was not "
            "signed by the build you trust",
        )
    if signature.manifest_sha256 != manifest_sha256:
        raise SignatureError(
            SIGNATURE,
            "changed",
            "signature over a manifest that changed: it signs manifest digest "
            f"{signature.manifest_sha256[:16]}..., manifest.json is now {manifest_sha256[:16]}... "
            "(the bundle was modified after signing)",
        )
    _, _, invalid = _cryptography()
    try:
        public_key.key.verify(signature.signature, signed_message(manifest_sha256))
    except invalid:
        raise SignatureError(
            SIGNATURE,
            "changed",
            f"signature does not verify: it is not a signature by key {public_key.key_id[:16]}... over this "
            f"manifest (digest {manifest_sha256[:16]}...); the manifest or {SIGNATURE} changed after signing",
        ) from None
