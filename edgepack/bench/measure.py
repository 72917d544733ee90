"""How `edgepack bench` measures its contenders (edgepack.bench.contenders), and the JSON report it writes.

Latency is measured at batch 1, tokenization included, in interleaved rounds: every round times each contender
on the same `block` queries in a row, in an order shuffled afresh each round (seeded), so drift hits all alike
and no contender always runs right after the same other one. (A rotation, used until session 16, kept every
contender behind the same predecessor in every round: the first bundle always followed Optimum's 23 MB model,
and the same bundle measured 6.7% slower there than at the end of the list; 2% with the shuffle, within the
run's noise. RESULTS.md, "Session 16".)
A block of 1 (one call each per round) measures each call right after other contenders ran, its weights evicted
from the caches by theirs: a cost of the benchmark, not of serving, and one that falls hardest on the smallest
model. The default block of 10 measures the steady state of an application serving queries back to back (the
chapter's PerformanceBenchmark timed each model's queries back to back) while still interleaving.

Throughput is texts per second through each contender's batch path at `batch_size`. Accuracy is on the labeled
data, one text per call (each answered as it would be alone: see contenders.SCORING_BATCH), with the contender's
out-of-scope threshold and by plain argmax; accuracy against the teacher compares like with like. Each bundle's
physical floor (edgepack.bench.floor) is its graph's MACs for each latency query over this CPU's measured GEMM
rates. Latency figures, throughput and accuracy figures are computed by the runtime's own functions
(edgepack_runtime.bench.summarize and batch_throughput, edgepack_runtime.metrics.scores), so `edgepack-run bench`
and this report agree on what each figure means.

JSON report (`--json FILE`), keys:
  schema          "edgepack.bench/1"
  created         ISO-8601 UTC time of the run
  machine         {"cpu": CPU model, SIMD flags and core count; "python": version; "versions": {package: version}}
  settings        {"threads", "batch_size", "runs" (timed calls per contender), "warmup" (untimed calls per
                   contender), "block" (consecutive calls per contender in a round),
                   "queries" (distinct latency queries), "data" (path or null), "data_texts" (labeled texts or 0)}
  skipped         [{"contender": "teacher" | "optimum" | "peer", "reason": one line}] for contenders asked for
                   but not run
  gemm_rates      null with no floor measured, else {"threads", "shape": [M, K, N], "fp32", "int8_u8_weights",
                   "int8_s8_weights", "int8" (the faster INT8)} in multiply-accumulates per second
  contenders      list, in the order of edgepack.bench.contenders (teacher, optimum, peer, bundles); each:
    name          display name (bundle: its folder name; teacher: "teacher"; optimum: "teacher (optimum <level>
                   int8)"; peer: "<bundle> (optimum)")
    kind          "teacher" | "optimum" | "peer" | "bundle"
    path          the model folder, bundle folder or model.onnx measured
    highlight     true for the first bundle (the one the plot highlights)
    size          {"bytes": weights on disk (teacher: safetensors files, or its state dict's bytes when it has
                   none; optimum, peer and bundle: model.onnx), "total_bytes": the whole bundle (bundle only,
                   else null)}
    build         optimum only, else null: {"optimization_level" (the ORTOptimizer level that worked),
                   "failed_levels" ({level: one-line reason} for those tried before it), "quantization",
                   "build_seconds", "teacher", "versions"}, as cached with its model
    latency       {"runs", "warmup", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms"} at batch 1
    throughput    {"batch_size", "texts", "seconds", "texts_per_s"}
    accuracy      null without data, else {"texts", "accuracy" (as the contender answers: with its threshold
                   when it has one), "argmax_accuracy", "in_scope_accuracy", "oos_recall" (both as answered;
                   null without an oos label or without such texts), "oos_label", "oos_method" (what the
                   out-of-scope score is: a bundle's oos.method, else "max_probability"), "threshold" (null:
                   none), "threshold_source" ("bundle" | "validation" | null), "unknown_labels" (gold labels
                   the contender does not know), "tradeoff" (null without both in-scope and out-of-scope texts,
                   else {"test": curve, "validation": curve when --validation data is there}; a curve is
                   {"in_scope_accuracy": [...], "oos_recall": [...]} at 43 thresholds from rejecting nothing to
                   rejecting everything, and "shipped": [in-scope accuracy, oos recall] at the contender's own
                   threshold, or null)}
    floor         bundles with a floor measured, else null: {"queries", "median_tokens", "floor_ms" (median over
                   the latency queries), "latency_over_floor" (p50_ms / floor_ms), "median_query": {"tokens",
                   "int8_macs", "fp32_macs", "floor_ms", "graph_ms" (InferenceSession.run alone, median), and
                   kernel times in ms from an ONNX Runtime profile: "int8_gemm_ms", "fp32_gemm_ms", "other_ms"}}
    vs_teacher    null without a teacher, else {"speedup": teacher p50 / p50, "speedup_ci95": [low, high], a
                   bootstrap interval of the speed-up over the interleaved rounds, resampled in pairs (each round
                   gave the teacher and the contender the same queries), "throughput_ratio": texts_per_s /
                   teacher texts_per_s, "size_ratio": bytes / teacher bytes, "accuracy_delta": accuracy -
                   teacher accuracy, like with like ("accuracy_basis": "threshold" when both have one, else
                   "argmax"; both null without data)}
"""

from __future__ import annotations

import datetime as dt
import itertools
import platform
import random
import time
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from edgepack_runtime.bench import batch_throughput, summarize
from edgepack_runtime.cpu import describe as cpu_description
from edgepack_runtime.manifest import rejects
from edgepack_runtime.metrics import scores

from edgepack.bench.contenders import Contender, Log
from edgepack.bench.floor import Rates, bundle_floor

SCHEMA = "edgepack.bench/1"
DEFAULT_BLOCK = 10  # consecutive calls per contender per interleaved round (see interleaved_latency)
SPEEDUP_RESAMPLES = 1000  # bootstrap resamples of the interleaved rounds for the speed-up's interval
MAX_QUERIES = 200  # distinct latency queries drawn from the data (seeded), cycled through
THROUGHPUT_TEXTS = 1000  # throughput runs on up to this many texts (at least four batches)


def interleaved_times(
    calls: Mapping[str, Callable[[str], object]],
    texts: Sequence[str],
    runs: int,
    warmup: int,
    log: Log = lambda message: None,
    block: int = 1,
) -> dict[str, list[list[float]]]:
    """Milliseconds of `runs` timed batch-1 calls per name, round by round: after `warmup` untimed calls each,
    every round gives every call the same `block` queries in a row (block 1: A B C B A C ...), in an order
    shuffled each round (seeded: the same schedule every run); the queries run on through `texts`, cycled."""
    names = list(calls)
    for name in names:
        for text in itertools.islice(itertools.cycle(texts), warmup):
            calls[name](text)
    times: dict[str, list[list[float]]] = {name: [] for name in names}
    schedule, order = random.Random(0), list(names)
    rounds = -(-runs // block)
    step = max(1, rounds // 4)
    for r in range(rounds):
        queries = [texts[i % len(texts)] for i in range(r * block, min(runs, (r + 1) * block))]
        schedule.shuffle(order)
        for name in order:
            predict, timed = calls[name], []
            for text in queries:
                start = time.perf_counter_ns()
                predict(text)
                timed.append((time.perf_counter_ns() - start) / 1e6)
            times[name].append(timed)
        if (r + 1) % step == 0 or r + 1 == rounds:
            log(f"  latency: round {r + 1}/{rounds}")
    return times


def interleaved_latency(
    contenders: Sequence[Contender],
    texts: Sequence[str],
    runs: int,
    warmup: int,
    log: Log,
    block: int = 1,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[list[float]]]]:
    """Batch-1 latency figures of `runs` timed calls per contender, in interleaved rounds (interleaved_times),
    and the rounds' times themselves (for speedup_interval)."""
    rounds = interleaved_times({c.name: c.predict for c in contenders}, texts, runs, warmup, log, block)
    return {name: summarize([t for r in timed for t in r], warmup) for name, timed in rounds.items()}, rounds


def speedup_interval(
    reference: Sequence[Sequence[float]], timed: Sequence[Sequence[float]], resamples: int = SPEEDUP_RESAMPLES
) -> list[float]:
    """95% bootstrap interval of median(reference) / median(timed) over interleaved rounds: a resample draws
    rounds with replacement and keeps both sides of each drawn round, which timed the same queries."""
    pairs = [(np.asarray(a), np.asarray(b)) for a, b in zip(reference, timed, strict=True)]
    picks = np.random.default_rng(0).integers(0, len(pairs), size=(resamples, len(pairs)))
    ratios = [
        np.median(np.concatenate([pairs[i][0] for i in pick]))
        / np.median(np.concatenate([pairs[i][1] for i in pick]))
        for pick in picks
    ]
    low, high = np.percentile(ratios, [2.5, 97.5])
    return [float(low), float(high)]


def throughput(c: Contender, texts: Sequence[str], batch_size: int) -> dict[str, Any]:
    """Texts per second through the contender's batch path, on at least four batches' worth of texts."""
    return batch_throughput(c.predict_batch, texts, batch_size, THROUGHPUT_TEXTS)


def accuracy(
    c: Contender, pairs: Sequence[tuple[str, str]], validation: Sequence[tuple[str, str]] | None = None
) -> dict[str, Any]:
    """Accuracy as the contender answers (its out-of-scope rule applied) and by plain argmax, one text per call
    (SCORING_BATCH); with an out-of-scope label, how in-scope accuracy and out-of-scope recall trade as the
    threshold moves (on these texts and on `validation`)."""
    probs, oos_scores = c.score_texts([text for text, _ in pairs])
    index = {label: i for i, label in enumerate(c.labels)}
    gold = np.array([index.get(label, -1) for _, label in pairs])  # -1: a label the contender does not know
    oos_id = index.get(c.oos_label) if c.oos_label is not None else None
    answered = scores(_answers(c, probs, oos_scores, oos_id, c.threshold), gold, oos_id)
    result: dict[str, Any] = {
        "texts": len(pairs),
        "accuracy": answered["accuracy"],
        "argmax_accuracy": scores(probs.argmax(axis=1), gold, None)["accuracy"],
        "in_scope_accuracy": None,
        "oos_recall": None,
        "oos_label": c.oos_label,
        "oos_method": c.method,
        "threshold": c.threshold,
        "threshold_source": c.threshold_source,
        "unknown_labels": sorted({label for _, label in pairs if label not in index}),
        "tradeoff": None,
    }
    if oos_id is not None:  # scores() gives 0.0 over no rows; this report says null (no such texts)
        in_scope = gold != oos_id
        if in_scope.any():
            result["in_scope_accuracy"] = answered["in_scope_accuracy"]
        if (~in_scope).any():
            result["oos_recall"] = answered["oos_recall"]
        if in_scope.any() and (~in_scope).any():
            curves = {"test": tradeoff(c, probs, oos_scores, gold, oos_id)}
            if validation:
                v_probs, v_scores = c.score_texts([text for text, _ in validation])
                v_gold = np.array([index.get(label, -1) for _, label in validation])
                curves["validation"] = tradeoff(c, v_probs, v_scores, v_gold, oos_id)
            result["tradeoff"] = curves
    return result


def _answers(
    c: Contender, probs: np.ndarray, oos_scores: np.ndarray, oos_id: int | None, threshold: float | None
) -> np.ndarray:
    """Argmax ids, with the rows the contender's out-of-scope rule rejects at `threshold` set to oos_id."""
    pred = probs.argmax(axis=1)
    if oos_id is None or threshold is None:
        return pred
    return np.where(rejects(oos_scores, threshold, c.direction), oos_id, pred)


def tradeoff(
    c: Contender, probs: np.ndarray, oos_scores: np.ndarray, gold: np.ndarray, oos_id: int, points: int = 41
) -> dict[str, Any]:
    """In-scope accuracy and out-of-scope recall at thresholds from rejecting nothing to rejecting everything
    (score quantiles), and at the contender's own threshold ("shipped", null without one)."""

    def at(threshold: float | None) -> list[float]:
        figures = scores(_answers(c, probs, oos_scores, oos_id, threshold), gold, oos_id)
        return [figures["in_scope_accuracy"], figures["oos_recall"]]

    spread = float(oos_scores.max() - oos_scores.min()) or 1.0
    cuts = np.quantile(oos_scores, np.linspace(0, 1, points))
    cuts = np.concatenate([[oos_scores.min() - spread], cuts, [oos_scores.max() + spread]])
    if c.direction == "above":  # high scores are rejected: from rejecting nothing to rejecting everything
        cuts = cuts[::-1]
    curve = [at(float(t)) for t in cuts]
    return {
        "in_scope_accuracy": [p[0] for p in curve],
        "oos_recall": [p[1] for p in curve],
        "shipped": at(c.threshold) if c.threshold is not None else None,
    }


def versions() -> dict[str, str]:
    found = {}
    for name in ("edgepack", "edgepack-runtime", "onnxruntime", "tokenizers", "torch", "transformers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    for name in ("optimum-onnx", "optimum"):
        try:
            found[name] = version(name)
            break
        except PackageNotFoundError:
            continue
    return found


def _accuracy_delta(
    acc: dict[str, Any] | None, teacher: dict[str, Any] | None
) -> tuple[float | None, str | None]:
    """Accuracy minus the teacher's, like with like: both thresholded when both have a threshold, else argmax."""
    if not acc or not teacher:
        return None, None
    if acc["threshold"] is not None and teacher["threshold"] is not None:
        return acc["accuracy"] - teacher["accuracy"], "threshold"
    return acc["argmax_accuracy"] - teacher["argmax_accuracy"], "argmax"


def _vs_teacher(
    row: dict[str, Any], teacher: dict[str, Any], rounds: Mapping[str, list[list[float]]]
) -> dict[str, Any]:
    delta, basis = _accuracy_delta(row["accuracy"], teacher["accuracy"])
    return {
        "speedup": teacher["latency"]["p50_ms"] / row["latency"]["p50_ms"],
        "speedup_ci95": speedup_interval(rounds[teacher["name"]], rounds[row["name"]]),
        "throughput_ratio": row["throughput"]["texts_per_s"] / teacher["throughput"]["texts_per_s"],
        "size_ratio": row["size"]["bytes"] / teacher["size"]["bytes"],
        "accuracy_delta": delta,
        "accuracy_basis": basis,
    }


def run(
    contenders: Sequence[Contender],
    texts: Sequence[str],
    pairs: Sequence[tuple[str, str]] | None,
    *,
    threads: int,
    batch_size: int,
    runs: int,
    warmup: int,
    block: int = DEFAULT_BLOCK,
    data: Path | None = None,
    skipped: Sequence[dict[str, str]] = (),
    rates: Rates | None = None,
    validation: Sequence[tuple[str, str]] | None = None,
    log: Log = lambda message: None,
) -> dict[str, Any]:
    """Measure every contender (see the module docstring for the report's keys); with `rates`, each
    bundle's physical floor too; with `validation`, the out-of-scope trade-off on it as well."""
    log(
        f"latency at batch 1: {len(contenders)} contenders x {runs} calls, interleaved {block} at a time, "
        f"{warmup} warm-up calls each"
    )
    latencies, rounds = interleaved_latency(contenders, texts, runs, warmup, log, block)
    rows = []
    for c in contenders:
        log(f"throughput at batch {batch_size}: {c.name}")
        row: dict[str, Any] = {
            "name": c.name,
            "kind": c.kind,
            "path": str(c.path),
            "highlight": c.highlight,
            "size": c.size,
            "build": c.build,
            "latency": latencies[c.name],
            "throughput": throughput(c, texts, batch_size),
            "accuracy": None,
            "floor": None,
            "vs_teacher": None,
        }
        if pairs:
            log(f"accuracy on {len(pairs)} texts: {c.name}")
            row["accuracy"] = accuracy(c, pairs, validation)
        if rates is not None and c.kind == "bundle":
            log(f"physical floor: profiling {c.name}'s graph on the latency queries")
            row["floor"] = bundle_floor(c.path, c.manifest, texts, rates, latencies[c.name]["p50_ms"])
        rows.append(row)
    teacher = next((row for row in rows if row["kind"] == "teacher"), None)
    if teacher is not None:
        for row in rows:
            row["vs_teacher"] = _vs_teacher(row, teacher, rounds)
    return {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_description(), "python": platform.python_version(), "versions": versions()},
        "settings": {
            "threads": threads,
            "batch_size": batch_size,
            "runs": runs,
            "warmup": warmup,
            "block": block,
            "queries": len(texts),
            "data": str(data) if data else None,
            "data_texts": len(pairs) if pairs else 0,
        },
        "skipped": list(skipped),
        "gemm_rates": rates.to_dict() if rates is not None else None,
        "contenders": rows,
    }


def latency_queries(pairs: Sequence[tuple[str, str]] | None) -> list[str]:
    """Up to MAX_QUERIES texts of the data (seeded shuffle), else the runtime's sample queries."""
    from edgepack_runtime.bench import SAMPLE_QUERIES

    if not pairs:
        return list(SAMPLE_QUERIES)
    texts = [text for text, _ in pairs]
    random.Random(0).shuffle(texts)
    return texts[:MAX_QUERIES]
