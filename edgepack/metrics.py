"""Classification metrics for intent detection with an out-of-scope class (as CLINC150 reports them).

Plain numpy: accuracy is one comparison, and `evaluate.load("accuracy")` fetches its script from the Hub.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from edgepack_runtime.metrics import scores

__all__ = ["choose_threshold", "predictions", "scores", "softmax", "split_report"]


def predictions(probs: np.ndarray, oos_id: int | None, threshold: float | None) -> np.ndarray:
    """Argmax labels; with a threshold, rows whose top probability is below it become the oos label."""
    pred = probs.argmax(axis=1)
    if oos_id is not None and threshold is not None:
        pred = np.where(probs.max(axis=1) < threshold, oos_id, pred)
    return pred


def choose_threshold(probs: np.ndarray, gold: np.ndarray, oos_id: int) -> tuple[float, float]:
    """The confidence threshold that maximises accuracy on these (validation) rows; returns (threshold, acc).

    Candidates are 0, the midpoints between neighbouring distinct top probabilities and just above the largest;
    the lowest candidate reaching the best accuracy wins. One sort and two cumulative sums: a row is right
    below the threshold when it is out of scope and above it when its argmax is its label, so the accuracy at
    each candidate is a difference of prefix counts (O(n log n), not one full re-scoring per candidate).
    """
    gold = np.asarray(gold)
    top = probs.max(axis=1)
    if top.size == 0:
        raise ValueError("choose_threshold needs at least one row")
    unique = np.unique(top)
    # Midpoints between neighbouring confidences: no row sits exactly on a candidate threshold.
    candidates = np.concatenate([[0.0], (unique[:-1] + unique[1:]) / 2, [unique[-1] + 1e-6]])
    order = np.argsort(top, kind="stable")
    sorted_top = top[order]
    # Rows strictly below each candidate (what `top < t` selects): a prefix of the sorted rows. NaN sorts
    # last, so no finite candidate counts it; a NaN candidate has no row below it.
    below = np.searchsorted(sorted_top, candidates, side="left")
    below[np.isnan(candidates)] = 0
    oos_right = np.concatenate([[0], np.cumsum(gold[order] == oos_id)])  # right if turned into oos
    argmax_right = np.concatenate([[0], np.cumsum(probs.argmax(axis=1)[order] == gold[order])])
    correct = oos_right[below] + (argmax_right[-1] - argmax_right[below])
    accuracy = correct / len(top)  # float64 count / n: the same number as (pred == gold).mean()
    best = int(np.argmax(accuracy))  # the first (lowest) candidate with the best accuracy
    return float(candidates[best]), float(accuracy[best])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def split_report(
    logits: dict[str, np.ndarray], gold: dict[str, np.ndarray], oos_id: int | None
) -> dict[str, Any]:
    """Validation and test scores, plain and (with an oos class) with a threshold chosen on validation only."""
    probs = {s: softmax(logits[s]) for s in ("validation", "test")}
    out: dict[str, Any] = {s: scores(probs[s].argmax(axis=1), gold[s], oos_id) for s in probs}
    if oos_id is not None:
        threshold, _ = choose_threshold(probs["validation"], gold["validation"], oos_id)
        out["oos_threshold"] = threshold
        out["test_thresholded"] = scores(predictions(probs["test"], oos_id, threshold), gold["test"], oos_id)
    return out
