"""How much does edgepack_runtime add on top of the bare ONNX Runtime floor, and how does it compare with the
Optimum + transformers pipeline path? Same graph, same queries, same threads, one process, interleaved.

    python benchmarks/runtime_overhead.py [BUNDLE] [--threads N] [--runs N] [--out PREFIX]

Three ways to answer one query at batch 1, tokenization included:
  runtime   edgepack_runtime.Classifier.predict (verification done at load; softmax, top-k, threshold per call)
  bare      tokenizers.Tokenizer.encode + numpy arrays + InferenceSession.run (the floor: no softmax, no checks)
  pipeline  transformers.pipeline("text-classification") around Optimum's ORTModelForSequenceClassification,
            loaded from a temp folder holding the bundle's model.onnx, a config.json built from labels.json and
            the manifest, and the bundle's tokenizer.json
Each timed round runs every method once on the same query, in an order shuffled from round to round
(`edgepack bench`'s interleaving with blocks of 1: edgepack.bench.measure.interleaved_times).
Prints a table and writes PREFIX.json and PREFIX.md (a markdown snippet for RESULTS.md).
Needs the build environment (transformers, optimum); the runtime itself does not.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from edgepack_runtime import Classifier
from edgepack_runtime.bench import SAMPLE_QUERIES
from edgepack_runtime.bench import summarize as latency_figures
from edgepack_runtime.classifier import session_options
from edgepack_runtime.data import DataError, load_labeled
from tokenizers import Tokenizer

from edgepack.bench.contenders import optimum_pipeline, pipeline_folder
from edgepack.bench.measure import interleaved_times

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from results_md import cpu_description, write_section  # noqa: E402

CLINC = ROOT.parent / "shared" / "data" / "clinc150"
Method = Callable[[str], str]  # query -> top label (for the agreement check)


def runtime_method(clf: Classifier) -> Method:
    return lambda text: clf.predict(text).top_k[0][0]


def bare_method(bundle: Path, threads: int, labels: list[str]) -> Method:
    session = ort.InferenceSession(
        (bundle / "model.onnx").read_bytes(), session_options(threads), providers=["CPUExecutionProvider"]
    )
    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    names = {i.name for i in session.get_inputs()}

    def run(text: str) -> str:
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        logits = session.run(["logits"], feeds)[0]
        return labels[int(logits[0].argmax())]

    return run


def pipeline_method(folder: Path, threads: int) -> Method:
    classify = optimum_pipeline(folder, threads)
    return lambda text: classify(text, truncation=True)[0]["label"]


def queries(data: Path | None, count: int) -> list[str]:
    """Real queries when the CLINC data (or --data) is at hand, else the runtime's sample queries."""
    try:
        texts = [text for text, _ in load_labeled(data or CLINC, split="test")]
    except DataError:
        return list(SAMPLE_QUERIES)
    random.Random(0).shuffle(texts)
    return texts[:count]


def summarize(times_ms: list[float]) -> dict[str, float]:
    """The runtime's latency figures, under this report's names (median_ms for p50_ms)."""
    figures = latency_figures(times_ms, warmup=0)
    return {"median_ms": figures["p50_ms"]} | {
        key: figures[key] for key in ("p90_ms", "p99_ms", "mean_ms", "std_ms")
    }


def measure(methods: dict[str, Method], texts: list[str], runs: int, warmup: int) -> dict[str, list[float]]:
    """`runs` interleaved rounds, each timing every method once on the same query (blocks of 1)."""
    by_round = interleaved_times(methods, texts, runs, warmup, block=1)
    return {name: [t for r in timed for t in r] for name, timed in by_round.items()}


def markdown(report: dict[str, Any]) -> str:
    stats, ratios = report["methods"], report["ratios"]
    lines = [
        f"### Runtime overhead: `{report['bundle']}` ({report['threads']} thread(s), {report['runs']} interleaved runs)",
        "",
        "| path | median ms | p90 ms | p99 ms | mean ms | std ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in stats.items():
        lines.append(
            f"| {name} | {s['median_ms']:.3f} | {s['p90_ms']:.3f} | {s['p99_ms']:.3f} | {s['mean_ms']:.3f} | "
            f"{s['std_ms']:.3f} |"
        )
    lines += [
        "",
        f"runtime / bare (median): **{ratios['runtime_over_bare']:.3f}** (goal <= 1.10: "
        f"{'met' if ratios['runtime_over_bare'] <= 1.10 else 'not met'}); "
        f"pipeline / runtime (median): **{ratios['pipeline_over_runtime']:.2f}x** (goal >= 2: "
        f"{'met' if ratios['pipeline_over_runtime'] >= 2 else 'not met'}). "
        f"Top labels agree on {report['agreement']['runtime_vs_bare']:.1%} (runtime vs bare) and "
        f"{report['agreement']['runtime_vs_pipeline']:.1%} (runtime vs pipeline) of {report['queries']} queries.",
        "",
        f"CPU: {report['environment']['cpu']}; onnxruntime {report['environment']['onnxruntime']}, "
        f"tokenizers {report['environment']['tokenizers']}, transformers {report['environment']['transformers']}, "
        f"optimum-onnx {report['environment']['optimum-onnx']}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", nargs="?", default=str(ROOT / "bundles" / "clinc-int8"), type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--runs", type=int, default=1000, help="interleaved rounds (each times every method once)"
    )
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--queries", type=int, default=200, help="distinct queries, cycled through")
    parser.add_argument("--data", type=Path, help="labeled file for the queries (default: CLINC test split)")
    parser.add_argument("--model-type", default="bert", help="config.json model_type for the pipeline path")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "runtime_overhead")
    args = parser.parse_args()
    if args.runs < 2 or args.threads < 0:
        parser.error("--runs must be at least 2 and --threads at least 0")

    clf = Classifier.load(args.bundle, threads=args.threads)
    texts = queries(args.data, args.queries)
    with tempfile.TemporaryDirectory() as tmp:
        pipeline_folder(args.bundle, clf.manifest, clf.labels, args.model_type, Path(tmp))
        methods = {
            "runtime": runtime_method(clf),
            "bare": bare_method(args.bundle, args.threads, clf.labels),
            "pipeline": pipeline_method(Path(tmp), args.threads),
        }
        agreement = {
            f"runtime_vs_{other}": statistics.mean(methods["runtime"](t) == methods[other](t) for t in texts)
            for other in ("bare", "pipeline")
        }
        times = measure(methods, texts, args.runs, args.warmup)
    stats = {name: summarize(values) for name, values in times.items()}
    report = {
        "bundle": clf.name,
        "path": str(args.bundle),
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "queries": len(texts),
        "methods": stats,
        "ratios": {
            "runtime_over_bare": stats["runtime"]["median_ms"] / stats["bare"]["median_ms"],
            "pipeline_over_runtime": stats["pipeline"]["median_ms"] / stats["runtime"]["median_ms"],
        },
        "agreement": agreement,
        "environment": {
            "cpu": cpu_description(),
            "python": platform.python_version(),
            **{name: version(name) for name in ("onnxruntime", "tokenizers", "transformers", "optimum-onnx")},
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    snippet = markdown(report)
    args.out.with_suffix(".md").write_text(snippet, encoding="utf-8")
    write_section(f"runtime_overhead-{args.threads}t", snippet)
    print(snippet)
    print(f"wrote {args.out.with_suffix('.json')}, {args.out.with_suffix('.md')} and benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
