"""`edgepack-run`: classify text with a bundle, verify a bundle, benchmark a bundle.

A thin click layer over the library: the library raises BundleError / DataError / ValueError, and this layer
turns them into one-line errors (exit 1, or 2 for bad options) without a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from edgepack_runtime import __version__
from edgepack_runtime.errors import BundleError

if TYPE_CHECKING:
    from edgepack_runtime.classifier import Classifier
    from edgepack_runtime.signing import PublicKey

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"]}
bundle_argument = click.argument("bundle", type=click.Path(path_type=Path))
threads_option = click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="ONNX Runtime intra-op threads (0: ONNX Runtime decides).",
)
strict_option = click.option(
    "--strict", is_flag=True, help="Refuse a bundle built for CPU features this CPU lacks."
)
public_key_option = click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Ed25519 public key (PEM, from edgepack keygen): refuse the bundle unless its manifest.sig is this "
    "key's signature over its manifest (needs edgepack-runtime[sign]).",
)


# The measuring options of `edgepack-run bench` and `edgepack bench` (which imports these): one meaning each.
def runs_option(default: int, why_default: str = "") -> Callable[[F], F]:
    """--runs: timed batch-1 calls per model measured; `why_default` explains a default other than 200."""
    return click.option(
        "--runs",
        type=click.IntRange(min=2),
        default=default,
        show_default=True,
        help="Timed batch-1 calls per model measured, tokenization included"
        + (f" ({why_default})" if why_default else "")
        + ".",
    )


text_column_option = click.option(
    "--text-column", default="text", show_default=True, help="Text column of CSV / JSONL / Parquet data."
)
label_column_option = click.option(
    "--label-column", default="label", show_default=True, help="Label column of CSV / JSONL / Parquet data."
)


def oos_label_option(whose: str) -> Callable[[F], F]:
    """--oos-label: the data's out-of-scope label when `whose` bundle calls it otherwise."""
    return click.option(
        "--oos-label",
        default=None,
        help=f"The data's out-of-scope label, when {whose} bundle calls it otherwise (its rejections of such "
        "texts count as right).",
    )


batch_size_option = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Texts per batch when measuring throughput.",
)


def _public_key(path: Path | None) -> PublicKey | None:
    """The --public-key file, loaded; a key that cannot be used is a bad --public-key."""
    from edgepack_runtime.signing import load_public_key

    if path is None:
        return None
    try:
        return load_public_key(path)
    except BundleError as err:
        raise click.BadParameter(str(err), param_hint="--public-key") from None


def _load(bundle: Path, threads: int, strict: bool, public_key: Path | None = None) -> Classifier:
    """Load a bundle (its signature checked with public_key when given); a BundleError becomes a clean CLI
    error, target warnings a 'warning:' line."""
    from edgepack_runtime.classifier import Classifier, limit_tokenizer_threads

    limit_tokenizer_threads(threads)  # the server's workers inherit it
    key = _public_key(public_key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            clf = Classifier.load(bundle, threads=threads, strict=strict, public_key=key)
        except BundleError as err:
            raise click.ClickException(f"bundle {bundle} refused: {err}") from None
    for warning in caught:
        click.echo(f"warning: {warning.message}", err=True)
    return clf


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="edgepack-run")
def main() -> None:
    """Run edgepack bundles on CPU: classify text, verify a bundle, benchmark it."""


def _stdin_lines() -> Iterator[str]:
    """Lines of standard input, read as UTF-8 whatever the locale; undecodable bytes become U+FFFD."""
    binary = getattr(sys.stdin, "buffer", None)
    for raw in binary if binary is not None else sys.stdin:
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        yield line.rstrip("\r\n")


def _chunks(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@main.command()
@bundle_argument
@click.argument("texts", nargs=-1)
@click.option(
    "--top-k", type=click.IntRange(min=1), default=3, show_default=True, help="Classes listed per text."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@threads_option
@strict_option
@public_key_option
def classify(
    bundle: Path,
    texts: tuple[str, ...],
    top_k: int,
    batch_size: int,
    threads: int,
    strict: bool,
    public_key: Path | None,
) -> None:
    """Classify TEXTS (or each line of standard input when none are given); print one JSON line per text."""
    from edgepack_runtime.textguard import replace_surrogates

    clf = _load(bundle, threads, strict, public_key)
    if not texts and sys.stdin.isatty():
        click.echo("reading texts from standard input, one per line (Ctrl-D ends)", err=True)
    source = iter(texts) if texts else _stdin_lines()
    try:
        for chunk in _chunks(source, batch_size):
            predictions = clf.predict_batch(chunk, batch_size=batch_size, top_k=top_k)
            for text, prediction in zip(chunk, predictions, strict=True):
                record = {"text": replace_surrogates(text), **prediction.to_dict()}
                click.echo(json.dumps(record, ensure_ascii=False))
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit flush from failing again


def _summary(clf: Classifier) -> list[tuple[str, str]]:
    from edgepack_runtime import cpu

    manifest, spec = clf.manifest, clf.spec
    files = [f"{name} {rec.size:,} B sha256 {rec.sha256[:12]}" for name, rec in spec.files.items()]
    oos = f"; {spec.oos.describe()}" if spec.oos else ""
    host = cpu.detect()
    problem = cpu.check_target(spec.name, spec.target_name, spec.cpu_features, host)
    needs = ", ".join(spec.cpu_features) or "no particular feature"
    ops = ", ".join(f"{n} {op}" for op, n in sorted(clf.op_types.items(), key=lambda kv: -kv[1])[:8])
    return [
        ("bundle", f"{spec.name} ({manifest['schema']}) at {clf.path}"),
        ("files", "; ".join(files)),
        ("labels", f"{len(clf.labels)}{oos}"),
        ("inputs", f"{', '.join(clf.input_names)}; max_length {spec.max_length}; vocab {spec.vocab_size}"),
        ("graph", ops),
        ("batching", clf.batch_mode),
        (
            "target",
            f"{spec.target_name} needs {needs}: " + ("ok on this CPU" if not problem else "see warning"),
        ),
        ("this cpu", f"{', '.join(sorted(host.present)) or 'none known'} (per {host.source})"),
        ("signature", _signature_line(clf)),
    ]


def _signature_line(clf: Classifier) -> str:
    if clf.signed_by is not None:
        return f"verified: Ed25519, key id {clf.signed_by[:16]}..., over this manifest"
    if clf.signature is not None:
        return f"present (key id {clf.signature.key_id[:16]}...), not checked: give --public-key to check it"
    return "none (unsigned bundle)"


@main.command()
@bundle_argument
@threads_option
@strict_option
@public_key_option
def verify(bundle: Path, threads: int, strict: bool, public_key: Path | None) -> None:
    """Check every file, hash and field of BUNDLE, load it and run it once; print a summary. With
    --public-key, also check that manifest.sig is that key's signature over the manifest."""
    clf = _load(bundle, threads, strict, public_key)
    rows = _summary(clf)
    width = max(len(k) for k, _ in rows) + 2
    click.echo(f"OK: bundle {bundle} verified")
    for key, value in rows:
        click.echo(f"{key:<{width}}{value}")


@main.command()
@bundle_argument
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="Labeled texts, read as edgepack build reads them: a folder of train/validation/test CSV, JSONL or "
    "Parquet files (a split it lacks is carved as the bundle's build carved it), a CLINC JSON (or its "
    "folder), or one file (measured whole, unless the bundle was built from it).",
)
@click.option("--split", default="test", show_default=True, help="Split of a folder or CLINC JSON.")
@text_column_option
@label_column_option
@oos_label_option("the")
@threads_option
@batch_size_option
@runs_option(200)
@click.option(
    "--warmup", type=click.IntRange(min=0), default=20, show_default=True, help="Untimed calls first."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@strict_option
@public_key_option
def bench(
    bundle: Path,
    data: Path | None,
    split: str,
    text_column: str,
    label_column: str,
    oos_label: str | None,
    threads: int,
    batch_size: int,
    runs: int,
    warmup: int,
    as_json: bool,
    strict: bool,
    public_key: Path | None,
) -> None:
    """Latency at batch 1, throughput at --batch-size, size on disk, and accuracy when --data is given."""
    from edgepack_runtime import bench as measure
    from edgepack_runtime.data import DataError
    from edgepack_runtime.splits import read_split

    clf = _load(bundle, threads, strict, public_key)
    pairs, note = None, None
    if data is not None:
        try:
            built = clf.manifest.get("data") if isinstance(clf.manifest.get("data"), dict) else None
            pairs, note = read_split(data, split, text_column, label_column, built)
        except DataError as err:
            raise click.BadParameter(str(err), param_hint="--data") from None
        if note:
            click.echo(note, err=True)
    texts = [text for text, _ in pairs] if pairs else list(measure.SAMPLE_QUERIES)
    result: dict[str, Any] = measure.run(
        clf, texts, runs=runs, warmup=warmup, batch_size=batch_size, pairs=pairs, oos_label=oos_label
    )
    if data is not None:
        result["data"] = {"path": str(data), "split": split, "carved": note}
    click.echo(json.dumps(result, indent=2) if as_json else measure.format_table(result))


@main.command()
@bundle_argument
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="TCP port (0: any free port; the address is printed at start).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Model threads per worker: requests answered at once, each on one core.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes, each loading its own copy of the bundle.",
)
@click.option(
    "--max-texts", type=click.IntRange(min=1), default=64, show_default=True, help="Texts per request."
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=1 << 20,
    show_default=True,
    help="Request body limit, bytes.",
)
@click.option(
    "--max-pending",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Requests waiting for the model per worker before new ones get 503.",
)
@click.option(
    "--graceful-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds to finish requests in flight after SIGTERM / Ctrl-C.",
)
@click.option("--access-log", is_flag=True, help="Log one line per request to stderr.")
@strict_option
@public_key_option
def serve(
    bundle: Path,
    host: str,
    port: int,
    threads: int,
    workers: int,
    max_texts: int,
    max_body_bytes: int,
    max_pending: int,
    graceful_timeout: float,
    access_log: bool,
    strict: bool,
    public_key: Path | None,
) -> None:
    """Serve BUNDLE over HTTP: POST /classify, GET /health, GET /manifest (needs the 'serve' extra)."""
    from edgepack_runtime import serve as server

    try:
        server.require_extra()
    except server.MissingExtra as err:
        raise click.ClickException(str(err)) from None
    clf = _load(bundle, 1, strict, public_key)  # verified once here: a damaged bundle never starts a server
    limits = server.Limits(max_texts=max_texts, max_body_bytes=max_body_bytes, max_pending=max_pending)
    # Workers check the signature with the very key text the supervisor read.
    pem = public_key.read_bytes().decode("latin-1") if public_key is not None else None
    settings = server.Settings(str(bundle.resolve()), threads, strict, limits, pem)
    try:
        sock = server.bind(host, port)
    except OSError as err:
        raise click.ClickException(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    click.echo(
        f"edgepack-run serve: {clf.name} on {server.url(sock)} (workers {workers}, threads {threads}; "
        f"{clf.batch_mode}); Ctrl-C or SIGTERM stops it",
        err=True,
    )
    served = clf if workers == 1 else None
    del clf  # with several workers, each loads its own copy: the supervisor keeps none
    server.run(settings, served, sock, workers, access_log, graceful_timeout)
    click.echo("edgepack-run serve: stopped", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
