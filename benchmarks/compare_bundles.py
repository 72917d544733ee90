"""Bundles side by side, in one run: size, batch-1 latency at 1 and 2 threads, throughput, accuracy; a plot.

    python benchmarks/compare_bundles.py bundles/clinc-int8 bundles/clinc-pruned-int8 ... \
        [--rounds 5] [--runs 200] [--section pruning]

Latency is measured in rounds by `edgepack bench`'s own interleaving (edgepack.bench.measure.interleaved_times,
blocks of `--runs` calls): every round times each bundle on the same `--runs` predict calls in a row, in an
order shuffled from round to round, so drift hits all alike, after 20 warm-up calls each; the figure
reported is the median of the round medians. Queries are the CLINC150 test split's texts, tokenization included. Accuracy is measured
here, through the runtime, on the whole test split (the out-of-scope threshold each bundle ships applied).
Writes benchmarks/results/<section>.json, benchmarks/results/<section>.png and a RESULTS.md section.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import click
from edgepack_runtime import Classifier
from edgepack_runtime.bench import accuracy, disk_size, summarize, throughput
from edgepack_runtime.data import load_labeled

from edgepack.bench.measure import interleaved_times

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from results_md import cpu_description, write_section  # noqa: E402

CLINC = ROOT.parent / "shared" / "data" / "clinc150"


def _interleaved_latency(
    clfs: dict[str, Classifier], texts: list[str], rounds: int, runs: int
) -> dict[str, Any]:
    """Median over `rounds` interleaved rounds of each bundle's p50 and p90 over `runs` calls in a row."""
    calls = {name: clf.predict for name, clf in clfs.items()}
    say = lambda message: click.echo(message, err=True)  # noqa: E731
    by_round = interleaved_times(calls, texts, rounds * runs, warmup=20, log=say, block=runs)
    out = {}
    for name, timed in by_round.items():
        stats = [summarize(times, warmup=20) for times in timed]
        medians = [s["p50_ms"] for s in stats]
        out[name] = {
            "p50_ms": statistics.median(medians),
            "p90_ms": statistics.median(s["p90_ms"] for s in stats),
            "round_p50s": medians,
        }
    return out


def _describe(clf: Classifier) -> dict[str, Any]:
    m = clf.manifest
    pruning = m.get("pruning") or {}
    return {
        "layers": m["model"].get("layers"),
        "vocab_size": m["model"].get("vocab_size"),
        "parameters": (pruning.get("parameters") or {}).get("after") or m["distillation"].get("parameters"),
        "quantization": m["quantization"]["mode"],
        "target": m["target"]["name"],
    }


def plot(report: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    rows = report["bundles"]
    for i, (name, row) in enumerate(rows.items()):
        mb = row["size"]["total_bytes"] / 1e6
        ax.scatter(
            row["latency"]["1"]["p50_ms"],
            row["accuracy"]["accuracy"],
            s=mb * 40,
            alpha=0.55,
            color=f"C{i}",
            edgecolors="black",
            linewidths=1.5 if i == 0 else 0.5,
        )
        ax.annotate(
            f"{name}\n{mb:.1f} MB",
            (row["latency"]["1"]["p50_ms"], row["accuracy"]["accuracy"]),
            textcoords="offset points",
            xytext=(10, -4),
            fontsize=8,
        )
    ax.set_xlabel("latency at batch 1, 1 thread, median (ms)")
    ax.set_ylabel("test accuracy (CLINC150 plus, oos threshold applied)")
    ax.set_title(f"{title}\n(marker area ~ size on disk; the first bundle outlined)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(report: dict[str, Any], base: str) -> str:
    rows = report["bundles"]
    ref = rows[base]
    lines = [
        f"Machine: {report['machine']}. Latency: median of {report['rounds']} interleaved rounds x {report['runs']} "
        "predict calls on CLINC test queries (tokenization included); throughput: `predict_batch` at batch "
        f"{report['batch_size']}; accuracy: whole test split ({report['test_size']} queries) through the runtime.",
        "",
        "| bundle | layers | vocab | params | size MB | p50 1T ms | p50 2T ms | vs first (1T) | texts/s 1T | accuracy | in-scope | oos recall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        d, a = r["described"], r["accuracy"]
        lines.append(
            f"| `{name}` | {d['layers']} | {d['vocab_size']} | {d['parameters'] / 1e6:.1f}M | "
            f"{r['size']['total_bytes'] / 1e6:.1f} | {r['latency']['1']['p50_ms']:.2f} | {r['latency']['2']['p50_ms']:.2f} | "
            f"{r['latency']['1']['p50_ms'] / ref['latency']['1']['p50_ms']:.2f}x | {r['throughput']['1']['texts_per_s']:.0f} | "
            f"{a['accuracy']:.4f} | {a['in_scope_accuracy']:.4f} | {a['oos_recall']:.4f} |"
        )
    return "\n".join(lines)


@click.command()
@click.argument(
    "bundles", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--runs", default=200, show_default=True, type=click.IntRange(min=10), help="predict calls per round"
)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--section", default="compare", show_default=True, help="name of the RESULTS.md section and files"
)
@click.option("--title", default="Bundles side by side", show_default=True)
def main(
    bundles: tuple[Path, ...], rounds: int, runs: int, batch_size: int, section: str, title: str
) -> None:
    """Compare BUNDLES (the first is the reference for ratios)."""
    pairs = load_labeled(CLINC, split="test")
    texts = [t for t, _ in pairs]
    names = [b.name for b in bundles]
    report: dict[str, Any] = {
        "machine": cpu_description(),
        "rounds": rounds,
        "runs": runs,
        "batch_size": batch_size,
        "test_size": len(pairs),
        "bundles": {n: {} for n in names},
    }
    for threads in (1, 2):
        clfs = {n: Classifier.load(b, threads=threads) for n, b in zip(names, bundles, strict=True)}
        click.echo(f"latency, {threads} thread(s) ...", err=True)
        for name, stats in _interleaved_latency(clfs, texts, rounds, runs).items():
            report["bundles"][name].setdefault("latency", {})[str(threads)] = stats
        for name, clf in clfs.items():
            report["bundles"][name].setdefault("throughput", {})[str(threads)] = throughput(
                clf, texts, batch_size
            )
            if threads == 1:
                click.echo(f"accuracy of {name} ...", err=True)
                report["bundles"][name] |= {
                    "accuracy": accuracy(clf, pairs, batch_size),
                    "size": disk_size(clf),
                    "described": _describe(clf),
                }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{section}.json").write_text(json.dumps(report, indent=2))
    plot(report, out / f"{section}.png", title)
    text = f"## {title}\n\n{markdown(report, names[0])}\n\n![{title}](results/{section}.png)"
    write_section(section, text)
    click.echo(text)


if __name__ == "__main__":
    main()
