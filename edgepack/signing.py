"""Sign bundles: make an Ed25519 key pair, write a bundle's detached signature (`manifest.sig`).

    keygen(prefix, force=False) -> KeyPair        PREFIX.key (PKCS8 PEM, mode 0600) and PREFIX.pub (PEM)
    sign(bundle, key_path) -> Signed              verify the bundle, sign its manifest digest, write manifest.sig
    sign_folder(folder, private_key) -> Signed    the same with a loaded key (build --sign-key signs its staging)

What a signature covers and how the runtime checks it: see edgepack_runtime.signing. The private key stays on
the build machine; the machines that run bundles get the .pub file (`edgepack-run verify BUNDLE --public-key`,
`Classifier.load(path, public_key=...)`, `edgepack freeze --public-key`).
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgepack_runtime.signing import SIGNATURE, key_id, signature_document, signed_message

from edgepack.errors import EdgepackError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PRIVATE_SUFFIX, PUBLIC_SUFFIX = ".key", ".pub"
KEY_MAX_BYTES = 64 * 1024


class SigningError(EdgepackError):
    """Signing failed; the bundle's previous manifest.sig, if any, is untouched unless said otherwise."""


class KeyFileError(SigningError):
    """A key file is missing, unreadable, not the right kind of key, or would be overwritten."""


class BundleRefused(SigningError):
    """The bundle to sign is missing or fails the runtime's verification."""


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str  # sha256 of the raw public key, as manifest.sig names it


@dataclass(frozen=True)
class Signed:
    path: Path  # the manifest.sig written
    key_id: str
    manifest_sha256: str  # the manifest digest it signs


def key_paths(prefix: Path) -> tuple[Path, Path]:
    """(PREFIX.key, PREFIX.pub); a prefix that already ends in .key or .pub is refused (it is a prefix)."""
    if prefix.suffix in (PRIVATE_SUFFIX, PUBLIC_SUFFIX):
        stem = prefix.with_suffix("")
        raise KeyFileError(
            f"{prefix} ends in {prefix.suffix}, but OUT_PREFIX is a prefix: '{stem}' writes "
            f"{stem}{PRIVATE_SUFFIX} and {stem}{PUBLIC_SUFFIX}"
        )
    if not prefix.name or prefix.name in (".", ".."):
        raise KeyFileError(f"{prefix} is not a usable file name prefix (e.g. keys/release)")
    return prefix.with_name(prefix.name + PRIVATE_SUFFIX), prefix.with_name(prefix.name + PUBLIC_SUFFIX)


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a new file beside `path`, created with `mode` from the start (never wider, whatever
    happens), then rename it over `path`: a reader sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def keygen(prefix: Path, force: bool = False) -> KeyPair:
    """Make an Ed25519 key pair: PREFIX.key (unencrypted PKCS8 PEM, owner read/write only) and PREFIX.pub
    (SubjectPublicKeyInfo PEM). Refuses to replace either file unless force. Raises KeyFileError."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path, public_path = key_paths(Path(prefix))
    existing = [str(p) for p in (private_path, public_path) if p.exists() or p.is_symlink()]
    if existing and not force:
        raise KeyFileError(
            f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: pass --force to "
            "replace the key pair (bundles signed with the old key will no longer verify with the new "
            "public key), or choose another OUT_PREFIX"
        )
    if private_path.is_dir() or public_path.is_dir():
        raise KeyFileError(f"{private_path} or {public_path} is a folder; choose another OUT_PREFIX")
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = private.public_key()
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomically(private_path, private_pem, 0o600)
        write_atomically(public_path, public_pem, 0o644)
    except OSError as exc:
        raise KeyFileError(f"cannot write the key pair {private_path}, {public_path}: {exc}") from None
    return KeyPair(private_path, public_path, key_id(raw))


def _read_key(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(KEY_MAX_BYTES + 1)
    except FileNotFoundError:
        raise KeyFileError(
            f"private key {path} does not exist (make a key pair: edgepack keygen PREFIX)"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"private key {path} cannot be read: {exc.strerror or exc}") from None
    if len(data) > KEY_MAX_BYTES:
        raise KeyFileError(f"private key {path} is over {KEY_MAX_BYTES} bytes: not a PEM key")
    return data


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file `path` (as `edgepack keygen` writes it). Raises KeyFileError."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_key(Path(path))
    if b"PRIVATE KEY" not in data and b"PUBLIC KEY" in data:
        raise KeyFileError(f"{path} is a public key; sign with the private key (the .key file of the pair)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise KeyFileError(
            f"private key {path} is encrypted; edgepack sign takes an unencrypted PKCS8 PEM key "
            "(as edgepack keygen writes it, readable by its owner only)"
        ) from None
    except ValueError as exc:
        raise KeyFileError(
            f"{path} is not a PEM private key ({exc}); make one with edgepack keygen"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            f"private key {path} is a {type(key).__name__}, not an Ed25519 key; make one with edgepack keygen"
        )
    return key


def loose_permissions(path: Path) -> str | None:
    """A warning when the private key file can be read by others than its owner (POSIX), else None."""
    if os.name != "posix":
        return None
    mode = stat.S_IMODE(Path(path).stat().st_mode)
    if mode & 0o077:
        return f"private key {path} is readable by others (mode {mode:04o}): chmod 600 {path}"
    return None


def _verified_digest(bundle: Path) -> str:
    """Verify the bundle with the runtime (its old manifest.sig, about to be replaced, aside) and return the
    digest of the very manifest that was verified."""
    from edgepack_runtime import BundleError
    from edgepack_runtime.bundle import read_bundle, signed_digest

    try:
        verified = read_bundle(bundle, check_signature=False)
        return signed_digest(verified.manifest)
    except BundleError as exc:
        raise BundleRefused(
            f"{bundle} is not a valid bundle ({exc}); nothing was signed. Sign a bundle that "
            f"`edgepack-run verify {bundle}` accepts."
        ) from None


def sign_folder(bundle: Path, private_key: Ed25519PrivateKey) -> Signed:
    """Verify `bundle`, sign its manifest digest, write manifest.sig atomically (replacing an old one), and
    check the result as a user will (runtime load with the public key). Raises SigningError."""
    from cryptography.hazmat.primitives import serialization
    from edgepack_runtime import BundleError
    from edgepack_runtime.bundle import read_bundle

    bundle = Path(bundle)
    digest = _verified_digest(bundle)
    public = private_key.public_key()
    kid = key_id(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    document = signature_document(kid, digest, private_key.sign(signed_message(digest)))
    try:
        write_atomically(bundle / SIGNATURE, document, 0o644)
    except OSError as exc:
        raise SigningError(f"cannot write {bundle / SIGNATURE}: {exc}") from None
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        read_bundle(bundle, pem)
    except BundleError as exc:
        raise SigningError(
            f"{bundle} changed while it was being signed ({exc}); the {SIGNATURE} written does not match "
            "it: sign it again once nothing else writes to it"
        ) from None
    return Signed(bundle / SIGNATURE, kid, digest)


def sign(bundle: Path, key_path: Path) -> Signed:
    """Sign the bundle folder `bundle` with the private key in `key_path` (see sign_folder)."""
    bundle = Path(bundle)
    private_key = load_private_key(key_path)
    if not bundle.is_dir():
        raise BundleRefused(
            f"{bundle} is not a bundle folder (it does not exist or is a file); nothing was signed"
        )
    return sign_folder(bundle, private_key)
