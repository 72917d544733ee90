"""Per-text activation quantization: dynamic-INT8 batches that give each text the answer it gets alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgepack_runtime import Classifier, pertext
from edgepack_runtime.data import load_labeled

from . import tiny_onnx
from .bundle_kit import CLINC_DIR, MakeBundle

TEXTS = [
    "what is my account pin number",
    "book a flight for tomorrow",
    "hi",
    "",
    "play some music please tell me where was it made and how do i transfer money to the bank today",
    "weather today in paris",
    "set an alarm",
    "cancel order cancel order cancel order",
    "xyz qqq 123",
    "how do i transfer money",
]


def _score_output(manifest: dict[str, Any]) -> None:
    manifest["model"]["outputs"].append({"name": "oos_score", "type": "float32", "shape": ["batch"]})
    manifest["oos"] = {"label": "oos", "method": "max_probability", "output": "oos_score",
                       "direction": "below", "threshold": 0.3}  # fmt: skip


def _bert_bundle(make_bundle: MakeBundle) -> Classifier:
    return Classifier.load(make_bundle(model=tiny_onnx.bert_int8_graph(), edit=_score_output))


def test_rewrite_replaces_every_batch_wide_quantization() -> None:
    model = tiny_onnx.bert_int8_graph()
    before, after = pertext.op_counts(model), pertext.op_counts(pertext.rewrite(model))
    assert before["DynamicQuantizeLinear"] == 5 and before["com.microsoft:QAttention"] == 1
    assert "DynamicQuantizeLinear" not in after and "com.microsoft:QAttention" not in after
    assert after["QuantizeLinear"] == before["DynamicQuantizeLinear"]  # one per quantized activation
    assert after["com.microsoft:MultiHeadAttention"] == 1
    assert after["MatMulInteger"] == before["MatMulInteger"] + before["com.microsoft:QAttention"]
    for op in ("com.microsoft:EmbedLayerNormalization", "com.microsoft:SkipLayerNormalization", "Softmax"):
        assert after[op] == before[op]  # everything else is left as it was


def test_the_graph_itself_is_batch_dependent(make_bundle: MakeBundle) -> None:
    clf = _bert_bundle(make_bundle)
    rows = clf._encode(TEXTS)
    together = clf._session.run(["logits"], tiny_onnx_feeds(clf, rows))[0]
    alone = np.concatenate([clf._run([r])[0] for r in rows])
    assert np.abs(together - alone).max() > 1e-4


def tiny_onnx_feeds(clf: Classifier, rows: list[list[int]]) -> dict[str, np.ndarray]:
    from edgepack_runtime.classifier import feeds

    return feeds(rows, dict(zip(clf.input_names, [np.int64] * 3, strict=True)), clf._pad_id)


@pytest.mark.parametrize("batch_size", [2, 3, 32])
def test_batches_answer_each_text_as_alone_bit_for_bit(make_bundle: MakeBundle, batch_size: int) -> None:
    clf = _bert_bundle(make_bundle)
    assert clf.batch_invariant
    assert "per-text" in clf.batch_mode and "bit for bit" in clf.batch_mode
    texts = TEXTS * 3
    probs, scores = clf.predict_scores(texts, batch_size=batch_size)
    alone = [clf.predict_scores([t]) for t in texts]
    assert np.array_equal(probs, np.concatenate([p for p, _ in alone]))
    assert scores is not None
    assert np.array_equal(scores, np.concatenate([s for _, s in alone if s is not None]))
    assert clf.predict_batch(texts, batch_size=batch_size) == [clf.predict(t) for t in texts]


def test_batching_off_runs_one_at_a_time(make_bundle: MakeBundle) -> None:
    folder = make_bundle(model=tiny_onnx.bert_int8_graph(), edit=_score_output)
    clf = Classifier.load(folder, batching=False)
    assert not clf.batch_invariant and clf.batch_mode == "one text at a time"


def test_graphs_it_cannot_prove_per_text_run_one_at_a_time(make_bundle: MakeBundle) -> None:
    # tiny_onnx's other dynamic graph pools through operators outside the rewrite's list: refused, by name.
    with pytest.raises(pertext.NotRewritable, match="keeps texts apart"):
        pertext.rewrite(tiny_onnx.classifier_graph(dynamic_quant=True))
    clf = Classifier.load(make_bundle(graph={"dynamic_quant": True}))
    assert not clf.batch_invariant
    assert clf.batch_mode.startswith("one text at a time (per-text rewrite not applicable")


def test_float_graphs_are_left_alone() -> None:
    with pytest.raises(pertext.NotRewritable, match="no DynamicQuantizeLinear"):
        pertext.rewrite(tiny_onnx.classifier_graph())


def test_garbage_is_not_rewritable() -> None:
    with pytest.raises(pertext.NotRewritable):
        pertext.rewrite(b"\xff\xff\xff\xff not protobuf")


BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "clinc-int8"  # built by `make bundle`


@pytest.mark.clinc
@pytest.mark.skipif(
    not (BUNDLE / "model.onnx").exists() or not CLINC_DIR.exists(),
    reason="needs bundles/clinc-int8 (make bundle) and the CLINC150 data",
)
def test_clinc_bundle_batches_give_batch_one_labels_on_the_whole_test_split() -> None:
    clf = Classifier.load(BUNDLE)
    assert clf.batch_invariant, clf.batch_mode
    texts = [text for text, _ in load_labeled(CLINC_DIR, split="test")]
    batched = clf.predict_batch(texts, batch_size=32)
    alone = [clf.predict(text) for text in texts]
    assert [p.label for p in batched] == [p.label for p in alone]
    assert batched == alone  # scores too, bit for bit
