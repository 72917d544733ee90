"""The whole pipeline on the tiny fixtures: a real bundle, verified by the runtime, with its records."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from edgepack_runtime import Classifier
from edgepack_runtime.bundle import verify_bundle

from edgepack import evaluate, oos, package
from edgepack.errors import EdgepackError
from edgepack.pipeline import STAGES, build
from edgepack.recipe import load_recipe

RECORDS = (
    "data",
    "teacher",
    "distillation",
    "export",
    "optimization",
    "quantization",
    "metrics",
    "recipe",
    "versions",
    "target",
    "build_seconds",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, tiny_model: Path) -> Path:

    tmp = tmp_path_factory.mktemp("built")
    recipe = load_recipe("clinc-4l", _tiny_overrides(tmp, tiny_data, tiny_model))
    return build(recipe).path


def _tiny_overrides(tmp: Path, data: Path, model: Path) -> dict:
    return {
        "cache_dir": str(tmp / "cache"),
        "threads": 1,
        "data.source": str(data),
        "data.max_length": 32,
        "teacher.model": str(model),
        "teacher.epochs": 3,
        "teacher.learning_rate": 1e-3,
        "teacher.batch_size": 8,
        "distill.layers": [0],
        "distill.epochs": 2,
        "distill.learning_rate": 1e-3,
        "distill.batch_size": 8,
        "search.trials": 2,
        "search.train_fraction": 0.5,
        "search.epochs": [1, 2],
        "package.name": "tiny-int8",
        "package.output_dir": str(tmp / "bundles"),
    }


def test_bundle_is_written_and_verified(built: Path) -> None:
    assert sorted(p.name for p in built.iterdir()) == [
        "labels.json",
        "manifest.json",
        "model.onnx",
        "tokenizer.json",
    ]
    manifest = verify_bundle(built)
    for key in RECORDS:
        assert manifest.get(key), f"manifest misses its {key} record"
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")], "staging folders left behind"


def test_manifest_records_what_each_stage_did(built: Path) -> None:
    m = json.loads((built / "manifest.json").read_text())
    assert m["teacher"]["fine_tuned_here"] is True
    assert m["distillation"]["layers"] == [0]
    trials = m["distillation"]["search"]["trials"]
    assert len(trials) == 2
    for t in trials:  # a trial's value is its score after its last epoch
        assert t["value"] == t["intermediate"][str(max(int(k) for k in t["intermediate"]))]
    assert m["export"]["parity_max_abs_logit_diff"] <= m["export"]["parity_tolerance"]
    # Structure, not only outputs: a 1-layer student fuses into exactly these operators.
    fused = m["optimization"]["fused_operators"]
    assert fused["Attention"] == 1 and fused["EmbedLayerNormalization"] == 1 and fused["Gelu"] == 1
    assert fused["LayerNormalization"] == 2 and "SkipLayerNormalization" not in fused  # see edgepack.optimize
    assert m["quantization"]["mode"] == "dynamic"
    assert m["quantization"]["quantized_matmuls"] >= 3  # Q/K/V (QAttention) + FFN in + FFN out at least
    assert m["model"]["layers"] == 1 and m["model"]["num_labels"] == 5
    assert m["target"] == {"name": "cpu-avx2", "cpu_features": ["avx2"], "note": "x86-64 with AVX2"}
    assert 0 <= m["metrics"]["test"]["accuracy"] <= 1
    assert m["metrics"]["fp32_vs_int8_validation"]["rows"] == 5
    assert set(m["build_seconds"]) == {*STAGES, "total"}


def test_bundle_runs_through_the_runtime(built: Path) -> None:
    clf = Classifier.load(built, threads=1)
    assert sorted(clf.labels) == ["alarm", "balance", "oos", "transfer", "weather"]
    pred = clf.predict("what is my account balance")
    assert pred.label in clf.labels and 0 < pred.score <= 1


def test_the_out_of_scope_rule_ships_inside_the_graph(built: Path) -> None:
    m = json.loads((built / "manifest.json").read_text())
    rule, record = m["oos"], m["oos_detection"]
    assert rule["output"] == "oos_score" and rule["label"] == "oos" and rule["rule"] == "reject:0.02"
    assert rule["method"] in oos.METHODS and rule["method"] == record["method"]
    assert rule["direction"] == ("above" if rule["method"] in oos.ABOVE else "below")
    assert set(record["validation"]) == set(oos.METHODS), "auto: every method was scored on validation"
    best = max(record["validation"].values(), key=lambda v: v["balanced"])
    assert record["validation"][rule["method"]] == best
    assert record["graph_vs_numpy_max_rel_diff"] < 1e-5, "the graph computes the score the stage chose on"
    assert 0 <= record["fp32_vs_int8_validation"]["decision_agreement"] <= 1
    assert [o["name"] for o in m["model"]["outputs"]] == ["logits", "oos_score"]
    clf = Classifier.load(built, threads=1)
    assert clf.oos is not None and clf.oos.threshold == rule["threshold"]
    for text in ("what is my account balance", "tell me a joke about penguins"):
        pred = clf.predict(text)
        assert pred.oos_score is not None
        assert pred.rejected is bool(clf.oos.rejects(pred.oos_score)) and pred.rejected == (
            pred.label == "oos"
        )
    assert (clf.predict("").label, clf.predict("").rejected) == ("oos", True), "nothing to classify: oos"


def test_second_build_reuses_the_cached_teacher(
    tmp_path: Path, built: Path, tiny_data: Path, tiny_model: Path
) -> None:
    first = json.loads((built / "manifest.json").read_text())
    overrides = _tiny_overrides(Path(first["recipe"]["cache_dir"]).parent, tiny_data, tiny_model)
    overrides |= {"search.trials": 0, "package.output_dir": str(tmp_path)}
    second = build(load_recipe("clinc-4l", overrides))
    manifest = second.manifest
    assert manifest == json.loads(
        (second.path / "manifest.json").read_text()
    )  # what build() returns is on disk
    assert manifest["teacher"]["cached"] is True
    assert manifest["teacher"]["cache_key"] == first["teacher"]["cache_key"]
    assert "search" not in manifest["distillation"] and manifest["distillation"]["cached"] is False
    third = build(load_recipe("clinc-4l", overrides | {"package.name": "third"}))
    assert third.path.name == "third" and third.manifest["distillation"]["cached"] is True


def test_existing_bundle_is_refused_without_force(built: Path, tiny_data: Path, tiny_model: Path) -> None:
    overrides = _tiny_overrides(built.parent.parent, tiny_data, tiny_model)
    with pytest.raises(EdgepackError, match="already exists. Pass --force"):
        build(load_recipe("clinc-4l", overrides))


def test_failure_mid_package_leaves_the_old_bundle_intact(
    monkeypatch: pytest.MonkeyPatch, built: Path, tiny_data: Path, tiny_model: Path
) -> None:
    before = {p.name: p.read_bytes() for p in built.iterdir()}

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full (injected)")

    monkeypatch.setattr(evaluate, "run", broken)
    overrides = _tiny_overrides(built.parent.parent, tiny_data, tiny_model) | {"search.trials": 0}
    with pytest.raises(RuntimeError, match="injected"):
        build(load_recipe("clinc-4l", overrides), force=True)
    assert {p.name: p.read_bytes() for p in built.iterdir()} == before
    assert sorted(p.name for p in built.parent.iterdir()) == [built.name], "partial bundle left behind"


def test_interrupted_swap_restores_the_old_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "b"
    dest.mkdir()
    (dest / "manifest.json").write_text("old")
    real_rename = package.os.rename
    calls = []

    def flaky(src: object, dst: object) -> None:
        calls.append((src, dst))
        if len(calls) == 2:  # the second rename (staging -> destination) fails
            raise OSError("injected")
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(package.os, "rename", flaky)
    with pytest.raises(OSError, match="injected"), package.staged_bundle(dest) as staging:
        (staging / "manifest.json").write_text("new")
    assert (dest / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("target", ["cpu-avx512-vnni", "arm64"])
def test_static_quantization_with_calibration(
    tmp_path: Path, built: Path, tiny_data: Path, tiny_model: Path, target: str
) -> None:
    cache_root = Path(json.loads((built / "manifest.json").read_text())["recipe"]["cache_dir"]).parent
    overrides = _tiny_overrides(cache_root, tiny_data, tiny_model) | {
        "search.trials": 0,
        "package.output_dir": str(tmp_path),
        "target": target,
        "quantize.mode": "static",
        "quantize.calibration_method": "minmax",
        "quantize.calibration_samples": 16,
    }
    bundle = build(
        load_recipe("clinc-4l", overrides)
    ).path  # the runtime warns if this CPU lacks the target's features
    q = json.loads((bundle / "manifest.json").read_text())["quantization"]
    assert q["mode"] == "static" and q["calibration_samples"] == 16 and q["weight_type"] == "int8"
    assert q["op_counts"].get("QuantizeLinear", 0) > 0 and q["op_counts"].get("DequantizeLinear", 0) > 0
    assert q["quantized_matmuls"] >= 2  # the two FFN MatMuls at least run on INT8 weights
    verify_bundle(bundle)


def test_a_static_integer_bundle_batches_with_the_answers_of_single_texts(
    tmp_path: Path, built: Path, tiny_data: Path, tiny_model: Path
) -> None:
    cache_root = Path(json.loads((built / "manifest.json").read_text())["recipe"]["cache_dir"]).parent
    overrides = _tiny_overrides(cache_root, tiny_data, tiny_model) | {
        "search.trials": 0,
        "package.output_dir": str(tmp_path),
        "quantize.mode": "static-integer",
    }
    bundle = build(load_recipe("clinc-4l", overrides)).path
    q = json.loads((bundle / "manifest.json").read_text())["quantization"]
    assert q["mode"] == "static-integer" and "DynamicQuantizeLinear" not in q["op_counts"]
    clf = Classifier.load(bundle)
    with (tiny_data / "test.csv").open(newline="", encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    assert clf.batch_invariant and clf.batch_mode.startswith("padded batches")
    alone = [clf.predict(t) for t in texts]
    together = clf.predict_batch(texts, batch_size=8)
    assert [p.label for p in together] == [p.label for p in alone]
    assert [p.top_k for p in together] == [p.top_k for p in alone]  # the same probabilities, bit for bit


def test_a_tampered_manifest_is_refused(tmp_path: Path, built: Path) -> None:
    import shutil

    from edgepack_runtime import BundleError

    copy = tmp_path / built.name
    shutil.copytree(built, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["oos"]["threshold"] = 0.99  # a changed threshold would silently change every answer
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest"):
        verify_bundle(copy)
