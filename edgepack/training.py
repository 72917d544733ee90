"""What the training stages share (teacher, distill, prune): their results, tokenized datasets, Trainer
arguments, logits, the distillation loss and trainer, and the validation score a student is judged by.

The stage modules import this one and never each other.

loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer

from edgepack import metrics
from edgepack.data import LabelledSplits
from edgepack.recipe import DistillConfig

log = logging.getLogger(__name__)


@dataclass
class TeacherResult:
    model_dir: Path  # a fine-tuned classifier folder (safetensors + tokenizer)
    splits: LabelledSplits  # labels in the teacher's own order
    logits: dict[str, np.ndarray]  # per split
    record: dict[str, Any]


@dataclass
class DistillResult:
    model_dir: Path  # the distilled student (safetensors + tokenizer)
    settings: DistillConfig  # what trained it (the search's best alpha, temperature, epochs, learning rate)
    record: dict[str, Any]


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


class DistillationTrainer(Trainer):
    """Trainer whose loss mixes the hard-label CE with the temperature-softened KL to the teacher's logits."""

    def __init__(self, *args: Any, alpha: float, temperature: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.alpha = alpha
        self.temperature = temperature

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        teacher_logits = inputs.pop("teacher_logits")
        outputs = model(**inputs)
        loss = distillation_loss(
            outputs.logits, teacher_logits, inputs["labels"], self.alpha, self.temperature
        )
        return (loss, outputs) if return_outputs else loss


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float
) -> torch.Tensor:
    ce = F.cross_entropy(student, labels)
    kd = (
        F.kl_div(
            F.log_softmax(student / temperature, dim=-1),
            F.softmax(teacher / temperature, dim=-1),
            reduction="batchmean",
        )
        * temperature**2
    )
    return alpha * ce + (1.0 - alpha) * kd


def validation_score(model: Any, tokenizer: Any, splits: LabelledSplits, max_length: int) -> float:
    """Validation accuracy with the best oos threshold (what the bundle ships), plain when there is no oos."""
    logits = predict_logits(model, tokenizer, splits.texts["validation"], max_length, desc="validation")
    probs = metrics.softmax(logits)
    gold = splits.label_ids["validation"]
    oos_id = splits.oos_id()
    if oos_id is None:
        return float((probs.argmax(1) == gold).mean())
    return metrics.choose_threshold(probs, gold, oos_id)[1]


def train_student(
    model: Any,
    tokenizer: Any,
    train: Any,
    config: DistillConfig,
    out: Path,
    callbacks: list[Any] | None = None,
) -> Any:
    """Distil into `model` in place with `config`'s alpha, temperature, epochs, learning rate and batch size.

    `train` is a tokenized dataset carrying `teacher_logits` (see `training.tokenized_dataset`). Used for the
    search trials, the final student and the prune stage's recovery.
    """
    args = training_arguments(
        out,
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    trainer = DistillationTrainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=PadCollator(tokenizer),
        callbacks=callbacks,
        alpha=config.alpha,
        temperature=config.temperature,
    )
    trainer.train()
    return model
