"""The program inside a single-file classifier made by `edgepack freeze`: one executable, one embedded bundle.

    NAME [TEXT ...]          classify the texts (or each line of standard input): one JSON line per text
    NAME --top-k N           classes listed per answer
    NAME --bench [--json]    the runtime's latency, throughput and size figures for the embedded bundle
    NAME --version           the embedded bundle's manifest summary

The embedded bundle is verified in full (files, hashes, manifest, a test run) every time the program starts,
and a damaged one is refused before anything is classified. Every input line gets exactly one output line, in
order: an answer {"text", "label", "score", "top_k", "rejected", "oos_score"} (plus "truncated": true when the
text was longer than the bundle reads), or {"input": N, "error": "..."} for a line that is not valid UTF-8.
Exit codes: 0 all answered, 1 some inputs got an error line (the others were answered), 2 bad options,
3 the embedded bundle was refused.

This module imports only edgepack_runtime, onnxruntime, tokenizers, numpy, rfc8785 (the manifest digest, pure
Python) and the standard library (no click), so the executable carries nothing else; it is testable unfrozen
by passing `bundle=`. Frozen with --public-key, it also carries that key (TRUSTED_KEY) and `cryptography`,
and refuses to start unless the embedded bundle's manifest.sig is that key's signature over its manifest.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from edgepack_runtime import __version__
from edgepack_runtime.classifier import Classifier, limit_tokenizer_threads
from edgepack_runtime.errors import BundleError

EMBEDDED = "bundle"  # the folder the bundle is unpacked to, under sys._MEIPASS
TRUSTED_KEY = "public_key.pem"  # beside it, when frozen with --public-key: the key that signed the bundle
EXIT_OK, EXIT_INPUT_ERRORS, EXIT_USAGE, EXIT_BUNDLE = 0, 1, 2, 3
BYTES_PER_CHAR = 4  # the most a UTF-8 character takes: max_chars characters fit in 4 * max_chars bytes


def embedded_bundle() -> Path:
    """The bundle folder PyInstaller unpacked beside the program; an error when not running frozen."""
    base = getattr(sys, "_MEIPASS", None)
    if not getattr(sys, "frozen", False) or base is None:
        raise RuntimeError(
            "this program runs inside an executable made by `edgepack freeze`; "
            "to run a bundle folder use `edgepack-run classify BUNDLE`"
        )
    return Path(base) / EMBEDDED


def embedded_key() -> bytes | None:
    """The public key frozen into the executable (PEM), or None when it was frozen without one."""
    path = embedded_bundle().parent / TRUSTED_KEY
    return path.read_bytes() if path.is_file() else None


def _integer(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def _positive(text: str) -> int:
    return _integer(text, 1)


def _non_negative(text: str) -> int:
    return _integer(text, 0)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Classify texts with the edgepack bundle built into this executable. Texts come from "
        "the arguments or, when there are none, one per line from standard input; answers are JSON lines.",
        epilog="Exit codes: 0 all answered, 1 some inputs were not valid UTF-8 (error lines), "
        "2 bad options, 3 the embedded bundle failed verification.",
    )
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify (default: stdin lines)")
    parser.add_argument(
        "--top-k", type=_positive, metavar="N", default=3, help="classes listed per text (default 3)"
    )
    parser.add_argument(
        "--threads",
        type=_non_negative,
        metavar="N",
        default=1,
        help="ONNX Runtime threads, 0: it decides (default 1)",
    )
    parser.add_argument("--bench", action="store_true", help="measure latency and throughput, print them")
    parser.add_argument(
        "--runs", type=_positive, metavar="N", default=200, help="timed calls for --bench (default 200)"
    )
    parser.add_argument(
        "--warmup", type=_non_negative, metavar="N", default=20, help="untimed calls first (default 20)"
    )
    parser.add_argument("--json", action="store_true", help="with --bench: print JSON instead of a table")
    parser.add_argument("--version", action="store_true", help="show the embedded bundle's summary")
    return parser


def _load(folder: Path, threads: int, err: IO[str], public_key: bytes | None = None) -> Classifier:
    """Verify and load the bundle (and its signature, with a public key); CPU-target warnings become
    'warning:' lines on stderr."""
    limit_tokenizer_threads(threads)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = Classifier.load(folder, threads=threads, public_key=public_key)
    for warning in caught:
        print(f"warning: {warning.message}", file=err)
    return clf


# -- reading texts ------------------------------------------------------------------------------------------


def stdin_lines(stream: IO[bytes], limit: int) -> Iterator[tuple[bytes, bool]]:
    """(line without its line ending, cut) for each line; a line over `limit` bytes is cut to its first
    `limit` bytes and the rest is skipped without being held in memory."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if line.endswith(b"\n"):
            line = line[:-1]
            yield (line[:-1] if line.endswith(b"\r") else line), False
        elif len(line) <= limit:  # the last line, without a line ending
            yield line, False
        else:
            while (rest := stream.readline(1 << 16)) and not rest.endswith(b"\n"):
                pass
            yield line[:limit], True


def decode(raw: bytes, cut: bool) -> str:
    """Strict UTF-8; a cut line may end inside a character, which is dropped. Raises UnicodeDecodeError."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    return decoder.decode(raw, final=not cut)


def _error(number: int, raw: bytes, err: UnicodeDecodeError) -> dict[str, Any]:
    return {
        "input": number,
        "error": f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}); "
        "this input was not classified: send UTF-8 text",
    }


def answer(clf: Classifier, number: int, raw: bytes, cut: bool, top_k: int) -> dict[str, Any]:
    """One output record for one input: the prediction, or an error naming what was wrong."""
    try:
        text = decode(raw, cut)
    except UnicodeDecodeError as err:
        return _error(number, raw, err)
    truncated = cut or len(text) > clf.max_chars
    text = text[: clf.max_chars]  # what the runtime reads anyway (textguard): echo what was classified
    record: dict[str, Any] = {"text": text, **clf.predict(text, top_k=top_k).to_dict()}
    if truncated:
        record["truncated"] = True
    return record


def classify(clf: Classifier, inputs: Iterator[tuple[bytes, bool]], top_k: int, out: IO[bytes]) -> int:
    """Write one JSON line per input, flushed as it is ready; return how many inputs got an error line."""
    errors = 0
    for number, (raw, cut) in enumerate(inputs, start=1):
        record = answer(clf, number, raw, cut, top_k)
        errors += "error" in record
        out.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        out.flush()
    return errors


# -- --version and --bench ----------------------------------------------------------------------------------


def _accuracy(manifest: dict[str, Any], split: str) -> str | None:
    """manifest["metrics"][split]["accuracy"] formatted, or None when the manifest has no such figure."""
    value: Any = manifest.get("metrics")
    for key in (split, "accuracy"):
        value = value.get(key) if isinstance(value, dict) else None
    return f"{value:.4f}" if isinstance(value, int | float) else None


def _signed(clf: Classifier) -> str:
    if clf.signed_by is not None:
        return f"signature checked at start: Ed25519 key {clf.signed_by[:16]}... (frozen with --public-key)"
    return "signature not checked (frozen without --public-key)"


def version_lines(clf: Classifier, prog: str) -> list[str]:
    """The executable's and the embedded bundle's identity, as `--version` prints it."""
    import numpy
    import onnxruntime
    import tokenizers

    manifest, spec = clf.manifest, clf.spec
    files = "; ".join(f"{name} {rec.size:,} B sha256 {rec.sha256[:12]}" for name, rec in spec.files.items())
    oos = f"; {spec.oos.describe()}" if spec.oos else ""
    rows = [
        ("bundle", f"{spec.name} ({manifest['schema']}), created {manifest.get('created', '?')}"),
        ("built by", f"edgepack {manifest.get('edgepack_version', '?')}"),
        ("verified", f"at start: manifest and {files}"),
        ("signed", _signed(clf)),
        ("labels", f"{len(clf.labels)}{oos}"),
        ("inputs", f"{', '.join(clf.input_names)}; max_length {spec.max_length}; vocab {spec.vocab_size}"),
        ("target", f"{spec.target_name} (needs {', '.join(spec.cpu_features) or 'nothing special'})"),
    ]
    plain, thresholded = _accuracy(manifest, "test"), _accuracy(manifest, "test_thresholded")
    if plain:
        also = f", {thresholded} with its out-of-scope threshold" if thresholded else ""
        rows.append(("accuracy", f"{plain} on its test split{also} (measured at build)"))
    width = max(len(key) for key, _ in rows) + 2
    libraries = (
        f"edgepack-runtime {__version__}, onnxruntime {onnxruntime.__version__}, "
        f"tokenizers {tokenizers.__version__}, numpy {numpy.__version__}, Python {sys.version.split()[0]}"
    )
    head = f"{prog}: edgepack classifier ({libraries})"
    return [head, *(f"{key:<{width}}{value}" for key, value in rows)]


def bench_report(clf: Classifier, runs: int, warmup: int, as_json: bool) -> str:
    """The runtime's own measurement (edgepack_runtime.bench) on its sample queries."""
    from edgepack_runtime import bench

    result = bench.run(clf, list(bench.SAMPLE_QUERIES), runs=runs, warmup=warmup, batch_size=32)
    result["frozen"] = bool(getattr(sys, "frozen", False))
    return json.dumps(result, indent=2) if as_json else bench.format_table(result)


# -- main ---------------------------------------------------------------------------------------------------


def _inputs(texts: Sequence[str], stdin: IO[bytes], limit: int, err: IO[str]) -> Iterator[tuple[bytes, bool]]:
    if texts:  # arguments back to their bytes (surrogateescape), checked like stdin lines
        raw = [os.fsencode(text) for text in texts]
        return ((data[:limit], len(data) > limit) for data in raw)
    if stdin.isatty():
        print("reading texts from standard input, one per line (Ctrl-D ends)", file=err)
    return stdin_lines(stdin, limit)


def _run(args: argparse.Namespace, clf: Classifier, prog: str, stdin: IO[bytes], out: IO[bytes]) -> int:
    if args.version:
        out.write(("\n".join(version_lines(clf, prog)) + "\n").encode("utf-8"))
        return EXIT_OK
    if args.bench:
        out.write((bench_report(clf, args.runs, args.warmup, args.json) + "\n").encode("utf-8"))
        return EXIT_OK
    limit = BYTES_PER_CHAR * clf.max_chars
    errors = classify(clf, _inputs(args.texts, stdin, limit, sys.stderr), args.top_k, out)
    if errors:
        print(f"{prog}: {errors} input(s) could not be classified (see their error lines)", file=sys.stderr)
    return EXIT_INPUT_ERRORS if errors else EXIT_OK


def main(
    argv: Sequence[str] | None = None,
    *,
    bundle: Path | None = None,
    public_key: bytes | None = None,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
) -> int:
    """Run the program; `bundle` and `public_key` (PEM; for tests) replace the embedded bundle and key.
    Returns the exit code."""
    prog = Path(sys.argv[0]).name or "classifier"
    try:
        args = _parser(prog).parse_args(argv)
    except SystemExit as exit_:  # argparse already printed the usage and the problem
        return EXIT_USAGE if exit_.code else EXIT_OK
    if (args.bench or args.version) and args.texts:
        print(f"{prog}: --bench and --version take no texts", file=sys.stderr)
        return EXIT_USAGE
    try:
        if bundle is None:
            bundle, public_key = embedded_bundle(), embedded_key()
        clf = _load(bundle, args.threads, sys.stderr, public_key)
    except RuntimeError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BundleError as err:
        print(
            f"{prog}: refusing to run: the embedded bundle failed verification ({err}). This executable is "
            "damaged: freeze it again from a good bundle (edgepack freeze BUNDLE --out ... --force).",
            file=sys.stderr,
        )
        return EXIT_BUNDLE
    out = stdout or sys.stdout.buffer
    try:
        return _run(args, clf, prog, stdin or sys.stdin.buffer, out)
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
        if stdout is None:  # Python's flush at exit would fail again on the closed pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
