"""`edgepack build --dry-run`: the resolved recipe, the data as the build would read it (splits, classes,
balance, token lengths, what would be carved or truncated) and the stages that would run. The data stage's
checks run (a refusal is the build's own), nothing is trained, cached or written.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from edgepack import data, lengths, models, oos
from edgepack.errors import ModelSourceError
from edgepack.recipe import AUTO_LAYERS, AUTO_LAYERS_RULE, EXPORT_ONLY, Recipe, kept_layers, local_depth


def toml(values: dict[str, Any]) -> str:
    """A resolved recipe (Recipe.to_dict()) as TOML that load_recipe reads back ("none" for unset keys)."""
    top = [f"{k} = {_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
    tables = [
        "\n".join([f"[{k}]", *(f"{key} = {_value(item)}" for key, item in v.items())])
        for k, v in values.items()
        if isinstance(v, dict)
    ]
    return "\n\n".join(["\n".join(top), *tables])


def _value(value: Any) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def _splits_table(splits: data.LabelledSplits) -> list[str]:
    record = splits.record
    carved = record.get("carved") or {}
    rows = [f"  {'split':<12}{'texts':>8}{'classes':>9}  from"]
    for split in data.SPLITS:
        origin = record["files"].get(split, "")
        if split in carved:
            origin += f" ({carved[split]['fraction']:.0%}, seed {carved['seed']})"
        classes = len(set(splits.label_ids[split].tolist()))
        rows.append(f"  {split:<12}{len(splits.texts[split]):>8}{classes:>9}  {origin}")
    return rows


def _balance(splits: data.LabelledSplits) -> str:
    counts = Counter(splits.label_ids["train"].tolist())
    total = sum(counts.values())
    (big, most), (small, least) = counts.most_common()[0], counts.most_common()[-1]
    return (
        f"  balance (train): largest class {splits.labels[big]!r} {most} ({most / total:.1%}), smallest "
        f"{splits.labels[small]!r} {least} ({least / total:.1%})"
    )


def _labels(splits: data.LabelledSplits) -> str:
    shown = ", ".join(splits.labels[:8]) + (" ..." if splits.num_labels > 8 else "")
    named = splits.record.get("label_names")
    how = f"; integer labels named by {named['from']}" if named else ""
    return f"  labels: {splits.num_labels} ({shown}){how}"


def _lengths(recipe: Recipe, splits: data.LabelledSplits) -> tuple[list[str], str]:
    """Lines on token lengths and truncation, and what the teacher stage would do; without the teacher at
    hand, lines saying so."""
    try:
        folder = models.resolve_model(recipe.teacher.model)
        tokenizer = models.load_tokenizer(folder)
        limit = lengths.model_limit(folder, tokenizer)
    except (ModelSourceError, OSError, ValueError) as exc:
        why = f"the teacher {recipe.teacher.model} cannot be loaded here: {exc}"
        return [f"  token lengths: not measured ({why})"], f"{recipe.teacher.model} (not loadable here)"
    max_length, record = lengths.measure(recipe.data.max_length, splits.texts, tokenizer, limit)
    p = record["token_lengths"]["train"]
    truncated = ", ".join(f"{split} {n}" for split, n in record["truncated"].items())
    lines = [
        f"  token lengths (train, teacher's tokenizer): p50 {p['p50']}, p90 {p['p90']}, p99 {p['p99']}, "
        f"max {p['max']}; the model serves {limit}",
        f"  max_length {max_length} ({record['max_length_rule']}); texts it would truncate: {truncated}",
    ]
    head = models.classifier_labels(folder)
    sliced = _teacher_layers(recipe, folder)
    if head is None:
        teacher = f"fine-tune {recipe.teacher.model} ({recipe.teacher.epochs:g} epochs; a new head){sliced}"
    else:
        teacher = (
            f"{recipe.teacher.model} has a head for {len(head)} labels: used as it is when they name the data's "
            f"(fine_tune = {recipe.teacher.fine_tune!r}), else refused or replaced"
        )
        if sliced:  # the teacher stage refuses layers on a head it would use as it is
            teacher += f'; fine-tuned{sliced} (layers need fine_tune = "always" with a matching head)'
    if recipe.teacher.ensemble_seeds:
        seeds = [recipe.teacher.seed, *recipe.teacher.ensemble_seeds]
        teacher += f"; an ensemble: one teacher per seed {seeds}, their probabilities averaged"
    return lines, teacher


def _teacher_layers(recipe: Recipe, folder: Path) -> str:
    """What `[teacher] layers` keeps of the base model in `folder` (", keeping layers [0, 2] of its 3"), or
    "" when it keeps them all."""
    layers = recipe.teacher.layers
    if layers is None:
        return ""
    depth = local_depth(str(folder))
    if depth is None:
        return f", keeping layers {layers!r} (refused: a family edgepack cannot slice)"
    kept = kept_layers(layers, depth)
    how = f' ("{AUTO_LAYERS}": {AUTO_LAYERS_RULE})' if layers == AUTO_LAYERS else ""
    beyond = " (refused: an index beyond its depth)" if kept and max(kept) >= depth else ""
    return f", keeping layers {kept} of its {depth}{how}{beyond}"


def _stages(recipe: Recipe, teacher: str, rejection: dict[str, Any]) -> list[str]:
    if recipe.distill.student == EXPORT_ONLY and recipe.prune.enabled:
        distill = "none: the teacher itself goes to the prune stage, whose recovery distils"
    elif recipe.distill.student == EXPORT_ONLY:
        distill = "none: the teacher itself is exported (export-only)"
    else:
        student = recipe.distill.student
        if student == "teacher-layers":
            student = f"the teacher's layers {recipe.distill.layers}"
            if recipe.distill.layers == AUTO_LAYERS:
                student = f'the teacher\'s layers "{AUTO_LAYERS}" (of its N layers, {AUTO_LAYERS_RULE})'
        search = f"{recipe.search.trials} Optuna trials, then " if recipe.search.trials else ""
        distill = f"{search}a student from {student}"
    out = Path(recipe.package.output_dir) / recipe.package.name
    exists = " (exists: --force replaces it)" if out.exists() else ""
    rule = rejection["why"] + (f", rule {recipe.evaluate.oos_threshold!r}" if rejection["label"] else "")
    stages = {
        "teacher": teacher,
        "augment": f"{recipe.augment.copies} copies per text" if recipe.augment.enabled else "off",
        "distill": distill,
        "prune": "heads / FFN / layers / vocabulary" if recipe.prune.enabled else "off",
        "export": f"ONNX opset {recipe.export.opset}",
        "optimize": "ONNX Runtime fusion",
        "quantize": f"{recipe.quantize.mode.value} INT8 for {recipe.target}",
        "oos": rule,
        "package": f"{out}{exists}",
        "evaluate": "the staged bundle, through edgepack_runtime",
    }
    return [f"  {name:<10}{what}" for name, what in stages.items()]


def report(recipe: Recipe) -> str:
    """What `edgepack build` would do with `recipe`. Raises what the data stage raises for bad data."""
    splits = data.load_splits(recipe.data)
    rejection = oos.plan(splits, recipe.evaluate.oos_threshold, recipe.evaluate.rejection_label)
    length_lines, teacher = _lengths(recipe, splits)
    lines = [
        f"# Resolved recipe ({recipe.name})",
        toml(recipe.to_dict()),
        "",
        f"Data: {splits.record['source']}",
        *_splits_table(splits),
        _labels(splits),
        _balance(splits),
        f"  out of scope: {rejection['why']}",
        *length_lines,
    ]
    if (splits.record.get("carved") or {}).get("warning"):
        lines.append(f"  note: {splits.record['carved']['warning']}")
    lines += ["", "Stages that would run:", *_stages(recipe, teacher, rejection), ""]
    lines.append("Dry run: nothing was trained, cached or written.")
    return "\n".join(lines)
