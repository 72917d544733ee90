"""Teacher stage: fine-tune the teacher when it has no head for these labels, then cache it and its logits.

With `[teacher] layers`, only those encoder layers of the base model are kept before fine-tuning (the
embeddings and the head as they are): the teacher is that slice, fine-tuned directly on the labels.

The cache key covers the base model's bytes, the data, the labels and the fine-tuning settings, so a second
build with the same inputs reuses both the fine-tuned model and the logits (no teacher forward pass per
student step: the distillation reads the cached training-set logits).

With `[teacher] ensemble_seeds`, one more teacher is fine-tuned (and cached as a single teacher) per seed, and
the stage's logits, on every split and on any text a later stage asks for (training.teacher_logits), are the
log of the teachers' mean probabilities; the model the student is made from stays the first teacher.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from edgepack_runtime.data import DataError

from edgepack import architectures, metrics, models
from edgepack.cache import Cache, cache_key, hash_file, hash_folder, key_settings
from edgepack.data import LabelledSplits
from edgepack.errors import RecipeError
from edgepack.recipe import AUTO_LAYERS, AUTO_LAYERS_RULE, TeacherConfig, kept_layers
from edgepack.training import (
    PadCollator,
    TeacherResult,
    mean_log_probs,
    predict_logits,
    seeded,
    tokenized_dataset,
    training_arguments,
)

log = logging.getLogger(__name__)


def _data_fingerprint(splits: LabelledSplits) -> str:
    return cache_key(splits.labels, splits.texts, {s: v.tolist() for s, v in splits.label_ids.items()})


def _key_settings(config: TeacherConfig) -> dict[str, Any]:
    """The fine-tuning settings in the cache key; keys added later are left out at their defaults, so
    teachers cached before they existed keep their keys."""
    return key_settings(
        config,
        {
            "fine_tune": "auto",
            "label_map": None,
            "layers": None,
            "group_by_length": False,
            "ensemble_seeds": [],
        },
    )


@dataclass(frozen=True)
class _Head:
    """What the teacher stage does with the checkpoint's classification head."""

    labels: list[str] | None  # the head's labels (mapped), in its id order; None: a head in the data's order
    fine_tune: bool
    replaced: bool  # a head for other labels is replaced (fine_tune = "always")
    record: dict[str, Any]


def _head(base_dir: Path, splits: LabelledSplits, config: TeacherConfig) -> _Head:
    """Keep a head whose labels are the data's (in any order, after label_map); refuse one for other labels
    unless fine_tune = "always" replaces it; a model without a head is fine-tuned with a new one."""
    own = models.classifier_labels(base_dir)
    if own is None:
        if config.label_map is not None:
            raise RecipeError(
                f"[teacher] label_map is set, but {config.model} has no sequence-classification head to map "
                "(its config.json names no *ForSequenceClassification architecture). Remove label_map: the "
                "model gets a new head for the data's labels and is fine-tuned."
            )
        return _Head(None, True, False, {"head": "new"})
    mapping = models.read_label_map(config.label_map) if config.label_map is not None else {}
    named = models.apply_label_map(own, mapping, config.model) if mapping else own
    source = "config.json id2label" + (" with [teacher] label_map" if mapping else "")
    record: dict[str, Any] = {"labels_from": source, "label_map": mapping or None}
    if set(named) == set(splits.labels):
        if config.fine_tune == "always":
            log.info("teacher: %s has a head for these labels; fine_tune = always trains it", config.model)
        return _Head(named, config.fine_tune == "always", False, record | {"head": "checkpoint's"})
    if config.fine_tune == "always":
        log.warning(
            "teacher: %s has a head for other labels (%s); it is replaced and fine-tuned (fine_tune = always)",
            config.model,
            _shown(named),
        )
        return _Head(None, True, True, record | {"head": "replaced"})
    raise DataError(_mismatch(config, own, named, splits.labels))


def _shown(labels: list[str], limit: int = 20) -> str:
    more = f" ... ({len(labels)} in all)" if len(labels) > limit else ""
    return f"{labels[:limit]}{more}"


def _mismatch(config: TeacherConfig, own: list[str], named: list[str], data: list[str]) -> str:
    """One line: both sides, what differs, and what to do."""
    missing = sorted(set(data) - set(named))
    extra = sorted(set(named) - set(data))
    what = (
        f"The teacher's labels do not cover the data's labels: {_shown(missing, 10)} are unknown to it"
        if missing
        else f"The teacher has labels the data lacks: {_shown(extra, 10)}"
    )
    fix = (
        f"map them with [teacher] label_map (e.g. {{LABEL_0 = {data[0]!r}}}, or a JSON file's path), "
        if models.is_generic(own)
        else "use a teacher fine-tuned on these labels, fix the map in [teacher] label_map, "
    )
    return (
        f"{what}. Teacher {config.model} (config.json id2label{', after label_map' if named != own else ''}): "
        f"{_shown(named)}; data (train split): {_shown(data)}. To use its head {fix}or set [teacher] "
        'fine_tune = "always" to train a new head on the data.'
    )


_NO_LAYERS = "Remove [teacher] layers: the model is fine-tuned with all of its layers."


def _slice(base_dir: Path, config: TeacherConfig, head: _Head) -> tuple[TeacherConfig, dict[str, Any]]:
    """`config` with `layers = "auto"` resolved to its list (keyed, trained and recorded as the list), and the
    record's note of the layers kept; refuses, before any training, layers on a checkpoint used as it is, an
    index beyond the base model's depth and a family edgepack cannot slice."""
    if config.layers is None:
        return config, {"kept_layers": None}
    if not head.fine_tune and config.layers == AUTO_LAYERS:  # --quick on a checkpoint that needs no training
        log.warning(
            'teacher: [teacher] layers = "%s" applies to fine-tuning; %s has a head for these labels and is used '
            'as it is, with all of its layers (set fine_tune = "always" to fine-tune a slice of it)',
            AUTO_LAYERS,
            config.model,
        )
        return replace(config, layers=None), {"kept_layers": None}
    if not head.fine_tune:
        raise RecipeError(
            f"[teacher] layers needs fine-tuning: {config.model} has a head for these labels, which fine_tune = "
            '"auto" uses as it is (no training, all of its layers); set fine_tune = "always" or remove layers.'
        )
    depth, model_type = architectures.folder_depth(base_dir)
    if depth is None:
        raise RecipeError(
            f"[teacher] layers = {config.layers!r} needs a model of a known encoder family "
            f"({architectures.SUPPORTED}); {config.model} is model_type {model_type!r}. {_NO_LAYERS}"
        )
    layers = kept_layers(config.layers, depth)
    assert layers is not None
    if max(layers) >= depth:
        raise RecipeError(
            f"[teacher] layers = {layers} asks for layer {max(layers)}, but {config.model} has {depth} layers "
            f'(0..{depth - 1}): use indices below {depth}, or "{AUTO_LAYERS}".'
        )
    record: dict[str, Any] = {"kept_layers": layers, "base_layers": depth}
    if config.layers == AUTO_LAYERS:
        record["layers_rule"] = f"{AUTO_LAYERS} (N = base_layers): {AUTO_LAYERS_RULE}"
        log.info("teacher: layers = %r: %s of %s's %d layers", AUTO_LAYERS, layers, config.model, depth)
    return replace(config, layers=layers), record


def _fine_tune(
    base_dir: Path,
    splits: LabelledSplits,
    config: TeacherConfig,
    max_length: int,
    out: Path,
    resize_head: bool = False,
) -> None:
    from transformers import Trainer

    tokenizer = models.load_tokenizer(base_dir)
    train = tokenized_dataset(tokenizer, splits.texts["train"], max_length, splits.label_ids["train"])
    args = training_arguments(
        out / "trainer",
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        seed=config.seed,
        weight_decay=config.weight_decay,
        warmup_ratio=config.warmup_ratio,
        group_by_length=config.group_by_length,
    )
    with seeded(config.seed):  # the new classification head's initialisation, dropout, shuffling
        model = models.load_classifier(base_dir, splits.labels, resize_head=resize_head)
        if isinstance(config.layers, list):  # "auto" was resolved by _slice
            architectures.keep_encoder_layers(
                model,
                config.layers,
                "[teacher] layers",
                _NO_LAYERS,
                setting="[teacher] layers",
                owner=config.model,
            )
            log.info("teacher: keeping layers %s of %s", config.layers, config.model)
        trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=PadCollator(tokenizer))
        log.info("teacher: fine-tuning %s for %s epochs on %d examples", base_dir, config.epochs, len(train))
        trainer.train()
    shutil.rmtree(out / "trainer", ignore_errors=True)
    model.save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")


def run(splits: LabelledSplits, config: TeacherConfig, max_length: int, cache: Cache) -> TeacherResult:
    """The fine-tuned teacher (cached), or with `ensemble_seeds` the ensemble of it and one more per seed."""
    first = _single(splits, replace(config, ensemble_seeds=[]), max_length, cache)
    if not config.ensemble_seeds:
        return first
    if not first.record["fine_tuned_here"]:
        raise RecipeError(
            f"[teacher] ensemble_seeds = {config.ensemble_seeds}: {config.model} has a head for these labels and is "
            'used as it is, so every member would be the same model. Set fine_tune = "always" to fine-tune one '
            "teacher per seed, or unset ensemble_seeds."
        )
    others = [
        _single(splits, replace(config, seed=s, ensemble_seeds=[]), max_length, cache)
        for s in config.ensemble_seeds
    ]
    return _ensemble([first, *others], [config.seed, *config.ensemble_seeds])


def _ensemble(members: list[TeacherResult], seeds: list[int]) -> TeacherResult:
    """One teacher whose logits are the members' mean_log_probs; its model is the first member's."""
    first = members[0]
    logits = {s: mean_log_probs([m.logits[s] for m in members]) for s in first.logits}
    ensemble = {
        "cache_key": cache_key([m.record["cache_key"] for m in members]),  # what later stages' keys follow
        "members": [
            {"seed": seed, "cache_key": m.record["cache_key"], "metrics": m.record["metrics"]}
            for seed, m in zip(seeds, members, strict=True)
        ],
    }
    record = first.record | {"ensemble": ensemble}  # cache_key stays the first's: the folder of model_dir
    members_dirs = tuple(m.model_dir for m in members)
    return TeacherResult(
        first.model_dir, first.splits, logits, _with_metrics(record, logits, first.splits), members_dirs
    )


def _single(splits: LabelledSplits, config: TeacherConfig, max_length: int, cache: Cache) -> TeacherResult:
    """One fine-tuned teacher, from the cache when it holds it."""
    base_dir = models.resolve_model(config.model)
    head = _head(base_dir, splits, config)  # refuses a head for other labels before any training
    config, sliced = _slice(base_dir, config, head)  # refuses bad [teacher] layers before any training
    if head.labels is not None:
        splits = splits.relabelled(head.labels)  # a fine-tuned teacher keeps its own id2label order
    settings = _key_settings(config) if head.fine_tune else None
    base_sha256 = hash_folder(base_dir)
    key = cache_key(base_sha256, _data_fingerprint(splits), max_length, settings)
    folder = cache.folder("teacher", key)
    with cache.claim(folder) as fresh:
        if fresh:
            record = _teach(base_dir, splits, config, max_length, folder, head) | {"settings": settings}
            cache.finish(folder, record | {"cache_key": key})
        else:
            log.info("teacher: reusing cached %s", folder)
    logits = {s: np.load(folder / f"logits-{s}.npy") for s in splits.texts}
    model_dir = folder / "model" if head.fine_tune else base_dir
    record = (
        cache.record(folder) | {"cached": not fresh} | head.record | sliced | _digests(base_sha256, model_dir)
    )
    return TeacherResult(model_dir, splits, logits, _with_metrics(record, logits, splits))


def _teach(
    base_dir: Path,
    splits: LabelledSplits,
    config: TeacherConfig,
    max_length: int,
    folder: Path,
    head: _Head,
) -> dict[str, Any]:
    """Fine-tune (when the model has no head for these labels), write the model and its logits on every split
    into the cache folder, and return what to record."""
    started = time.perf_counter()
    if head.fine_tune:
        _fine_tune(base_dir, splits, config, max_length, folder, resize_head=head.replaced)
        model_dir = folder / "model"
    else:
        log.info("teacher: %s already has a head for these labels; no training", config.model)
        model_dir = base_dir
    trained_s = time.perf_counter() - started
    model = models.load_classifier(model_dir)
    tokenizer = models.load_tokenizer(model_dir)
    logits = {
        s: predict_logits(model, tokenizer, splits.texts[s], max_length, desc=f"teacher logits ({s})")
        for s in splits.texts
    }
    for split, values in logits.items():
        np.save(folder / f"logits-{split}.npy", values)
    return {
        "model": config.model,
        "fine_tuned_here": head.fine_tune,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": model.config.num_hidden_layers,
        "train_seconds": round(trained_s, 1),
    }


def weights_sha256(model_dir: Path) -> dict[str, str]:
    """sha256 of each safetensors file of a model folder (the weights the teacher stage loads), by file name."""
    return {p.name: hash_file(p) for p in sorted(model_dir.glob("*.safetensors"))}


def _digests(base_sha256: str, model_dir: Path) -> dict[str, Any]:
    """What identifies the teacher for a rebuild: its weights, and the folder it was made from."""
    return {
        "weights_sha256": weights_sha256(model_dir),
        "base_model_sha256": base_sha256,  # edgepack.cache.hash_folder: file names and bytes of the folder
    }


def _with_metrics(
    record: dict[str, Any], logits: dict[str, np.ndarray], splits: LabelledSplits
) -> dict[str, Any]:
    """Scores are recomputed from the cached logits, so they always follow the current metric code."""
    report = metrics.split_report(logits, splits.label_ids, splits.oos_id())
    log.info("teacher: %s", report)
    return record | {"metrics": report}
