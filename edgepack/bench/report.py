"""What `edgepack bench` shows: the terminal tables and the plot, both drawn from the JSON report alone
(edgepack.bench.measure documents its keys)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _aligned(table: list[list[str]]) -> list[str]:
    """First column left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])
        for row in table
    ]


def _contender_row(r: dict[str, Any]) -> list[str]:
    lat, acc, vs = r["latency"], r["accuracy"] or {}, r["vs_teacher"] or {}
    delta = vs.get("accuracy_delta")
    basis = {"threshold": "", "argmax": " (argmax)"}.get(vs.get("accuracy_basis") or "", "")
    return [
        ("* " if r["highlight"] else "") + r["name"],
        f"{r['size']['bytes'] / 1e6:.1f}",
        *(f"{lat[k + '_ms']:.3f}" for k in ("p50", "p90", "p99", "mean", "std")),
        f"{r['throughput']['texts_per_s']:.0f}",
        _fmt(acc.get("accuracy"), ".4f"),
        _fmt(acc.get("argmax_accuracy"), ".4f"),
        _fmt(acc.get("in_scope_accuracy"), ".4f"),
        _fmt(acc.get("oos_recall"), ".4f"),
        _fmt(vs.get("speedup"), ".2f"),
        "-" if not vs.get("speedup_ci95") else "{:.2f}-{:.2f}".format(*vs["speedup_ci95"]),
        _fmt(vs.get("size_ratio"), ".3f"),
        _fmt(delta, "+.4f") + basis,
    ]


def _floor_lines(report: dict[str, Any]) -> list[str]:
    rates = report.get("gemm_rates")
    rows = [r for r in report["contenders"] if r.get("floor")]
    if not rates or not rows:
        return []
    m, k, n = rates["shape"]
    lines = [
        "",
        f"Physical floor. Attainable GEMM rates here ({rates['threads']} thread(s), ONNX Runtime kernels at "
        f"{m}x{k}x{n}): FP32 {rates['fp32'] / 1e9:.1f}, INT8 {rates['int8_u8_weights'] / 1e9:.1f} (uint8 "
        f"weights) / {rates['int8_s8_weights'] / 1e9:.1f} (int8 weights) GMAC/s.",
        "",
    ]
    columns = ["bundle", "tokens", "INT8 MMAC", "FP32 MMAC", "floor ms", "graph ms", "p50 ms", "p50/floor"]
    table = [[*columns, "INT8 GEMM ms", "FP32 GEMM ms", "other ops ms"]]
    for r in rows:
        f, q = r["floor"], r["floor"]["median_query"]
        table.append(
            [
                r["name"],
                str(f["median_tokens"]),
                f"{q['int8_macs'] / 1e6:.1f}",
                f"{q['fp32_macs'] / 1e6:.1f}",
                f"{f['floor_ms']:.3f}",
                f"{q['graph_ms']:.3f}",
                f"{r['latency']['p50_ms']:.3f}",
                f"{f['latency_over_floor']:.2f}",
                f"{q['int8_gemm_ms']:.3f}",
                f"{q['fp32_gemm_ms']:.3f}",
                f"{q['other_ms']:.3f}",
            ]
        )
    lines += _aligned(table)
    lines.append(
        "floor: MACs / the faster attainable rate, median over the latency queries. For the median-length query: "
        "MACs, graph ms (InferenceSession.run alone, median) and kernel times from an ONNX Runtime profile "
        "(the profiler's own cost included, so they sum to more than graph ms)."
    )
    return lines


def format_table(report: dict[str, Any]) -> str:
    s = report["settings"]
    head = (
        f"{s['threads']} thread(s); latency at batch 1: {s['runs']} calls each, interleaved {s['block']} at a "
        f"time, on {s['queries']} queries (tokenization included); throughput at batch {s['batch_size']}; "
        "accuracy on "
        + (f"{s['data_texts']} texts of {s['data']}" if s["data_texts"] else "no data (pass --data)")
    )
    columns = ["contender", "size MB", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms", "texts/s"]
    columns += ["accuracy", "argmax", "in-scope", "oos recall", "speed-up", "95%", "size x", "acc delta"]
    lines = [head, "", *_aligned([columns, *map(_contender_row, report["contenders"])]), ""]
    lines.append("* first bundle. accuracy: as answered, with the contender's out-of-scope rule (bundles:")
    lines.append(
        "  shipped; teacher and optimum: top probability, threshold chosen on validation data; peer:"
    )
    lines.append("  the bundle's, when it is the top probability, else argmax); argmax: without it.")
    lines.append("  speed-up: teacher p50 / p50; 95%: its bootstrap interval over the interleaved rounds;")
    lines.append(
        "  size x: bytes / teacher bytes; acc delta: vs the teacher, both thresholded, or both argmax"
    )
    lines.append("  when either has no threshold.")
    for c in report["contenders"]:
        acc = c["accuracy"] or {}
        if acc.get("threshold") is not None:
            lines.append(
                f"  {c['name']}: out-of-scope score {acc['oos_method']}, threshold {acc['threshold']:.4g}"
            )
        if acc.get("unknown_labels"):
            lines.append(f"  {c['name']} does not know these gold labels: {', '.join(acc['unknown_labels'])}")
        if c.get("build"):
            b = c["build"]
            tried = "".join(f"; {level} failed: {why}" for level, why in b["failed_levels"].items())
            lines.append(f"  {c['name']}: ORTOptimizer {b['optimization_level']}{tried}")
    lines += _floor_lines(report)
    lines += [f"skipped {s['contender']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Accuracy vs batch-1 latency (log scale); marker area proportional to size on disk; the first bundle
    outlined; the first bundle's physical floor as a dotted line; names, sizes and latencies in the legend
    (markers this close together leave no room for labels beside them). Without accuracy figures the y axis
    is throughput instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows = report["contenders"]
    with_accuracy = all(r["accuracy"] for r in rows)
    biggest = max(r["size"]["bytes"] for r in rows) or 1
    floor = next((r for r in rows if r.get("floor")), None)
    with_tradeoff = any((r["accuracy"] or {}).get("tradeoff") for r in rows)
    fig, axes = plt.subplots(1, 2 if with_tradeoff else 1, figsize=(16 if with_tradeoff else 9, 5.5))
    ax = axes[0] if with_tradeoff else axes
    for i, r in enumerate(rows):
        x = r["latency"]["p50_ms"]
        y = r["accuracy"]["accuracy"] if with_accuracy else r["throughput"]["texts_per_s"]
        ax.scatter(
            x,
            y,
            s=40 + 2000 * r["size"]["bytes"] / biggest,  # points^2
            alpha=0.6,
            color=f"C{i % 10}",
            edgecolors="red" if r["highlight"] else "black",
            linewidths=2.5 if r["highlight"] else 0.6,
            zorder=3,
            label=f"{r['name']}: {r['size']['bytes'] / 1e6:.1f} MB, {x:.2f} ms",
        )
    if floor is not None:
        ax.axvline(floor["floor"]["floor_ms"], color="grey", linestyle=":", zorder=1)
        ax.annotate(
            f"physical floor of {floor['name']}",
            (floor["floor"]["floor_ms"], 0.03),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            color="grey",
            xytext=(3, 0),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else ""))
    ax.margins(x=0.15, y=0.15)
    beside = {} if with_tradeoff else {"bbox_to_anchor": (1.01, 1.0)}  # inside when a panel is to the right
    legend = ax.legend(loc="upper left", fontsize=8, frameon=False, **beside)
    for handle in legend.legend_handles:
        handle.set_sizes([60])
    s = report["settings"]
    ax.set_xlabel(f"latency at batch 1, {s['threads']} thread(s), median (ms, log scale)")
    accuracy_label = "accuracy (each with its out-of-scope threshold)"
    ax.set_ylabel(accuracy_label if with_accuracy else f"throughput at batch {s['batch_size']} (texts/s)")
    ax.set_title("edgepack bench (marker area ~ size on disk; first bundle outlined in red)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if with_tradeoff:
        _tradeoff_panel(axes[1], rows)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _tradeoff_panel(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Out-of-scope recall against in-scope accuracy as each contender's threshold moves: test data solid,
    validation dashed, the contender's own threshold marked (a star on test, a circle on validation)."""
    for i, r in enumerate(rows):
        curves = (r["accuracy"] or {}).get("tradeoff")
        if not curves:
            continue
        color, method = f"C{i % 10}", r["accuracy"]["oos_method"]
        for split, style, marker in (("test", "-", "*"), ("validation", "--", "o")):
            curve = curves.get(split)
            if curve is None:
                continue
            label = f"{r['name']} ({method}), {split}"
            ax.plot(curve["in_scope_accuracy"], curve["oos_recall"], style, color=color, lw=1.2, label=label)
            if curve["shipped"] is not None:
                ax.plot(
                    *curve["shipped"], marker, color=color, markersize=11 if marker == "*" else 6, mec="black"
                )
    ax.set_xlim(0.8, 1.0)
    ax.set_xlabel("in-scope accuracy")
    ax.set_ylabel("out-of-scope recall")
    ax.set_title("out-of-scope trade-off as the threshold moves (marker: the shipped threshold)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7, frameon=False)
