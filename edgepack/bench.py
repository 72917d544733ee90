"""`edgepack bench`: bundles, their teacher and a peer runtime measured side by side in one run.

Contenders (in this order):
  teacher   the fine-tuned model through a transformers `pipeline("text-classification")` in PyTorch
            (torch.set_num_threads(threads)), truncating at the first bundle's max_length; plain argmax, no
            out-of-scope threshold
  peer      the first bundle's model.onnx through Optimum's ORTModelForSequenceClassification in a transformers
            pipeline (ORT intra-op threads); plain argmax
  bundle    each bundle through edgepack_runtime.Classifier (ORT intra-op threads); the out-of-scope threshold
            the bundle ships applies

Latency is measured at batch 1, tokenization included, in interleaved rounds: every round times each contender
once on the same query, in an order that rotates from round to round, so drift hits all alike. Throughput is
texts per second through each contender's batch path at `batch_size`. Accuracy is on the labeled data.

JSON report (`--json FILE`), keys:
  schema          "edgepack.bench/1"
  created         ISO-8601 UTC time of the run
  machine         {"cpu": CPU model, SIMD flags and core count; "python": version; "versions": {package: version}}
  settings        {"threads", "batch_size", "runs" (timed rounds), "warmup" (untimed calls per contender),
                   "queries" (distinct latency queries), "data" (path or null), "data_texts" (labeled texts or 0)}
  skipped         [{"contender": "teacher" | "peer", "reason": one line}] for contenders asked for but not run
  contenders      list, in the order above; each:
    name          display name (bundle: its folder name; teacher: "teacher"; peer: "<bundle> (optimum)")
    kind          "teacher" | "peer" | "bundle"
    path          the model folder, bundle folder or model.onnx measured
    highlight     true for the first bundle (the one the plot highlights)
    size          {"bytes": weights on disk (teacher: safetensors files, or its state dict's bytes when it has
                   none; peer and bundle: model.onnx), "total_bytes": the whole bundle (bundle only, else null)}
    latency       {"runs", "warmup", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms"} at batch 1
    throughput    {"batch_size", "texts", "seconds", "texts_per_s"}
    accuracy      null without data, else {"texts", "accuracy", "in_scope_accuracy", "oos_recall", "oos_label",
                   "thresholded" (whether an out-of-scope threshold applied), "unknown_labels" (gold labels
                   the contender does not know)}; in_scope_accuracy / oos_recall are null without an oos label
    vs_teacher    null without a teacher, else {"speedup": teacher p50 / p50, "throughput_ratio": texts_per_s /
                   teacher texts_per_s, "size_ratio": bytes / teacher bytes, "accuracy_delta": accuracy -
                   teacher accuracy (null without data)}
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "edgepack.bench/1"
MAX_QUERIES = 200  # distinct latency queries drawn from the data (seeded), cycled through
Log = Callable[[str], None]


@dataclass
class Contender:
    """One thing to measure: a label for one text, labels for a batch, and what it weighs."""

    name: str
    kind: str
    path: Path
    predict: Callable[[str], str]
    predict_batch: Callable[[list[str], int], list[str]]
    size: dict[str, int | None]
    labels: list[str]
    oos_label: str | None = None
    thresholded: bool = False
    highlight: bool = False
    manifest: dict[str, Any] = field(default_factory=dict)  # bundles only
    cleanup: list[Callable[[], None]] = field(default_factory=list)


class SkipContender(Exception):
    """A contender that cannot run here (not installed, not found); the message is the one-line reason."""


def cpu_description() -> str:
    """CPU model, the SIMD flags that matter for INT8, and the core count."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", "unknown CPU", platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model}, {os.cpu_count()} logical cores, flags: {', '.join(shown) or 'n/a'}"


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


# ---------------------------------------------------------------- contenders


def bundle_contender(path: Path, threads: int, name: str) -> Contender:
    """A bundle through edgepack_runtime (raises BundleError when it is not a valid bundle)."""
    from edgepack_runtime import Classifier
    from edgepack_runtime.bench import disk_size

    clf = Classifier.load(path, threads=threads)
    sizes = disk_size(clf)
    return Contender(
        name=name,
        kind="bundle",
        path=clf.path,
        predict=lambda text: clf.predict(text, top_k=1).label,
        predict_batch=lambda texts, bs: [p.label for p in clf.predict_batch(texts, batch_size=bs, top_k=1)],
        size={"bytes": sizes["model_bytes"], "total_bytes": sizes["total_bytes"]},
        labels=clf.labels,
        oos_label=clf.oos_label or ("oos" if "oos" in clf.labels else None),
        thresholded=clf.oos_threshold is not None,
        manifest=clf.manifest,
    )


def _pipeline_labels(classify: Any, max_length: int) -> tuple[Callable[[str], str], Callable[..., list[str]]]:
    def one(text: str) -> str:
        return str(classify(text, truncation=True, max_length=max_length)[0]["label"])

    def many(texts: list[str], batch_size: int) -> list[str]:
        out = classify(texts, batch_size=batch_size, truncation=True, max_length=max_length)
        return [str(row["label"]) for row in out]

    return one, many


def _oos_of(labels: list[str]) -> str | None:
    return "oos" if "oos" in labels else None


def teacher_contender(spec: str, threads: int, max_length: int) -> Contender:
    """The teacher in PyTorch behind a transformers pipeline. Raises SkipContender with the reason."""
    from edgepack.errors import EdgepackError
    from edgepack.models import finetuned_labels, load_tokenizer, resolve_model

    try:
        folder = resolve_model(spec)
        labels = finetuned_labels(folder)
    except EdgepackError as exc:
        raise SkipContender(str(exc)) from None
    if labels is None:
        raise SkipContender(f"{folder} is not a fine-tuned classifier (its config names no labels)")
    import torch
    from transformers import AutoModelForSequenceClassification, pipeline

    torch.set_num_threads(threads)
    model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True).eval()
    classify = pipeline("text-classification", model=model, tokenizer=load_tokenizer(folder), device="cpu")
    files = list(folder.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files) or sum(
        t.numel() * t.element_size() for t in model.state_dict().values()
    )
    one, many = _pipeline_labels(classify, max_length)
    return Contender(
        "teacher",
        "teacher",
        folder,
        one,
        many,
        {"bytes": size, "total_bytes": None},
        labels,
        oos_label=_oos_of(labels),
    )


def pipeline_folder(
    bundle: Path, manifest: dict[str, Any], labels: list[str], model_type: str, folder: Path
) -> None:
    """A folder Optimum and transformers can load: the bundle's graph and tokenizer plus config files."""
    from tokenizers import Tokenizer

    shutil.copyfile(bundle / "model.onnx", folder / "model.onnx")
    shutil.copyfile(bundle / "tokenizer.json", folder / "tokenizer.json")
    model = manifest["model"]
    config = {
        "model_type": model_type,
        "architectures": ["BertForSequenceClassification"],
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "vocab_size": model["vocab_size"],
        "max_position_embeddings": model["max_position_embeddings"],
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    vocab = Tokenizer.from_file(str(bundle / "tokenizer.json")).get_vocab()
    roles = (("cls", "[CLS]"), ("sep", "[SEP]"), ("pad", "[PAD]"), ("unk", "[UNK]"), ("mask", "[MASK]"))
    specials = {f"{role}_token": token for role, token in roles if token in vocab}
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model["max_length"]}
    (folder / "tokenizer_config.json").write_text(
        json.dumps({**tokenizer_config, **specials}), encoding="utf-8"
    )


def optimum_pipeline(folder: Path, threads: int) -> Any:
    """A transformers text-classification pipeline around Optimum's ORTModelForSequenceClassification for the
    model.onnx in `folder` (see pipeline_folder), on `threads` intra-op threads."""
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    model = ORTModelForSequenceClassification.from_pretrained(
        folder,
        file_name="model.onnx",
        provider="CPUExecutionProvider",
        session_options=session_options(threads),
    )
    return pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(folder))


def optimum_contender(bundle: Contender, threads: int) -> Contender:
    """The bundle's graph through Optimum + a transformers pipeline. Raises SkipContender with the reason."""
    try:
        import optimum.onnxruntime  # noqa: F401
    except ImportError as exc:
        raise SkipContender(f"optimum's onnxruntime support is not installed ({exc})") from None
    manifest = bundle.manifest
    tmp = Path(tempfile.mkdtemp(prefix="edgepack-bench-"))
    try:
        model_type = manifest["model"].get("architecture") or "bert"
        pipeline_folder(bundle.path, manifest, bundle.labels, model_type, tmp)
        classify = optimum_pipeline(tmp, threads)
    except Exception as exc:  # optimum and transformers raise many types; any of them means "skip"
        shutil.rmtree(tmp, ignore_errors=True)
        raise SkipContender(f"Optimum cannot load {bundle.path / 'model.onnx'}: {_one_line(exc)}") from None
    one, many = _pipeline_labels(classify, manifest["model"]["max_length"])
    peer = Contender(
        f"{bundle.name} (optimum)",
        "peer",
        bundle.path / "model.onnx",
        one,
        many,
        {"bytes": bundle.size["bytes"], "total_bytes": None},
        bundle.labels,
        oos_label=bundle.oos_label,
    )
    peer.cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    return peer


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


# ---------------------------------------------------------------- measurements


def summarize(times_ms: Sequence[float], warmup: int) -> dict[str, Any]:
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


def interleaved_latency(
    contenders: Sequence[Contender], texts: Sequence[str], runs: int, warmup: int, log: Log
) -> dict[str, dict[str, Any]]:
    """Batch-1 latency: `runs` rounds, each timing every contender once on the same query, order rotating."""
    for c in contenders:
        for text in itertools.islice(itertools.cycle(texts), warmup):
            c.predict(text)
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    step = max(1, runs // 4)
    for r in range(runs):
        text = texts[r % len(texts)]
        shift = r % len(contenders)
        for c in [*contenders[shift:], *contenders[:shift]]:
            start = time.perf_counter_ns()
            c.predict(text)
            times[c.name].append((time.perf_counter_ns() - start) / 1e6)
        if (r + 1) % step == 0 or r + 1 == runs:
            log(f"  latency: round {r + 1}/{runs}")
    return {name: summarize(values, warmup) for name, values in times.items()}


def throughput(c: Contender, texts: Sequence[str], batch_size: int) -> dict[str, Any]:
    """Texts per second through the contender's batch path, on at least four batches' worth of texts."""
    count = max(4 * batch_size, min(len(texts), 1000))
    items = list(itertools.islice(itertools.cycle(texts), count))
    c.predict_batch(items[:batch_size], batch_size)  # warm-up
    start = time.perf_counter()
    c.predict_batch(items, batch_size)
    seconds = time.perf_counter() - start
    return {"batch_size": batch_size, "texts": count, "seconds": seconds, "texts_per_s": count / seconds}


def accuracy(c: Contender, pairs: Sequence[tuple[str, str]], batch_size: int) -> dict[str, Any]:
    predicted = np.array(c.predict_batch([t for t, _ in pairs], batch_size), dtype=object)
    gold = np.array([label for _, label in pairs], dtype=object)
    correct = gold == predicted
    known = set(c.labels)
    result: dict[str, Any] = {
        "texts": len(pairs),
        "accuracy": float(correct.mean()),
        "in_scope_accuracy": None,
        "oos_recall": None,
        "oos_label": c.oos_label,
        "thresholded": c.thresholded,
        "unknown_labels": sorted({str(g) for g in gold if g not in known}),
    }
    if c.oos_label is not None:
        in_scope = gold != c.oos_label
        if in_scope.any():
            result["in_scope_accuracy"] = float(correct[in_scope].mean())
        if (~in_scope).any():
            result["oos_recall"] = float(correct[~in_scope].mean())
    return result


def _versions() -> dict[str, str]:
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


def _vs_teacher(row: dict[str, Any], teacher: dict[str, Any]) -> dict[str, Any]:
    acc, t_acc = row["accuracy"], teacher["accuracy"]
    return {
        "speedup": teacher["latency"]["p50_ms"] / row["latency"]["p50_ms"],
        "throughput_ratio": row["throughput"]["texts_per_s"] / teacher["throughput"]["texts_per_s"],
        "size_ratio": row["size"]["bytes"] / teacher["size"]["bytes"],
        "accuracy_delta": acc["accuracy"] - t_acc["accuracy"] if acc and t_acc else None,
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
    data: Path | None = None,
    skipped: Sequence[dict[str, str]] = (),
    log: Log = lambda message: None,
) -> dict[str, Any]:
    """Measure every contender (see the module docstring for the report's keys)."""
    log(
        f"latency at batch 1: {len(contenders)} contenders x {runs} interleaved rounds, {warmup} warm-up each"
    )
    latencies = interleaved_latency(contenders, texts, runs, warmup, log)
    rows = []
    for c in contenders:
        log(f"throughput at batch {batch_size}: {c.name}")
        row: dict[str, Any] = {
            "name": c.name,
            "kind": c.kind,
            "path": str(c.path),
            "highlight": c.highlight,
            "size": c.size,
            "latency": latencies[c.name],
            "throughput": throughput(c, texts, batch_size),
            "accuracy": None,
            "vs_teacher": None,
        }
        if pairs:
            log(f"accuracy on {len(pairs)} texts: {c.name}")
            row["accuracy"] = accuracy(c, pairs, batch_size)
        rows.append(row)
    teacher = next((row for row in rows if row["kind"] == "teacher"), None)
    if teacher is not None:
        for row in rows:
            row["vs_teacher"] = _vs_teacher(row, teacher)
    return {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_description(), "python": platform.python_version(), "versions": _versions()},
        "settings": {
            "threads": threads,
            "batch_size": batch_size,
            "runs": runs,
            "warmup": warmup,
            "queries": len(texts),
            "data": str(data) if data else None,
            "data_texts": len(pairs) if pairs else 0,
        },
        "skipped": list(skipped),
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


# ---------------------------------------------------------------- output


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: dict[str, Any]) -> str:
    s = report["settings"]
    head = (
        f"{s['threads']} thread(s); latency at batch 1 over {s['runs']} interleaved rounds on {s['queries']} "
        f"queries (tokenization included); throughput at batch {s['batch_size']}; accuracy on "
        + (f"{s['data_texts']} texts of {s['data']}" if s["data_texts"] else "no data (pass --data)")
    )
    columns = ["contender", "size MB", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms", "texts/s"]
    columns += ["accuracy", "in-scope", "oos recall", "speed-up", "size x", "acc delta"]
    table = [columns]
    for r in report["contenders"]:
        lat, acc, vs = r["latency"], r["accuracy"] or {}, r["vs_teacher"] or {}
        table.append(
            [
                ("* " if r["highlight"] else "") + r["name"],
                f"{r['size']['bytes'] / 1e6:.1f}",
                *(f"{lat[k + '_ms']:.3f}" for k in ("p50", "p90", "p99", "mean", "std")),
                f"{r['throughput']['texts_per_s']:.0f}",
                _fmt(acc.get("accuracy"), ".4f"),
                _fmt(acc.get("in_scope_accuracy"), ".4f"),
                _fmt(acc.get("oos_recall"), ".4f"),
                _fmt(vs.get("speedup"), ".2f"),
                _fmt(vs.get("size_ratio"), ".3f"),
                _fmt(vs.get("accuracy_delta"), "+.4f"),
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    lines = [head, ""]
    for row in table:
        cells = [
            row[0].ljust(widths[0]),
            *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)),
        ]
        lines.append("  ".join(cells))
    lines.append("")
    lines.append("* first bundle. speed-up: teacher p50 / p50; size x: bytes / teacher bytes; bundles apply")
    lines.append("  their shipped out-of-scope threshold, teacher and peer plain argmax.")
    lines += [f"skipped {s['contender']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Accuracy vs batch-1 latency; marker area proportional to size on disk; the first bundle highlighted.
    Without accuracy figures the y axis is throughput instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["contenders"]
    with_accuracy = all(r["accuracy"] for r in rows)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    biggest = max(r["size"]["bytes"] for r in rows) or 1
    for i, r in enumerate(rows):
        x = r["latency"]["p50_ms"]
        y = r["accuracy"]["accuracy"] if with_accuracy else r["throughput"]["texts_per_s"]
        mb = r["size"]["bytes"] / 1e6
        area = 40 + 2000 * r["size"]["bytes"] / biggest  # points^2
        ax.scatter(
            x,
            y,
            s=area,
            alpha=0.55,
            color=f"C{i % 10}",
            edgecolors="red" if r["highlight"] else "black",
            linewidths=2.5 if r["highlight"] else 0.6,
            zorder=3,
        )
        label = f"{r['name']}\n{mb:.1f} MB, {x:.2f} ms"
        ax.annotate(
            label,
            (x, y),
            textcoords="offset points",
            xytext=(area**0.5 / 2 + 5, -6),
            fontsize=8,
            fontweight="bold" if r["highlight"] else "normal",
        )
    s = report["settings"]
    ax.set_xlabel(f"latency at batch 1, {s['threads']} thread(s), median (ms)")
    accuracy_label = "accuracy (bundles: shipped oos threshold; teacher, peer: argmax)"
    ax.set_ylabel(accuracy_label if with_accuracy else f"throughput at batch {s['batch_size']} (texts/s)")
    ax.margins(y=0.12)
    ax.set_title("edgepack bench (marker area ~ size on disk; first bundle outlined in red)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0, right=max(r["latency"]["p50_ms"] for r in rows) * 1.45)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
