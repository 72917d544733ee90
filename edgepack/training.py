"""What the training stages share (teacher, distill, prune): their results, tokenized datasets, Trainer
arguments, logits, the distillation loss and trainer, and the validation score a student is judged by.

The stage modules import this one and never each other.

loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

Transfer text (edgepack.augment) has no label (NO_LABEL): it adds to the KL term only. With a hidden-state
target (TinyBERT's layer mapping), `weight * MSE(student layer i, the teacher layer it was copied from)` over the
real tokens is added, embeddings included.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer

from edgepack import metrics, models
from edgepack.data import LabelledSplits
from edgepack.recipe import DistillConfig

log = logging.getLogger(__name__)

NO_LABEL = -100  # the label of transfer text (the value PyTorch's cross entropy ignores)


@dataclass
class TeacherResult:
    model_dir: Path  # a fine-tuned classifier folder (safetensors + tokenizer)
    splits: LabelledSplits  # labels in the teacher's own order
    logits: dict[str, np.ndarray]  # per split
    record: dict[str, Any]
    # An ensemble's teachers (model_dir first): their logits are mean_log_probs of theirs. Empty: model_dir alone.
    members: tuple[Path, ...] = ()

    @property
    def key(self) -> str:
        """What later stages' cache keys follow: the teacher's cache key (its folder's), or its ensemble's."""
        ensemble = self.record.get("ensemble")
        return str(ensemble["cache_key"] if ensemble else self.record["cache_key"])


@dataclass
class TransferSet:
    """Unlabelled text with the teacher's logits on it (edgepack.augment): the distillation term only."""

    texts: list[str]
    logits: np.ndarray
    record: dict[str, Any]


@dataclass
class HiddenStateTarget:
    """The teacher's hidden states as a second target: student layer i learns teacher layer `layer_map[i]`."""

    teacher: Any  # the teacher classifier, run without gradients
    layer_map: list[int]
    weight: float


@dataclass
class DistillResult:
    model_dir: Path  # the distilled student (safetensors + tokenizer)
    settings: DistillConfig  # what trained it (the search's best alpha, temperature, epochs, learning rate)
    record: dict[str, Any]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python, NumPy and torch with `seed`, and ask torch for deterministic algorithms while inside
    (warn only: an op without a deterministic CPU kernel warns instead of stopping the build).

    The one place a training stage seeds: model initialisation (a new classification head), dropout and the
    Trainer's shuffling (`data_seed`) all follow from it. Threads are not forced to one: at a fixed thread count
    torch's CPU kernels give the same bits run to run, and the count is recorded in the manifest.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


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


def distillation_dataset(
    tokenizer: Any, teacher: TeacherResult, max_length: int, transfer: TransferSet | None = None
) -> Any:
    """The training split with its labels and the teacher's logits, and the transfer text if any."""
    texts = teacher.splits.texts["train"]
    labels = teacher.splits.label_ids["train"]
    logits = teacher.logits["train"]
    if transfer is not None:
        texts = list(texts) + transfer.texts
        labels = np.concatenate([labels, np.full(len(transfer.texts), NO_LABEL, dtype=labels.dtype)])
        logits = np.concatenate([logits, transfer.logits])
    return tokenized_dataset(tokenizer, texts, max_length, labels, logits)


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
    group_by_length: bool = False,
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
        group_by_length=group_by_length,  # LengthGroupedSampler; its shuffling follows the seeded torch RNG
        eval_strategy="no",
        save_strategy="no",
        logging_steps=100,
        report_to=[],
        seed=seed,
        data_seed=seed,  # the shuffling's own generator, seeded explicitly
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


def mean_log_probs(logits: Sequence[np.ndarray]) -> np.ndarray:
    """An ensemble's logits: the log of its members' mean softmax probabilities (float32, like each member's)."""
    probs = np.mean([metrics.softmax(np.asarray(x, dtype=np.float64)) for x in logits], axis=0)
    return np.log(probs).astype(np.float32)


def teacher_logits(teacher: TeacherResult, texts: Sequence[str], max_length: int, desc: str) -> np.ndarray:
    """The teacher's logits on new texts: its model's, or, for an ensemble, mean_log_probs of every member's."""
    tokenizer = models.load_tokenizer(teacher.model_dir)  # the members share it (one base model, one recipe)
    members = teacher.members or (teacher.model_dir,)
    each = []
    for i, folder in enumerate(members):
        shown = desc if len(members) == 1 else f"{desc}, teacher {i + 1} of {len(members)}"
        each.append(predict_logits(models.load_classifier(folder), tokenizer, texts, max_length, desc=shown))
    return each[0] if len(each) == 1 else mean_log_probs(each)


class DistillationTrainer(Trainer):
    """Trainer whose loss mixes the hard-label CE with the temperature-softened KL to the teacher's logits."""

    def __init__(
        self,
        *args: Any,
        alpha: float,
        temperature: float,
        hidden: HiddenStateTarget | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.alpha = alpha
        self.temperature = temperature
        self.hidden = hidden
        if hidden is not None:
            hidden.teacher.eval()

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        teacher_logits = inputs.pop("teacher_logits")
        labels = inputs.pop("labels")
        outputs = model(**inputs, output_hidden_states=self.hidden is not None)
        loss = distillation_loss(outputs.logits, teacher_logits, labels, self.alpha, self.temperature)
        if self.hidden is not None:
            with torch.no_grad():
                target = self.hidden.teacher(**inputs, output_hidden_states=True).hidden_states
            loss = loss + self.hidden.weight * hidden_state_loss(
                outputs.hidden_states, target, self.hidden.layer_map, inputs["attention_mask"]
            )
        return (loss, outputs) if return_outputs else loss


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float
) -> torch.Tensor:
    labelled = labels != NO_LABEL
    ce = F.cross_entropy(student[labelled], labels[labelled]) if labelled.any() else student.new_zeros(())
    kd = (
        F.kl_div(
            F.log_softmax(student / temperature, dim=-1),
            F.softmax(teacher / temperature, dim=-1),
            reduction="batchmean",
        )
        * temperature**2
    )
    return alpha * ce + (1.0 - alpha) * kd


def hidden_state_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    layer_map: Sequence[int],
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Mean squared error between the student's hidden states and the teacher layers they map to, over real
    tokens; index 0 of both is the embedding output, index i + 1 layer i's output."""
    mask = attention_mask.unsqueeze(-1).to(student[0].dtype)
    count = mask.sum() * student[0].shape[-1]
    pairs = [(0, 0), *((i + 1, t + 1) for i, t in enumerate(layer_map))]
    return torch.stack([(((student[i] - teacher[j]) ** 2) * mask).sum() / count for i, j in pairs]).mean()


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
    hidden: HiddenStateTarget | None = None,
) -> Any:
    """Distil into `model` in place with `config`'s alpha, temperature, epochs, learning rate and batch size.

    `train` is a tokenized dataset carrying `teacher_logits` (see `training.tokenized_dataset`). Used for the
    search trials, the final student and the prune stage's recovery. `hidden`: also match the teacher's hidden
    states.
    """
    args = training_arguments(
        out,
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        seed=config.seed,
        group_by_length=config.group_by_length,
    )
    trainer = DistillationTrainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=PadCollator(tokenizer),
        callbacks=callbacks,
        alpha=config.alpha,
        temperature=config.temperature,
        hidden=hidden,
    )
    trainer.train()
    return model
