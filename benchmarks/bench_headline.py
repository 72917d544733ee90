"""The headline `edgepack bench` table and plot for the default bundle, checked against issue 5's goals, written
into benchmarks/RESULTS.md with the machine, library versions and thread settings.

    python benchmarks/bench_headline.py [BUNDLE ...] [--teacher FOLDER] [--threads 1] [--runs 300] [--repeats 3]

The first BUNDLE (default bundles/clinc-int8) is the one the goals are about; the others are shown beside it.
For each thread count, in one process: the teacher (PyTorch pipeline, its out-of-scope threshold chosen on the
validation split), the Optimum pipeline on the first bundle's graph, and every bundle, loaded once and measured
by `edgepack.bench.measure.run` (latency, throughput, accuracy, floor); then the interleaved latency measurement is
repeated (`--repeats` in all) with blocks of 10 calls (steady state, the default of `edgepack bench`) and with
blocks of 1 (A B C A B C: each call right after the others ran); ratios are the median over repeats of the
per-repeat ratios of medians.
Writes benchmarks/results/headline.json, benchmarks/results/headline-<N>t.png and the RESULTS.md section.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

from edgepack_runtime.data import load_labeled

from edgepack.bench import contenders as lib
from edgepack.bench import measure as bench
from edgepack.bench import report as bench_report
from edgepack.bench.floor import gemm_rates

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from results_md import cpu_description, write_section  # noqa: E402

CLINC = ROOT.parent / "shared" / "data" / "clinc150"
RESULTS = ROOT / "benchmarks" / "results"
GOALS = {  # issue 5, at batch 1 on one thread
    "speedup_vs_teacher": 15.0,
    "speedup_vs_optimum": 2.0,
    "latency_over_floor": 2.0,
    "teacher_size_over_bundle": 20.0,
    "accuracy_delta": -0.01,
}


def cached_teacher(bundle: Path) -> Path:
    """The fine-tuned teacher the bundle's build cached (.cache/edgepack/teacher-<key>/model under ROOT)."""
    folder, ready = lib.bundle_teacher(bundle, root=ROOT)
    if not ready:
        where = f"at {folder}" if folder is not None else f"named in {bundle}'s manifest"
        sys.exit(f"no cached teacher {where}: pass --teacher FOLDER (a fine-tuned model folder)")
    assert folder is not None
    return folder


def measure(args: argparse.Namespace, threads: int, pairs: Any, validation: Any) -> dict[str, Any]:
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    contenders: list[lib.Contender] = []
    skipped: list[dict[str, str]] = []
    try:
        lib.load_contenders(
            args.bundles, str(args.teacher), "optimum", validation, threads, contenders, skipped, log
        )
        log(f"GEMM rates on {threads} thread(s) ...")
        rates = gemm_rates(threads)
        texts = bench.latency_queries(pairs)
        report = bench.run(
            contenders,
            texts,
            pairs,
            threads=threads,
            batch_size=32,
            runs=args.runs,
            warmup=args.warmup,
            data=CLINC,
            skipped=skipped,
            rates=rates,
            log=log,
        )
        first = {r["name"]: r["latency"]["p50_ms"] for r in report["contenders"]}
        repeats: dict[int, list[dict[str, float]]] = {bench.DEFAULT_BLOCK: [first], 1: []}
        for block, done in repeats.items():
            for i in range(len(done), args.repeats):
                log(f"block {block}: repeat {i + 1}/{args.repeats} of the interleaved latency rounds")
                latencies, _ = bench.interleaved_latency(
                    contenders, texts, args.runs, args.warmup, log, block
                )
                done.append({name: lat["p50_ms"] for name, lat in latencies.items()})
    finally:
        for c in contenders:
            for clean in c.cleanup:
                clean()
    return {
        "report": report,
        "repeat_p50_ms": {str(block): done for block, done in repeats.items()},
        "headline": {str(block): headline(report, done) for block, done in repeats.items()},
    }


def _median_ratio(repeats: list[dict[str, float]], over: str, under: str) -> dict[str, float]:
    ratios = [r[over] / r[under] for r in repeats]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def headline(report: dict[str, Any], repeats: list[dict[str, float]]) -> dict[str, Any]:
    """The first bundle against the goals: ratios as medians over repeats."""
    rows = {r["kind"] if r["kind"] != "bundle" else r["name"]: r for r in report["contenders"]}
    bundle = next(r for r in report["contenders"] if r["highlight"])
    teacher, peer = rows.get("teacher"), rows.get("peer")
    p50 = statistics.median(r[bundle["name"]] for r in repeats)
    out: dict[str, Any] = {"bundle": bundle["name"], "p50_ms": p50}
    if teacher:
        out["speedup_vs_teacher"] = _median_ratio(repeats, teacher["name"], bundle["name"])
        out["teacher_size_over_bundle"] = teacher["size"]["bytes"] / bundle["size"]["bytes"]
        out["accuracy_delta"] = bundle["vs_teacher"]["accuracy_delta"]
        out["accuracy_basis"] = bundle["vs_teacher"]["accuracy_basis"]
    if peer:
        out["speedup_vs_optimum"] = _median_ratio(repeats, peer["name"], bundle["name"])
    if bundle["floor"]:
        out["floor_ms"] = bundle["floor"]["floor_ms"]
        out["latency_over_floor"] = p50 / bundle["floor"]["floor_ms"]
    return out


def _verdict(value: float, goal: float, higher_is_better: bool = True) -> str:
    return "met" if (value >= goal if higher_is_better else value <= goal) else "missed"


def goals_table(by_block: dict[str, dict[str, Any]], threads: int) -> list[str]:
    h, strict = by_block[str(bench.DEFAULT_BLOCK)], by_block["1"]
    lines = [
        f"| goal (issue 5) | measured (blocks of {bench.DEFAULT_BLOCK}) | | strict A B C interleave |",
        "| --- | --- | --- | --- |",
    ]

    def ratio(key: str, text: str) -> None:
        if key in h:
            r, s = h[key], strict[key]
            lines.append(
                f"| {text} >= {GOALS[key]:g}x | {r['median']:.2f}x (repeats {r['min']:.2f}-{r['max']:.2f}) "
                f"| {_verdict(r['median'], GOALS[key])} | {s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f}) |"
            )

    ratio("speedup_vs_teacher", "faster than the teacher's PyTorch pipeline")
    ratio("speedup_vs_optimum", "faster than the Optimum pipeline on the same graph")
    if "latency_over_floor" in h:
        v = h["latency_over_floor"]
        lines.append(
            f"| within {GOALS['latency_over_floor']:g}x of the physical floor | {v:.2f}x ({h['p50_ms']:.3f} ms "
            f"vs {h['floor_ms']:.3f} ms) | {_verdict(v, GOALS['latency_over_floor'], higher_is_better=False)} "
            f"| {strict['latency_over_floor']:.2f}x |"
        )
    if "teacher_size_over_bundle" in h:
        v = h["teacher_size_over_bundle"]
        lines.append(
            f"| >= {GOALS['teacher_size_over_bundle']:g}x smaller than the teacher's weights | {v:.1f}x "
            f"| {_verdict(v, GOALS['teacher_size_over_bundle'])} | |"
        )
    if h.get("accuracy_delta") is not None:
        v = h["accuracy_delta"]
        lines.append(
            f"| accuracy >= the teacher's - 1 point ({h['accuracy_basis']}) | {100 * v:+.2f} points "
            f"| {_verdict(v, GOALS['accuracy_delta'])} | |"
        )
    if threads != 1:
        lines.append(f"| (the goals are stated for 1 thread; this is {threads}) | | | |")
    return lines


def markdown(results: dict[str, Any], command: str) -> str:
    lines = [
        "## `edgepack bench`: the headline table (issue 5)",
        "",
        f"Written by `{command}`.",
        "",
        f"Machine: {results['machine']['cpu']}; Python {results['machine']['python']}; "
        + ", ".join(f"{k} {v}" for k, v in results["machine"]["versions"].items())
        + ".",
        "Threads: ONNX Runtime `intra_op_num_threads` = N, `inter_op_num_threads` = 1, sequential execution; the "
        "teacher `torch.set_num_threads(N)`. Latency at batch 1, tokenization included, in interleaved rounds "
        f"of {bench.DEFAULT_BLOCK} calls per contender (steady state; `edgepack bench --block`) and, beside them, "
        "of 1 call (A B C A B C: each call right after the other models ran, its weights evicted from the "
        f"caches); ratios are medians over {results['settings']['repeats']} repeats of "
        f"{results['settings']['runs']} calls per contender (ratio of medians per repeat). The table below each "
        "goal table is the first repeat's full report.",
    ]
    for threads, run in results["by_threads"].items():
        lines += ["", f"### {threads} thread(s)", "", *goals_table(run["headline"], int(threads)), ""]
        lines += ["```", bench_report.format_table(run["report"]), "```", ""]
        lines.append(f"![edgepack bench, {threads} thread(s)](results/headline-{threads}t.png)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundles", nargs="*", type=Path, default=[ROOT / "bundles" / "clinc-int8"])
    parser.add_argument(
        "--teacher", type=Path, default=None, help="default: the first bundle's cached teacher"
    )
    # One thread by default: the goals are stated for it, and on a 2-core machine several contenders' 2-thread
    # pools (ORT's spinning workers, PyTorch's OpenMP team) steal each other's cores between interleaved calls.
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--runs", type=int, default=300, help="interleaved rounds per repeat")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.teacher = args.teacher or cached_teacher(args.bundles[0])
    pairs, validation = load_labeled(CLINC, "test"), load_labeled(CLINC, "validation")
    results: dict[str, Any] = {
        "machine": {
            "cpu": cpu_description(),
            "python": platform.python_version(),
            "versions": bench.versions(),
        },
        "settings": {
            "runs": args.runs,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "teacher": str(args.teacher),
        },
        "by_threads": {},
    }
    RESULTS.mkdir(exist_ok=True)
    for threads in args.threads:
        run = measure(args, threads, pairs, validation)
        results["by_threads"][str(threads)] = run
        bench_report.plot(run["report"], RESULTS / f"headline-{threads}t.png")
        print(bench_report.format_table(run["report"]))
    (RESULTS / "headline.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    names = " ".join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in args.bundles)
    command = f"python benchmarks/bench_headline.py {names} --threads {' '.join(map(str, args.threads))}"
    write_section("bench_headline", markdown(results, command))
    print(f"wrote {RESULTS / 'headline.json'}, the plots and benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
