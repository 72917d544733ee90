from __future__ import annotations

import numpy as np

from edgepack.metrics import choose_threshold, predictions, scores, split_report


def test_scores_split_in_scope_and_out_of_scope() -> None:
    gold = np.array([0, 1, 2, 2])  # class 2 is oos
    pred = np.array([0, 2, 2, 1])
    assert scores(pred, gold, oos_id=2) == {"accuracy": 0.5, "in_scope_accuracy": 0.5, "oos_recall": 0.5}
    assert scores(pred, gold, oos_id=None) == {"accuracy": 0.5}


def test_threshold_turns_unsure_rows_into_oos() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.2, 0.5, 0.3]])
    assert predictions(probs, oos_id=2, threshold=0.45).tolist() == [0, 2, 1]
    assert predictions(probs, oos_id=2, threshold=None).tolist() == [0, 0, 1]


def test_chosen_threshold_maximises_accuracy_on_the_rows_given() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.5, 0.3, 0.2], [0.45, 0.35, 0.2], [0.8, 0.1, 0.1]])
    gold = np.array([0, 2, 2, 0])  # the two unsure rows are out of scope
    threshold, accuracy = choose_threshold(probs, gold, oos_id=2)
    assert accuracy == 1.0 and 0.5 < threshold <= 0.8
    assert (predictions(probs, 2, threshold) == gold).all()


def test_split_report_chooses_on_validation_and_applies_to_test() -> None:
    logits = {
        "validation": np.log(np.array([[0.9, 0.1, 1e-9], [0.5, 0.3, 0.2]])),
        "test": np.log(np.array([[0.55, 0.25, 0.2], [0.95, 0.04, 0.01]])),
    }
    gold = {"validation": np.array([0, 2]), "test": np.array([2, 0])}
    report = split_report(logits, gold, oos_id=2)
    assert 0.5 < report["oos_threshold"] <= 0.9
    assert report["test"]["accuracy"] == 0.5 and report["test_thresholded"]["accuracy"] == 1.0
