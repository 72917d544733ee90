"""The out-of-scope rule a bundle ships: a score computed by the graph (`oos.output`) compared with one
threshold on the side `oos.direction` names; bundles without a score output keep the top-probability rule;
a rule and a graph that disagree are refused, naming both."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgepack_runtime import BundleError, Classifier

from .bundle_kit import MakeBundle

TEXTS = ["what is my pin", "book a flight", "weather in paris", "transfer money", "hello there", "pin"]
SCORE_ENTRY = {"name": "oos_score", "type": "float32", "shape": ["batch"]}


def _with_score_output(manifest: dict[str, Any]) -> None:
    manifest["model"]["outputs"].append(dict(SCORE_ENTRY))


def _scored_bundle(make_bundle: MakeBundle, direction: str, threshold: float) -> Classifier:
    rule = {"label": "oos", "method": "test_sum", "output": "oos_score", "direction": direction}
    folder = make_bundle(
        graph={"score_output": "oos_score"},
        oos=rule | {"threshold": threshold},
        edit=_with_score_output,
        digest=True,
    )
    return Classifier.load(folder)


def _graph_scores(clf: Classifier, texts: list[str]) -> np.ndarray:
    """The graph's own score output, one text at a time (the tiny graph's score: the sum of its logits)."""
    return np.array([float(clf._run(clf._encode([t]))[1][0]) for t in texts])  # type: ignore[index]


@pytest.mark.parametrize("direction", ["below", "above"])
def test_the_graph_score_decides(make_bundle: MakeBundle, direction: str) -> None:
    probe = _scored_bundle(make_bundle, direction, 0.0)
    scores = _graph_scores(probe, TEXTS)
    threshold = float(np.median(scores))  # some texts on each side
    clf = _scored_bundle(make_bundle, direction, threshold)
    predictions = clf.predict_batch(TEXTS, top_k=2)
    for text, score, batched in zip(TEXTS, scores, predictions, strict=True):
        one = clf.predict(text, top_k=2)
        assert (one.label, one.rejected) == (batched.label, batched.rejected), "predict_batch answers alike"
        assert one.oos_score == pytest.approx(batched.oos_score, abs=1e-5)
        assert one.oos_score == pytest.approx(score, abs=1e-5)
        expected = score > threshold if direction == "above" else score < threshold
        assert one.rejected is bool(expected)
        assert (one.label == "oos") if expected else one.label == one.top_k[0][0]
    assert {p.rejected for p in predictions} == {True, False}
    assert clf.oos is not None and (clf.oos.method, clf.oos.output, clf.oos.direction) == (
        "test_sum",
        "oos_score",
        direction,
    )


def test_a_bundle_without_a_score_output_keeps_the_top_probability_rule(make_bundle: MakeBundle) -> None:
    plain = Classifier.load(make_bundle())
    assert plain.oos is None and plain.predict("hello").oos_score is None
    clf = Classifier.load(make_bundle(oos={"label": "oos", "threshold": 0.5}))
    assert clf.oos is not None and (clf.oos.method, clf.oos.output, clf.oos.direction) == (
        "max_probability",
        None,
        "below",
    )
    for p in clf.predict_batch(TEXTS):
        assert p.oos_score == pytest.approx(p.score) and p.rejected is (p.score < 0.5)
    assert clf.oos.describe() == "top probability below 0.5 -> 'oos'"
    scored = _scored_bundle(make_bundle, "above", 1.25)
    assert scored.oos is not None and scored.oos.describe() == "test_sum score above 1.25 -> 'oos'"


def _refused(make_bundle: MakeBundle, match: str, **kwargs: Any) -> None:
    with pytest.raises(BundleError, match=match):
        Classifier.load(make_bundle(**kwargs))


def test_a_rule_and_a_graph_that_disagree_are_refused(make_bundle: MakeBundle) -> None:
    rule = {"label": "oos", "method": "energy", "output": "oos_score", "direction": "below", "threshold": 1.0}
    # The rule names an output the manifest's graph description lacks.
    _refused(make_bundle, r"oos.output is 'oos_score', but model.outputs has no such output", oos=rule)
    # The manifest lists the output, the graph does not compute it.
    _refused(
        make_bundle,
        r"graph outputs \['logits'\] differ from .*'oos_score'",
        oos=rule,
        edit=_with_score_output,
    )
    # The graph computes a score no rule names: it would be computed and ignored.
    _refused(
        make_bundle,
        r"lists \['oos_score'\], which 'oos' does not name \(oos.output is None\)",
        graph={"score_output": "oos_score"},
        oos={"label": "oos", "threshold": 0.5},
        edit=_with_score_output,
    )
    _refused(
        make_bundle,
        r"graph outputs \['logits', 'oos_score'\] differ from manifest.json's model.outputs \['logits'\]",
        graph={"score_output": "oos_score"},
    )


@pytest.mark.parametrize(
    ("rule", "match"),
    [
        ({"direction": "sideways"}, "oos.direction must be 'above' or 'below'"),
        ({"threshold": float("nan")}, "finite threshold"),
        ({"output": None, "method": "energy"}, "without an output must be the top-probability rule"),
        ({"output": None, "threshold": 3.0, "method": "max_probability"}, "threshold in \\[0, 1\\]"),
    ],
)
def test_malformed_rules_are_refused(make_bundle: MakeBundle, rule: dict[str, Any], match: str) -> None:
    base = {"label": "oos", "method": "energy", "output": "oos_score", "direction": "below", "threshold": 1.0}
    if rule.get("output", "oos_score") is None:  # a graph without a score output
        _refused(make_bundle, match, oos=base | rule)
    else:
        _refused(
            make_bundle, match, graph={"score_output": "oos_score"}, oos=base | rule, edit=_with_score_output
        )


@pytest.mark.parametrize("direction", ["below", "above"])
def test_a_text_with_nothing_to_classify_is_out_of_scope(make_bundle: MakeBundle, direction: str) -> None:
    # A threshold no score reaches: only the blank texts are rejected, by the rule, not by their score.
    clf = _scored_bundle(make_bundle, direction, -1e9 if direction == "below" else 1e9)
    blanks = ["", "   ", "\t\n", "\x00\x01", "\u200b"]
    for prediction in [*map(clf.predict, blanks), *clf.predict_batch([*blanks, "what is my pin"])[:-1]]:
        assert (prediction.label, prediction.rejected) == ("oos", True)
        assert prediction.top_k and prediction.oos_score is not None  # the model's own view stays visible
    assert not clf.predict("what is my pin").rejected
