"""What `edgepack bench` measures: each contender is a label for one text, labels and probabilities for a
batch, and what it weighs.

Contenders (in this order):
  teacher   the fine-tuned model through a transformers `pipeline("text-classification")` in PyTorch
            (torch.set_num_threads(threads)), truncating at the first bundle's max_length; its out-of-scope
            threshold is chosen on the validation data (as the build chose the bundles'), when there is some.
            By default the first bundle's own teacher, when its build's cache still holds it (bundle_teacher)
  optimum   what Optimum makes of that teacher in its documented way: export, ORTOptimizer (O2, else O1),
            ORTQuantizer with AutoQuantizationConfig.avx2 dynamic INT8, its pipeline; built once and cached
            beside the teacher's cache folder (optimum-<key>); its own threshold chosen on validation
  peer      the first bundle's model.onnx through Optimum's ORTModelForSequenceClassification in a transformers
            pipeline (ORT intra-op threads); the bundle's out-of-scope threshold applies to its probabilities
            when the bundle's rule is the top probability (a score the graph computes is not returned by the
            pipeline: it then answers by argmax)
  bundle    each bundle through edgepack_runtime.Classifier (ORT intra-op threads); the out-of-scope rule the
            bundle ships applies (its graph's oos_score, or the top probability for older bundles)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Log = Callable[[str], None]


# Labelled texts are scored one per call, as each contender answers a query: a dynamic INT8 model quantizes
# each batch's activations with one scale, so in batches its answer to a text depends on the texts beside it
# (Optimum's INT8 teacher: 0.8696 plain at batch 1, 0.8711 at 32, its validation threshold 0.270 vs 0.259).
SCORING_BATCH = 1


@dataclass
class Contender:
    """One thing to measure: a label for one text, labels for a batch, and what it weighs."""

    name: str
    kind: str
    path: Path
    predict: Callable[[str], str]
    predict_batch: Callable[[list[str], int], list[str]]
    # Probabilities [texts, labels] (in `labels` order) and out-of-scope scores [texts] (the rule's score)
    scored_batch: Callable[[list[str], int], tuple[np.ndarray, np.ndarray]]
    size: dict[str, int | None]
    labels: list[str]
    oos_label: str | None = None
    threshold: float | None = None  # out-of-scope threshold on the score
    threshold_source: str | None = None
    method: str = "max_probability"  # what the out-of-scope score is (a bundle's oos.method)
    direction: str = "below"  # which side of the threshold is out of scope
    highlight: bool = False
    manifest: dict[str, Any] = field(default_factory=dict)  # bundles only
    build: dict[str, Any] | None = None  # how the contender's model was made (optimum only)
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    _scored: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, init=False, repr=False
    )

    def score_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """scored_batch one text per call (SCORING_BATCH), kept per list of texts: the validation texts serve
        the threshold and then the trade-off curve (scoring them twice cost the teacher about 25 s a run)."""
        key = tuple(texts)
        if key not in self._scored:
            self._scored[key] = self.scored_batch(list(texts), SCORING_BATCH)
        return self._scored[key]


class InvalidBundle(Exception):
    """A bundle argument that edgepack_runtime refuses; the message names the bundle and the problem."""


class SkipContender(Exception):
    """A contender that cannot run here (not installed, not found); the message is the one-line reason."""


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
        scored_batch=lambda texts, bs: _with_scores(*clf.predict_scores(texts, batch_size=bs)),
        size={"bytes": sizes["model_bytes"], "total_bytes": sizes["total_bytes"]},
        labels=clf.labels,
        oos_label=clf.oos_label or _oos_of(clf.labels),
        threshold=clf.oos_threshold,
        threshold_source="bundle" if clf.oos_threshold is not None else None,
        method=clf.oos.method if clf.oos else "max_probability",
        direction=clf.oos.direction if clf.oos else "below",
        manifest=clf.manifest,
    )


def _with_scores(probs: np.ndarray, scores: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A bundle without an out-of-scope rule scores by the top probability, like the pipelines."""
    return probs, probs.max(axis=1) if scores is None else scores


def _pipeline_calls(
    classify: Any, max_length: int, labels: list[str]
) -> tuple[Callable[[str], str], Callable[..., list[str]], Callable[..., tuple[np.ndarray, np.ndarray]]]:
    """predict, predict_batch and scored_batch (the top probability as the out-of-scope score) through a
    transformers text-classification pipeline, answering with `labels` (in the model's id order: a teacher's
    LABEL_N are named by its build's label_map)."""
    index = {label: i for i, label in enumerate(labels)}
    classify.model.config.id2label = dict(enumerate(labels))
    classify.model.config.label2id = index

    def one(text: str) -> str:
        return str(classify(text, truncation=True, max_length=max_length)[0]["label"])

    def many(texts: list[str], batch_size: int) -> list[str]:
        out = classify(texts, batch_size=batch_size, truncation=True, max_length=max_length)
        return [str(row["label"]) for row in out]

    def scored(texts: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        out = classify(texts, batch_size=batch_size, truncation=True, max_length=max_length, top_k=None)
        probs = np.zeros((len(texts), len(labels)), dtype=np.float32)
        for row, scores in enumerate(out):
            for item in scores:
                probs[row, index[item["label"]]] = item["score"]
        return probs, probs.max(axis=1)

    return one, many, scored


def _oos_of(labels: list[str]) -> str | None:
    return "oos" if "oos" in labels else None


def read_manifest(bundle: Path) -> dict[str, Any]:
    """The bundle's manifest.json, or {} when it cannot be read as an object: for choosing the bench's defaults
    only (a damaged bundle is refused when it is loaded)."""
    from edgepack_runtime.manifest import MANIFEST

    try:
        manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def teacher_label_map(manifest: dict[str, Any]) -> dict[str, str] | None:
    """The `[teacher] label_map` the bundle's build named the checkpoint's LABEL_N with, if any."""
    teacher = manifest.get("teacher")
    mapping = teacher.get("label_map") if isinstance(teacher, dict) else None
    return mapping if isinstance(mapping, dict) and mapping else None


def bundle_teacher(bundle: Path, root: Path | None = None) -> tuple[Path | None, bool]:
    """(the model folder of the bundle's teacher, whether it is there): the checkpoint the build used as it
    was, or the one it fine-tuned and cached, `<cache_dir>/teacher-<key>/model` from the manifest's
    teacher.cache_key and recipe.cache_dir, a relative cache_dir taken from `root` (default: the working
    folder, as the build took it). (None, False) when the manifest names no teacher or cannot be read."""
    from edgepack.cache import Cache
    from edgepack.errors import EdgepackError
    from edgepack.models import resolve_model

    manifest = read_manifest(bundle)
    teacher, recipe = manifest.get("teacher"), manifest.get("recipe")
    if not isinstance(teacher, dict) or not isinstance(recipe, dict):
        return None, False
    if teacher.get("fine_tuned_here") is False and isinstance(teacher.get("model"), str):
        try:  # the checkpoint kept its head: the teacher is the checkpoint itself
            return resolve_model(teacher["model"]), True
        except EdgepackError:
            return Path(teacher["model"]), False
    key, cache_dir = teacher.get("cache_key"), recipe.get("cache_dir")
    if not isinstance(key, str) or not key or not isinstance(cache_dir, str):
        return None, False
    root_dir = Path(cache_dir) if Path(cache_dir).is_absolute() else (root or Path.cwd()) / cache_dir
    cache = Cache(root_dir)
    folder = cache.folder("teacher", key)
    model = folder / "model"
    return model, cache.is_complete(folder) and model.is_dir()


def _teacher_folder(spec: str, label_map: dict[str, str] | None) -> tuple[Path, list[str]]:
    """The fine-tuned teacher's folder and labels, LABEL_N named by `label_map` (the bundle's build's).
    Raises SkipContender with the reason."""
    from edgepack.errors import EdgepackError
    from edgepack.models import apply_label_map, classifier_labels, is_generic, resolve_model

    try:
        folder = resolve_model(spec)
        labels = classifier_labels(folder)
        if labels and is_generic(labels) and label_map:
            labels = apply_label_map(labels, label_map, spec)
    except EdgepackError as exc:
        raise SkipContender(str(exc)) from None
    if not labels:
        raise SkipContender(f"{folder} is not a fine-tuned classifier (its config names no labels)")
    if is_generic(labels):
        raise SkipContender(
            f"{folder} names its labels {labels[0]}..{labels[-1]} and the first bundle's build recorded no "
            "[teacher] label_map to name them with"
        )
    return folder, labels


def _thresholded(c: Contender, validation: Sequence[tuple[str, str]] | None) -> Contender:
    """`c` with its out-of-scope threshold chosen on `validation`, when there is one and c has an oos label."""
    if validation and c.oos_label is not None:
        c.threshold = validation_threshold(c, validation)
        c.threshold_source = "validation"
    return c


def teacher_contender(
    spec: str,
    threads: int,
    max_length: int,
    validation: Sequence[tuple[str, str]] | None = None,
    label_map: dict[str, str] | None = None,
) -> Contender:
    """The teacher in PyTorch behind a transformers pipeline, with an out-of-scope threshold chosen on
    `validation` when given. Raises SkipContender with the reason."""
    from edgepack.models import load_tokenizer

    folder, labels = _teacher_folder(spec, label_map)
    import torch
    from transformers import AutoModelForSequenceClassification, pipeline

    torch.set_num_threads(threads)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True).eval()
        classify = pipeline(
            "text-classification", model=model, tokenizer=load_tokenizer(folder), device="cpu"
        )
    except Exception as exc:  # damaged weights or tokenizer files raise many types; any of them means "skip"
        raise SkipContender(f"cannot load the teacher {folder}: {_one_line(exc)}") from None
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
    return _thresholded(teacher, validation)


# ORTOptimizer levels, tried in order (ORTQuantizer fails on O2's output with ORT 1.32: DESIGN.md, pitfalls)
OPTIMUM_LEVELS = ("O2", "O1")
OPTIMUM_PER_CHANNEL = True  # AutoQuantizationConfig.avx2's default, and the cpu-avx2 bundles'


def optimum_teacher_build(folder: Path, log: Log = lambda message: None) -> tuple[Path, dict[str, Any]]:
    """(folder holding model.onnx, its record): Optimum's dynamic INT8 model of the teacher in `folder`, built
    once and cached as `optimum-<key>` beside the teacher's cache folder (`<cache>/teacher-<key>/model`), or
    under the default cache for another teacher; keyed by the teacher's bytes, the settings and the versions.
    Raises SkipContender with the reason when Optimum cannot export, optimize or quantize it."""
    from importlib.metadata import version

    from edgepack.cache import Cache, cache_key, hash_folder
    from edgepack.recipe import Recipe

    in_cache = folder.name == "model" and folder.parent.name.startswith("teacher-")
    cache = Cache(folder.parent.parent if in_cache else Recipe.cache_dir)
    tools = {name: version(name) for name in ("optimum-onnx", "onnxruntime", "transformers", "torch")}
    settings = {"levels": OPTIMUM_LEVELS, "quantization": "avx2 dynamic", "per_channel": OPTIMUM_PER_CHANNEL}
    out = cache.folder("optimum", cache_key(hash_folder(folder), settings, tools))
    with cache.claim(out) as fresh:
        if not fresh:
            return out, cache.record(out)
        log(f"building Optimum's INT8 model of the teacher (once; cached in {out}) ...")
        try:
            record = _optimum_build(folder, out, log) | {"teacher": str(folder), "versions": tools}
        except Exception as exc:  # optimum, onnx and onnxruntime raise many types; any of them means "skip"
            shutil.rmtree(out, ignore_errors=True)
            reason = str(exc) if isinstance(exc, SkipContender) else _one_line(exc)
            raise SkipContender(f"Optimum cannot build an INT8 model of {folder}: {reason}") from None
        cache.finish(out, record)
    return out, record


def _optimum_build(folder: Path, out: Path, log: Log) -> dict[str, Any]:
    """Export, optimize, quantize into `out` (model.onnx, config, tokenizer); the record of what was done."""
    import time
    import warnings

    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTOptimizer, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig, AutoQuantizationConfig

    from edgepack.models import load_tokenizer

    start, work, failed = time.perf_counter(), out / "work", {}
    quantization = AutoQuantizationConfig.avx2(is_static=False, per_channel=OPTIMUM_PER_CHANNEL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings
        log("  optimum: exporting to ONNX ...")
        model = ORTModelForSequenceClassification.from_pretrained(folder, export=True)
        model.save_pretrained(work / "export")
        for level in OPTIMUM_LEVELS:
            log(f"  optimum: optimizing at {level} and quantizing ...")
            try:
                config = AutoOptimizationConfig.with_optimization_level(level)
                ORTOptimizer.from_pretrained(work / "export").optimize(config, save_dir=work / level)
                quantizer = ORTQuantizer.from_pretrained(work / level, file_name="model_optimized.onnx")
                quantizer.quantize(quantization, save_dir=work / level / "int8")
                break
            except Exception as exc:  # any failure: the next level is the fallback
                failed[level] = _one_line(exc)
                log(f"  optimum: {level} failed ({failed[level]})")
        else:
            raise SkipContender("; ".join(f"{level}: {reason}" for level, reason in failed.items()))
    (work / level / "int8" / "model_optimized_quantized.onnx").rename(out / "model.onnx")
    shutil.copyfile(work / "export" / "config.json", out / "config.json")
    load_tokenizer(folder).save_pretrained(out)  # without the fixed padding some tokenizer.json files carry
    shutil.rmtree(work)
    return {
        "optimization_level": level,
        "failed_levels": failed,
        "quantization": {"preset": "avx2", "is_static": False, "per_channel": OPTIMUM_PER_CHANNEL},
        "build_seconds": round(time.perf_counter() - start, 1),
    }


def optimum_teacher_contender(
    spec: str,
    threads: int,
    max_length: int,
    validation: Sequence[tuple[str, str]] | None = None,
    log: Log = lambda message: None,
    label_map: dict[str, str] | None = None,
) -> Contender:
    """Optimum's INT8 model of the teacher (optimum_teacher_build) through Optimum's pipeline, with its own
    out-of-scope threshold chosen on `validation` when given. Raises SkipContender with the reason."""
    try:
        import optimum.onnxruntime  # noqa: F401
    except ImportError as exc:
        raise SkipContender(f"optimum's onnxruntime support is not installed ({exc})") from None
    folder, labels = _teacher_folder(spec, label_map)
    out, record = optimum_teacher_build(folder, log)
    try:
        classify = optimum_pipeline(out, threads)
    except Exception as exc:
        raise SkipContender(f"Optimum cannot load {out / 'model.onnx'}: {_one_line(exc)}") from None
    c = Contender(
        f"teacher (optimum {record['optimization_level']} int8)",
        "optimum",
        out / "model.onnx",
        *_pipeline_calls(classify, max_length, labels),
        size={"bytes": (out / "model.onnx").stat().st_size, "total_bytes": None},
        labels=labels,
        oos_label=_oos_of(labels),
        build=record,
    )
    return _thresholded(c, validation)


def validation_threshold(c: Contender, validation: Sequence[tuple[str, str]]) -> float:
    """The out-of-scope threshold that maximises accuracy on `validation`, as the build chooses a bundle's."""
    from edgepack.metrics import choose_threshold

    assert c.oos_label is not None
    probs, _ = c.score_texts([text for text, _ in validation])
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
    """Optimum's text-classification pipeline around its ORTModelForSequenceClassification for the model.onnx
    in `folder` (see pipeline_folder), on `threads` intra-op threads."""
    from edgepack_runtime.classifier import session_options
    from optimum.onnxruntime import ORTModelForSequenceClassification, pipeline
    from transformers import AutoTokenizer

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
        # The pipeline returns probabilities only: the bundle's threshold applies when its rule is the top
        # probability; a score the graph computes (oos.output) is out of the pipeline's reach: argmax then.
        threshold=bundle.threshold if bundle.method == "max_probability" else None,
        threshold_source=bundle.threshold_source if bundle.method == "max_probability" else None,
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
    optimum_teacher: bool = True,
) -> None:
    """Append teacher, Optimum's INT8 teacher (unless `optimum_teacher` is false), peer and bundles to
    `contenders` (in that order; the first bundle highlighted and run by the peer). A contender other than a
    bundle that cannot run here goes to `skipped` with its one-line reason; a bundle that is not valid raises
    InvalidBundle."""
    from edgepack_runtime import BundleError

    loaded = []
    for path, name in zip(bundles, _bundle_names(bundles), strict=True):
        log(f"loading bundle {path} ...")
        try:
            loaded.append(bundle_contender(path, threads, name))
        except BundleError as exc:
            raise InvalidBundle(f"{path} is not a valid bundle: {exc}") from None
    loaded[0].highlight = True
    max_length = loaded[0].manifest["model"]["max_length"]
    label_map = teacher_label_map(loaded[0].manifest)
    later = " (its out-of-scope threshold chosen on validation data)" * bool(validation)
    optional: list[tuple[str, str, Callable[[], Contender]]] = []  # (kind, what it is, how to load it)
    if teacher is not None:
        optional.append(
            (
                "teacher",
                "the teacher",
                lambda: teacher_contender(teacher, threads, max_length, validation, label_map),
            )
        )
    if teacher is not None and optimum_teacher:
        optional.append(
            (
                "optimum",
                "Optimum's INT8 model of the teacher",
                lambda: optimum_teacher_contender(teacher, threads, max_length, validation, log, label_map),
            )
        )
    if peer == "optimum":
        optional.append(("peer", "the peer", lambda: optimum_contender(loaded[0], threads)))
    for kind, what, load in optional:
        log(f"loading {what}" + later * (kind != "peer") + " ...")
        try:
            contenders.append(load())
        except SkipContender as exc:
            skipped.append({"contender": kind, "reason": str(exc)})
            log(f"skipping {what}: {exc}")
    contenders.extend(loaded)
