"""The build pipeline: data -> teacher -> augment -> distill -> prune -> export -> optimize -> quantize -> oos -> package
-> evaluate.

Each stage is one call that returns its outputs and a record; the records become the bundle's manifest. The
package stage writes the bundle into a staging folder beside its destination; the evaluate stage measures that
staged bundle through the runtime and its figures go into the manifest; only then is the folder renamed into
place. Intermediate files live in a work folder that is removed at the end, whatever happens.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack import (
    __version__,
    augment,
    data,
    distill,
    evaluate,
    export,
    oos,
    optimize,
    package,
    provenance,
    prune,
    quantize,
    signing,
    teacher,
)
from edgepack.cache import Cache
from edgepack.recipe import Recipe
from edgepack.targets import TARGETS

log = logging.getLogger(__name__)

STAGES = (
    "data",
    "teacher",
    "augment",
    "distill",
    "prune",
    "export",
    "optimize",
    "quantize",
    "oos",
    "package",
    "evaluate",
)


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        log.info("[%d/%d] %s", STAGES.index(name) + 1, len(STAGES), name)
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 1)
        log.info("%s done in %.1f s", name, self.seconds[name])


def _set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def _elapsed(started: dt.datetime) -> float:
    return round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)


def _manifest(
    recipe: Recipe,
    started: dt.datetime,
    files: dict[str, Any],
    onnx_path: Path,
    facts: export.ModelFacts,
    splits: data.LabelledSplits,
    labels: list[str],
    max_length: int,
) -> dict[str, Any]:
    """The manifest's descriptive part; stage records and metrics are added by build(). `labels` are the
    bundle's (the data's, plus a rejection label the oos stage added), `max_length` the data stage's."""
    target = TARGETS[recipe.target]
    model = package.graph_io(onnx_path) | {
        "num_labels": len(labels),
        "max_length": max_length,
        "vocab_size": facts.vocab_size,
        "max_position_embeddings": facts.max_position_embeddings,
        "architecture": facts.architecture,
        "layers": facts.layers,
        "hidden_size": facts.hidden_size,
    }
    return {
        "name": recipe.package.name,
        "created": started.isoformat(timespec="seconds"),
        "edgepack_version": __version__,
        "files": files,
        "model": model,
        "target": {"name": target.name, "cpu_features": list(target.cpu_features), "note": target.note},
        "oos": None,  # set by build() from the oos stage
        "data": splits.record,
        "recipe": recipe.to_dict(),
        "versions": provenance.versions(),  # python and every package of edgepack's dependency closure
        "machine": provenance.machine(),
        "reproducibility": {"seeds": provenance.seeds(recipe), **provenance.determinism()},
    }


@dataclass(frozen=True)
class BuiltBundle:
    """What build() wrote: the bundle's folder and its manifest, as manifest.json holds it."""

    path: Path
    manifest: dict[str, Any]


def build(recipe: Recipe, *, force: bool = False, sign_key: Path | None = None) -> BuiltBundle:
    """Run every stage and write the bundle; returns its folder and manifest. With sign_key (a private key file from
    `edgepack keygen`), the staged bundle is signed (manifest.sig) before it is moved into place."""
    destination = Path(recipe.package.output_dir) / recipe.package.name
    package.check_destination(destination, force)
    signer = signing.load_private_key(sign_key) if sign_key is not None else None  # a bad key fails now
    _set_threads(recipe.threads)
    timer = _Timer()
    started = dt.datetime.now(dt.UTC)
    cache = Cache(recipe.cache_dir)
    cache.root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=cache.root))
    try:
        with timer.stage("data"):  # max_length: the recipe's, or from the data's token lengths ("auto")
            splits, max_length = data.run(recipe.data, recipe.teacher.model)
            oos.plan(splits, recipe.evaluate.oos_threshold, recipe.evaluate.rejection_label)  # refuse now
            # "auto" layers: now too (of the teacher's base model, or of the layers [teacher] layers keeps)
            distill.check_depth(recipe.distill, recipe.prune, recipe.teacher.model, recipe.teacher.layers)
        with timer.stage("teacher"):
            taught = teacher.run(splits, recipe.teacher, max_length, cache)
            splits = taught.splits
        with timer.stage("augment"):  # None when [augment] is off
            transfer = augment.run(taught, recipe.augment, max_length, cache)
        with timer.stage("distill"):
            used = transfer if recipe.augment.used_in("distill") else None
            student = distill.run(taught, recipe.distill, recipe.search, max_length, cache, used)
        with timer.stage("prune"):  # the distilled student unchanged, record None, when nothing is enabled
            used = transfer if recipe.augment.used_in("prune") else None
            pruned = prune.run(taught, student, recipe.prune, max_length, cache, used)
        with timer.stage("export"):
            exported = export.run(pruned.model_dir, recipe.export, max_length, work / "model-fp32.onnx")
        with timer.stage("optimize"):
            optimized = optimize.run(
                exported.onnx_path,
                exported.model.layers,
                recipe.optimize,
                work / "model-fused.onnx",
                architecture=exported.model.architecture,
            )
        with timer.stage("quantize"):
            quantized = quantize.run(
                optimized.onnx_path,
                recipe.quantize,
                exported.tokenizer,
                exported.input_names,
                splits,
                max_length,
                work / "model-int8.onnx",
            )
        with timer.stage("oos"):
            scored = oos.run(
                quantized.onnx_path,
                optimized.onnx_path,
                recipe.evaluate.oos_method,
                recipe.evaluate.oos_threshold,
                exported.tokenizer,
                splits,
                max_length,
                work / "model.onnx",
                rejection_label=recipe.evaluate.rejection_label,
            )
        with package.staged_bundle(destination) as staging:
            with timer.stage("package"):
                tokenizer_json = package.bundle_tokenizer_json(exported.tokenizer, max_length)
                files = package.write_files(staging, scored.onnx_path, tokenizer_json, scored.labels)
                facts = (exported.model, splits, scored.labels, max_length)
                manifest = _manifest(recipe, started, files, scored.onnx_path, *facts)
                manifest |= {
                    "teacher": taught.record,
                    "augmentation": transfer.record if transfer is not None else None,
                    "distillation": student.record,
                    "pruning": pruned.record,
                    "export": exported.record,
                    "optimization": optimized.record,
                    "quantization": quantized.record,
                    "oos": scored.oos,
                    "oos_detection": scored.record,
                }
                package.write_manifest(staging, manifest)
            with timer.stage("evaluate"):
                measured = evaluate.run(
                    staging, splits, taught.record["metrics"], recipe.evaluate, recipe.threads, scored.labels
                )
                manifest["metrics"] = measured | {
                    "bundle_bytes": sum(f["size"] for f in files.values()),
                    "model_onnx_bytes": files["model.onnx"]["size"],
                    "fp32_vs_int8_validation": quantized.record["fp32_vs_int8_validation"],
                    "student_fp32_graph": quantized.fp32_metrics,
                }
                package.write_manifest(staging, manifest)
                shipped = measured.get("test_thresholded", measured["test"])["accuracy"]
                evaluate.confirm_shipped_predictions(staging, splits, shipped, recipe.evaluate.batch_size)
            manifest["build_seconds"] = timer.seconds | {"total": _elapsed(started)}
            written = package.write_manifest(staging, manifest)
            if signer is not None:
                signing.sign_folder(staging, signer)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BuiltBundle(destination, written)
