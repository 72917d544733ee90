"""Every out-of-scope method x threshold rule on a recipe's INT8 student (and the teacher's logit methods),
thresholds chosen on validation, figures on validation and test: the table behind the oos stage's defaults.

    python benchmarks/oos_methods.py --recipe clinc [--set distill.seed=43 ...] --json out.json [--section NAME]

The teacher and the student come from the build cache (run `edgepack build` with the same recipe first; a
student not in the cache is distilled here). The student goes through the build's own export, fusion and
INT8 stages into a temporary folder, and edgepack.oos computes every score from the INT8 graph's logits and
features, one text at a time, as the build does. The test split chooses nothing: it is only reported.
With several --json files from runs with other seeds, `--merge a.json b.json ...` writes the mean and spread.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results_md import cpu_description, mean_range, write_section

LOGIT_METHODS = ("max_probability", "max_logit", "energy")  # the teacher has no cached features
RULES = ("accuracy", "auto", "reject:0.01", "reject:0.02", "reject:0.05")


def _figures(
    method: str,
    rule: str,
    scores: dict[str, np.ndarray],
    pred: dict[str, np.ndarray],
    gold: dict[str, np.ndarray],
    oos_id: int,
) -> dict[str, Any]:
    from edgepack import oos

    threshold = oos.choose_threshold(
        rule, scores["validation"], pred["validation"], gold["validation"], oos_id, method
    )
    return {
        split: oos.figures(
            oos.answers(pred[split], scores[split], threshold, method, oos_id), gold[split], oos_id
        )
        for split in ("validation", "test")
    } | {"threshold": threshold}


def _student_outputs(recipe: Any, work: Path) -> tuple[Any, dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """The recipe's splits, the INT8 student's logits and features per split, and the student's record."""
    from edgepack import augment, data, distill, export, oos, optimize, prune, quantize, teacher
    from edgepack.cache import Cache

    cache = Cache(recipe.cache_dir)
    max_length = recipe.data.max_length
    splits = data.load_splits(recipe.data)
    taught = teacher.run(splits, recipe.teacher, max_length, cache)
    transfer = augment.run(taught, recipe.augment, max_length, cache)
    used = {stage: transfer if recipe.augment.used_in(stage) else None for stage in ("distill", "prune")}
    student = distill.run(taught, recipe.distill, recipe.search, max_length, cache, used["distill"])
    pruned = prune.run(taught, student, recipe.prune, max_length, cache, used["prune"])
    exported = export.run(pruned.model_dir, recipe.export, max_length, work / "fp32.onnx")
    fused = optimize.run(exported.onnx_path, exported.model.layers, recipe.optimize, work / "fused.onnx")
    quantized = quantize.run(
        fused.onnx_path,
        recipe.quantize,
        exported.tokenizer,
        exported.input_names,
        taught.splits,
        max_length,
        work / "int8.onnx",
    )
    outputs = {
        split: oos._outputs(quantized.onnx_path, exported.tokenizer, taught.splits.texts[split], max_length)
        for split in ("train", "validation", "test")
    }
    return (
        taught,
        outputs,
        {"student": student.record.get("settings"), "cache_key": student.record.get("cache_key")},
    )


def measure(recipe: Any) -> dict[str, Any]:
    from edgepack import oos

    with tempfile.TemporaryDirectory(prefix="oos-methods-") as tmp:
        taught, outputs, student = _student_outputs(recipe, Path(tmp))
    splits = taught.splits
    oos_id = splits.oos_id()
    gold = {s: splits.label_ids[s] for s in ("validation", "test")}
    train_ids = splits.label_ids["train"]
    inside = train_ids != oos_id
    stats = oos.ClassStats.fit(outputs["train"][oos.FEATURES][inside], train_ids[inside])
    rows: dict[str, Any] = {}
    for who, logits_of, features_of, methods in (
        ("student INT8", lambda s: outputs[s]["logits"], lambda s: outputs[s][oos.FEATURES], oos.METHODS),
        (
            "teacher",
            lambda s: taught.logits[s],
            lambda s: np.empty((len(taught.logits[s]), 0)),
            LOGIT_METHODS,
        ),
    ):
        pred = {s: logits_of(s).argmax(axis=1) for s in gold}
        for method in methods:
            scores = {s: oos.method_scores(method, logits_of(s), features_of(s), stats) for s in gold}
            for rule in RULES:
                rows[f"{who}|{method}|{rule}"] = _figures(method, rule, scores, pred, gold, oos_id)
    return {"recipe": recipe.to_dict(), "student": student, "rows": rows}


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread (min, max) over runs of every figure."""
    merged: dict[str, Any] = {}
    for key in runs[0]["rows"]:
        merged[key] = {}
        for split in ("validation", "test"):
            merged[key][split] = {
                name: [float(np.mean(v := [r["rows"][key][split][name] for r in runs])), min(v), max(v)]
                for name in runs[0]["rows"][key][split]
            }
    return {"runs": len(runs), "seeds": [r["recipe"]["distill"]["seed"] for r in runs], "rows": merged}


def _table(merged: dict[str, Any]) -> str:
    lines = [
        "| model | score | rule (on validation) | test accuracy | in-scope | oos recall | validation balanced |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, row in merged["rows"].items():
        who, method, rule = key.split("|")
        t, v = row["test"], row["validation"]

        def cell(f: list[float]) -> str:
            return mean_range(f[0], f[1], f[2], spread=merged["runs"] > 1)

        lines.append(
            f"| {who} | {method} | `{rule}` | {cell(t['accuracy'])} | {cell(t['in_scope_accuracy'])} | "
            f"{cell(t['oos_recall'])} | {cell(v['balanced'])} |"
        )
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--recipe", default="clinc", show_default=True)
@click.option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write this run.")
@click.option("--merge", "merge_paths", multiple=True, type=click.Path(exists=True, path_type=Path))
@click.option("--section", default=None, help="Write the (merged) table into RESULTS.md under this name.")
def main(
    recipe: str,
    settings: tuple[str, ...],
    json_path: Path | None,
    merge_paths: tuple[Path, ...],
    section: str | None,
) -> None:
    """Measure (or, with --merge, combine) every out-of-scope method x rule."""
    if merge_paths:
        runs = [json.loads(p.read_text()) for p in merge_paths]
    else:
        from edgepack.recipe import load_recipe, parse_override

        resolved = load_recipe(recipe, dict(parse_override(s) for s in settings))
        runs = [measure(resolved)]
        if json_path is not None:
            json_path.write_text(json.dumps(runs[0], indent=1))
    merged = _merge(runs)
    table = _table(merged)
    click.echo(table)
    if section:
        seeds = ", ".join(str(s) for s in merged["seeds"])
        text = (
            f"## Out-of-scope methods and rules ({merged['runs']} student(s), distillation seeds {seeds})\n\n"
            f"`python benchmarks/oos_methods.py --merge ... --section {section}`, from runs of "
            "`python benchmarks/oos_methods.py --recipe clinc --set distill.seed=N ...`. Machine: "
            f"{cpu_description()}. CLINC150 `plus`: validation 3,100 texts (100 out-of-scope), test 5,500 "
            "(1,000). Thresholds chosen on validation only; test figures are mean (min-max) over the students. "
            "`auto` = maximise the mean of in-scope accuracy and oos recall; `reject:Q` = reject the share Q of "
            "in-scope validation texts; `accuracy` = maximise validation accuracy (the rule before).\n\n"
            + table
        )
        write_section(section, text)
        click.echo(f"wrote section {section} of RESULTS.md")


if __name__ == "__main__":
    main()
