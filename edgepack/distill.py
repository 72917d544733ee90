"""Distill stage: a smaller student learns from the teacher's cached logits (Hinton et al.), and Optuna
searches alpha, temperature, epochs and learning rate.

The loss and the trainer live in `edgepack.training` (the prune stage's recovery uses them too). Training goes
through transformers' `Trainer` (the chapter's `DistillationTrainer` pattern), so
`torchrun` / `accelerate launch` spread it over devices unchanged; `[search] storage` (sqlite:// or
postgresql://) lets several machines work on one Optuna study (`edgepack.study`: heartbeats, a study-wide
trial budget, the same best trial for every worker).
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from edgepack import architectures, models
from edgepack import study as shared_study
from edgepack.cache import Cache, cache_key, hash_folder, key_settings
from edgepack.errors import StageError
from edgepack.recipe import (
    AUTO_LAYERS,
    AUTO_LAYERS_RULE,
    EXPORT_ONLY,
    DistillConfig,
    PruneConfig,
    SearchConfig,
    auto_layers,
    check_student_depth,
    kept_depth,
)
from edgepack.training import (
    DistillResult,
    HiddenStateTarget,
    TeacherResult,
    TransferSet,
    distillation_dataset,
    seeded,
    train_student,
    validation_score,
)

log = logging.getLogger(__name__)


def student_from_teacher_layers(teacher: Any, layers: list[int]) -> Any:
    """A student with the teacher's embeddings, head and the chosen encoder layers (as DistilBERT was made)."""
    needed_by = "[distill] student = 'teacher-layers'"
    instead = (
        f'Set [distill] student to a model id or folder, or to "{EXPORT_ONLY}" (export the teacher itself).'
    )
    return architectures.keep_encoder_layers(
        copy.deepcopy(teacher), layers, needed_by, instead, setting="[distill] layers", owner="the teacher"
    )


def teacher_depth(model_dir: Path) -> int:
    """The teacher's encoder layer count, from its config.json (where its family keeps it)."""
    try:
        depth, model_type = architectures.folder_depth(model_dir)
    except (OSError, ValueError) as exc:
        raise StageError(f"distill: cannot read the teacher's config.json in {model_dir}: {exc}.") from None
    if depth is None:
        raise StageError(
            f'[distill] layers = "{AUTO_LAYERS}" needs a teacher of a known encoder family '
            f"({architectures.SUPPORTED}); {model_dir} is model_type {model_type!r}. Set [distill] student to a "
            f'model id or folder, or to "{EXPORT_ONLY}" (export the teacher itself).'
        )
    return depth


def resolve_layers(config: DistillConfig, model_dir: Path) -> DistillConfig:
    """`config` with `layers = "auto"` replaced by the teacher layers auto_layers keeps of the teacher in
    `model_dir`; any other config unchanged."""
    if config.student != "teacher-layers" or config.layers != AUTO_LAYERS:
        return config
    depth = teacher_depth(model_dir)
    layers = auto_layers(depth)
    log.info("distill: layers = %r: %s of the teacher's %d layers", AUTO_LAYERS, layers, depth)
    return replace(config, layers=layers)


def check_depth(
    config: DistillConfig,
    prune: PruneConfig,
    teacher_model: str,
    teacher_layers: list[int] | str | None = None,
) -> None:
    """The recipe's check of the `[prune]` layer knobs against the student's depth, for `layers = "auto"`: the
    depth is known once the teacher's config is read (a recipe reads only a local folder's), before any
    training; `teacher_layers` is `[teacher] layers` (the teacher keeps only those of its base model's).
    Same message as the recipe's."""
    if config.student == "teacher-layers" and config.layers == AUTO_LAYERS:
        depth = (
            None if isinstance(teacher_layers, list) else teacher_depth(models.resolve_model(teacher_model))
        )
        check_student_depth(config, prune, kept_depth(teacher_layers, depth))


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
            return student_from_teacher_layers(self.teacher_model, self.config.layer_list)
        return models.load_classifier(self.student_dir, self.splits.labels)

    def validation_score(self, model: Any) -> float:
        return validation_score(model, self.tokenizer, self.splits, self.max_length)

    def train_student(
        self, config: DistillConfig, train: Any, out: Path, callbacks: list[Any] | None = None
    ) -> Any:
        hidden = None
        if config.hidden_weight > 0:
            hidden = HiddenStateTarget(self.teacher_model, config.layer_list, config.hidden_weight)
        with seeded(config.seed):  # a new student's head, dropout, shuffling
            return train_student(self.new_student(), self.tokenizer, train, config, out, callbacks, hidden)


def _search(
    distiller: _Distiller, config: DistillConfig, search: SearchConfig, work: Path, inputs: dict[str, str]
) -> tuple[Any, Any]:
    """The study after its trials, and the best trial's model when this worker trained it (`final = "keep"`).

    `inputs`: what the trials learn from (see _study_inputs); a study shared through `[search] storage` holds
    only trials made from the same ones.
    """
    import optuna

    started = time.monotonic()
    subset = distiller.train.shuffle(seed=search.seed)
    subset = subset.select(range(max(1, math.ceil(len(subset) * search.train_fraction))))
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
        if search.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    study = _open_study(search, pruner, inputs, distiller.teacher)
    kept: dict[str, Any] = {}

    def objective(trial: optuna.Trial) -> float:
        shared_study.claim(trial, search.trials)
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
        if search.final == "keep" and score > kept.get("score", -1.0):
            kept.update(score=score, model=model, number=trial.number)
        return score

    log.info(
        "distill: searching %d trials (budget %.0f min) on %d examples",
        search.trials,
        search.timeout_minutes,
        len(subset),
    )
    poll = min(5.0, float(search.heartbeat_seconds))
    shared_study.run_trials(study, objective, search.trials, started + search.timeout_minutes * 60, poll)
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = study.best_trial.number if completed else None
    return study, kept.get("model") if kept.get("number") == best else None  # another worker's best: retrain


def _open_study(search: SearchConfig, pruner: Any, inputs: dict[str, str], teacher: TeacherResult) -> Any:
    """A study in memory (seeded sampler: the same trials every run), or the shared one in `[search] storage`
    (unseeded: workers with one seed would sample the same points; constant liar: no piling on running ones)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # constant_liar
        if search.storage is None:
            sampler = optuna.samplers.TPESampler(seed=search.seed)
            return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
        sampler = optuna.samplers.TPESampler(constant_liar=True)
    # Without a name, the workers of one recipe, data and teacher settings meet in the study named after them.
    name = search.study_name or "edgepack-" + cache_key({k: v for k, v in inputs.items() if k != _WEIGHTS})
    study = optuna.create_study(
        study_name=name,
        storage=shared_study.open_storage(search.storage, search.heartbeat_seconds),
        load_if_exists=True,
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
    )
    shared_study.check_inputs(study, inputs, f"teacher cache folder teacher-{teacher.record['cache_key']}")
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    log.info(
        "distill: worker %s joins study %r in %s (%d of %d trials complete)",
        shared_study.worker_id(),
        name,
        shared_study.redact_url(search.storage),
        done,
        search.trials,
    )
    return study


_WEIGHTS = "teacher weights"


def _study_inputs(teacher: TeacherResult, config: DistillConfig, search: SearchConfig) -> dict[str, str]:
    """What a trial's score depends on besides its sampled settings: every worker of a study must share it."""
    space = {k: getattr(search, k) for k in ("alpha", "temperature", "epochs", "learning_rate", "pruner")}
    return {
        "data and teacher settings": teacher.key,
        _WEIGHTS: hash_folder(teacher.model_dir),  # teachers fine-tuned on two machines differ
        "[distill] settings": cache_key(_key_settings(config)),
        "[search] space": cache_key(space, search.train_fraction, search.seed),
    }


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
    With `[distill] student = "teacher"` (export-only) nothing is trained: the teacher goes on as the student.
    """
    if config.student == EXPORT_ONLY:
        return _teacher_itself(teacher, config)
    auto: dict[str, Any] = {}  # how "auto" layers were chosen: the record's only trace of it
    if config.student == "teacher-layers" and config.layers == AUTO_LAYERS:
        auto = {
            "layers_rule": f"{AUTO_LAYERS} (N = teacher_layers): {AUTO_LAYERS_RULE}",
            "teacher_layers": teacher_depth(teacher.model_dir),
        }
    config = resolve_layers(config, teacher.model_dir)  # "auto" is keyed, trained and recorded as its list
    searched = asdict(search)
    del searched["heartbeat_seconds"]  # how workers keep in touch, not what they learn: out of the key
    parts: list[Any] = [teacher.key, _key_settings(config), searched, max_length]
    if transfer is not None:  # appended only when used, so students made without it keep their keys
        parts.append(transfer.record["cache_key"])
    key = cache_key(*parts)
    folder = cache.folder("student", key)
    with cache.claim(folder) as fresh:  # a study's workers each have their own cache (README)
        if not fresh and search.storage is None:
            log.info("distill: reusing cached student %s", folder)
            record = cache.record(folder) | auto
            return DistillResult(
                folder / "model", DistillConfig(**record["settings"]), record | {"cached": True}
            )
        if not fresh:  # a shared study is trained again: other machines may have added better trials
            cache.start(folder)
        result = _distill(teacher, config, search, max_length, folder / "model", transfer)
        cache.finish(folder, result.record | {"cache_key": key})  # the same entry for "auto" and its list
    return DistillResult(
        result.model_dir, result.settings, result.record | auto | {"cache_key": key, "cached": False}
    )


def _teacher_itself(teacher: TeacherResult, config: DistillConfig) -> DistillResult:
    """The (fine-tuned) teacher is the model the later stages take: exported as it is, or cut by the prune stage."""
    log.info('distill: skipped ([distill] student = "%s"): the teacher itself goes on', EXPORT_ONLY)
    record = {
        "student": EXPORT_ONLY,
        "skipped": "no student is trained and [search] is not run: the teacher itself goes on (export-only "
        "when [prune] is off; otherwise the prune stage cuts it and its recovery distils)",
        "layers": None,
        "parameters": teacher.record.get("parameters"),
        "teacher_parameters": teacher.record.get("parameters"),
        "settings": asdict(config),  # what a prune stage's recovery would train with
        "cache_key": teacher.key,  # the model is the cached teacher's; its logits, an ensemble's
        "cached": teacher.record.get("cached", False),
    }
    return DistillResult(teacher.model_dir, config, record)


def _key_settings(config: DistillConfig) -> dict[str, Any]:
    """The settings in the student's cache key. A knob added later is left out at its off value, so students
    cached before it existed keep their keys."""
    return key_settings(config, {"hidden_weight": 0, "group_by_length": False})


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
            inputs = _study_inputs(teacher, config, search) if search.storage is not None else {}
            study, kept = _search(distiller, config, search, work, inputs)
            if transfer is not None:  # a trial never saw the transfer text: the final student must
                kept = None
            completed = [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
            if not completed:
                raise StageError(
                    "distill: no Optuna trial completed; raise [search] timeout_minutes or trials."
                )
            best = study.best_trial
            final_config = replace(config, **best.params)
            trials = shared_study.trials_record(study)
            record["search"] = asdict(search) | {
                "storage": shared_study.redact_url(search.storage),  # a bundle never carries a password
                "study_name": study.study_name if search.storage is not None else None,
                "workers": sorted({t["worker"] for t in trials if t["worker"]}),
                "best_trial": best.number,
                "best_value": best.value,
                "trials": trials,
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
