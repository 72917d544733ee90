"""Shared training plumbing for the teacher and distill stages: tokenized datasets, Trainer arguments, logits."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def tokenized_dataset(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    labels: np.ndarray | None = None,
    teacher_logits: np.ndarray | None = None,
) -> Any:
    """A `datasets.Dataset` of unpadded encodings (batches are padded to their longest member)."""
    from datasets import Dataset

    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    columns: dict[str, Any] = {
        k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded
    }
    if labels is not None:
        columns["labels"] = labels.tolist()
    if teacher_logits is not None:
        columns["teacher_logits"] = teacher_logits.astype(np.float32).tolist()
    return Dataset.from_dict(columns)


class PadCollator:
    """Pads token fields with the tokenizer and stacks any teacher logits carried alongside."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        teacher = [f.pop("teacher_logits") for f in features] if "teacher_logits" in features[0] else None
        batch = self.tokenizer.pad(features, padding=True, return_tensors="pt")
        if teacher is not None:
            batch["teacher_logits"] = torch.tensor(teacher, dtype=torch.float32)
        return dict(batch)


def training_arguments(
    output_dir: Path,
    *,
    epochs: float,
    learning_rate: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.0,
) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=128,
        weight_decay=weight_decay,
        warmup_ratio=warmup_ratio,
        lr_scheduler_type="linear",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=100,
        report_to=[],
        seed=seed,
        use_cpu=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # keep teacher_logits for the distillation loss
        disable_tqdm=False,
    )


@torch.inference_mode()
def predict_logits(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 128,
    desc: str = "logits",
) -> np.ndarray:
    """Logits for texts, in order; batches sorted by length so padding stays small."""
    from tqdm.auto import tqdm

    model.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", leave=False):
        idx = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        out[idx] = model(**batch).logits.float().numpy()
    return out
