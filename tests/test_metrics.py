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


def reference_choose_threshold(probs: np.ndarray, gold: np.ndarray, oos_id: int) -> tuple[float, float]:
    """The original implementation: re-score every row at every candidate (quadratic, obviously right)."""
    top = probs.max(axis=1)
    unique = np.unique(top)
    candidates = np.concatenate([[0.0], (unique[:-1] + unique[1:]) / 2, [unique[-1] + 1e-6]])
    best_t, best_acc = 0.0, -1.0
    for t in candidates:
        acc = float((predictions(probs, oos_id, float(t)) == gold).mean())
        if acc > best_acc:
            best_t, best_acc = float(t), acc
    return best_t, best_acc


def random_case(
    rng: np.random.Generator, rows: int, classes: int, decimals: int | None, oos_share: float
) -> tuple[np.ndarray, np.ndarray]:
    probs = rng.dirichlet(np.full(classes, 0.5), size=rows)
    if decimals is not None:  # coarse probabilities: many rows share a top probability (ties)
        probs = np.round(probs, decimals)
    gold = rng.integers(0, classes, size=rows)
    gold[rng.random(rows) < oos_share] = classes - 1  # the last class is oos
    return probs, gold


def test_choose_threshold_equals_the_quadratic_reference() -> None:
    rng = np.random.default_rng(0)
    cases = []
    for rows in (1, 2, 3, 7, 50, 400):
        for classes in (1, 2, 5):
            for decimals in (None, 1, 2):
                for oos_share in (0.0, 0.3, 1.0):  # no oos rows, some, all
                    cases.append(random_case(rng, rows, classes, decimals, oos_share))
    # Everything tied; one class only (every row argmax 0); float32 probabilities; an unknown gold label (-1).
    cases.append((np.full((20, 3), 1 / 3), rng.integers(0, 3, size=20)))
    cases.append((np.ones((9, 1)), np.zeros(9, dtype=int)))
    probs32, gold32 = random_case(rng, 300, 4, 2, 0.25)
    cases.append((probs32.astype(np.float32), gold32))
    probs, gold = random_case(rng, 100, 4, 1, 0.25)
    gold[::7] = -1
    cases.append((probs, gold))
    for probs, gold in cases:
        for oos_id in {probs.shape[1] - 1, 0}:
            fast = choose_threshold(probs, gold, oos_id)
            slow = reference_choose_threshold(probs, gold, oos_id)
            assert fast == slow, (probs.shape, oos_id, fast, slow)
            assert all(type(x) is float for x in fast)


def test_choose_threshold_on_a_large_split() -> None:
    rng = np.random.default_rng(1)
    probs, gold = random_case(rng, 100_000, 151, 4, 0.1)  # CLINC's 150 intents + oos, 100x its validation
    threshold, accuracy = choose_threshold(probs, gold, oos_id=150)
    assert accuracy == float((predictions(probs, 150, threshold) == gold).mean())
    assert accuracy >= float((probs.argmax(axis=1) == gold).mean())  # threshold 0 is one of the candidates
