"""Distill stage: a smaller student learns from the teacher's cached logits (Hinton et al.), and Optuna
searches alpha, temperature, epochs and learning rate.

The loss and the trainer live in `edgepack.training` (the prune stage's recovery uses them too). Training goes
through transformers' `Trainer` (the chapter's `DistillationTrainer` pattern), so
`torchrun` / `accelerate launch` spread it over devices unchanged; `[search] storage` (sqlite:// or
postgresql://) lets several machines work on one Optuna study.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from edgepack import models
from edgepack.cache import Cache, cache_key
from edgepack.errors import StageError
from edgepack.recipe import DistillConfig, SearchConfig
from edgepack.training import (
    DistillResult,
    HiddenStateTarget,
    TeacherResult,
    TransferSet,
    distillation_dataset,
    train_student,
    validation_score,
)

log = logging.getLogger(__name__)


def student_from_teacher_layers(teacher: Any, layers: list[int]) -> Any:
    """A student with the teacher's embeddings, head and the chosen encoder layers (as DistilBERT was made)."""
    encoder = getattr(teacher.base_model, "encoder", None)
    blocks = getattr(encoder, "layer", None)
    if blocks is None:
        raise StageError(
            f"distill.student = 'teacher-layers' needs a BERT-family teacher (base_model.encoder.layer); "
            f"{type(teacher).__name__} has none. Set [distill] student to a model id or folder instead."
        )
    if max(layers) >= len(blocks):
        raise StageError(
            f"[distill] layers = {layers} asks for layer {max(layers)}, but the teacher has {len(blocks)} layers "
            f"(0..{len(blocks) - 1})."
        )
    student = copy.deepcopy(teacher)
    student.base_model.encoder.layer = torch.nn.ModuleList(copy.deepcopy(blocks[i]) for i in layers)
    student.config.num_hidden_layers = len(layers)
    return student


class _ReportToTrial(TrainerCallback):
    """After each epoch: score on validation, report to Optuna, and stop the trial if the pruner says so."""

    def __init__(self, trial: Any, score: Any) -> None:
        self.trial, self.score, self.pruned = trial, score, False
        self.last: float | None = None  # the score after the last epoch: the trial's result

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        value = self.last = self.score(model)
        step = round(state.epoch or 0)
        self.trial.report(value, step)
        log.info("trial %d epoch %d: validation %.4f", self.trial.number, step, value)
        if self.trial.should_prune():
            self.pruned = True
            control.should_training_stop = True
        return control


class _Distiller:
    """Holds what every trial shares: the teacher, its logits, the tokenized splits."""

    def __init__(
        self, teacher: TeacherResult, config: DistillConfig, max_length: int, transfer: TransferSet | None
    ) -> None:
        self.teacher, self.config, self.max_length, self.transfer = teacher, config, max_length, transfer
        self.splits = teacher.splits
        student_dir = (
            teacher.model_dir if config.student == "teacher-layers" else models.resolve_model(config.student)
        )
        self.student_dir = student_dir
        self.tokenizer = models.load_tokenizer(student_dir)
        self.train = distillation_dataset(self.tokenizer, teacher, max_length)

    def final_train(self) -> Any:
        """What the final student learns from: the training split, and the transfer text when there is one.
        (Search trials use a share of the training split alone: N copies would make every trial N times longer.)
        """
        if self.transfer is None:
            return self.train
        return distillation_dataset(self.tokenizer, self.teacher, self.max_length, self.transfer)

    @functools.cached_property
    def teacher_model(self) -> Any:
        """Loaded once: students copy its layers, the hidden-state loss reads it, neither changes it."""
        return models.load_classifier(self.teacher.model_dir)

    def new_student(self) -> Any:
        if self.config.student == "teacher-layers":
            return student_from_teacher_layers(self.teacher_model, self.config.layers)
        return models.load_classifier(self.student_dir, self.splits.labels)

    def validation_score(self, model: Any) -> float:
        return validation_score(model, self.tokenizer, self.splits, self.max_length)

    def train_student(
        self, config: DistillConfig, train: Any, out: Path, callbacks: list[Any] | None = None
    ) -> Any:
        torch.manual_seed(config.seed)
        hidden = None
        if config.hidden_weight > 0:
            hidden = HiddenStateTarget(self.teacher_model, config.layers, config.hidden_weight)
        return train_student(self.new_student(), self.tokenizer, train, config, out, callbacks, hidden)


def _search(
    distiller: _Distiller, config: DistillConfig, search: SearchConfig, work: Path
) -> tuple[Any, Any]:
    import optuna

    subset = distiller.train.shuffle(seed=search.seed)
    subset = subset.select(range(max(1, math.ceil(len(subset) * search.train_fraction))))
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
        if search.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=search.study_name,
        storage=search.storage,
        load_if_exists=search.storage is not None,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=search.seed),
        pruner=pruner,
    )
    best_model: dict[str, Any] = {}

    def objective(trial: optuna.Trial) -> float:
        trial_config = replace(
            config,
            alpha=trial.suggest_float("alpha", *search.alpha),
            temperature=trial.suggest_float("temperature", *search.temperature),
            epochs=trial.suggest_int("epochs", int(search.epochs[0]), int(search.epochs[1])),
            learning_rate=trial.suggest_float("learning_rate", *search.learning_rate, log=True),
        )
        reporter = _ReportToTrial(trial, distiller.validation_score)
        model = distiller.train_student(trial_config, subset, work / f"trial-{trial.number}", [reporter])
        if reporter.pruned:
            raise optuna.TrialPruned()
        # The model is unchanged since the last epoch's callback scored it.
        score = reporter.last if reporter.last is not None else distiller.validation_score(model)
        if search.final == "keep" and score > best_model.get("score", -1.0):
            best_model.update(score=score, model=model)
        return score

    log.info(
        "distill: searching %d trials (budget %.0f min) on %d examples",
        search.trials,
        search.timeout_minutes,
        len(subset),
    )
    study.optimize(
        objective,
        n_trials=search.trials,
        timeout=search.timeout_minutes * 60,
        show_progress_bar=True,
        catch=(),
    )
    return study, best_model.get("model")


def _trials_record(study: Any) -> list[dict[str, Any]]:
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "params": t.params,
            "value": t.value,
            "intermediate": t.intermediate_values,
            "seconds": round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
            if t.datetime_complete and t.datetime_start
            else None,
        }
        for t in study.trials
    ]


def run(
    teacher: TeacherResult,
    config: DistillConfig,
    search: SearchConfig,
    max_length: int,
    cache: Cache,
    transfer: TransferSet | None = None,
) -> DistillResult:
    """The distilled student, from the cache when the same teacher, data and settings made one before.

    `transfer`: text the teacher labelled beyond the training split (edgepack.augment), for the final student.
    A study shared through `[search] storage` is never cached: other machines may have added better trials.
    """
    parts: list[Any] = [teacher.record["cache_key"], _key_settings(config), asdict(search), max_length]
    if transfer is not None:  # appended only when used, so students made without it keep their keys
        parts.append(transfer.record["cache_key"])
    key = cache_key(*parts)
    folder = cache.folder("student", key)
    if search.storage is None and cache.is_complete(folder):
        log.info("distill: reusing cached student %s", folder)
        record = cache.record(folder)
        return DistillResult(folder / "model", DistillConfig(**record["settings"]), record | {"cached": True})
    cache.start(folder)
    result = _distill(teacher, config, search, max_length, folder / "model", transfer)
    cache.finish(folder, result.record | {"cache_key": key})
    return DistillResult(
        result.model_dir, result.settings, result.record | {"cache_key": key, "cached": False}
    )


def _key_settings(config: DistillConfig) -> dict[str, Any]:
    """The settings in the student's cache key. A knob added later is left out at its off value, so students
    cached before it existed keep their keys."""
    settings = asdict(config)
    if settings["hidden_weight"] == 0:
        del settings["hidden_weight"]
    return settings


def _distill(
    teacher: TeacherResult,
    config: DistillConfig,
    search: SearchConfig,
    max_length: int,
    out_dir: Path,
    transfer: TransferSet | None,
) -> DistillResult:
    distiller = _Distiller(teacher, config, max_length, transfer)
    work = Path(tempfile.mkdtemp(prefix="distill-", dir=out_dir.parent))
    record: dict[str, Any] = {
        "student": config.student,
        "layers": config.layers if config.student == "teacher-layers" else None,
        "max_length": max_length,
        "transfer_texts": len(transfer.texts) if transfer is not None else 0,
    }
    started = time.perf_counter()
    try:
        final_config, kept = config, None
        if search.trials > 0:
            study, kept = _search(distiller, config, search, work)
            if transfer is not None:  # a trial never saw the transfer text: the final student must
                kept = None
            completed = [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
            if not completed:
                raise StageError(
                    "distill: no Optuna trial completed; raise [search] timeout_minutes or trials."
                )
            best = study.best_trial
            final_config = replace(config, **best.params)
            record["search"] = asdict(search) | {
                "best_trial": best.number,
                "best_value": best.value,
                "trials": _trials_record(study),
            }
            record["search_seconds"] = round(time.perf_counter() - started, 1)
        if kept is None:
            log.info("distill: training the student on the full training split with %s", asdict(final_config))
            model = distiller.train_student(final_config, distiller.final_train(), work / "final")
        else:
            model = kept
        record["settings"] = asdict(final_config)
        record["validation_score"] = distiller.validation_score(model)
        record["parameters"] = sum(p.numel() for p in model.parameters())
        record["teacher_parameters"] = teacher.record.get("parameters")
        record["seconds"] = round(time.perf_counter() - started, 1)
        model.save_pretrained(out_dir, safe_serialization=True)
        distiller.tokenizer.save_pretrained(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("distill: student validation score %.4f", record["validation_score"])
    return DistillResult(out_dir, final_config, record)
