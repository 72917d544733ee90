"""Teacher stage: fine-tune the teacher when it has no head for these labels, then cache it and its logits.

The cache key covers the base model's bytes, the data, the labels and the fine-tuning settings, so a second
build with the same inputs reuses both the fine-tuned model and the logits (no teacher forward pass per
student step: the distillation reads the cached training-set logits).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edgepack import metrics, models
from edgepack.cache import Cache, cache_key, hash_folder
from edgepack.data import LabelledSplits
from edgepack.recipe import TeacherConfig
from edgepack.training import (
    PadCollator,
    TeacherResult,
    predict_logits,
    tokenized_dataset,
    training_arguments,
)

log = logging.getLogger(__name__)


def _data_fingerprint(splits: LabelledSplits) -> str:
    return cache_key(splits.labels, splits.texts, {s: v.tolist() for s, v in splits.label_ids.items()})


def _fine_tune(
    base_dir: Path, splits: LabelledSplits, config: TeacherConfig, max_length: int, out: Path
) -> None:
    from transformers import Trainer

    tokenizer = models.load_tokenizer(base_dir)
    model = models.load_classifier(base_dir, splits.labels)
    train = tokenized_dataset(tokenizer, splits.texts["train"], max_length, splits.label_ids["train"])
    args = training_arguments(
        out / "trainer",
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        seed=config.seed,
        weight_decay=config.weight_decay,
        warmup_ratio=config.warmup_ratio,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=PadCollator(tokenizer))
    log.info("teacher: fine-tuning %s for %s epochs on %d examples", base_dir, config.epochs, len(train))
    trainer.train()
    shutil.rmtree(out / "trainer", ignore_errors=True)
    model.save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")


def run(splits: LabelledSplits, config: TeacherConfig, max_length: int, cache: Cache) -> TeacherResult:
    base_dir = models.resolve_model(config.model)
    own_labels = models.finetuned_labels(base_dir)
    if own_labels is not None:
        splits = splits.relabelled(own_labels)  # a fine-tuned teacher keeps its own id2label
    settings = None if own_labels is not None else asdict(config)
    key = cache_key(hash_folder(base_dir), _data_fingerprint(splits), max_length, settings)
    folder = cache.folder("teacher", key)
    if cache.is_complete(folder):
        log.info("teacher: reusing cached %s", folder)
        logits = {s: np.load(folder / f"logits-{s}.npy") for s in splits.texts}
        record = _with_metrics(cache.record(folder) | {"cached": True}, logits, splits)
        return TeacherResult(folder / "model" if own_labels is None else base_dir, splits, logits, record)

    cache.start(folder)
    started = time.perf_counter()
    if own_labels is None:
        _fine_tune(base_dir, splits, config, max_length, folder)
        model_dir = folder / "model"
    else:
        log.info("teacher: %s is already fine-tuned on these labels; no training", config.model)
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
    record = {
        "model": config.model,
        "fine_tuned_here": own_labels is None,
        "settings": settings,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": model.config.num_hidden_layers,
        "train_seconds": round(trained_s, 1),
        "cache_key": key,
    }
    cache.finish(folder, record)
    return TeacherResult(model_dir, splits, logits, _with_metrics(record | {"cached": False}, logits, splits))


def _with_metrics(
    record: dict[str, Any], logits: dict[str, np.ndarray], splits: LabelledSplits
) -> dict[str, Any]:
    """Scores are recomputed from the cached logits, so they always follow the current metric code."""
    report = metrics.split_report(logits, splits.label_ids, splits.oos_id())
    log.info("teacher: %s", report)
    return record | {"metrics": report}
