"""`edgepack` command line: a thin click layer over the library (heavy imports happen inside commands)."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import click

from edgepack import __version__
from edgepack.errors import EdgepackError, RecipeError

CONTEXT = {"help_option_names": ["-h", "--help"]}

# What --quick changes: a small search and short training, same stages (the clinc-quick recipe's budget).
QUICK_OVERRIDES: dict[str, Any] = {
    "teacher.epochs": 1,
    "search.trials": 2,
    "search.timeout_minutes": 2,
    "search.train_fraction": 0.2,
    "search.epochs": [1, 2],
    "distill.epochs": 2,
}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="edgepack")
def main() -> None:
    """Turn a fine-tuned transformer text classifier into a small, fast, verified ONNX Runtime bundle."""


def _overrides(options: dict[str, Any], settings: tuple[str, ...], quick: bool) -> dict[str, Any]:
    from edgepack.recipe import parse_override

    overrides: dict[str, Any] = dict(QUICK_OVERRIDES) if quick else {}
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
    type=click.Choice(["cpu-avx2", "cpu-avx512-vnni", "arm64"]),
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
@click.option("--quick", is_flag=True, help="Small budget: one teacher epoch, two short trials.")
@click.option(
    "--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE", help="Override any recipe value."
)
@click.option("--force", is_flag=True, help="Replace an existing bundle of the same name.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def build(
    recipe: str, settings: tuple[str, ...], quick: bool, force: bool, verbose: bool, **options: Any
) -> None:
    """Build a bundle: fine-tune, distill, export, fuse, quantize, evaluate, package."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from edgepack.recipe import load_recipe

    overrides = _overrides(options, settings, quick)
    try:
        resolved = load_recipe(recipe, overrides)
    except RecipeError as exc:
        raise click.BadParameter(str(exc), param_hint="--recipe/--set") from None
    from edgepack.pipeline import build as run_build

    signal.signal(
        signal.SIGTERM, _interrupt
    )  # `kill` cleans up like Ctrl-C: no work files, no partial bundle
    try:
        bundle = run_build(resolved, force=force)
    except KeyboardInterrupt:
        click.echo("Interrupted: no bundle was written (an existing one is untouched).", err=True)
        sys.exit(130)
    except (EdgepackError, ValueError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    _summary(bundle)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _summary(bundle: Any) -> None:
    import json

    manifest = json.loads((bundle / "manifest.json").read_text())
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


if __name__ == "__main__":
    main()
