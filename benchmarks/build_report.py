"""Report a real build from its bundle's manifest into benchmarks/RESULTS.md (section `build_report`).

    python benchmarks/build_report.py bundles/clinc-int8 [--log build.log]

Everything here was measured by `edgepack build` itself and recorded in the manifest: the teacher's and the
student's accuracy (fp32 graph and the shipped INT8 bundle, plain and with the validation-chosen out-of-scope
threshold), size, time per stage, and every Optuna trial.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

sys.path.insert(0, str(Path(__file__).parent))
from results_md import cpu_description, write_section


def _oos_line(manifest: dict[str, Any]) -> str:
    rule = manifest.get("oos")
    if not rule:
        return "No out-of-scope rule shipped. "
    how = f"{rule.get('method', 'max_probability')} score" + (
        f" (graph output `{rule['output']}`), rule `{rule.get('rule')}`" if rule.get("output") else ""
    )
    return f"Out-of-scope rule shipped in the bundle: {how}, threshold {rule['threshold']:.4g}. "


def _ensemble(teacher: dict[str, Any]) -> str:
    """For a build distilled from several teachers: who they were and each one's test accuracy."""
    ensemble = teacher.get("ensemble")
    if not ensemble:
        return ""
    each = ", ".join(f"seed {m['seed']} {m['metrics']['test']['accuracy']:.4f}" for m in ensemble["members"])
    return f"; the student learnt from the mean probabilities of {len(ensemble['members'])} teachers ({each} plain)"


def _row(name: str, m: dict, size: str) -> str:
    plain, thr = m["test"], m.get("test_thresholded", {})
    cells = [
        name,
        f"{plain['accuracy']:.4f}",
        f"{thr.get('accuracy', float('nan')):.4f}",
        f"{thr.get('in_scope_accuracy', plain.get('in_scope_accuracy', float('nan'))):.4f}",
        f"{thr.get('oos_recall', plain.get('oos_recall', float('nan'))):.4f}",
        size,
    ]
    return "| " + " | ".join(cells) + " |"


def render(manifest: dict, bundle: Path) -> str:
    metrics, teacher = manifest["metrics"], manifest["teacher"]
    q, d = manifest["quantization"], manifest["distillation"]
    teacher_mb = teacher["parameters"] * 4 / 1e6
    lines = [
        f"Bundle `{bundle}` built by `edgepack build --target {manifest['target']['name']}` "
        f"(recipe `{manifest['recipe']['name']}`) on {manifest['created']}.",
        f"Machine: {cpu_description()}; build threads: {manifest['recipe']['threads'] or 'all cores'}.",
        "",
        f"Test split: {metrics['test_size']} queries (CLINC150 `plus`; accuracy counts `oos` as a class). "
        "Thresholded = as answered with an out-of-scope rule chosen on the validation split alone: the "
        "bundle's own (below), the teacher's and the fp32 graph's the top probability maximising validation "
        "accuracy.",
        "",
        "| model | accuracy | thresholded | in-scope acc. (thr.) | oos recall (thr.) | size |",
        "| --- | --- | --- | --- | --- | --- |",
        _row(
            f"teacher ({teacher['layers']} layers, fp32 torch)",
            teacher["metrics"],
            f"{teacher_mb:.1f} MB (fp32 weights)",
        ),
        _row(
            f"student fp32 ONNX ({manifest['model']['layers']} layers, fused)",
            metrics["student_fp32_graph"],
            f"{q['fp32_bytes'] / 1e6:.1f} MB",
        ),
        _row(
            f"**student INT8 bundle** ({q['mode']}, {manifest['target']['name']})",
            metrics,
            f"**{metrics['bundle_bytes'] / 1e6:.1f} MB**",
        ),
        "",
        _oos_line(manifest),
        f"fp32-vs-INT8 label agreement on validation: {metrics['fp32_vs_int8_validation']['label_agreement']:.4f} "
        f"(largest probability difference {metrics['fp32_vs_int8_validation']['max_probability_diff']:.4f}).",
        "",
        "Build time per stage (seconds, 2 cores):",
        "",
        "| " + " | ".join(manifest["build_seconds"]) + " |",
        "| " + " | ".join("---" for _ in manifest["build_seconds"]) + " |",
        "| " + " | ".join(f"{v:.0f}" for v in manifest["build_seconds"].values()) + " |",
        "",
        f"Teacher: `{teacher['model']}`, fine-tuned here: {teacher['fine_tuned_here']}, "
        f"cached this build: {teacher.get('cached')} (its training took {teacher['train_seconds']:.0f} s when it ran)"
        + _ensemble(teacher)
        + ".",
        f"Student: teacher layers {d.get('layers')}, {d['parameters']:,} parameters "
        f"(teacher {teacher['parameters']:,}); final settings {json.dumps(d['settings'])}.",
    ]
    pruning = manifest.get("pruning")
    if pruning:
        before, after = pruning["before"], pruning["after"]
        lines.append(
            f"Pruning: {before['parameters']:,} -> {after['parameters']:,} parameters; heads per layer "
            f"{before['heads']} -> {after['heads']}; FFN width {before['intermediate_size']} -> "
            f"{after['intermediate_size']}; vocabulary {before['vocab_size']:,} -> {after['vocab_size']:,}; "
            f"validation (thresholded) {json.dumps(pruning['validation_score'])}."
        )
    search = d.get("search")
    if search:
        lines += [
            "",
            f"Optuna search: {len(search['trials'])} trials on {search['train_fraction']:.0%} of the training split, "
            f"budget {search['timeout_minutes']} min; objective = thresholded validation accuracy; best trial "
            f"{search['best_trial']}.",
            "",
            "| trial | state | alpha | T | epochs | lr | validation (thr.) | per epoch | seconds |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for t in search["trials"]:
            p = t["params"]
            per_epoch = ", ".join(
                f"{v:.3f}" for _, v in sorted(t["intermediate"].items(), key=lambda kv: int(kv[0]))
            )
            value = f"{t['value']:.4f}" if t["value"] is not None else "-"
            lines.append(
                f"| {t['number']} | {t['state']} | {p.get('alpha', 0):.2f} | {p.get('temperature', 0):.2f} | "
                f"{p.get('epochs', '-')} | {p.get('learning_rate', 0):.1e} | {value} | {per_epoch} | {t['seconds']} |"
            )
    return "\n".join(lines)


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--section", default="build_report", show_default=True, help="RESULTS.md section name.")
def main(bundle: Path, section: str) -> None:
    """Write the build report of BUNDLE into benchmarks/RESULTS.md."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    text = f"## Build: `{bundle.name}`\n\n" + render(manifest, bundle)
    write_section(section, text)
    click.echo(text)


if __name__ == "__main__":
    main()
