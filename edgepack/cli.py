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
from edgepack_runtime.cli import (
    batch_size_option,
    label_column_option,
    oos_label_option,
    runs_option,
    text_column_option,
)

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
        "text_column": "data.text_column",
        "label_column": "data.label_column",
        "oos_label": "data.oos_label",
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
    "--recipe",
    default=None,
    help="Shipped recipe (see edgepack recipes) or path to a TOML recipe [default: clinc; generic with --data].",
)
@click.option(
    "--target",
    type=click.Choice(sorted(TARGETS)),
    default=None,
    help="CPU the INT8 graph is tuned for (default: the recipe's).",
)
@click.option(
    "--data",
    default=None,
    help="Data: a folder of train[/validation/test] CSV, JSONL or Parquet files (missing splits are carved from "
    "train), one such file, a CLINC JSON file/folder, or a Hub dataset NAME[:CONFIG].",
)
@click.option(
    "--text-column", default=None, help="Text column of CSV / JSONL / Parquet data [default: text]."
)
@click.option("--label-column", default=None, help="Label column of that data [default: label].")
@click.option(
    "--oos-label",
    default=None,
    help="The data's out-of-scope label, if it has one (texts that belong to no class) "
    "[default: the recipe's: clinc oos, generic none].",
)
@click.option("--teacher", default=None, help="Teacher: model folder, package:MODULE, or Hub id.")
@click.option("--trials", type=click.IntRange(min=0), default=None, help="Optuna trials (0 = no search).")
@click.option(
    "--study-storage",
    default=None,
    help="Database of a search shared by several workers: sqlite:///study.db, or postgresql://USER@HOST/DB "
    "(pip install 'edgepack[search-db]'). --trials is the study's total.",
)
@click.option("--name", default=None, help="Bundle folder name (default: the recipe's).")
@click.option("--out", default=None, help="Folder the bundle goes into (default: bundles).")
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="Threads for training and evaluation."
)
@click.option(
    "--quick",
    is_flag=True,
    help="Small budget over the recipe (recipes/overlays/quick.toml): two epochs on about two thirds of the "
    "teacher's layers, bundled without distillation.",
)
@click.option(
    "--export-only",
    is_flag=True,
    help="Export, fuse, quantize and bundle the (fine-tuned) teacher itself: no distillation, no pruning "
    "(recipes/overlays/export-only.toml).",
)
@click.option(
    "--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE", help="Override any recipe value."
)
@click.option("--force", is_flag=True, help="Replace an existing bundle of the same name.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the resolved recipe, a summary of the data (splits, classes, token lengths, what is carved or "
    "truncated) and the stages that would run; train nothing.",
)
@click.option(
    "--sign-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Private key (edgepack keygen): sign the bundle (manifest.sig) before it is moved into place.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def build(
    recipe: str | None,
    settings: tuple[str, ...],
    quick: bool,
    export_only: bool,
    force: bool,
    dry_run: bool,
    sign_key: Path | None,
    verbose: bool,
    **options: Any,
) -> None:
    """Build a bundle: fine-tune, distill, prune, export, fuse, quantize, package into a staging folder,
    evaluate that staged bundle through the runtime, then move it into place.

    With no option it builds the default CLINC150 bundle (recipe clinc); with --data and no --recipe, the
    generic recipe: any labelled text, the bundle named after the data."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from edgepack.recipe import (
        DEFAULT_RECIPE,
        EXPORT_ONLY_OVERLAY,
        GENERIC_RECIPE,
        QUICK_OVERLAY,
        load_recipe,
    )

    if recipe is None:
        recipe = GENERIC_RECIPE if options.get("data") is not None else DEFAULT_RECIPE
    overrides = _overrides(options, settings)
    overlays = tuple(path for path, on in ((EXPORT_ONLY_OVERLAY, export_only), (QUICK_OVERLAY, quick)) if on)
    try:
        resolved = load_recipe(recipe, overrides, overlays=overlays)
    except RecipeError as exc:
        raise click.BadParameter(str(exc), param_hint="--recipe/--data/--set") from None
    if dry_run:
        from edgepack import dryrun

        with _interruptible("bundle", (EdgepackError, ValueError)):
            click.echo(dryrun.report(resolved))
        return
    if sign_key is not None:
        _private_key(sign_key, "--sign-key")  # a bad key is refused now, not after the build
    from edgepack.pipeline import build as run_build

    with _interruptible("bundle", (EdgepackError, ValueError)):
        bundle = run_build(resolved, force=force, sign_key=sign_key).path
    _summary(bundle)
    if sign_key is not None:
        click.echo(f"  signed with {sign_key}: check with edgepack-run verify {bundle} --public-key KEY.pub")


@main.command(context_settings=CONTEXT)
def recipes() -> None:
    """List the shipped recipes and what each builds (edgepack build --recipe NAME; any other .toml file
    works too, and may extend a shipped one)."""
    from edgepack.recipe import DEFAULT_RECIPE, GENERIC_RECIPE, shipped_recipes

    shipped = shipped_recipes()
    width = max(len(name) for name, _ in shipped) + 2
    notes = {DEFAULT_RECIPE: " [default]", GENERIC_RECIPE: " [default with --data]"}
    for name, description in shipped:
        click.echo(f"{name:<{width}}{description}{notes.get(name, '')}")


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


@main.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder the new bundle goes into [default: BUNDLE's folder/rebuilt]; never the original.",
)
@click.option("--data", default=None, help="Data to use instead of the recorded source (a moved copy of it).")
@click.option("--no-cache", is_flag=True, help="Train teacher and student anew (fresh temporary cache).")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the report."
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def rebuild(
    bundle: Path, out: Path | None, data: str | None, no_cache: bool, json_path: Path | None, verbose: bool
) -> None:
    """Build BUNDLE again from its manifest (same resolved recipe, target, seeds and data source) into another
    folder, and report what differs: data digests, teacher weights, package versions, seeds, metrics, files.
    Differences are reported, not errors: the exit status is 0 when the rebuild ran."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    import json

    from edgepack import rebuild as lib

    _writable(json_path, "--json")
    with _interruptible("bundle", (EdgepackError, ValueError)):
        result = lib.rebuild(bundle, out=out, data=data, no_cache=no_cache)
    click.echo(lib.format_report(result))
    if json_path is not None:
        json_path.write_text(json.dumps(result.report, indent=2), encoding="utf-8")
        click.echo(f"wrote {json_path}")


def _writable(path: Path | None, option: str) -> None:
    if path is not None and not path.parent.resolve().is_dir():
        raise click.BadParameter(f"folder {path.parent} does not exist", param_hint=option)


# where `edgepack bench` looks for labelled data without --data: named in its help, so defined here, not in
# edgepack.bench (importing which checks the bench extra)
DEFAULT_DATA = Path("..") / "shared" / "data" / "clinc150"


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
    default=None,
    help="Labeled data for accuracy, read as edgepack build reads it: a folder of split files (a split it lacks "
    "is carved as the first bundle's build carved it), a CLINC JSON, a Hub NAME[:CONFIG], or one CSV / JSONL / "
    f"Parquet file (measured whole, unless the bundle was built from it) [default: {DEFAULT_DATA} if present].",
)
@click.option(
    "--validation",
    default=None,
    help="Labeled data to choose the teacher's out-of-scope threshold on, and to draw the out-of-scope "
    "trade-off on [default: --data's validation split].",
)
@text_column_option
@label_column_option
@oos_label_option("the first")
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
    help="Calls per contender in each interleaved round, in an order shuffled per round (1: each call right "
    "after other contenders ran).",
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
    json_path: Path | None,
    plot_path: Path | None,
    **options: Any,  # the other options, passed through to edgepack.bench.command.run (typed there)
) -> None:
    """Measure BUNDLES side by side (and their teacher, Optimum's INT8 model of it, --peer): size, latency,
    throughput, accuracy, and how far each bundle is from the physical floor of its arithmetic on this CPU.

    The first bundle is highlighted in the plot and is the graph the peer runs; its own teacher is the one
    compared with, unless --teacher names another or --no-teacher none. Needs the bench extra:
    pip install 'edgepack[bench]'."""
    try:
        import edgepack.bench  # noqa: F401 - checks the bench extra (edgepack.bench.MissingExtra)
    except ImportError as exc:
        raise click.ClickException(str(exc)) from None
    from edgepack.bench import command

    if teacher is not None and no_teacher:
        raise click.UsageError("--teacher and --no-teacher exclude each other")
    _writable(json_path, "--json")
    _writable(plot_path, "--plot")
    command.run(
        bundles,
        default_data=DEFAULT_DATA,
        teacher=teacher,
        no_teacher=no_teacher,
        json_path=json_path,
        plot_path=plot_path,
        **options,
    )


@main.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Executable to write [default: dist/<bundle folder name>].",
)
@click.option("--force", is_flag=True, help="Replace an existing executable.")
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Ed25519 public key (edgepack keygen's .pub): embedded, and the executable refuses to start "
    "unless its bundle's manifest.sig is this key's signature.",
)
def freeze(bundle: Path, out: Path | None, force: bool, public_key: Path | None) -> None:
    """Freeze BUNDLE into one executable (PyInstaller) that classifies text without a Python install.

    The executable carries the bundle and edgepack_runtime only (no torch, no transformers), verifies the
    bundle every time it starts, and answers its arguments or stdin lines as JSON lines (run it with -h).
    With --public-key it also checks the bundle's signature at start (and carries cryptography for that).
    Needs PyInstaller: pip install 'edgepack[freeze]'."""
    from edgepack import freeze as lib

    out = out if out is not None else Path("dist") / bundle.resolve().name
    with _interruptible("executable", (EdgepackError, OSError)):
        try:
            result = lib.freeze(
                bundle, out, force=force, progress=lambda m: click.echo(m, err=True), public_key=public_key
            )
        except lib.BundleRefused as exc:
            raise click.BadParameter(str(exc), param_hint="BUNDLE") from None
        except lib.DestinationError as exc:
            raise click.BadParameter(str(exc), param_hint="--out") from None
        except lib.PublicKeyRefused as exc:
            raise click.BadParameter(str(exc), param_hint="--public-key") from None
    click.echo(
        f"Froze {bundle} into {result.path}: {result.size_bytes / 1e6:.1f} MB in {result.seconds:.0f} s"
    )
    click.echo(f"  Python packages inside: {', '.join(result.packages)} (+ the standard library)")
    click.echo(f"  checked absent: {', '.join(lib.BANNED)}")
    click.echo(f'  try: {result.path} "what is the pin number for my account?"   (or --version, --bench, -h)')
    if public_key is not None:
        click.echo(f"  checks at start that its bundle is signed by {public_key}")


def _private_key(path: Path, option: str) -> Any:
    """The private key at `path`; a key that cannot be used is a bad `option`."""
    from edgepack import signing

    try:
        return signing.load_private_key(path)
    except signing.KeyFileError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


@main.command(context_settings=CONTEXT)
@click.argument("out_prefix", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing key pair of that name.")
def keygen(out_prefix: Path, force: bool) -> None:
    """Make an Ed25519 key pair for signing bundles: OUT_PREFIX.key (private, PKCS8 PEM, readable by you
    only: keep it on the build machine) and OUT_PREFIX.pub (public, PEM: give it to what runs bundles)."""
    from edgepack import signing

    try:
        pair = signing.keygen(out_prefix, force=force)
    except signing.KeyFileError as exc:
        raise click.BadParameter(str(exc), param_hint="OUT_PREFIX") from None
    click.echo(f"wrote {pair.private} (private key, readable by you only) and {pair.public} (public key)")
    click.echo(f"  key id {pair.key_id}")
    click.echo(f"  sign: edgepack sign BUNDLE --key {pair.private}")
    click.echo(f"  check: edgepack-run verify BUNDLE --public-key {pair.public}")


@main.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key from edgepack keygen (PREFIX.key).",
)
def sign(bundle: Path, key_path: Path) -> None:
    """Sign BUNDLE: verify it, then write manifest.sig, an Ed25519 signature over its manifest's digest
    (which lists every file's sha256), replacing an earlier signature."""
    from edgepack import signing

    private_key = _private_key(key_path, "--key")
    warning = signing.loose_permissions(key_path)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    try:
        signed = signing.sign_folder(bundle, private_key)
    except signing.BundleRefused as exc:
        raise click.BadParameter(str(exc), param_hint="BUNDLE") from None
    except signing.SigningError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"signed {bundle}: wrote {signed.path} (key id {signed.key_id[:16]}..., manifest digest "
        f"{signed.manifest_sha256[:16]}...)"
    )
    public = key_path.with_suffix(signing.PUBLIC_SUFFIX)
    shown = public if key_path.suffix == signing.PRIVATE_SUFFIX and public.is_file() else "PUBLIC_KEY"
    click.echo(f"  check: edgepack-run verify {bundle} --public-key {shown}")


if __name__ == "__main__":
    main()
