"""`edgepack bench`: bundles, their teacher and a peer runtime measured side by side in one run.

Contenders (in this order):
  teacher   the fine-tuned model through a transformers `pipeline("text-classification")` in PyTorch
            (torch.set_num_threads(threads)), truncating at the first bundle's max_length; its out-of-scope
            threshold is chosen on the validation data (as the build chose the bundles'), when there is some
  peer      the first bundle's model.onnx through Optimum's ORTModelForSequenceClassification in a transformers
            pipeline (ORT intra-op threads); the bundle's out-of-scope threshold applies to its scores
  bundle    each bundle through edgepack_runtime.Classifier (ORT intra-op threads); the out-of-scope threshold
            the bundle ships applies

Latency is measured at batch 1, tokenization included, in interleaved rounds: every round times each contender
on the same `block` queries in a row, in an order that rotates from round to round, so drift hits all alike.
A block of 1 (A B C A B C ...) measures each call right after the other contenders ran, its weights evicted
from the caches by theirs: a cost of the benchmark, not of serving, and one that falls hardest on the smallest
model. The default block of 10 measures the steady state of an application serving queries back to back (the
chapter's PerformanceBenchmark timed each model's queries back to back) while still interleaving.

Throughput is texts per second through each contender's batch path at `batch_size`. Accuracy is on the labeled
data, with the contender's out-of-scope threshold and by plain argmax; accuracy against the teacher compares
like with like. Each bundle's physical floor (edgepack.floor) is its graph's MACs for each latency query over
this CPU's measured GEMM rates.

JSON report (`--json FILE`), keys:
  schema          "edgepack.bench/1"
  created         ISO-8601 UTC time of the run
  machine         {"cpu": CPU model, SIMD flags and core count; "python": version; "versions": {package: version}}
  settings        {"threads", "batch_size", "runs" (timed calls per contender), "warmup" (untimed calls per
                   contender), "block" (consecutive calls per contender in a round),
                   "queries" (distinct latency queries), "data" (path or null), "data_texts" (labeled texts or 0)}
  skipped         [{"contender": "teacher" | "peer", "reason": one line}] for contenders asked for but not run
  gemm_rates      null with no floor measured, else {"threads", "shape": [M, K, N], "fp32", "int8_u8_weights",
                   "int8_s8_weights", "int8" (the faster INT8)} in multiply-accumulates per second
  contenders      list, in the order above; each:
    name          display name (bundle: its folder name; teacher: "teacher"; peer: "<bundle> (optimum)")
    kind          "teacher" | "peer" | "bundle"
    path          the model folder, bundle folder or model.onnx measured
    highlight     true for the first bundle (the one the plot highlights)
    size          {"bytes": weights on disk (teacher: safetensors files, or its state dict's bytes when it has
                   none; peer and bundle: model.onnx), "total_bytes": the whole bundle (bundle only, else null)}
    latency       {"runs", "warmup", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms"} at batch 1
    throughput    {"batch_size", "texts", "seconds", "texts_per_s"}
    accuracy      null without data, else {"texts", "accuracy" (as the contender answers: with its threshold
                   when it has one), "argmax_accuracy", "in_scope_accuracy", "oos_recall" (both as answered;
                   null without an oos label), "oos_label", "threshold" (null: none), "threshold_source"
                   ("bundle" | "validation" | null), "unknown_labels" (gold labels the contender does not know)}
    floor         bundles with a floor measured, else null: {"queries", "median_tokens", "floor_ms" (median over
                   the latency queries), "latency_over_floor" (p50_ms / floor_ms), "median_query": {"tokens",
                   "int8_macs", "fp32_macs", "floor_ms", "graph_ms" (InferenceSession.run alone, median), and
                   kernel times in ms from an ONNX Runtime profile: "int8_gemm_ms", "fp32_gemm_ms", "other_ms"}}
    vs_teacher    null without a teacher, else {"speedup": teacher p50 / p50, "throughput_ratio": texts_per_s /
                   teacher texts_per_s, "size_ratio": bytes / teacher bytes, "accuracy_delta": accuracy -
                   teacher accuracy, like with like ("accuracy_basis": "threshold" when both have one, else
                   "argmax"; both null without data)}
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

from edgepack.floor import Rates, bundle_floor

SCHEMA = "edgepack.bench/1"
DEFAULT_BLOCK = 10  # consecutive calls per contender per interleaved round (see interleaved_latency)
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
    proba_batch: Callable[[list[str], int], np.ndarray]  # [texts, labels] probabilities, in `labels` order
    size: dict[str, int | None]
    labels: list[str]
    oos_label: str | None = None
    threshold: float | None = None  # out-of-scope threshold on the top probability
    threshold_source: str | None = None
    highlight: bool = False
    manifest: dict[str, Any] = field(default_factory=dict)  # bundles only
    cleanup: list[Callable[[], None]] = field(default_factory=list)


class InvalidBundle(Exception):
    """A bundle argument that edgepack_runtime refuses; the message names the bundle and the problem."""


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
        proba_batch=lambda texts, bs: clf.predict_proba(texts, batch_size=bs),
        size={"bytes": sizes["model_bytes"], "total_bytes": sizes["total_bytes"]},
        labels=clf.labels,
        oos_label=clf.oos_label or _oos_of(clf.labels),
        threshold=clf.oos_threshold,
        threshold_source="bundle" if clf.oos_threshold is not None else None,
        manifest=clf.manifest,
    )


def _pipeline_calls(
    classify: Any, max_length: int, labels: list[str]
) -> tuple[Callable[[str], str], Callable[..., list[str]], Callable[..., np.ndarray]]:
    """predict, predict_batch and proba_batch through a transformers text-classification pipeline."""
    index = {label: i for i, label in enumerate(labels)}

    def one(text: str) -> str:
        return str(classify(text, truncation=True, max_length=max_length)[0]["label"])

    def many(texts: list[str], batch_size: int) -> list[str]:
        out = classify(texts, batch_size=batch_size, truncation=True, max_length=max_length)
        return [str(row["label"]) for row in out]

    def proba(texts: list[str], batch_size: int) -> np.ndarray:
        out = classify(texts, batch_size=batch_size, truncation=True, max_length=max_length, top_k=None)
        probs = np.zeros((len(texts), len(labels)), dtype=np.float32)
        for row, scores in enumerate(out):
            for item in scores:
                probs[row, index[item["label"]]] = item["score"]
        return probs

    return one, many, proba


def _oos_of(labels: list[str]) -> str | None:
    return "oos" if "oos" in labels else None


def teacher_contender(
    spec: str, threads: int, max_length: int, validation: Sequence[tuple[str, str]] | None = None
) -> Contender:
    """The teacher in PyTorch behind a transformers pipeline, with an out-of-scope threshold chosen on
    `validation` when given. Raises SkipContender with the reason."""
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
    teacher = Contender(
        "teacher",
        "teacher",
        folder,
        *_pipeline_calls(classify, max_length, labels),
        size={"bytes": size, "total_bytes": None},
        labels=labels,
        oos_label=_oos_of(labels),
    )
    if validation and teacher.oos_label is not None:
        teacher.threshold = validation_threshold(teacher, validation)
        teacher.threshold_source = "validation"
    return teacher


def validation_threshold(c: Contender, validation: Sequence[tuple[str, str]], batch_size: int = 64) -> float:
    """The out-of-scope threshold that maximises accuracy on `validation`, as the build chooses a bundle's."""
    from edgepack.metrics import choose_threshold

    assert c.oos_label is not None
    probs = c.proba_batch([text for text, _ in validation], batch_size)
    index = {label: i for i, label in enumerate(c.labels)}
    gold = np.array([index.get(label, -1) for _, label in validation])
    return choose_threshold(probs, gold, index[c.oos_label])[0]


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
    peer = Contender(
        f"{bundle.name} (optimum)",
        "peer",
        bundle.path / "model.onnx",
        *_pipeline_calls(classify, manifest["model"]["max_length"], bundle.labels),
        size={"bytes": bundle.size["bytes"], "total_bytes": None},
        labels=bundle.labels,
        oos_label=bundle.oos_label,
        threshold=bundle.threshold,
        threshold_source=bundle.threshold_source,
    )
    peer.cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    return peer


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _bundle_names(bundles: Sequence[Path]) -> list[str]:
    """Folder names, made unique (the same bundle twice gets '#2')."""
    names: list[str] = []
    for i, path in enumerate(bundles):
        name = path.resolve().name
        names.append(name if name not in names else f"{name}#{i + 1}")
    return names


def load_contenders(
    bundles: Sequence[Path],
    teacher: str | None,
    peer: str | None,
    validation: Sequence[tuple[str, str]] | None,
    threads: int,
    contenders: list[Contender],
    skipped: list[dict[str, str]],
    log: Log = lambda message: None,
) -> None:
    """Append teacher, peer and bundles to `contenders` (in that order; the first bundle highlighted and run
    by the peer). A teacher or peer that cannot run here goes to `skipped` with its one-line reason; a bundle
    that is not valid raises InvalidBundle."""
    from edgepack_runtime import BundleError

    loaded = []
    for path, name in zip(bundles, _bundle_names(bundles), strict=True):
        log(f"loading bundle {path} ...")
        try:
            loaded.append(bundle_contender(path, threads, name))
        except BundleError as exc:
            raise InvalidBundle(f"{path} is not a valid bundle: {exc}") from None
    loaded[0].highlight = True
    if teacher is not None:
        log(
            f"loading teacher {teacher}"
            + " (and choosing its threshold on validation data)" * bool(validation)
        )
        try:
            max_length = loaded[0].manifest["model"]["max_length"]
            contenders.append(teacher_contender(teacher, threads, max_length, validation))
        except SkipContender as exc:
            skipped.append({"contender": "teacher", "reason": str(exc)})
            log(f"skipping the teacher: {exc}")
    if peer == "optimum":
        log("loading the Optimum peer ...")
        try:
            contenders.append(optimum_contender(loaded[0], threads))
        except SkipContender as exc:
            skipped.append({"contender": "peer", "reason": str(exc)})
            log(f"skipping the peer: {exc}")
    contenders.extend(loaded)


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
    contenders: Sequence[Contender],
    texts: Sequence[str],
    runs: int,
    warmup: int,
    log: Log,
    block: int = 1,
) -> dict[str, dict[str, Any]]:
    """Batch-1 latency of `runs` timed calls per contender, in interleaved rounds: each round gives every
    contender the same `block` queries in a row (block 1: A B C A B C ...), the order rotating per round."""
    for c in contenders:
        for text in itertools.islice(itertools.cycle(texts), warmup):
            c.predict(text)
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    rounds = -(-runs // block)
    step = max(1, rounds // 4)
    for r in range(rounds):
        queries = [texts[i % len(texts)] for i in range(r * block, min(runs, (r + 1) * block))]
        shift = r % len(contenders)
        for c in [*contenders[shift:], *contenders[:shift]]:
            for text in queries:
                start = time.perf_counter_ns()
                c.predict(text)
                times[c.name].append((time.perf_counter_ns() - start) / 1e6)
        if (r + 1) % step == 0 or r + 1 == rounds:
            log(f"  latency: round {r + 1}/{rounds}")
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
    """Accuracy as the contender answers (its threshold applied) and by plain argmax."""
    from edgepack.metrics import predictions

    probs = c.proba_batch([text for text, _ in pairs], batch_size)
    index = {label: i for i, label in enumerate(c.labels)}
    gold = np.array([index.get(label, -1) for _, label in pairs])  # -1: a label the contender does not know
    oos_id = index.get(c.oos_label) if c.oos_label is not None else None
    answered = predictions(probs, oos_id, c.threshold) == gold
    result: dict[str, Any] = {
        "texts": len(pairs),
        "accuracy": float(answered.mean()),
        "argmax_accuracy": float((probs.argmax(axis=1) == gold).mean()),
        "in_scope_accuracy": None,
        "oos_recall": None,
        "oos_label": c.oos_label,
        "threshold": c.threshold,
        "threshold_source": c.threshold_source,
        "unknown_labels": sorted({label for _, label in pairs if label not in index}),
    }
    if oos_id is not None:
        in_scope = gold != oos_id
        if in_scope.any():
            result["in_scope_accuracy"] = float(answered[in_scope].mean())
        if (~in_scope).any():
            result["oos_recall"] = float(answered[~in_scope].mean())
    return result


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


def _vs_teacher(row: dict[str, Any], teacher: dict[str, Any]) -> dict[str, Any]:
    delta, basis = _accuracy_delta(row["accuracy"], teacher["accuracy"])
    return {
        "speedup": teacher["latency"]["p50_ms"] / row["latency"]["p50_ms"],
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
    log: Log = lambda message: None,
) -> dict[str, Any]:
    """Measure every contender (see the module docstring for the report's keys); with `rates`, each
    bundle's physical floor too."""
    log(
        f"latency at batch 1: {len(contenders)} contenders x {runs} calls, interleaved {block} at a time, "
        f"{warmup} warm-up calls each"
    )
    latencies = interleaved_latency(contenders, texts, runs, warmup, log, block)
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
            "floor": None,
            "vs_teacher": None,
        }
        if pairs:
            log(f"accuracy on {len(pairs)} texts: {c.name}")
            row["accuracy"] = accuracy(c, pairs, batch_size)
        if rates is not None and c.kind == "bundle":
            log(f"physical floor: profiling {c.name}'s graph on the latency queries")
            row["floor"] = bundle_floor(c.path, c.manifest, texts, rates, latencies[c.name]["p50_ms"])
        rows.append(row)
    teacher = next((row for row in rows if row["kind"] == "teacher"), None)
    if teacher is not None:
        for row in rows:
            row["vs_teacher"] = _vs_teacher(row, teacher)
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
