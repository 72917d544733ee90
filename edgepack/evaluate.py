"""Evaluate stage: accuracy of the artifact that ships, measured through `edgepack_runtime` on the staged
bundle, beside the teacher's on the same split. The out-of-scope rule it applies was chosen on validation
only, by the oos stage, and ships inside the bundle.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from edgepack_runtime import Classifier

from edgepack import metrics
from edgepack.data import LabelledSplits
from edgepack.errors import StageError
from edgepack.recipe import EvaluateConfig

log = logging.getLogger(__name__)


def run(
    bundle_dir: Path,
    splits: LabelledSplits,
    teacher_metrics: dict[str, Any],
    config: EvaluateConfig,
    threads: int | None,
    labels: list[str] | None = None,
) -> dict[str, Any]:
    """The staged bundle's figures, as the runtime answers (its out-of-scope rule applied) and by argmax.
    `labels`: the bundle's labels.json (the data's, plus a rejection label the oos stage added)."""
    clf = Classifier.load(bundle_dir, threads=threads or 0)
    if clf.labels != (labels if labels is not None else splits.labels):
        raise StageError("evaluate: the bundle's labels.json does not match the data's label map.")
    oos_id = splits.oos_id()
    index = {label: i for i, label in enumerate(clf.labels)}
    record: dict[str, Any] = {
        "measured_on": "final bundle via edgepack_runtime",
        "teacher": teacher_metrics,
        "test_size": len(splits.texts["test"]),
    }
    for split in ("validation", "test"):
        predictions = clf.predict_batch(splits.texts[split], batch_size=config.batch_size, top_k=1)
        gold = splits.label_ids[split]
        argmax = np.array([index[p.top_k[0][0]] for p in predictions])
        record[split] = metrics.scores(argmax, gold, oos_id)
        if clf.oos_label is not None:
            answered = np.array([index[p.label] for p in predictions])
            rejected = float(np.mean([p.rejected for p in predictions]))
            record[f"{split}_thresholded"] = metrics.scores(answered, gold, oos_id) | {"rejected": rejected}
    if clf.oos_label is not None:
        record["oos_threshold"] = clf.oos_threshold
    log.info("evaluate: test %s", record.get("test_thresholded", record["test"]))
    return record


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
