"""`edgepack keygen`, `edgepack sign`, `edgepack build --sign-key` and `edgepack freeze --public-key`, with real
Ed25519 keys and a bundle built by the pipeline from the tiny fixtures; checked through the runtime as users
meet it (Classifier.load, edgepack-run verify, the frozen executable)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from edgepack_runtime import Classifier, SignatureError
from edgepack_runtime.bundle import DIGEST_KEY, SIGNATURE, file_record, manifest_digest
from edgepack_runtime.cli import main as runtime_cli
from test_pipeline import _tiny_overrides

from edgepack import freeze as freeze_lib
from edgepack import signing
from edgepack.cli import main

BUNDLE_FILES = ["labels.json", "manifest.json", "model.onnx", "tokenizer.json"]


def edgepack(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> signing.KeyPair:
    return signing.keygen(tmp_path_factory.mktemp("keys") / "release")


@pytest.fixture(scope="module")
def signed_build(
    tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, tiny_model: Path, keys: signing.KeyPair
) -> Path:
    """A tiny bundle built by `edgepack build --sign-key`: signed inside the build's atomic packaging step."""
    tmp = tmp_path_factory.mktemp("signed-build")
    overrides = _tiny_overrides(tmp, tiny_data, tiny_model) | {"search.trials": 0}
    settings = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    result = edgepack("build", "--recipe", "clinc-4l", *settings, "--sign-key", str(keys.private))
    assert result.exit_code == 0, result.output
    assert f"signed with {keys.private}" in result.output
    return tmp / "bundles" / overrides["package.name"]


@pytest.fixture
def bundle(signed_build: Path, tmp_path: Path) -> Path:
    """A fresh copy of the signed bundle, to change at will."""
    return Path(shutil.copytree(signed_build, tmp_path / "bundle"))


@pytest.fixture
def unsigned(bundle: Path) -> Path:
    (bundle / SIGNATURE).unlink()
    return bundle


# -- keygen -------------------------------------------------------------------------------------------------


def test_keygen_writes_a_pair_the_runtime_reads(tmp_path: Path) -> None:
    with umask(0o022):
        result = edgepack("keygen", str(tmp_path / "keys" / "release"))
    assert result.exit_code == 0, result.output
    private, public = tmp_path / "keys" / "release.key", tmp_path / "keys" / "release.pub"
    assert sorted(p.name for p in private.parent.iterdir()) == ["release.key", "release.pub"]  # no temp files
    assert mode(private) == 0o600 and mode(public) == 0o644
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
    assert isinstance(signing.load_private_key(private), Ed25519PrivateKey)
    key = serialization.load_pem_public_key(public.read_bytes())
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert signing.key_id(raw) in result.output


def test_private_key_is_created_owner_only_not_chmod_afterwards(tmp_path: Path) -> None:
    """The mode is given to os.open when the file is created, so the umask still applies on top of it: under
    umask 0277 the key comes out 0400 (a chmod after writing would have made it 0600), and under umask 0 it is
    still 0600, never readable by others for a moment."""
    with umask(0o277):
        pair = signing.keygen(tmp_path / "strict")
    assert mode(pair.private) == 0o400 and mode(pair.public) == 0o400
    assert isinstance(signing.load_private_key(pair.private), Ed25519PrivateKey)
    with umask(0):
        pair = signing.keygen(tmp_path / "open")
    assert mode(pair.private) == 0o600 and mode(pair.public) == 0o644


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = signing.keygen(tmp_path / "release")
    before = first.private.read_bytes(), first.public.read_bytes()
    result = edgepack("keygen", str(tmp_path / "release"))
    assert result.exit_code == 2 and "already exist" in result.output and "--force" in result.output
    assert (first.private.read_bytes(), first.public.read_bytes()) == before
    first.private.chmod(0o644)  # a loose old file: --force must not inherit its mode
    with umask(0o022):
        result = edgepack("keygen", str(tmp_path / "release"), "--force")
    assert result.exit_code == 0, result.output
    assert first.private.read_bytes() != before[0] and mode(first.private) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release.key", "release.pub"]


def test_keygen_prefix_is_a_prefix(tmp_path: Path) -> None:
    result = edgepack("keygen", str(tmp_path / "release.key"))
    assert result.exit_code == 2 and "OUT_PREFIX is a prefix" in result.output
    assert list(tmp_path.iterdir()) == []


# -- sign ---------------------------------------------------------------------------------------------------


def test_build_with_sign_key_ships_a_signed_bundle(signed_build: Path, keys: signing.KeyPair) -> None:
    assert sorted(p.name for p in signed_build.iterdir()) == sorted([*BUNDLE_FILES, SIGNATURE])
    assert not [p for p in signed_build.parent.iterdir() if p.name.startswith(".")]  # staging gone
    clf = Classifier.load(signed_build, public_key=keys.public)
    assert clf.signed_by == keys.key_id


def test_sign_then_verify_from_the_command_lines(unsigned: Path, keys: signing.KeyPair) -> None:
    with pytest.raises(SignatureError, match="signature missing"):
        Classifier.load(unsigned, public_key=keys.public)
    result = edgepack("sign", str(unsigned), "--key", str(keys.private))
    assert result.exit_code == 0, result.output
    assert f"wrote {unsigned / SIGNATURE}" in result.output and keys.key_id[:16] in result.output
    assert sorted(p.name for p in unsigned.iterdir()) == sorted([*BUNDLE_FILES, SIGNATURE])  # no temp file
    verified = CliRunner().invoke(runtime_cli, ["verify", str(unsigned), "--public-key", str(keys.public)])
    assert verified.exit_code == 0, verified.output
    assert f"verified: Ed25519, key id {keys.key_id[:16]}" in verified.output
    document = json.loads((unsigned / SIGNATURE).read_bytes())
    manifest = json.loads((unsigned / "manifest.json").read_bytes())
    assert document["manifest_sha256"] == manifest_digest(manifest) == manifest[DIGEST_KEY]


def test_resigning_replaces_the_signature(bundle: Path, keys: signing.KeyPair, tmp_path: Path) -> None:
    new = signing.keygen(tmp_path / "new")
    (bundle / SIGNATURE).write_text("{ damaged")  # even a damaged old signature is simply replaced
    signed = signing.sign(bundle, new.private)
    assert signed.key_id == new.key_id
    assert Classifier.load(bundle, public_key=new.public).signed_by == new.key_id
    with pytest.raises(SignatureError, match="signature made by another key") as caught:
        Classifier.load(bundle, public_key=keys.public)
    assert caught.value.reason == "other-key"


def test_sign_refuses_a_damaged_bundle_and_leaves_its_signature(bundle: Path, keys: signing.KeyPair) -> None:
    old = (bundle / SIGNATURE).read_bytes()
    data = bytearray((bundle / "labels.json").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "labels.json").write_bytes(bytes(data))
    result = edgepack("sign", str(bundle), "--key", str(keys.private))
    assert result.exit_code == 2 and "labels.json: sha256 mismatch" in result.output
    assert "nothing was signed" in result.output and (bundle / SIGNATURE).read_bytes() == old
    missing = edgepack("sign", str(bundle.parent / "nowhere"), "--key", str(keys.private))
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_sign_names_an_unusable_key(unsigned: Path, keys: signing.KeyPair, tmp_path: Path) -> None:
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cases = {
        keys.public: "is a public key; sign with the private key",
        encrypted: "is encrypted",
        tmp_path / "nowhere.key": "does not exist (make a key pair: edgepack keygen",
    }
    for key, message in cases.items():
        result = edgepack("sign", str(unsigned), "--key", str(key))
        assert result.exit_code == 2 and "--key" in result.output and message in result.output, result.output
    assert not (unsigned / SIGNATURE).exists()


def test_sign_warns_about_a_key_others_can_read(unsigned: Path, tmp_path: Path) -> None:
    pair = signing.keygen(tmp_path / "loose")
    pair.private.chmod(0o644)
    result = CliRunner().invoke(main, ["sign", str(unsigned), "--key", str(pair.private)])
    assert result.exit_code == 0, result.output
    assert f"warning: private key {pair.private} is readable by others (mode 0644)" in result.stderr


def test_build_refuses_an_unusable_sign_key_before_it_starts(keys: signing.KeyPair, tmp_path: Path) -> None:
    result = edgepack("build", "--out", str(tmp_path), "--sign-key", str(keys.public))
    assert result.exit_code == 2 and "--sign-key" in result.output and "is a public key" in result.output
    assert list(tmp_path.iterdir()) == []


# -- the attack that matters, on a pipeline-built bundle ------------------------------------------------------


def tamper(bundle: Path) -> None:
    """Change the classifier's bias in model.onnx (a few bytes), then make the manifest consistent again:
    the file's sha256 and size, and manifest_sha256. Only the signature can tell."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string((bundle / "model.onnx").read_bytes())
    bias = next(t for t in reversed(model.graph.initializer) if len(t.dims) == 1 and t.data_type == 1)
    values = numpy_helper.to_array(bias).copy()
    values[0] += 5.0
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    data = model.SerializeToString()
    (bundle / "model.onnx").write_bytes(data)
    manifest: dict[str, Any] = json.loads((bundle / "manifest.json").read_bytes())
    manifest["files"]["model.onnx"] = file_record(data)
    manifest[DIGEST_KEY] = manifest_digest(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def test_tampered_bundle_refused_signed_accepted_unsigned(bundle: Path, keys: signing.KeyPair) -> None:
    before = Classifier.load(bundle).predict_proba(["what is my account balance"])
    tamper(bundle)
    unsigned = Classifier.load(bundle)  # every hash agrees: accepted, and it is not the same model
    assert not (unsigned.predict_proba(["what is my account balance"]) == before).all()
    with pytest.raises(SignatureError, match="signature over a manifest that changed") as caught:
        Classifier.load(bundle, public_key=keys.public)
    assert caught.value.reason == "changed"
    refused = CliRunner().invoke(runtime_cli, ["verify", str(bundle), "--public-key", str(keys.public)])
    assert refused.exit_code == 1 and "manifest.sig: signature over a manifest that changed" in refused.output


# -- freeze --public-key --------------------------------------------------------------------------------------


def never(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("PyInstaller must not run")


def test_freeze_refuses_a_bundle_not_signed_by_the_key(
    unsigned: Path, keys: signing.KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("PyInstaller")
    monkeypatch.setattr(freeze_lib, "run_pyinstaller", never)
    out = tmp_path / "dist" / "clf"
    result = edgepack("freeze", str(unsigned), "--out", str(out), "--public-key", str(keys.public))
    assert (
        result.exit_code == 2
        and "signature missing" in result.output
        and "nothing was frozen" in result.output
    )
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key")
    result = edgepack("freeze", str(unsigned), "--out", str(out), "--public-key", str(junk))
    assert (
        result.exit_code == 2 and "--public-key" in result.output and "not a PEM public key" in result.output
    )
    assert not out.parent.exists()


def run_binary(exe: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run as a user would (see tests/test_freeze.py): its own folder, a minimal environment."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(exe.parent)}
    return subprocess.run(
        [str(exe), *args], capture_output=True, env=env, cwd=exe.parent, timeout=120, check=False
    )


@pytest.mark.freeze
def test_frozen_with_a_public_key_checks_the_signature_at_start(
    signed_build: Path, keys: signing.KeyPair, tmp_path: Path
) -> None:
    pytest.importorskip("PyInstaller")
    out = tmp_path / "dist" / "signed-classifier"
    result = edgepack("freeze", str(signed_build), "--out", str(out), "--public-key", str(keys.public))
    assert result.exit_code == 0, result.output
    assert "cryptography" in result.output and f"signed by {keys.public}" in result.output
    files, _ = freeze_lib.archive_contents(out)
    assert {"public_key.pem", f"bundle/{SIGNATURE}"} <= set(files)
    version = run_binary(out, "--version")
    assert version.returncode == 0, version.stderr
    assert f"signature checked at start: Ed25519 key {keys.key_id[:16]}" in version.stdout.decode()
    answer = run_binary(out, "what is my account balance")
    assert answer.returncode == 0, answer.stderr
    expected = Classifier.load(signed_build).predict("what is my account balance").label
    assert json.loads(answer.stdout)["label"] == expected


@pytest.mark.freeze
def test_frozen_executable_refuses_a_tampered_bundle_at_start(
    bundle: Path, keys: signing.KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Freeze a tampered bundle past the freeze's own checks (they would refuse it): the executable itself,
    with its embedded key, refuses to start, and the freeze's first run of it reports why."""
    pytest.importorskip("PyInstaller")
    tamper(bundle)
    monkeypatch.setattr(freeze_lib, "verify_bundle", lambda bundle, key=None: "tampered")
    stage = freeze_lib.stage_bundle
    monkeypatch.setattr(freeze_lib, "stage_bundle", lambda bundle, folder, key=None: stage(bundle, folder))
    out = tmp_path / "dist" / "tampered"
    result = edgepack("freeze", str(bundle), "--out", str(out), "--public-key", str(keys.public))
    assert result.exit_code == 1
    assert "the built executable failed its first run (exit code 3)" in result.output
    assert "manifest.sig: signature over a manifest that changed" in result.output
    assert not out.exists()
