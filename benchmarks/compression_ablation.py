"""The compression ablation (issue 12): variants of a recipe, each built with several distillation seeds, side by
side: accuracy as shipped and plain, in-scope accuracy, out-of-scope recall, size, build time; mean and range.

    python benchmarks/compression_ablation.py \
        --variant "pruned=bundles/clinc-pruned-base-s42,bundles/clinc-pruned-base-s43,..." \
        --variant "pruned + augmented recovery=bundles/clinc-pruned-aug-s42,..." \
        [--json benchmarks/results/compression_ablation.json] [--section compression_ablation] [--note TEXT]

Every figure comes from the bundles' manifests: the build's evaluate stage measured each finished bundle through
the runtime on the whole test split (5,500 CLINC150 queries), with the out-of-scope rule it ships, chosen on
validation. Latency is not measured here (see `edgepack bench` and compare_bundles.py): pruning decides it and
augmentation does not change the graph.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from results_md import cpu_description, mean_range, write_section  # noqa: E402

# (column, how to read it from a manifest, format)
FIGURES = (
    ("as shipped", lambda m: m["metrics"]["test_thresholded"]["accuracy"], "{:.4f}"),
    ("plain argmax", lambda m: m["metrics"]["test"]["accuracy"], "{:.4f}"),
    ("in-scope", lambda m: m["metrics"]["test_thresholded"]["in_scope_accuracy"], "{:.4f}"),
    ("oos recall", lambda m: m["metrics"]["test_thresholded"]["oos_recall"], "{:.3f}"),
    ("validation", lambda m: m["metrics"]["validation_thresholded"]["accuracy"], "{:.4f}"),
    ("MB", lambda m: m["metrics"]["model_onnx_bytes"] / 1e6, "{:.2f}"),
    ("build s (augment + distill + prune)", lambda m: _training_seconds(m), "{:.0f}"),
)


def _training_seconds(manifest: dict[str, Any]) -> float:
    """This build's own training time: a cached student or transfer set counts the time it took to make."""
    seconds = 0.0
    for record in (manifest.get("augmentation"), manifest.get("distillation"), manifest.get("pruning")):
        if record:
            seconds += float(record.get("seconds") or 0)
    return seconds


def _summary(values: list[float], fmt: str) -> str:
    return mean_range(statistics.fmean(values), min(values), max(values), fmt, spread=len(values) > 1)


def _load(spec: str) -> tuple[str, list[dict[str, Any]]]:
    if "=" not in spec:
        raise click.BadParameter(f"{spec!r}: expected NAME=BUNDLE[,BUNDLE...]", param_hint="--variant")
    name, paths = spec.split("=", 1)
    manifests = []
    for path in paths.split(","):
        manifest = Path(path.strip()) / "manifest.json"
        if not manifest.is_file():
            raise click.BadParameter(
                f"{manifest} does not exist: build that bundle first", param_hint="--variant"
            )
        manifests.append(json.loads(manifest.read_text()))
    return name.strip(), manifests


def _row(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "bundles": [m["name"] for m in manifests],
        "seeds": [m["recipe"]["distill"]["seed"] for m in manifests],
        **{column: [read(m) for m in manifests] for column, read, _ in FIGURES},
    }


def _markdown(rows: dict[str, dict[str, Any]], teacher: dict[str, Any], note: str) -> str:
    head = "| variant | seeds | " + " | ".join(c for c, _, _ in FIGURES) + " |"
    lines = [head, "|" + " --- |" * (len(FIGURES) + 2)]
    for name, row in rows.items():
        cells = [_summary(row[c], fmt) for c, _, fmt in FIGURES]
        lines.append(f"| {name} | {', '.join(map(str, row['seeds']))} | " + " | ".join(cells) + " |")
    shipped, plain = teacher["test_thresholded"]["accuracy"], teacher["test"]["accuracy"]
    return (
        "## Compression ablation (issue 12)\n\n"
        f"Machine: {cpu_description()}. Mean over the seeds (min-max); CLINC150 `plus` test split, measured "
        "through the runtime by each build's evaluate stage, with the out-of-scope rule each bundle ships (chosen "
        f"on validation). The teacher: {shipped:.4f} as shipped (its top-probability threshold chosen on "
        f"validation), {plain:.4f} plain. Written by `benchmarks/compression_ablation.py`.\n\n"
        + "\n".join(lines)
        + (f"\n\n{note.strip()}" if note else "")
    )


@click.command()
@click.option("--variant", "variants", multiple=True, required=True, help="NAME=BUNDLE[,BUNDLE...]")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the figures as JSON.")
@click.option("--section", default="compression_ablation", show_default=True, help="RESULTS.md section.")
@click.option("--note", default="", help="Markdown written under the table (commands, what it shows).")
def main(variants: tuple[str, ...], json_out: Path | None, section: str, note: str) -> None:
    loaded = dict(_load(spec) for spec in variants)
    rows = {name: _row(manifests) for name, manifests in loaded.items()}
    teacher = next(iter(loaded.values()))[0]["metrics"]["teacher"]
    markdown = _markdown(rows, teacher, note)
    click.echo(markdown)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"teacher": teacher, "variants": rows}, indent=2))
    write_section(section, markdown)


if __name__ == "__main__":
    main()
