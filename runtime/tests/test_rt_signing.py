"""Signed bundles (manifest.sig): real Ed25519 keys from `cryptography`, real tiny bundles, no mocks.

Each refusal has its own reason and message (missing, malformed, another key, a manifest that changed), the
attack that matters (model.onnx changed and the manifest's hashes and digest recomputed) is refused by a
signed load and accepted by an unsigned one, and the plain runtime never imports cryptography. Signatures are
made here with the runtime's own signed_message / signature_document (the build side's `edgepack sign` is
tested in tests/test_signing.py), so these tests run with the runtime alone (its 'sign' extra installed)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgepack_runtime import BundleError, Classifier, SignatureError
from edgepack_runtime.bundle import DIGEST_KEY, file_record, manifest_digest, verify_bundle
from edgepack_runtime.cli import main as cli
from edgepack_runtime.frozen import EXIT_BUNDLE, EXIT_OK
from edgepack_runtime.frozen import main as frozen_main
from edgepack_runtime.signing import (
    INSTALL_HINT,
    SIGNATURE,
    key_id,
    load_public_key,
    signature_document,
    signed_message,
)

from .bundle_kit import MakeBundle


class Keys:
    """An Ed25519 key pair as files: private.key (PKCS8 PEM) and public.pub (PEM)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.private = Ed25519PrivateKey.generate()
        public = self.private.public_key()
        self.pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.id = key_id(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        self.pub = folder / "public.pub"
        self.pub.write_bytes(self.pem)

    def sign(self, bundle: Path) -> Path:
        """Write manifest.sig as `edgepack sign` does: over the digest of the manifest as parsed."""
        manifest = json.loads((bundle / "manifest.json").read_bytes())
        digest = manifest_digest(manifest)
        signature = self.private.sign(signed_message(digest))
        (bundle / SIGNATURE).write_bytes(signature_document(self.id, digest, signature))
        return bundle


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("other-keys"))


@pytest.fixture
def signed(make_bundle: MakeBundle, keys: Keys) -> Path:
    """A tiny bundle with manifest_sha256, signed by `keys`."""
    return keys.sign(make_bundle(digest=True))


def refused(reason: str, message: str, load: Callable[[], Any]) -> SignatureError:
    with pytest.raises(SignatureError) as caught:
        load()
    assert caught.value.reason == reason and caught.value.file == SIGNATURE
    assert message in str(caught.value), str(caught.value)
    return caught.value


def edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    document = json.loads(path.read_bytes())
    edit(document)
    path.write_text(json.dumps(document), encoding="utf-8")


# -- accepted -------------------------------------------------------------------------------------------


def test_signed_bundle_loads_with_its_key_as_a_path_or_pem_bytes(signed: Path, keys: Keys) -> None:
    for key in (keys.pub, str(keys.pub), keys.pem, load_public_key(keys.pub)):
        clf = Classifier.load(signed, public_key=key)
        assert clf.signed_by == keys.id and clf.signature is not None
        assert clf.signature.key_id == keys.id
        assert (
            clf.predict("book a flight for tomorrow").label
            == Classifier.load(signed).predict("book a flight for tomorrow").label
        )
    assert verify_bundle(signed, keys.pub)["name"] == "tiny"


def test_without_a_key_a_signed_bundle_loads_as_before(signed: Path) -> None:
    clf = Classifier.load(signed)
    assert clf.signed_by is None and clf.signature is not None  # present, form checked, not verified


def test_signature_survives_a_reformatted_manifest(signed: Path, keys: Keys) -> None:
    """It signs the canonical digest (RFC 8785) of the manifest, not its bytes: re-indenting is no change."""
    manifest = json.loads((signed / "manifest.json").read_bytes())
    (signed / "manifest.json").write_text(json.dumps(manifest, indent=4, sort_keys=True), encoding="utf-8")
    assert Classifier.load(signed, public_key=keys.pub).signed_by == keys.id


# -- each refusal, by name ----------------------------------------------------------------------------------


def test_missing_signature(make_bundle: MakeBundle, keys: Keys) -> None:
    bundle = make_bundle(digest=True)
    Classifier.load(bundle)  # fine without a key
    refused("missing", "signature missing", lambda: Classifier.load(bundle, public_key=keys.pub))


def test_made_by_another_key(signed: Path, other_keys: Keys) -> None:
    error = refused(
        "other-key",
        "signature made by another key",
        lambda: Classifier.load(signed, public_key=other_keys.pub),
    )
    assert other_keys.id[:16] in str(error)


def test_over_a_manifest_that_changed(signed: Path, keys: Keys) -> None:
    def rename(manifest: dict[str, Any]) -> None:
        manifest["name"] = "renamed"
        manifest[DIGEST_KEY] = manifest_digest(manifest)

    edit_json(signed / "manifest.json", rename)
    assert Classifier.load(signed).name == "renamed"  # unsigned: a consistent manifest is accepted
    refused(
        "changed",
        "signature over a manifest that changed",
        lambda: Classifier.load(signed, public_key=keys.pub),
    )


MALFORMED: dict[str, Callable[[bytes], bytes]] = {
    "not JSON": lambda raw: raw[:-10],
    "a list": lambda raw: b"[]",
    "wrong schema": lambda raw: raw.replace(b"edgepack.signature/1", b"edgepack.signature/9"),
    "wrong algorithm": lambda raw: raw.replace(b'"ed25519"', b'"rsa"'),
    "missing field": lambda raw: _edited(raw, lambda d: d.pop("key_id")),
    "extra field": lambda raw: _edited(raw, lambda d: d.update(comment="hi")),
    "signature not base64": lambda raw: _edited(raw, lambda d: d.update(signature="not base64!")),
    "signature too short": lambda raw: _edited(
        raw, lambda d: d.update(signature=base64.b64encode(b"\0" * 63).decode())
    ),
    "key id not hex": lambda raw: _edited(raw, lambda d: d.update(key_id="Z" * 64)),
    "digest a number": lambda raw: _edited(raw, lambda d: d.update(manifest_sha256=12)),
}


def _edited(raw: bytes, edit: Callable[[dict[str, Any]], Any]) -> bytes:
    document = json.loads(raw)
    edit(document)
    return json.dumps(document).encode()


@pytest.mark.parametrize("damage", sorted(MALFORMED))
def test_malformed_signature_is_refused_with_or_without_a_key(signed: Path, keys: Keys, damage: str) -> None:
    path = signed / SIGNATURE
    path.write_bytes(MALFORMED[damage](path.read_bytes()))
    refused("malformed", "signature malformed", lambda: Classifier.load(signed))
    refused("malformed", "signature malformed", lambda: Classifier.load(signed, public_key=keys.pub))


# -- the attack that matters --------------------------------------------------------------------------------


def tamper_model(bundle: Path) -> None:
    """Change one byte of model.onnx (inside the head's weights: still a valid graph), then make the manifest
    consistent again: model.onnx's sha256 and size, and manifest_sha256. Only a signature can tell."""
    model = bytearray((bundle / "model.onnx").read_bytes())
    # The initializer head_w [8, 5] float32: name (field 8), then raw_data (field 9, 160 bytes).
    header = b"\x42\x06head_w\x4a\xa0\x01"
    start = model.index(header) + len(header)
    model[start + 4 * 7 + 3] ^= 0x80  # the sign bit of one weight: still a finite float
    (bundle / "model.onnx").write_bytes(bytes(model))

    def recompute(manifest: dict[str, Any]) -> None:
        manifest["files"]["model.onnx"] = file_record(bytes(model))
        manifest[DIGEST_KEY] = manifest_digest(manifest)

    edit_json(bundle / "manifest.json", recompute)


def test_tampered_model_with_recomputed_hashes(signed: Path, keys: Keys, other_keys: Keys) -> None:
    before = Classifier.load(signed).predict_proba(["play some music"])
    tamper_model(signed)
    unsigned = Classifier.load(signed)  # every hash and the manifest digest agree: accepted
    assert not (unsigned.predict_proba(["play some music"]) == before).all()  # and it is another model
    verify_bundle(signed)
    refused(
        "changed",
        "signature over a manifest that changed",
        lambda: Classifier.load(signed, public_key=keys.pub),
    )

    # The attacker also points manifest.sig at the new digest: the signature itself no longer verifies.
    edit_json(
        signed / SIGNATURE,
        lambda d: d.update(
            manifest_sha256=manifest_digest(json.loads((signed / "manifest.json").read_bytes()))
        ),
    )
    refused("changed", "signature does not verify", lambda: Classifier.load(signed, public_key=keys.pub))
    # ... or claims our key id for a signature by their own key: the same.
    other_keys.sign(signed)
    edit_json(signed / SIGNATURE, lambda d: d.update(key_id=keys.id))
    refused("changed", "signature does not verify", lambda: Classifier.load(signed, public_key=keys.pub))
    # ... or signs with their own key: another key.
    other_keys.sign(signed)
    refused(
        "other-key", "signature made by another key", lambda: Classifier.load(signed, public_key=keys.pub)
    )
    # ... or removes the signature: missing.
    (signed / SIGNATURE).unlink()
    refused("missing", "signature missing", lambda: Classifier.load(signed, public_key=keys.pub))
    Classifier.load(signed)  # while the unsigned load still accepts it


# -- the bundle contract: one optional file, read like the others --------------------------------------------


@pytest.mark.parametrize("name", ["manifest.sig2", "signature.json", "MANIFEST.SIG"])
def test_only_manifest_sig_may_be_added(signed: Path, name: str) -> None:
    (signed / name).write_bytes((signed / SIGNATURE).read_bytes())
    with pytest.raises(BundleError, match=f"{name}: unexpected entry .*and optionally manifest.sig"):
        Classifier.load(signed)


def test_signature_file_must_be_a_small_regular_file(signed: Path, keys: Keys, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.sig"
    os.replace(signed / SIGNATURE, outside)
    (signed / SIGNATURE).symlink_to(outside)
    with pytest.raises(BundleError, match=r"manifest\.sig: is a symbolic link"):
        Classifier.load(signed, public_key=keys.pub)
    (signed / SIGNATURE).unlink()
    (signed / SIGNATURE).write_bytes(b" " * (65 * 1024))
    with pytest.raises(BundleError, match=r"manifest\.sig: is 66560 bytes, more than a manifest\.sig may be"):
        Classifier.load(signed)


# -- public keys ------------------------------------------------------------------------------------------


def test_unusable_public_keys_are_named(signed: Path, keys: Keys, tmp_path: Path) -> None:
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    private_pem = keys.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cases = {
        b"not a key": "is not a PEM public key",
        ec_pem: "not an Ed25519 key",
        private_pem: "is a private key: give the .pub file",
    }
    for pem, message in cases.items():
        with pytest.raises(BundleError, match=message) as caught:
            Classifier.load(signed, public_key=pem)
        assert not isinstance(caught.value, SignatureError)  # the key is at fault, not the bundle
    with pytest.raises(BundleError, match=f"public key {tmp_path / 'nowhere.pub'} cannot be read"):
        Classifier.load(signed, public_key=tmp_path / "nowhere.pub")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_plain_runtime_never_imports_cryptography(signed: Path) -> None:
    code = (
        "import sys\nfrom edgepack_runtime import Classifier\n"
        f"clf = Classifier.load({str(signed)!r})\nassert clf.signature is not None\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_key_without_cryptography_names_the_extra(signed: Path, keys: Keys) -> None:
    code = (
        "import sys\nsys.modules['cryptography'] = None  # as if it were not installed\n"
        "from edgepack_runtime import BundleError, Classifier\n"
        f"try:\n    Classifier.load({str(signed)!r}, public_key={str(keys.pub)!r})\n"
        "except BundleError as err:\n    print(err)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "needs the 'cryptography' package" in result.stdout and INSTALL_HINT in result.stdout


# -- edgepack-run ----------------------------------------------------------------------------------------


def run(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def test_cli_verify_with_a_public_key(signed: Path, keys: Keys, other_keys: Keys) -> None:
    result = run("verify", str(signed), "--public-key", str(keys.pub))
    assert result.exit_code == 0, result.output
    assert f"verified: Ed25519, key id {keys.id[:16]}" in result.stdout
    plain = run("verify", str(signed))
    assert plain.exit_code == 0 and "not checked: give --public-key to check it" in plain.stdout
    refusal = run("verify", str(signed), "--public-key", str(other_keys.pub))
    assert refusal.exit_code == 1 and "manifest.sig: signature made by another key" in refusal.output


def test_cli_refuses_a_tampered_bundle_in_every_command(signed: Path, keys: Keys) -> None:
    tamper_model(signed)
    for command in (["verify"], ["classify", "--threads", "1"], ["bench", "--runs", "2"], ["serve"]):
        args = [command[0], str(signed), *command[1:], "--public-key", str(keys.pub)]
        if command[0] == "classify":
            args.append("play some music")
        result = run(*args)
        assert result.exit_code == 1, (command, result.output)
        assert "refused: manifest.sig: signature over a manifest that changed" in result.output
    assert run("classify", str(signed), "play some music").exit_code == 0  # unsigned: accepted


def test_cli_classify_with_a_public_key(signed: Path, keys: Keys) -> None:
    result = run("classify", str(signed), "--public-key", str(keys.pub), "play some music")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["label"] == Classifier.load(signed).predict("play some music").label


def test_cli_bad_public_key_is_a_usage_error(signed: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pub"
    junk.write_text("hello")
    result = run("verify", str(signed), "--public-key", str(junk))
    assert (
        result.exit_code == 2 and "--public-key" in result.output and "not a PEM public key" in result.output
    )
    missing = run("verify", str(signed), "--public-key", str(tmp_path / "nowhere.pub"))
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_serve_workers_check_the_signature_with_the_same_key(
    signed: Path, keys: Keys, other_keys: Keys
) -> None:
    from edgepack_runtime import serve

    settings = serve.Settings(str(signed), public_key=keys.pem.decode("ascii"))
    again = serve.Settings.from_json(settings.to_json())  # as a --workers process receives it
    assert again == settings and serve.load(again).signed_by == keys.id
    with pytest.raises(SignatureError, match="another key"):
        serve.load(serve.Settings(str(signed), public_key=other_keys.pem.decode("ascii")))


# -- the frozen program, run unfrozen -----------------------------------------------------------------------


def frozen(bundle: Path, key: bytes | None, *args: str) -> tuple[int, str]:
    out = io.BytesIO()
    code = frozen_main(list(args), bundle=bundle, public_key=key, stdin=io.BytesIO(b""), stdout=out)
    return code, out.getvalue().decode()


def test_frozen_program_checks_its_embedded_key(
    signed: Path, keys: Keys, other_keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = frozen(signed, keys.pem, "--version")
    assert code == EXIT_OK and f"signature checked at start: Ed25519 key {keys.id[:16]}" in out
    code, out = frozen(signed, keys.pem, "play some music")
    assert code == EXIT_OK and json.loads(out)["label"]
    code, out = frozen(signed, None, "--version")
    assert code == EXIT_OK and "signature not checked (frozen without --public-key)" in out
    capsys.readouterr()
    code, out = frozen(signed, other_keys.pem, "play some music")
    assert code == EXIT_BUNDLE and out == ""
    assert "refusing to run" in capsys.readouterr().err
    tamper_model(signed)
    code, out = frozen(signed, keys.pem, "play some music")
    err = capsys.readouterr().err
    assert code == EXIT_BUNDLE and out == "" and "signature over a manifest that changed" in err
