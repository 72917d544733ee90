"""Measure a loaded bundle: latency at batch 1, throughput at a batch size, size on disk, accuracy."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgepack_runtime.classifier import Classifier
from edgepack_runtime.manifest import BUNDLE_FILES, MANIFEST
from edgepack_runtime.metrics import scores
from edgepack_runtime.splits import rename_label

# Queries used when no data file is given: varied lengths and topics, like a user's requests.
SAMPLE_QUERIES = (
    "what is the pin number for my account",
    "how long will it take to get a new credit card in the mail",
    "book a table for four at an italian restaurant tonight",
    "what's the weather going to be like in paris tomorrow",
    "set an alarm for 6 am",
    "can you tell me how many calories are in a banana",
    "transfer two hundred dollars from checking to savings",
    "play something relaxing",
    "i need to change the oil in my car, when is it due",
    "translate good morning into spanish",
    "what is my credit score and how can i improve it over the next few months",
    "hi",
)


def summarize(times_ms: Sequence[float] | np.ndarray, warmup: int) -> dict[str, Any]:
    """Percentiles, mean and standard deviation of timed calls (ms), with how many were timed and untimed:
    the latency figures of both this module's report and `edgepack bench`'s."""
    values = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(values, [50, 90, 99]))
    return {
        "runs": len(values),
        "warmup": warmup,
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": float(values.mean()),
        "std_ms": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
    }


def latency(clf: Classifier, texts: Sequence[str], runs: int, warmup: int) -> dict[str, Any]:
    """Milliseconds per `predict` call (tokenization included), cycling through texts."""
    cycle = itertools.cycle(texts)
    for _ in range(warmup):
        clf.predict(next(cycle))
    times = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        text = next(cycle)
        start = time.perf_counter_ns()
        clf.predict(text)
        times[i] = (time.perf_counter_ns() - start) / 1e6
    return summarize(times, warmup)


def batch_throughput(
    predict_batch: Callable[[list[str], int], object], texts: Sequence[str], batch_size: int, max_texts: int
) -> dict[str, Any]:
    """Texts per second through `predict_batch(texts, batch_size)` after a one-batch warm-up, on at least four
    batches' worth of texts and otherwise on up to `max_texts` of `texts` (cycled when there are fewer)."""
    count = max(4 * batch_size, min(len(texts), max_texts))
    items = list(itertools.islice(itertools.cycle(texts), count))
    predict_batch(items[:batch_size], batch_size)  # warm-up
    start = time.perf_counter()
    predict_batch(items, batch_size)
    seconds = time.perf_counter() - start
    return {"batch_size": batch_size, "texts": count, "seconds": seconds, "texts_per_s": count / seconds}


def throughput(clf: Classifier, texts: Sequence[str], batch_size: int) -> dict[str, Any]:
    """Texts per second through predict_batch on at least four batches' worth of texts (up to 2,000)."""
    result = batch_throughput(
        lambda items, bs: clf.predict_batch(items, batch_size=bs), texts, batch_size, 2000
    )
    result["batched"] = clf.batch_invariant  # False: dynamic INT8, texts run one at a time (see Classifier)
    return result


def disk_size(clf: Classifier) -> dict[str, int]:
    sizes = {name: (clf.path / name).stat().st_size for name in (*BUNDLE_FILES, MANIFEST)}
    return {"total_bytes": sum(sizes.values()), "model_bytes": sizes["model.onnx"]}


def accuracy(
    clf: Classifier, pairs: Sequence[tuple[str, str]], batch_size: int, oos_label: str | None = None
) -> dict[str, Any]:
    """Accuracy of the final labels (out-of-scope threshold applied); in-scope accuracy and out-of-scope
    recall when the bundle names an out-of-scope label (or has a class called `oos_label` or 'oos'), None
    over no texts. `oos_label`: the data's out-of-scope label, counted as the bundle's when they differ."""
    known = set(clf.labels)
    fallback = oos_label if oos_label in known else ("oos" if "oos" in known else None)
    oos = clf.oos_label or fallback
    if oos_label is not None and oos is not None:
        pairs = rename_label(list(pairs), oos_label, oos)
    predictions = clf.predict_batch([text for text, _ in pairs], batch_size=batch_size, top_k=1)
    # Predictions carry labels of labels.json (the out-of-scope one included: the bundle check makes sure);
    # a gold label the bundle does not know gets -1, never right: comparing ids is comparing labels.
    index = {label: i for i, label in enumerate(clf.labels)}
    gold = np.array([index.get(label, -1) for _, label in pairs], dtype=np.int64)
    predicted = np.array([index[p.label] for p in predictions], dtype=np.int64)
    figures = scores(predicted, gold, index[oos] if oos is not None else None)
    result: dict[str, Any] = {
        "texts": len(pairs),
        "accuracy": figures["accuracy"],
        "unknown_labels": sorted({label for _, label in pairs if label not in known}),
    }
    if oos is not None:
        in_scope = gold != index[oos]
        result["oos_label"] = oos
        # scores() gives 0.0 over no rows; this report says None (no such texts)
        result["in_scope_accuracy"] = figures["in_scope_accuracy"] if in_scope.any() else None
        result["oos_recall"] = figures["oos_recall"] if (~in_scope).any() else None
    return result


def run(
    clf: Classifier,
    texts: Sequence[str],
    *,
    runs: int,
    warmup: int,
    batch_size: int,
    pairs: Sequence[tuple[str, str]] | None = None,
    oos_label: str | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "bundle": clf.name,
        "path": str(clf.path),
        "threads": clf.threads,
        "latency_batch1": latency(clf, texts, runs, warmup),
        "throughput": throughput(clf, texts, batch_size),
        "size": disk_size(clf),
    }
    if pairs:
        result["accuracy"] = accuracy(clf, pairs, batch_size, oos_label)
    return result


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def format_table(result: dict[str, Any]) -> str:
    lat, thr, size = result["latency_batch1"], result["throughput"], result["size"]
    rows = [
        ("bundle", f"{result['bundle']} ({result['path']})"),
        ("threads", str(result["threads"])),
        ("latency, batch 1", f"{lat['runs']} runs after {lat['warmup']} warm-up, tokenization included"),
        *((f"  {k}", f"{lat[k + '_ms']:.3f} ms") for k in ("p50", "p90", "p99", "mean", "std")),
        (
            "throughput",
            f"{thr['texts_per_s']:.1f} texts/s (batch {thr['batch_size']}, {thr['texts']} texts"
            + ("" if thr["batched"] else "; dynamic INT8: run one at a time")
            + ")",
        ),
        ("size on disk", f"{_mb(size['total_bytes'])} (model.onnx {_mb(size['model_bytes'])})"),
    ]
    acc = result.get("accuracy")
    if acc:
        rows.append(("accuracy", f"{acc['accuracy']:.4f} on {acc['texts']} texts"))
        if acc.get("in_scope_accuracy") is not None:
            rows.append(("  in-scope", f"{acc['in_scope_accuracy']:.4f}"))
        if acc.get("oos_recall") is not None:
            rows.append((f"  {acc['oos_label']} recall", f"{acc['oos_recall']:.4f}"))
        if acc["unknown_labels"]:
            shown = ", ".join(acc["unknown_labels"][:5])
            rows.append(("  unknown labels", f"{len(acc['unknown_labels'])} not in the bundle ({shown})"))
    width = max(len(k) for k, _ in rows) + 2
    return "\n".join(f"{k:<{width}}{v}" for k, v in rows)
