"""Classification metrics for intent detection with an out-of-scope class (as CLINC150 reports them).

Plain numpy: accuracy is one comparison, and `evaluate.load("accuracy")` fetches its script from the Hub.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def predictions(probs: np.ndarray, oos_id: int | None, threshold: float | None) -> np.ndarray:
    """Argmax labels; with a threshold, rows whose top probability is below it become the oos label."""
    pred = probs.argmax(axis=1)
    if oos_id is not None and threshold is not None:
        pred = np.where(probs.max(axis=1) < threshold, oos_id, pred)
    return pred


def scores(pred: np.ndarray, gold: np.ndarray, oos_id: int | None) -> dict[str, float]:
    """accuracy over all rows; in-scope accuracy and out-of-scope recall when there is an oos class."""
    out = {"accuracy": float((pred == gold).mean())}
    if oos_id is not None:
        in_scope = gold != oos_id
        out["in_scope_accuracy"] = float((pred[in_scope] == gold[in_scope]).mean()) if in_scope.any() else 0.0
        oos = ~in_scope
        out["oos_recall"] = float((pred[oos] == oos_id).mean()) if oos.any() else 0.0
    return out


def choose_threshold(probs: np.ndarray, gold: np.ndarray, oos_id: int) -> tuple[float, float]:
    """The confidence threshold that maximises accuracy on these (validation) rows; returns (threshold, acc)."""
    top = probs.max(axis=1)
    unique = np.unique(top)
    # Midpoints between neighbouring confidences: no row sits exactly on a candidate threshold.
    candidates = np.concatenate([[0.0], (unique[:-1] + unique[1:]) / 2, [unique[-1] + 1e-6]])
    best_t, best_acc = 0.0, -1.0
    for t in candidates:
        acc = float((predictions(probs, oos_id, float(t)) == gold).mean())
        if acc > best_acc:
            best_t, best_acc = float(t), acc
    return best_t, best_acc


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
