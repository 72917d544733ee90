"""`edgepack` command line: a thin click layer over the library (heavy imports happen inside commands)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from edgepack_runtime.cli import batch_size_option, runs_option

from edgepack import __version__
from edgepack.errors import EdgepackError, RecipeError
from edgepack.targets import TARGETS

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="edgepack")
def main() -> None:
    """Turn a fine-tuned transformer text classifier into a small, fast, verified ONNX Runtime bundle."""


def _overrides(options: dict[str, Any], settings: tuple[str, ...]) -> dict[str, Any]:
    from edgepack.recipe import parse_override

    overrides: dict[str, Any] = {}
    mapping = {
        "target": "target",
        "data": "data.source",
        "teacher": "teacher.model",
        "trials": "search.trials",
        "study_storage": "search.storage",
        "name": "package.name",
        "out": "package.output_dir",
        "threads": "threads",
    }
    for option, key in mapping.items():
        if options.get(option) is not None:
            overrides[key] = options[option]
    for text in settings:
        try:
            key, value = parse_override(text)
        except RecipeError as exc:
            raise click.BadParameter(str(exc), param_hint="--set") from None
        overrides[key] = value
    return overrides


@main.command(context_settings=CONTEXT)
@click.option(
    "--recipe", default="clinc", show_default=True, help="Shipped recipe name or path to a TOML recipe."
)
@click.option(
    "--target",
    type=click.Choice(sorted(TARGETS)),
    default=None,
    help="CPU the INT8 graph is tuned for (default: the recipe's).",
)
@click.option(
    "--data", default=None, help="Data: CLINC JSON file/folder, folder of CSV/JSONL splits, or Hub name."
)
@click.option("--teacher", default=None, help="Teacher: model folder, package:MODULE, or Hub id.")
@click.option("--trials", type=click.IntRange(min=0), default=None, help="Optuna trials (0 = no search).")
@click.option("--study-storage", default=None, help="Optuna storage URL shared by machines (sqlite:///... ).")
@click.option("--name", default=None, help="Bundle folder name (default: the recipe's).")
@click.option("--out", default=None, help="Folder the bundle goes into (default: bundles).")
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="Threads for training and evaluation."
)
@click.option(
    "--quick",
    is_flag=True,
    help="Small budget over the recipe (recipes/overlays/quick.toml): one teacher epoch, two short trials.",
)
@click.option(
    "--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE", help="Override any recipe value."
)
@click.option("--force", is_flag=True, help="Replace an existing bundle of the same name.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def build(
    recipe: str, settings: tuple[str, ...], quick: bool, force: bool, verbose: bool, **options: Any
) -> None:
    """Build a bundle: fine-tune, distill, prune, export, fuse, quantize, package into a staging folder,
    evaluate that staged bundle through the runtime, then move it into place."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from edgepack.recipe import QUICK_OVERLAY, load_recipe

    overrides = _overrides(options, settings)
    try:
        resolved = load_recipe(recipe, overrides, overlays=(QUICK_OVERLAY,) if quick else ())
    except RecipeError as exc:
        raise click.BadParameter(str(exc), param_hint="--recipe/--set") from None
    from edgepack.pipeline import build as run_build

    with _interruptible("bundle", (EdgepackError, ValueError)):
        bundle = run_build(resolved, force=force)
    _summary(bundle)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _interruptible(what: str, errors: tuple[type[Exception], ...]) -> Iterator[None]:
    """Run long work so that `kill` cleans up like Ctrl-C (the stages leave no half-written `what`) and
    exits 130; `errors` become one line on stderr and exit 1."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    except KeyboardInterrupt:
        click.echo(f"Interrupted: no {what} was written (an existing one is untouched).", err=True)
        sys.exit(130)
    except errors as exc:
        raise click.ClickException(str(exc)) from None


def _summary(bundle: Any) -> None:
    import json

    from edgepack_runtime.manifest import MANIFEST

    manifest = json.loads((bundle / MANIFEST).read_text())
    m = manifest["metrics"]
    click.echo(f"\nBundle {bundle}: {m['bundle_bytes'] / 1e6:.1f} MB")
    click.echo(
        f"  test accuracy {m['test']['accuracy']:.4f}"
        + (f", with oos threshold {m['test_thresholded']['accuracy']:.4f}" if "test_thresholded" in m else "")
    )
    teacher = m["teacher"]
    click.echo(
        f"  teacher test accuracy {teacher['test']['accuracy']:.4f}"
        + (
            f", with threshold {teacher['test_thresholded']['accuracy']:.4f}"
            if "test_thresholded" in teacher
            else ""
        )
    )
    click.echo(f"  verify with: edgepack-run verify {bundle}")


DEFAULT_DATA = Path("..") / "shared" / "data" / "clinc150"


def _labeled(source: Path, split: str, option: str) -> list[tuple[str, str]]:
    from edgepack_runtime.data import DataError, load_labeled

    try:
        return load_labeled(source, split=split)
    except (DataError, OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _bench_data(data: Path | None) -> tuple[Path | None, list[tuple[str, str]] | None]:
    """The labeled texts for accuracy: --data, else the CLINC test split beside the project, else none."""
    source = data if data is not None else (DEFAULT_DATA if DEFAULT_DATA.exists() else None)
    if source is None:
        click.echo(
            f"No --data and no {DEFAULT_DATA}: accuracy is not measured, latency uses built-in sample queries.",
            err=True,
        )
        return None, None
    return source, _labeled(source, "test", "--data")


def _validation_data(validation: Path | None, source: Path | None) -> list[tuple[str, str]] | None:
    """Texts to choose the teacher's out-of-scope threshold on and to draw the trade-off curves on:
    --validation, else the validation split of CLINC --data; none for a single-split --data file (the teacher
    is then compared by argmax)."""
    if validation is not None:
        return _labeled(validation, "validation", "--validation")
    if source is not None and (source.is_dir() or source.suffix.lower() == ".json"):
        return _labeled(source, "validation", "--data")
    return None


def _writable(path: Path | None, option: str) -> None:
    if path is not None and not path.parent.resolve().is_dir():
        raise click.BadParameter(f"folder {path.parent} does not exist", param_hint=option)


def _bundle_teacher(bundle: Path) -> str | None:
    """The bundle's own teacher when its build's cache still holds it, saying which on stderr; else None."""
    from edgepack.bench.contenders import bundle_teacher

    folder, ready = bundle_teacher(bundle)
    if ready:
        click.echo(f"comparing with the bundle's teacher at {folder} (--no-teacher to skip it)", err=True)
        return str(folder)
    if folder is not None:
        click.echo(
            f"no teacher to compare with: the bundle's is not cached at {folder} (pass --teacher)", err=True
        )
    return None


@main.command(context_settings=CONTEXT)
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--teacher",
    default=None,
    help="Teacher to compare with: model folder, package:MODULE, or Hub id "
    "[default: the first bundle's own teacher, when its build's cache still holds it].",
)
@click.option("--no-teacher", is_flag=True, help="Compare with no teacher, not even the bundle's own.")
@click.option(
    "--no-optimum-teacher",
    is_flag=True,
    help="Skip what Optimum makes of the teacher (export, ORTOptimizer, avx2 dynamic INT8, its pipeline; "
    "built once and cached beside the teacher's cache).",
)
@click.option(
    "--peer",
    type=click.Choice(["optimum"]),
    default=None,
    help="Also run the first bundle's graph through this.",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help=f"Labeled data for accuracy (CLINC JSON, CSV, JSONL) [default: {DEFAULT_DATA} if present].",
)
@click.option(
    "--validation",
    type=click.Path(path_type=Path),
    default=None,
    help="Labeled data to choose the teacher's out-of-scope threshold on, and to draw the out-of-scope "
    "trade-off on [default: CLINC --data's validation split].",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Threads, all alike."
)
@batch_size_option
@runs_option(300, "more than edgepack-run's 200: 30 rounds of --block 10 even out drift between the models")
@click.option(
    "--block",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Calls per contender in each interleaved round (1: A B C A B C ..., each call after the others ran).",
)
@click.option(
    "--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed calls each."
)
@click.option(
    "--floor/--no-floor",
    default=True,
    show_default=True,
    help="Measure this CPU's GEMM rates and each bundle's physical floor.",
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report."
)
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG plot."
)
def bench(
    bundles: tuple[Path, ...],
    teacher: str | None,
    no_teacher: bool,
    no_optimum_teacher: bool,
    peer: str | None,
    data: Path | None,
    validation: Path | None,
    threads: int,
    batch_size: int,
    runs: int,
    block: int,
    warmup: int,
    floor: bool,
    json_path: Path | None,
    plot_path: Path | None,
) -> None:
    """Measure BUNDLES side by side (and their teacher, Optimum's INT8 model of it, --peer): size, latency,
    throughput, accuracy, and how far each bundle is from the physical floor of its arithmetic on this CPU.

    The first bundle is highlighted in the plot and is the graph the peer runs; its own teacher is the one
    compared with, unless --teacher names another or --no-teacher none. Needs the bench extra:
    pip install 'edgepack[bench]'."""
    import json

    from edgepack_runtime import BundleError

    try:
        import edgepack.bench  # noqa: F401 - checks the bench extra (edgepack.bench.MissingExtra)
    except ImportError as exc:
        raise click.ClickException(str(exc)) from None
    from edgepack.bench import contenders as lib
    from edgepack.bench import measure
    from edgepack.bench import report as show
    from edgepack.bench.floor import gemm_rates

    if teacher is not None and no_teacher:
        raise click.UsageError("--teacher and --no-teacher exclude each other")
    _writable(json_path, "--json")
    _writable(plot_path, "--plot")
    for path in bundles:
        if not path.is_dir():
            raise click.BadParameter(f"{path}: no such bundle folder", param_hint="BUNDLE")
    source, pairs = _bench_data(data)
    say = lambda message: click.echo(message, err=True)  # noqa: E731
    if teacher is None and not no_teacher:
        teacher = _bundle_teacher(bundles[0])
    validation_pairs = _validation_data(validation, source)
    contenders: list[lib.Contender] = []
    skipped: list[dict[str, str]] = []
    try:
        try:
            lib.load_contenders(
                bundles,
                teacher,
                peer,
                validation_pairs,
                threads,
                contenders,
                skipped,
                say,
                optimum_teacher=not no_optimum_teacher,
            )
        except lib.InvalidBundle as exc:
            raise click.BadParameter(str(exc), param_hint="BUNDLE") from None
        rates = None
        if floor:
            say(f"measuring this CPU's FP32 and INT8 matrix-multiply rates on {threads} thread(s) ...")
            rates = gemm_rates(threads)
        report = measure.run(
            contenders,
            measure.latency_queries(pairs),
            pairs,
            threads=threads,
            batch_size=batch_size,
            runs=runs,
            warmup=warmup,
            block=block,
            data=source,
            skipped=skipped,
            rates=rates,
            validation=validation_pairs,
            log=say,
        )
    except (EdgepackError, BundleError, ValueError, RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        for c in contenders:
            for clean in c.cleanup:
                clean()
    click.echo(show.format_table(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2), encoding="utf-8")
        click.echo(f"wrote {json_path}")
    if plot_path is not None:
        show.plot(report, plot_path)
        click.echo(f"wrote {plot_path}")


@main.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Executable to write [default: dist/<bundle folder name>].",
)
@click.option("--force", is_flag=True, help="Replace an existing executable.")
def freeze(bundle: Path, out: Path | None, force: bool) -> None:
    """Freeze BUNDLE into one executable (PyInstaller) that classifies text without a Python install.

    The executable carries the bundle and edgepack_runtime only (no torch, no transformers), verifies the
    bundle every time it starts, and answers its arguments or stdin lines as JSON lines (run it with -h).
    Needs PyInstaller: pip install 'edgepack[freeze]'."""
    from edgepack import freeze as lib

    out = out if out is not None else Path("dist") / bundle.resolve().name
    with _interruptible("executable", (EdgepackError, OSError)):
        try:
            result = lib.freeze(bundle, out, force=force, progress=lambda m: click.echo(m, err=True))
        except lib.BundleRefused as exc:
            raise click.BadParameter(str(exc), param_hint="BUNDLE") from None
        except lib.DestinationError as exc:
            raise click.BadParameter(str(exc), param_hint="--out") from None
    click.echo(
        f"Froze {bundle} into {result.path}: {result.size_bytes / 1e6:.1f} MB in {result.seconds:.0f} s"
    )
    click.echo(f"  Python packages inside: {', '.join(result.packages)} (+ the standard library)")
    click.echo(f"  checked absent: {', '.join(lib.BANNED)}")
    click.echo(f'  try: {result.path} "what is the pin number for my account?"   (or --version, --bench, -h)')


if __name__ == "__main__":
    main()
