"""Classifier answers: batch equals one-by-one, odd texts get defined answers, threads share one instance."""

from __future__ import annotations

import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepack_runtime import Classifier, Prediction, TextTypeError
from edgepack_runtime.classifier import limit_tokenizer_threads
from edgepack_runtime.textguard import CHARS_PER_TOKEN, replace_surrogates

from . import tiny_onnx
from .bundle_kit import LABELS, WORDS, MakeBundle, make_tokenizer

rng = random.Random(7)
TEXTS = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 20))) for _ in range(60)]
TEXTS += ["", " ", "\t\n", "\x00\x01\x7f", "\ud800 lone", "é à ü 東京 🙂", "x" * 5000, "what is my pin?"]


def same(a: Prediction, b: Prediction, tol: float = 1e-5) -> bool:
    """Same answer: labels, ranking and rejection equal; scores within tol (batching moves the last bits)."""
    return (
        (a.label, a.rejected, [x for x, _ in a.top_k]) == (b.label, b.rejected, [x for x, _ in b.top_k])
        and all(abs(x - y) <= tol for (_, x), (_, y) in zip(a.top_k, b.top_k, strict=True))
        and abs(a.score - b.score) <= tol
    )


def test_prediction_shape(shared_classifier: Classifier) -> None:
    prediction = shared_classifier.predict("what is my account pin number", top_k=3)
    assert isinstance(prediction, Prediction)
    assert prediction.label in LABELS and prediction.label == prediction.top_k[0][0]
    assert prediction.score == prediction.top_k[0][1]
    assert [label for label, _ in prediction.top_k] == sorted(
        (label for label, _ in prediction.top_k), key=lambda lb: -dict(prediction.top_k)[lb]
    )
    assert len(prediction.top_k) == 3 and not prediction.rejected
    assert prediction.to_dict()["top_k"][0] == {"label": prediction.label, "score": prediction.score}


def test_top_k_is_clamped_and_validated(shared_classifier: Classifier) -> None:
    assert len(shared_classifier.predict("hi", top_k=100).top_k) == len(LABELS)
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="top_k"):
            shared_classifier.predict("hi", top_k=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        shared_classifier.predict_batch(["hi"], batch_size=0)


@pytest.mark.parametrize("batch_size", [1, 3, 8, 32, 1000])
def test_batch_equals_one_by_one(shared_classifier: Classifier, batch_size: int) -> None:
    one_by_one = [shared_classifier.predict(t, top_k=2) for t in TEXTS]
    batched = shared_classifier.predict_batch(TEXTS, batch_size=batch_size, top_k=2)
    assert all(same(a, b) for a, b in zip(batched, one_by_one, strict=True))


def test_predict_proba_matches_predict(shared_classifier: Classifier) -> None:
    probs = shared_classifier.predict_proba(TEXTS, batch_size=5)
    assert probs.shape == (len(TEXTS), len(LABELS)) and probs.dtype == np.float32
    for row, text in zip(probs, TEXTS, strict=True):
        prediction = shared_classifier.predict(text)
        assert shared_classifier.labels[int(row.argmax())] == prediction.label
        assert abs(float(row.max()) - prediction.score) <= 1e-5
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_empty_batch_and_generators(shared_classifier: Classifier) -> None:
    assert shared_classifier.predict_batch([]) == []
    assert shared_classifier.predict_proba([]).shape == (0, len(LABELS))
    gen = (t for t in ["hi", "book a flight"])
    assert [p.label for p in shared_classifier.predict_batch(gen)] == [
        shared_classifier.predict(t).label for t in ["hi", "book a flight"]
    ]


def test_dynamic_int8_graph_runs_texts_one_at_a_time(make_bundle: MakeBundle) -> None:
    clf = Classifier.load(make_bundle(graph={"dynamic_quant": True}))
    assert not clf.batch_invariant
    # The graph really is batch-dependent: the same rows give other logits when run together ...
    rows = clf._encode(TEXTS[:10])
    together, alone = clf._run(rows)[0], np.concatenate([clf._run([r])[0] for r in rows])
    assert np.abs(together - alone).max() > 1e-4
    # ... yet predict_batch keeps every answer equal to predict.
    batched = clf.predict_proba(TEXTS, batch_size=16)
    assert np.array_equal(batched, np.concatenate([clf.predict_proba([t]) for t in TEXTS]))


def test_float_graph_is_batch_invariant(shared_classifier: Classifier) -> None:
    assert shared_classifier.batch_invariant


# -- odd texts ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "   \t\n  ", "\x00", "\x01\x02\x1b\x7f", "\u200b\u200d", "\ufeff"])
def test_empty_and_control_texts_get_the_empty_answer(shared_classifier: Classifier, text: str) -> None:
    # The BERT normalizer drops control and zero-width characters: these all become the empty sequence.
    assert shared_classifier.predict(text) == shared_classifier.predict("")


def test_lone_surrogates_are_replaced(shared_classifier: Classifier) -> None:
    for text in ["\ud800", "abc\udfff", "\ud83d\ude00 pair of halves"]:
        prediction = shared_classifier.predict(text)
        assert prediction == shared_classifier.predict(
            text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        )
    assert same(shared_classifier.predict_batch(["\ud800", "ok"])[0], shared_classifier.predict("\ufffd"))


@pytest.mark.parametrize("bad", [None, b"bytes", 3, 2.5, ["a list"], object()])
def test_non_text_is_a_type_error(shared_classifier: Classifier, bad: Any) -> None:
    with pytest.raises(TextTypeError, match="expects str") as info:
        shared_classifier.predict(bad)
    assert isinstance(info.value, TypeError)
    with pytest.raises(TextTypeError, match="item 1"):
        shared_classifier.predict_batch(["fine", bad])


def test_bytes_error_says_how_to_decode(shared_classifier: Classifier) -> None:
    with pytest.raises(TextTypeError, match="decode"):
        shared_classifier.predict(b"hello")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["a single string", b"bytes", 42, None])
def test_predict_batch_wants_a_list(shared_classifier: Classifier, bad: Any) -> None:
    with pytest.raises(TextTypeError, match="list of str"):
        shared_classifier.predict_batch(bad)


class SpyTokenizer:
    """Wraps the real tokenizer and records the length of every text it is asked to encode."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.lengths = inner, []  # type: ignore[var-annotated]

    def encode(self, text: str) -> Any:
        self.lengths.append(len(text))
        return self.inner.encode(text)

    def encode_batch_fast(self, texts: list[str]) -> Any:
        self.lengths += [len(t) for t in texts]
        return self.inner.encode_batch_fast(texts)


def test_ten_megabyte_text_is_capped_before_tokenizing(bundle: Path) -> None:
    clf = Classifier.load(bundle)
    assert clf.max_chars == CHARS_PER_TOKEN * clf.max_length
    spy = SpyTokenizer(clf._tokenizer)
    clf._tokenizer = spy
    huge = ("transfer money to the bank " * 400_000)[: 10 * 1024 * 1024]
    assert len(huge) == 10 * 1024 * 1024
    answer = clf.predict(huge)
    assert spy.lengths == [clf.max_chars]  # the tokenizer never saw more than the cap
    assert answer == clf.predict(huge[: clf.max_chars])
    assert same(clf.predict_batch([huge, "hi"])[0], answer)
    assert max(spy.lengths) == clf.max_chars


def test_cap_does_not_change_answers_for_text_within_max_length(shared_classifier: Classifier) -> None:
    text = " ".join(WORDS)  # far more than max_length tokens, far fewer than max_chars per token
    capped = text + " " + "pin " * 10_000
    assert shared_classifier.predict(capped) == shared_classifier.predict(text)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=300), min_size=1, max_size=6))
def test_probabilities_are_finite_and_sum_to_one(shared_classifier: Classifier, texts: list[str]) -> None:
    probs = shared_classifier.predict_proba(texts, batch_size=4)
    assert np.isfinite(probs).all()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    for text, row in zip(texts, probs, strict=True):
        prediction = shared_classifier.predict(text)
        assert math.isfinite(prediction.score) and 0.0 <= prediction.score <= 1.0
        assert abs(prediction.score - float(row.max())) <= 1e-5


# -- threads ------------------------------------------------------------------------------------------------


def test_eight_threads_give_the_serial_results(shared_classifier: Classifier) -> None:
    serial = [shared_classifier.predict(t) for t in TEXTS]
    serial_batches = shared_classifier.predict_proba(TEXTS, batch_size=7)

    def work(seed: int) -> tuple[list[tuple[int, Prediction]], np.ndarray]:
        order = list(range(len(TEXTS)))
        random.Random(seed).shuffle(order)
        return [(i, shared_classifier.predict(TEXTS[i])) for i in order], shared_classifier.predict_proba(
            TEXTS, batch_size=7
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(16)))
    for answers, batches in results:
        assert all(prediction == serial[i] for i, prediction in answers)
        assert np.array_equal(batches, serial_batches)


def test_token_ids_are_the_tokenizers_own(shared_classifier: Classifier) -> None:
    """The runtime's fast path (no character offsets) gives the ids encode() gives, one text or many."""
    texts = [*TEXTS[:20], "", "   ", "Ünïcödé ß ﬁ", "a" * 3000]
    rows, blank = shared_classifier._tokenize(texts)
    expected = [shared_classifier._tokenizer.encode(t) for t in texts]
    assert rows == [e.ids or [shared_classifier._pad_id] for e in expected]
    assert blank == [0 not in e.special_tokens_mask for e in expected]
    assert shared_classifier._tokenize(texts[:1])[0] == rows[:1]


def test_limit_tokenizer_threads_keeps_the_users_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    limit_tokenizer_threads(2)
    assert "TOKENIZERS_PARALLELISM" not in os.environ
    limit_tokenizer_threads(1)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    limit_tokenizer_threads(1)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"


def test_threads_option(bundle: Path) -> None:
    two = Classifier.load(bundle, threads=2)
    assert two.threads == 2
    assert two.predict("book a flight") == Classifier.load(bundle, threads=1).predict("book a flight")
    with pytest.raises(ValueError, match="threads"):
        Classifier.load(bundle, threads=-1)


# -- bundle variants ----------------------------------------------------------------------------------------


def test_without_token_type_ids(make_bundle: MakeBundle) -> None:
    clf = Classifier.load(make_bundle(graph={"token_types": False}, inputs=("input_ids", "attention_mask")))
    assert set(clf.input_names) == {"input_ids", "attention_mask"}
    assert all(same(a, clf.predict(t)) for a, t in zip(clf.predict_batch(TEXTS[:5]), TEXTS[:5], strict=True))


def test_int32_inputs(make_bundle: MakeBundle) -> None:
    clf = Classifier.load(make_bundle(graph={"input_type": tiny_onnx.INT32}, input_type="int32"))
    reference = Classifier.load(make_bundle())
    assert clf.predict("book a flight") == reference.predict("book a flight")


def test_tokenizer_without_special_tokens_handles_empty_text(make_bundle: MakeBundle) -> None:
    clf = Classifier.load(make_bundle(tokenizer=make_tokenizer(special_tokens=False)))
    prediction = clf.predict("")
    assert prediction.label in LABELS and math.isfinite(prediction.score)
    assert same(clf.predict_batch(["", "pin"])[0], prediction)


def test_oos_threshold_rejects_low_confidence(make_bundle: MakeBundle) -> None:
    plain = Classifier.load(make_bundle())
    scores = sorted({round(plain.predict(t).score, 4) for t in TEXTS})
    middle = len(scores) // 2
    threshold = (scores[middle - 1] + scores[middle]) / 2  # some fall below, none within 1e-5 of it
    clf = Classifier.load(make_bundle(oos={"label": "oos", "threshold": threshold}))
    assert (clf.oos_label, clf.oos_threshold) == ("oos", threshold)
    rejected = 0
    for text in TEXTS:
        raw, final = plain.predict(text), clf.predict(text)
        assert final.top_k == raw.top_k and final.score == raw.score
        blank = plain._tokenize([replace_surrogates(text)])[1][0]  # nothing to classify: always out of scope
        if blank or raw.score < threshold:
            assert final.label == "oos" and final.rejected
            rejected += 1
        else:
            assert final.label == raw.label and not final.rejected
    assert 0 < rejected < len(TEXTS)
    assert [p.label for p in clf.predict_batch(TEXTS)] == [clf.predict(t).label for t in TEXTS]
    # predict_proba never applies the threshold.
    assert np.array_equal(clf.predict_proba(TEXTS), plain.predict_proba(TEXTS))


def _residual_layer_norm(hidden: int = 8) -> bytes:
    """x + skip, then LayerNormalization: the pair ONNX Runtime's SkipLayerNormFusion fuses."""
    norm = [
        tiny_onnx.tensor("gamma", np.ones(hidden, np.float32)),
        tiny_onnx.tensor("beta", np.zeros(hidden, np.float32)),
    ]
    nodes = [
        tiny_onnx.node("Add", ["x", "skip"], ["sum"]),
        tiny_onnx.node("LayerNormalization", ["sum", "gamma", "beta"], ["y"]),
    ]
    inputs = [tiny_onnx.value_info(name, tiny_onnx.FLOAT, [2, 3, hidden]) for name in ("x", "skip")]
    outputs = [tiny_onnx.value_info("y", tiny_onnx.FLOAT, [2, 3, hidden])]
    return tiny_onnx.model(tiny_onnx.graph("residual", nodes, norm, inputs, outputs))


def test_sessions_keep_a_residual_add_and_layer_norm_apart(tmp_path: Path) -> None:
    """ORT would fuse them into SkipLayerNormalization, a kernel several times slower (see classifier.py)."""
    import onnxruntime as ort

    from edgepack_runtime.classifier import session_options
    from edgepack_runtime.protoscan import scan_model

    def optimized_ops(options: ort.SessionOptions) -> set[str]:
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(_residual_layer_norm(), options, providers=["CPUExecutionProvider"])
        return set(scan_model((tmp_path / "optimized.onnx").read_bytes()).op_types)

    assert optimized_ops(ort.SessionOptions()) == {"com.microsoft:SkipLayerNormalization"}  # ORT on its own
    assert optimized_ops(session_options(1)) == {"Add", "LayerNormalization"}
