"""The out-of-scope stage's pieces: every method's score computed by graph nodes equals the numpy one, the
threshold rules do what they say, and the feature statistics are the textbook ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgepack_runtime.data import DataError
from onnx import TensorProto, helper

from edgepack import oos
from edgepack.data import LabelledSplits

CLASSES, HIDDEN = 6, 8


def _passthrough_graph(path: Path, opset: int) -> None:
    """A graph whose `logits` and `features` outputs are its inputs: rewrite_graph appends the score to it."""
    nodes = [
        helper.make_node("Identity", ["in_logits"], ["logits"]),
        helper.make_node("Identity", ["in_features"], ["features"]),
    ]
    graph = helper.make_graph(
        nodes,
        "passthrough",
        [
            helper.make_tensor_value_info("in_logits", TensorProto.FLOAT, ["batch", CLASSES]),
            helper.make_tensor_value_info("in_features", TensorProto.FLOAT, ["batch", HIDDEN]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", HIDDEN]),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray, oos.ClassStats]:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(CLASSES), 30)
    centres = rng.normal(0, 3, size=(CLASSES, HIDDEN))
    train = centres[labels] + rng.normal(0, 1, size=(len(labels), HIDDEN))
    stats = oos.ClassStats.fit(train.astype(np.float32), labels)
    logits = rng.normal(0, 4, size=(50, CLASSES)).astype(np.float32)
    features = (rng.normal(0, 3, size=(50, HIDDEN))).astype(np.float32)
    return logits, features, stats


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("method", oos.METHODS)
def test_the_graph_computes_what_the_stage_chose_on(
    tmp_path: Path, sample: tuple[np.ndarray, np.ndarray, oos.ClassStats], method: str, opset: int
) -> None:
    logits, features, stats = sample
    _passthrough_graph(tmp_path / "in.onnx", opset)
    oos.rewrite_graph(tmp_path / "in.onnx", method, stats, tmp_path / "out.onnx")
    session = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "oos_score"], "features are removed"
    (got,) = session.run(["oos_score"], {"in_logits": logits, "in_features": features})
    expected = oos.method_scores(method, logits, features, stats)
    assert got.shape == (len(logits),)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_without_a_method_only_the_features_go(tmp_path: Path) -> None:
    _passthrough_graph(tmp_path / "in.onnx", 17)
    oos.rewrite_graph(tmp_path / "in.onnx", None, None, tmp_path / "out.onnx")
    graph = onnx.load(str(tmp_path / "out.onnx")).graph
    assert [o.name for o in graph.output] == ["logits"] and [n.output[0] for n in graph.node] == ["logits"]


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("method", ["max_probability", "energy", "mahalanobis"])
def test_a_rejection_label_gets_a_logit_never_chosen_and_changes_no_score(
    tmp_path: Path, sample: tuple[np.ndarray, np.ndarray, oos.ClassStats], method: str, opset: int
) -> None:
    logits, features, stats = sample
    _passthrough_graph(tmp_path / "in.onnx", opset)
    oos.rewrite_graph(tmp_path / "in.onnx", method, stats, tmp_path / "out.onnx", add_rejection=True)
    model = onnx.load(str(tmp_path / "out.onnx"))
    declared = next(o for o in model.graph.output if o.name == "logits").type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in declared] == ["batch", CLASSES + 1]
    session = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    got_logits, got_scores = session.run(
        ["logits", "oos_score"], {"in_logits": logits, "in_features": features}
    )
    assert got_logits.shape == (len(logits), CLASSES + 1)
    np.testing.assert_array_equal(got_logits[:, :CLASSES], logits)
    assert (got_logits[:, CLASSES] <= logits.min(axis=1) - oos.REJECTION_MARGIN + 1).all()
    np.testing.assert_array_equal(got_logits.argmax(axis=1), logits.argmax(axis=1))
    expected = oos.method_scores(method, logits, features, stats)
    np.testing.assert_allclose(got_scores, expected, rtol=1e-5, atol=1e-4)


def test_mahalanobis_is_the_textbook_distance(sample: tuple[np.ndarray, np.ndarray, oos.ClassStats]) -> None:
    _, features, stats = sample
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(CLASSES), 30)
    x = rng.normal(0, 1, size=(len(labels), HIDDEN)) + 5 * labels[:, None]
    stats = oos.ClassStats.fit(x, labels)
    means = np.stack([x[labels == c].mean(0) for c in range(CLASSES)])
    centred = x - means[labels]
    covariance = centred.T @ centred / len(x)
    covariance += oos.SHRINKAGE * np.trace(covariance) / HIDDEN * np.eye(HIDDEN)
    precision = np.linalg.inv(covariance)
    direct = np.array(
        [min((f - m) @ precision @ (f - m) for m in means) for f in features.astype(np.float64)]
    )
    got = oos.method_scores("mahalanobis", np.zeros((len(features), CLASSES)), features, stats)
    np.testing.assert_allclose(got, direct, rtol=2e-3)  # its matrices are stored in float16 (2^-11 relative)


STORED = {  # (method, case) -> the score's matrices as the graph stores them
    ("mahalanobis", "fits"): {
        "oos/cholesky_fp16": TensorProto.FLOAT16,
        "oos/cross_fp16": TensorProto.FLOAT16,
    },
    ("mahalanobis", "huge"): {"oos/cholesky_fp16": TensorProto.FLOAT16, "oos/cross": TensorProto.FLOAT},
    ("centroid_cosine", "fits"): {"oos/unit_means_t_fp16": TensorProto.FLOAT16},
    ("centroid_cosine", "huge"): {"oos/unit_means_t_fp16": TensorProto.FLOAT16},  # unit vectors always fit
}


@pytest.mark.parametrize("method", ["mahalanobis", "centroid_cosine"])
def test_score_matrices_are_stored_in_float16_unless_out_of_its_range(
    tmp_path: Path, sample: tuple[np.ndarray, np.ndarray, oos.ClassStats], method: str
) -> None:
    logits, features, stats = sample
    _passthrough_graph(tmp_path / "in.onnx", 17)
    huge = oos.ClassStats(stats.means * 1e6, stats.cholesky)  # class means x L beyond float16's 65,504
    for case, case_stats in (("fits", stats), ("huge", huge)):
        out = tmp_path / f"{case}.onnx"
        oos.rewrite_graph(tmp_path / "in.onnx", method, case_stats, out)
        matrices = {i.name: i.data_type for i in onnx.load(str(out)).graph.initializer if len(i.dims) == 2}
        assert {k: v for k, v in matrices.items() if k != "oos/mean_norms"} == STORED[method, case]
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (got,) = session.run(["oos_score"], {"in_logits": logits, "in_features": features})
        expected = oos.method_scores(method, logits, features, case_stats)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def _validation(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Scores where out-of-scope rows (class 0) score low; 1,000 in-scope rows and 100 out-of-scope."""
    rng = np.random.default_rng(seed)
    gold = np.concatenate([rng.integers(1, CLASSES, 1000), np.zeros(100, dtype=np.int64)])
    scores = np.concatenate([rng.normal(2, 1, 1000), rng.normal(0, 1, 100)])
    pred = np.where(rng.random(1100) < 0.9, gold, (gold + 1) % CLASSES)
    pred[gold == 0] = rng.integers(1, CLASSES, 100)  # the model never predicts out-of-scope itself
    return scores, pred, gold, 0


@pytest.mark.parametrize("share", [0.02, 0.1])
@pytest.mark.parametrize("method", ["energy", "mahalanobis"])
def test_a_reject_rule_rejects_that_share_of_in_scope_texts(share: float, method: str) -> None:
    scores, pred, gold, oos_id = _validation()
    scores = -scores if method in oos.ABOVE else scores  # distances: high means out of scope
    threshold = oos.choose_threshold(f"reject:{share}", scores, pred, gold, oos_id, method)
    rejected = oos.rejected(scores, threshold, method)
    assert rejected[gold != oos_id].mean() == pytest.approx(share, abs=0.002)
    assert rejected[gold == oos_id].mean() > 3 * share, "out-of-scope texts are caught far more often"


def test_a_reject_rule_needs_no_out_of_scope_examples() -> None:
    scores, pred, gold, oos_id = _validation()
    inside = gold != oos_id
    threshold = oos.choose_threshold(
        "reject:0.05", scores[inside], pred[inside], gold[inside], oos_id, "energy"
    )
    assert oos.rejected(scores[inside], threshold, "energy").mean() == pytest.approx(0.05, abs=0.002)
    with pytest.raises(ValueError, match="needs out-of-scope texts.*reject:0.02"):
        oos.choose_threshold("auto", scores[inside], pred[inside], gold[inside], oos_id, "energy")


def test_balanced_and_accuracy_rules_maximise_their_objective() -> None:
    scores, pred, gold, oos_id = _validation()
    ids = np.where(gold == oos_id, -1, gold)
    grid = np.linspace(scores.min() - 1, scores.max() + 1, 4001)
    for rule, objective in (("auto", oos.OBJECTIVES["auto"]), ("accuracy", oos.OBJECTIVES["accuracy"])):
        threshold = oos.choose_threshold(rule, scores, pred, gold, oos_id, "energy")
        best = max(objective(oos.answers(pred, scores, float(t), "energy", -1), ids) for t in grid)
        chosen = objective(oos.answers(pred, scores, threshold, "energy", -1), ids)
        assert chosen >= best - 2e-3, rule  # the quantile grid is as good as a dense one
    balanced = oos.choose_threshold("auto", scores, pred, gold, oos_id, "energy")
    accurate = oos.choose_threshold("accuracy", scores, pred, gold, oos_id, "energy")
    assert balanced > accurate, "with 9% out-of-scope texts, accuracy alone rejects less"
    assert oos.choose_threshold(1.25, scores, pred, gold, oos_id, "energy") == 1.25


def _splits(labels: list[str], oos_label: str | None, validation: list[int]) -> LabelledSplits:
    ids = {"train": np.array([0, 1, 1, 0]), "validation": np.array(validation), "test": np.array([0, 1])}
    texts = {s: [f"{s} {i}" for i in range(len(v))] for s, v in ids.items()}
    return LabelledSplits(labels, texts, ids, oos_label, "data")


def test_the_plan_for_data_without_an_oos_class() -> None:
    plain = _splits(["a", "b"], None, [0, 1])
    planned = oos.plan(plain, "reject:0.02", None)
    assert planned["label"] is None and "answers by argmax" in planned["why"]
    assert "--oos-label" not in planned["why"]
    named = oos.plan(_splits(["a", "OOS"], None, [0, 1]), "reject:0.02", None)["why"]
    assert named.endswith(
        "its class 'OOS' is learnt as an ordinary class; if it means out of scope: --oos-label OOS)"
    )
    planned = oos.plan(plain, "reject:0.02", "unsure")
    assert planned == {"label": "unsure", "added": True, "why": planned["why"]}
    assert oos.plan(plain, None, "unsure")["label"] is None, "no rule, nothing rejected"
    with pytest.raises(
        DataError, match="rejection_label = 'b' is a class of the data.*set \\[data\\] oos_label"
    ):
        oos.plan(plain, "reject:0.02", "b")


def test_the_plan_refuses_what_cannot_work_before_training() -> None:
    with_oos = _splits(["a", "oos"], "oos", [0, 0])
    assert oos.plan(with_oos, "reject:0.02", None) == {
        "label": "oos",
        "added": False,
        "why": "the data's out-of-scope class",
    }
    with pytest.raises(
        DataError, match="rejection_label = 'unsure', but the data has an out-of-scope class 'oos'"
    ):
        oos.plan(with_oos, "reject:0.02", "unsure")
    with pytest.raises(DataError, match="oos_threshold = 'auto' is chosen on out-of-scope validation texts"):
        oos.plan(with_oos, "auto", None)
    assert oos.plan(_splits(["a", "oos"], "oos", [0, 1]), "auto", None)["label"] == "oos"
