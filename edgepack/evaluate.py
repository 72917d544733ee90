"""Evaluate stage: accuracy of the artifact that ships, measured through `edgepack_runtime` on the staged
bundle, beside the teacher's on the same split; the out-of-scope threshold is chosen on validation only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from edgepack_runtime import Classifier

from edgepack import metrics
from edgepack.data import LabelledSplits
from edgepack.errors import StageError
from edgepack.recipe import EvaluateConfig

log = logging.getLogger(__name__)


@dataclass
class EvaluateResult:
    oos: dict[str, Any] | None  # {"label", "threshold"} for the manifest
    record: dict[str, Any]


def _threshold(
    config: EvaluateConfig, probs: np.ndarray, gold: np.ndarray, oos_id: int | None
) -> float | None:
    if oos_id is None or config.oos_threshold is None:
        return None
    if config.oos_threshold == "auto":
        return metrics.choose_threshold(probs, gold, oos_id)[0]
    return float(config.oos_threshold)


def run(
    bundle_dir: Path,
    splits: LabelledSplits,
    teacher_metrics: dict[str, Any],
    config: EvaluateConfig,
    threads: int | None,
) -> EvaluateResult:
    clf = Classifier.load(bundle_dir, threads=threads or 0)
    if clf.labels != splits.labels:
        raise StageError("evaluate: the bundle's labels.json does not match the data's label map.")
    oos_id = splits.oos_id()
    probs = {
        s: clf.predict_proba(splits.texts[s], batch_size=config.batch_size) for s in ("validation", "test")
    }
    gold = {s: splits.label_ids[s] for s in probs}
    threshold = _threshold(config, probs["validation"], gold["validation"], oos_id)
    record: dict[str, Any] = {
        "measured_on": "final bundle via edgepack_runtime",
        "test": metrics.scores(metrics.predictions(probs["test"], None, None), gold["test"], oos_id),
        "validation": metrics.scores(
            metrics.predictions(probs["validation"], None, None), gold["validation"], oos_id
        ),
        "teacher": teacher_metrics,
        "test_size": len(gold["test"]),
    }
    oos = None
    if threshold is not None:
        oos = {"label": splits.oos_label, "threshold": threshold}
        record["oos_threshold"] = threshold
        record["test_thresholded"] = metrics.scores(
            metrics.predictions(probs["test"], oos_id, threshold), gold["test"], oos_id
        )
    log.info("evaluate: test %s", record.get("test_thresholded", record["test"]))
    return EvaluateResult(oos, record)


def confirm_shipped_predictions(
    bundle_dir: Path, splits: LabelledSplits, expected_accuracy: float, batch_size: int
) -> None:
    """Reload the finished bundle and check the runtime's own labels (threshold applied) give the recorded score."""
    clf = Classifier.load(bundle_dir, threads=0)
    predicted = [p.label for p in clf.predict_batch(splits.texts["test"], batch_size=batch_size)]
    gold = [splits.labels[i] for i in splits.label_ids["test"]]
    accuracy = float(np.mean([p == g for p, g in zip(predicted, gold, strict=True)]))
    if abs(accuracy - expected_accuracy) > 1e-9:
        raise StageError(
            f"evaluate: the packaged bundle scores {accuracy:.4f} through the runtime, but {expected_accuracy:.4f} "
            "was measured; the manifest would not describe the shipped bytes."
        )
