"""The measuring pieces the runtime owns and `edgepack bench` imports: session options, feeds, latency
figures, throughput, accuracy through metrics.scores, the CPU description, shared --runs / --batch-size."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import onnxruntime as ort
import pytest

from edgepack_runtime import Classifier, bench, cpu
from edgepack_runtime.classifier import feeds, session_options
from edgepack_runtime.cli import batch_size_option, main, runs_option

from .bundle_kit import LABELS, MakeBundle


def test_session_options() -> None:
    options = session_options(3)
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_feeds_pad_and_type_the_rows() -> None:
    out = feeds([[5, 6, 7], [8]], {"input_ids": "int32", "attention_mask": np.int64}, pad_id=1)
    assert set(out) == {"input_ids", "attention_mask"}
    assert out["input_ids"].dtype == np.int32 and out["attention_mask"].dtype == np.int64
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    one = feeds([[4, 2]], {"input_ids": "int64", "attention_mask": "int64", "token_type_ids": "int64"})
    assert one["token_type_ids"].tolist() == [[0, 0]] and one["attention_mask"].tolist() == [[1, 1]]


def test_classifier_runs_on_those_feeds(shared_classifier: Classifier) -> None:
    rows = [[5, 6, 7], [8]]
    logits, _ = shared_classifier._run(rows)
    assert logits.shape == (2, len(LABELS)) and np.isfinite(logits).all()


def test_summarize() -> None:
    stats = bench.summarize([5.0, 1.0, 3.0, 2.0, 100.0, 4.0], warmup=3)
    assert set(stats) == {"runs", "warmup", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms"}
    assert stats["p50_ms"] == 3.5 and stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= 100.0
    assert stats["runs"] == 6 and stats["warmup"] == 3 and stats["std_ms"] > 0
    assert bench.summarize([2.0], warmup=0)["std_ms"] == 0.0


def test_batch_throughput_counts_the_texts() -> None:
    seen: list[int] = []
    result = bench.batch_throughput(lambda texts, bs: seen.append(len(texts)), ["a", "b", "c"], 4, 1000)
    assert seen == [4, 16]  # a warm-up batch, then at least four batches' worth, cycling the texts
    assert result["texts"] == 16 and result["batch_size"] == 4 and result["texts_per_s"] > 0
    bench.batch_throughput(lambda texts, bs: seen.append(len(texts)), ["x"] * 50, 2, 30)
    assert seen[-1] == 30


def test_accuracy_figures_are_those_of_the_labels(make_bundle: MakeBundle) -> None:
    """Through metrics.scores on ids, the figures of comparing label strings; None over no such texts."""
    clf = Classifier.load(make_bundle(oos={"label": "oos", "threshold": 0.3}))
    texts = ["what is my pin", "book a flight", "weather in paris", "transfer money", "hi", "paris"]
    answers = [p.label for p in clf.predict_batch(texts)]
    wrong = next(label for label in LABELS if label != answers[3])
    gold = [*answers[:3], wrong, "oos", "nope"]  # three right, one wrong, one out-of-scope, one unknown
    pairs = list(zip(texts, gold, strict=True))
    acc = bench.accuracy(clf, pairs, batch_size=2)
    correct = [g == a for g, a in zip(gold, answers, strict=True)]
    in_scope = [c for c, g in zip(correct, gold, strict=True) if g != "oos"]
    oos = [c for c, g in zip(correct, gold, strict=True) if g == "oos"]
    assert acc["texts"] == 6 and acc["accuracy"] == pytest.approx(sum(correct) / 6)
    assert acc["unknown_labels"] == ["nope"] and acc["oos_label"] == "oos"
    assert acc["in_scope_accuracy"] == pytest.approx(sum(in_scope) / len(in_scope))
    assert acc["oos_recall"] == pytest.approx(sum(oos) / len(oos))
    no_oos = bench.accuracy(clf, [(t, g) for t, g in pairs if g != "oos"], batch_size=2)
    assert no_oos["oos_recall"] is None  # metrics.scores says 0.0; this report says there were none


def test_accuracy_when_everything_is_rejected(make_bundle: MakeBundle) -> None:
    """A threshold of 1.0 answers the out-of-scope label to every text."""
    clf = Classifier.load(make_bundle(oos={"label": "oos", "threshold": 1.0}))
    pairs = [("what is my pin", "oos"), ("book a flight", "oos"), ("hi", "pin_change")]
    acc = bench.accuracy(clf, pairs, batch_size=4)
    assert acc["accuracy"] == pytest.approx(2 / 3)
    assert acc["oos_recall"] == 1.0 and acc["in_scope_accuracy"] == 0.0 and acc["unknown_labels"] == []


def test_describe_cpuinfo() -> None:
    text = "model name\t: Some CPU 9000\nflags\t\t: fpu avx2 avx512f avx512_vnni sse\n" * 2
    assert cpu.describe_cpuinfo(text, "x86_64", 2) == (
        "Some CPU 9000, 2 logical cores, flags: avx2, avx512f, avx512_vnni"
    )
    assert cpu.describe_cpuinfo(None, "", 4) == "unknown CPU, 4 logical cores, flags: n/a"
    assert "logical cores" in cpu.describe()


def test_runs_and_batch_size_are_the_shared_options() -> None:
    """edgepack bench imports these decorators: the same name means the same thing in both CLIs."""

    @click.command()
    @batch_size_option
    @runs_option(300, "a reason")
    def probe(batch_size: int, runs: int) -> None: ...

    mine = {p.name: p for p in probe.params}
    theirs = {p.name: p for p in main.commands["bench"].params}  # type: ignore[attr-defined]
    for name in ("runs", "batch_size"):
        a, b = mine[name], theirs[name]
        assert a.opts == b.opts and repr(a.type) == repr(b.type)
    assert mine["batch_size"].help == theirs["batch_size"].help
    assert theirs["runs"].help is not None and mine["runs"].help is not None
    assert mine["runs"].help.startswith(theirs["runs"].help.rstrip("."))
    assert theirs["runs"].default == 200 and mine["runs"].default == 300


def test_bench_report_keys(bundle: Path) -> None:
    clf = Classifier.load(bundle)
    result = bench.run(clf, list(bench.SAMPLE_QUERIES), runs=3, warmup=1, batch_size=2)
    assert set(result["latency_batch1"]) == {
        "runs",
        "warmup",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "mean_ms",
        "std_ms",
    }
    assert list(result["throughput"]) == ["batch_size", "texts", "seconds", "texts_per_s", "batched"]
