"""Prune stage: remove structure from the distilled student, so the INT8 graph has smaller matrices.

Zeroed weights run at dense speed in ONNX Runtime; only removed rows and columns make a CPU faster. In order:

1. layers: `drop_layers` (indices) or `keep_layers` (a count: greedily drop the layer whose removal raises the
   distillation loss least on a few training batches);
2. attention heads: importance = E_x |dL/dm_h| for a mask m_h on each head's output (Michel et al., 2019),
   normalised per layer, ranked globally; `prune_heads` then shrinks Q/K/V/O. Every layer keeps at least one head.
   Layers may end with different head counts: ONNX Runtime's fuser reads num_heads per Attention node from
   the graph (optimize.run passes num_heads=0), and the fusion counts are checked after export as always.
   Q/K/V widths stay multiples of the head size (32 in MiniLM);
3. FFN neurons: importance = sum over tokens |activation x gradient| per neuron; every layer keeps the same
   number (a multiple of `multiple_of`), because a config has a single FFN width;
4. recovery: a short distillation from the teacher's cached logits (training.train_student);
5. vocabulary: see edgepack.vocab; trimmed last, so the check compares the final model with and without it.

The loss used for scoring is the student's own distillation loss (its alpha and temperature), on
`importance_samples` training examples. Unstructured (magnitude) sparsity is not offered: ONNX Runtime's CPU
kernels run zeroed weights at dense speed, and no benchmark here shows it buying anything.

Over 400 lines on purpose: layers, heads and FFN neurons share one importance machinery (masks, gradients,
batches) that splitting would scatter; vocabulary trimming already lives in edgepack.vocab. Where the layers,
heads and FFN matrices of each encoder family are: edgepack.architectures.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from edgepack import architectures, models, vocab
from edgepack.cache import Cache, cache_key, key_settings
from edgepack.errors import StageError
from edgepack.recipe import EXPORT_ONLY, DistillConfig, PruneConfig, VocabMode
from edgepack.training import (
    DistillResult,
    HiddenStateTarget,
    PadCollator,
    TeacherResult,
    TransferSet,
    distillation_dataset,
    distillation_loss,
    predict_logits,
    seeded,
    train_student,
    validation_score,
)

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


@dataclass
class PruneResult:
    model_dir: Path
    record: dict[str, Any] | None  # None when nothing was enabled (the student went on unchanged)


def _family(model: Any) -> architectures.Family:
    return architectures.require(model, "prune: structured pruning", "Turn the [prune] knobs off for it.")


def _layers(model: Any) -> Any:
    return _family(model).encoder_layers(model)


def shape(model: Any) -> dict[str, Any]:
    """What the manifest records before and after: depth, heads per layer, FFN widths, vocabulary, parameters."""
    family = _family(model)
    layers = family.encoder_layers(model)
    return {
        "layers": len(layers),
        "heads": [int(family.part(b, "heads")) for b in layers],
        "intermediate_size": [int(family.part(b, "ffn_in").out_features) for b in layers],
        "vocab_size": int(model.get_input_embeddings().num_embeddings),
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }


def _batches(train: Any, tokenizer: Any, samples: int, batch_size: int, seed: int) -> list[Batch]:
    subset = train.shuffle(seed=seed).select(range(min(samples, len(train))))
    collate = PadCollator(tokenizer)
    rows = [subset[i] for i in range(len(subset))]
    return [collate(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


def _loss(model: Any, batch: Batch, settings: DistillConfig) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "teacher_logits")}
    logits = model(**inputs).logits
    return distillation_loss(
        logits, batch["teacher_logits"], batch["labels"], settings.alpha, settings.temperature
    )


@contextmanager
def _frozen(model: Any) -> Iterator[None]:
    """Eval mode (no dropout) and no parameter gradients: only the masks' gradients are wanted."""
    was_training, flags = model.training, [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def _mask_hook(mask: torch.Tensor, group: int) -> Callable[..., Any]:
    """Multiply a module's input by mask [batch, units], each unit `group` wide (a forward pre-hook)."""

    def hook(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden, *rest = args
        b, s, width = hidden.shape
        masked = (hidden.view(b, s, width // group, group) * mask[:, None, :, None]).view(b, s, width)
        return (masked, *rest)

    return hook


Unit = Callable[[architectures.Family, Any], tuple[Any, int, int]]


def _importance(model: Any, batches: list[Batch], settings: DistillConfig, unit: Unit) -> list[np.ndarray]:
    """E_x |dL/dm| per unit and layer, for a mask m on the units `unit(family, layer)` names: (module whose
    input holds them, count, width)."""
    family = _family(model)
    layers = family.encoder_layers(model)
    totals = [np.zeros(unit(family, b)[1]) for b in layers]
    with _frozen(model):
        for batch in batches:
            size = batch["input_ids"].shape[0]
            masks, handles = [], []
            for block in layers:
                module, count, width = unit(family, block)
                mask = torch.ones(size, count, requires_grad=True)
                masks.append(mask)
                handles.append(module.register_forward_pre_hook(_mask_hook(mask, width)))
            try:
                grads = torch.autograd.grad(_loss(model, batch, settings), masks)
            finally:
                for handle in handles:
                    handle.remove()
            for total, grad in zip(totals, grads, strict=True):
                total += grad.abs().sum(0).numpy()
    n = sum(int(b["input_ids"].shape[0]) for b in batches)
    return [t / n for t in totals]


def _head_unit(family: architectures.Family, block: Any) -> tuple[Any, int, int]:
    """The heads' context, as it enters the attention's output projection."""
    heads, size = int(family.part(block, "heads")), int(family.part(block, "head_size"))
    return family.part(block, "attention_output"), heads, size


def _ffn_unit(family: architectures.Family, block: Any) -> tuple[Any, int, int]:
    """The FFN neurons' activations, as they enter its output projection."""
    return family.part(block, "ffn_out"), int(family.part(block, "ffn_in").out_features), 1


def _remove_layers(model: Any, drop: list[int]) -> None:
    keep = [i for i in range(len(_layers(model))) if i not in set(drop)]
    architectures.keep_encoder_layers(
        model,
        keep,
        "prune: structured pruning",
        "Turn the [prune] knobs off for it.",
        setting=f"[prune] layers kept after dropping {sorted(drop)}",
        owner="the student",
    )


def _loss_without(model: Any, batches: list[Batch], settings: DistillConfig, layer: int) -> float:
    family = _family(model)
    blocks = family.encoder_layers(model)
    family.set_encoder_layers(model, [b for i, b in enumerate(blocks) if i != layer])
    try:
        with torch.no_grad():
            return float(np.mean([_loss(model, b, settings).item() for b in batches]))
    finally:
        family.set_encoder_layers(model, list(blocks))


def _drop_layers(
    model: Any, config: PruneConfig, batches: list[Batch], settings: DistillConfig
) -> dict[str, Any]:
    count = len(_layers(model))
    config.check_layers(count, "the distilled student")
    if config.drop_layers:
        _remove_layers(model, sorted(config.drop_layers))
        return {"dropped": sorted(config.drop_layers), "chosen_by": "recipe"}
    assert config.keep_layers is not None
    original = list(range(count))  # original index of each remaining layer
    steps = []
    model.eval()
    while len(original) > config.keep_layers:
        losses = [_loss_without(model, batches, settings, i) for i in range(len(original))]
        worst = int(np.argmin(losses))
        steps.append({"dropped": original[worst], "loss_without": losses})
        _remove_layers(model, [worst])
        del original[worst]
    return {
        "dropped": sorted(s["dropped"] for s in steps),
        "chosen_by": "greedy: the layer whose removal raises the distillation loss least",
        "steps": steps,
    }


def _prune_heads(
    model: Any, fraction: float, batches: list[Batch], settings: DistillConfig
) -> dict[str, Any]:
    importance = _importance(model, batches, settings, _head_unit)
    # Michel et al.: normalise each layer's scores (L2) so layers compare, then rank every head globally.
    normalised = [s / (np.linalg.norm(s) + 1e-12) for s in importance]
    total = sum(len(s) for s in importance)
    remove = round(fraction * total)
    if remove > total - len(importance):
        raise StageError(
            f"prune: [prune] heads_fraction = {fraction} removes {remove} of the student's {total} heads, but each "
            f"of its {len(importance)} layers must keep one; use at most {(total - len(importance)) / total:.2f}."
        )
    if remove == 0:
        log.warning("prune: heads_fraction %s of %d heads rounds to no head removed", fraction, total)
    left = [len(s) for s in importance]
    chosen: dict[int, list[int]] = {}
    ranked = sorted((float(v), layer, h) for layer, s in enumerate(normalised) for h, v in enumerate(s))
    for _, layer, head in ranked:
        if sum(len(h) for h in chosen.values()) == remove:
            break
        if left[layer] > 1:
            chosen.setdefault(layer, []).append(head)
            left[layer] -= 1
    blocks = _layers(model)
    original: dict[int, list[int]] = {}
    for layer, heads in chosen.items():  # prune_heads takes indices into the unpruned layer
        already = blocks[layer].attention.pruned_heads
        remaining = [h for h in range(model.config.num_attention_heads) if h not in already]
        original[layer] = sorted(remaining[h] for h in heads)
    if original:
        model.prune_heads(original)
    return {
        "fraction": fraction,
        "removed": remove,
        "of": total,
        "removed_per_layer": {str(k): v for k, v in sorted(original.items())},
        "importance": [[float(f"{v:.4g}") for v in s] for s in importance],
    }


def kept_width(width: int, fraction: float, multiple_of: int) -> int:
    """The FFN width left after removing `fraction`, rounded to the nearest multiple (at least one multiple)."""
    if multiple_of > width:
        raise StageError(
            f"prune: [prune] multiple_of = {multiple_of} is larger than the student's FFN width {width}; "
            f"use a divisor-friendly value <= {width} (16 or 32 for real models)."
        )
    return min(width, max(multiple_of, round(width * (1 - fraction) / multiple_of) * multiple_of))


def _prune_ffn(
    model: Any, config: PruneConfig, batches: list[Batch], settings: DistillConfig
) -> dict[str, Any]:
    from transformers.pytorch_utils import prune_linear_layer

    family = _family(model)
    blocks = family.encoder_layers(model)
    widths = {int(family.part(b, "ffn_in").out_features) for b in blocks}
    if len(widths) != 1:
        raise StageError(f"prune: the student's FFN widths differ between layers ({sorted(widths)}).")
    width = widths.pop()
    keep = kept_width(width, config.ffn_fraction, config.multiple_of)
    record: dict[str, Any] = {"fraction": config.ffn_fraction, "multiple_of": config.multiple_of}
    if keep == width:
        log.warning("prune: ffn_fraction %s rounds to no change at width %d", config.ffn_fraction, width)
        return record | {"kept": width, "of": width}
    importance = _importance(model, batches, settings, _ffn_unit)
    for block, scores in zip(blocks, importance, strict=True):
        strongest = np.sort(np.argsort(-scores, kind="stable")[:keep])
        index = cast(torch.LongTensor, torch.from_numpy(strongest).long())
        ffn_in = prune_linear_layer(family.part(block, "ffn_in"), index, dim=0)
        family.set_ffn(block, ffn_in, prune_linear_layer(family.part(block, "ffn_out"), index, dim=1))
    setattr(model.config, family.layout.ffn_size_key, keep)
    return record | {"kept": keep, "of": width}


def _check_reload(model: Any, tokenizer: Any, folder: Path, texts: list[str], max_length: int) -> float:
    """The saved folder must load back (pruned heads, new widths, vocabulary) into the same function."""
    sample = texts[:64]
    expected = predict_logits(model, tokenizer, sample, max_length, desc="reload check")
    reloaded = models.load_classifier(folder)
    got = predict_logits(reloaded, models.load_tokenizer(folder), sample, max_length, desc="reload check")
    worst = float(np.abs(expected - got).max())
    if worst > vocab.LOGIT_TOLERANCE:
        raise StageError(f"prune: the saved pruned student does not reload to the same model ({worst:.2e}).")
    return worst


def _trim_vocabulary(
    model: Any, tokenizer: Any, teacher: TeacherResult, max_length: int, out_dir: Path, keep_first: int
) -> tuple[Any, Any, dict[str, Any]]:
    """The model and tokenizer with the trimmed vocabulary (tokenizer saved in out_dir), and the record."""
    splits = teacher.splits
    vocab_plan = vocab.plan(tokenizer, splits.texts["train"], keep_first)
    trimmed = copy.deepcopy(model)
    vocab.slice_embeddings(trimmed, vocab_plan)
    vocab.save_trimmed_tokenizer(tokenizer, vocab_plan, out_dir)
    new_tokenizer = models.load_tokenizer(out_dir)
    if len(new_tokenizer) != len(vocab_plan.kept):
        raise StageError(
            f"prune: the trimmed tokenizer has {len(new_tokenizer)} ids, not {len(vocab_plan.kept)}."
        )
    train_same = vocab.identical_tokenization(tokenizer, new_tokenizer, splits.texts["train"], max_length)
    if not train_same.all():
        raise StageError(
            f"prune: {int((~train_same).sum())} training texts tokenize differently after vocabulary trimming; "
            "every piece they use was meant to be kept."
        )
    checks = {
        split: vocab.compare((model, trimmed), (tokenizer, new_tokenizer), splits.texts[split], max_length)
        for split in ("validation", "test")
    }
    for split, check in checks.items():
        log.info("prune: vocabulary check on %s: %s", split, check)
    record = vocab_plan.record | {
        "training_texts_tokenized_identically": int(train_same.sum()),
        "check": checks,
    }
    return trimmed, new_tokenizer, record


def _hidden_target(
    teacher: TeacherResult, settings: DistillConfig, weight: float, dropped: list[int]
) -> HiddenStateTarget | None:
    """The recovery's hidden-state target: each kept student layer maps to the teacher layer it came from."""
    if weight == 0:
        return None
    if settings.student != "teacher-layers":
        raise StageError(
            f"prune: recovery_hidden_weight = {weight} needs a student made of the teacher's layers "
            f'([distill] student = "teacher-layers"); set it to 0.'
        )
    layer_map = [t for i, t in enumerate(settings.layer_list) if i not in dropped]  # "auto": distill's list
    return HiddenStateTarget(models.load_classifier(teacher.model_dir), layer_map, weight)


def _prune_structure(
    model: Any, tokenizer: Any, train: Any, config: PruneConfig, settings: DistillConfig
) -> dict[str, Any]:
    """Layers, then heads, then FFN neurons (each scored on the model the previous step left)."""
    batches = _batches(train, tokenizer, config.importance_samples, settings.batch_size, settings.seed)
    record: dict[str, Any] = {"importance_samples": sum(int(b["input_ids"].shape[0]) for b in batches)}
    if config.drop_layers or config.keep_layers is not None:
        record["layers"] = _drop_layers(model, config, batches, settings)
    if config.heads_fraction > 0:
        record["heads"] = _prune_heads(model, config.heads_fraction, batches, settings)
    if config.ffn_fraction > 0:
        record["ffn"] = _prune_ffn(model, config, batches, settings)
    return record


def _key_settings(config: PruneConfig) -> dict[str, Any]:
    """The settings in the pruned student's cache key. A knob added later is left out at its default, so
    students pruned before it existed keep their keys."""
    return key_settings(config, {"recovery_group_by_length": None})


def _recovery_inputs(settings: DistillConfig) -> dict[str, Any]:
    """The [distill] settings the scoring and the recovery train with (a distilled student's key holds them)."""
    names = ("alpha", "temperature", "batch_size", "seed", "hidden_weight", "group_by_length")
    return {name: getattr(settings, name) for name in names}


def run(
    teacher: TeacherResult,
    distilled: DistillResult,
    config: PruneConfig,
    max_length: int,
    cache: Cache,
    transfer: TransferSet | None = None,
) -> PruneResult:
    """The pruned student (cached like the distilled one: same student, settings and transfer text), or the
    distilled student unchanged (record None) when nothing is enabled.

    `transfer`: text the teacher labelled beyond the training split (edgepack.augment), for the recovery.
    """
    if not config.enabled:
        log.info("prune: nothing enabled; the distilled student goes on unchanged")
        return PruneResult(distilled.model_dir, None)
    transfer_key = transfer.record["cache_key"] if transfer is not None else None
    parts = [distilled.record["cache_key"], _key_settings(config), transfer_key, max_length]
    if distilled.settings.student == EXPORT_ONLY:  # its key is the teacher's: add what the recovery uses
        parts.append(_recovery_inputs(distilled.settings))
    if config.vocab is VocabMode.TRAIN and config.vocab_keep_first > 0:
        parts.append(vocab.FIRST_IDS_RULE)
    key = cache_key(*parts)
    folder = cache.folder("pruned", key)
    with cache.claim(folder) as fresh:
        if not fresh:
            log.info("prune: reusing cached pruned student %s", folder)
            return PruneResult(folder / "model", cache.record(folder) | {"cached": True})
        result = _prune(teacher, distilled, config, max_length, folder / "model", transfer)
        assert result.record is not None
        cache.finish(folder, result.record | {"cache_key": key})
    return PruneResult(result.model_dir, result.record | {"cache_key": key, "cached": False})


def _prune(
    teacher: TeacherResult,
    distilled: DistillResult,
    config: PruneConfig,
    max_length: int,
    out_dir: Path,
    transfer: TransferSet | None,
) -> PruneResult:
    started = time.perf_counter()
    settings = distilled.settings  # the searched alpha, temperature, batch size
    splits = teacher.splits
    model = models.load_classifier(distilled.model_dir)
    tokenizer = models.load_tokenizer(distilled.model_dir)
    before = shape(model)
    record: dict[str, Any] = {"before": before}
    scores = record["validation_score"] = {"distilled": distilled.record.get("validation_score")}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="prune-", dir=out_dir.parent))
    try:
        if config.structural:
            train = distillation_dataset(tokenizer, teacher, max_length)
            record |= _prune_structure(model, tokenizer, train, config, settings)
            scores["pruned"] = validation_score(model, tokenizer, splits, max_length)
            record["recovery"] = {
                "epochs": config.recovery_epochs,
                "learning_rate": config.recovery_learning_rate,
                "alpha": settings.alpha,
                "temperature": settings.temperature,
                "transfer_texts": len(transfer.texts) if transfer is not None else 0,
                "hidden_weight": settings.hidden_weight
                if config.recovery_hidden_weight is None
                else config.recovery_hidden_weight,
                "group_by_length": settings.group_by_length
                if config.recovery_group_by_length is None
                else config.recovery_group_by_length,
            }
            if config.recovery_epochs > 0:
                log.info("prune: recovery distillation for %s epochs", config.recovery_epochs)
                recovery = replace(
                    settings,
                    epochs=config.recovery_epochs,
                    learning_rate=config.recovery_learning_rate,
                    group_by_length=record["recovery"]["group_by_length"],
                )
                if transfer is not None:
                    train = distillation_dataset(tokenizer, teacher, max_length, transfer)
                dropped = record.get("layers", {}).get("dropped", [])
                hidden = _hidden_target(teacher, settings, record["recovery"]["hidden_weight"], dropped)
                with seeded(settings.seed):
                    train_student(model, tokenizer, train, recovery, work / "recovery", hidden=hidden)
                scores["recovered"] = validation_score(model, tokenizer, splits, max_length)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.vocab is VocabMode.TRAIN:
        model, tokenizer, record["vocab"] = _trim_vocabulary(
            model, tokenizer, teacher, max_length, out_dir, config.vocab_keep_first
        )
    else:
        tokenizer.save_pretrained(out_dir)
        record["vocab"] = {"mode": "full", "before": before["vocab_size"], "after": before["vocab_size"]}
    model.save_pretrained(out_dir, safe_serialization=True)
    record["reload_max_abs_logit_diff"] = _check_reload(
        model, tokenizer, out_dir, splits.texts["validation"], max_length
    )
    record["after"] = shape(model)
    record["parameters"] = {"before": before["parameters"], "after": record["after"]["parameters"]}
    record["seconds"] = round(time.perf_counter() - started, 1)
    log.info(
        "prune: %s -> %s parameters; now %s",
        f"{before['parameters']:,}",
        f"{record['after']['parameters']:,}",
        {k: v for k, v in record["after"].items() if k != "parameters"},
    )
    return PruneResult(out_dir, record)
