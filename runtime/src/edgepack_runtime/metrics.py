"""Accuracy figures for intent detection with an out-of-scope class (as CLINC150 reports them).

The one implementation of these numbers: the runtime's bench, `edgepack bench` and the build's evaluate stage
all call `scores`, so a bundle's manifest, its bench report and its teacher's figures are computed alike.
"""

from __future__ import annotations

import numpy as np


def scores(pred: np.ndarray, gold: np.ndarray, oos_id: int | None) -> dict[str, float]:
    """Accuracy over all rows; in-scope accuracy and out-of-scope recall when there is an oos class.

    `pred` and `gold` are class ids (gold -1: a label the model does not know, never right). A figure over no
    rows (no in-scope or no out-of-scope texts) is 0.0.
    """
    pred, gold = np.asarray(pred), np.asarray(gold)
    correct = pred == gold
    out = {"accuracy": float(correct.mean()) if len(correct) else 0.0}
    if oos_id is not None:
        in_scope = gold != oos_id
        out["in_scope_accuracy"] = float(correct[in_scope].mean()) if in_scope.any() else 0.0
        out["oos_recall"] = float(correct[~in_scope].mean()) if (~in_scope).any() else 0.0
    return out
