"""`edgepack bench` on a tiny bundle built here, its cached teacher and the Optimum peer."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from edgepack_runtime.bench import SAMPLE_QUERIES, summarize
from test_pipeline import _tiny_overrides
from tokenizers import Tokenizer

from edgepack.bench import contenders as lib
from edgepack.bench.contenders import bundle_teacher
from edgepack.bench.floor import gemm_rates, kernel_macs, profile_graph
from edgepack.bench.measure import SCHEMA, accuracy, interleaved_times, speedup_interval
from edgepack.cli import main
from edgepack.pipeline import build
from edgepack.recipe import load_recipe

PNG = b"\x89PNG\r\n\x1a\n"
ROW_KEYS = {
    "name",
    "kind",
    "path",
    "highlight",
    "size",
    "build",
    "latency",
    "throughput",
    "accuracy",
    "floor",
    "vs_teacher",
}
LATENCY_KEYS = {"runs", "warmup", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms"}
ACCURACY_KEYS = {
    "texts",
    "oos_method",
    "tradeoff",
    "accuracy",
    "argmax_accuracy",
    "in_scope_accuracy",
    "oos_recall",
    "oos_label",
    "threshold",
    "threshold_source",
    "unknown_labels",
}
FLOOR_KEYS = {"queries", "median_tokens", "floor_ms", "latency_over_floor", "median_query"}
FAST = ["--runs", "5", "--block", "2", "--warmup", "2", "--batch-size", "4"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, tiny_model: Path) -> tuple[Path, Path]:
    """(bundle, teacher folder): a tiny bundle and the fine-tuned teacher its build cached."""
    tmp = tmp_path_factory.mktemp("bench")
    overrides = _tiny_overrides(tmp, tiny_data, tiny_model) | {"search.trials": 0}
    bundle = build(load_recipe("clinc-4l", overrides)).path
    teachers = sorted((tmp / "cache").glob("teacher-*/model"))
    assert teachers, "the build cached no teacher"
    return bundle, teachers[0]


def _bench(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["bench", *args])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def test_every_contender_runs(built: tuple[Path, Path], tiny_data: Path, tmp_path: Path) -> None:
    bundle, teacher = built
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    code, output = _bench(
        str(bundle),
        str(bundle),
        "--teacher",
        str(teacher),
        "--peer",
        "optimum",
        "--data",
        str(tiny_data / "test.csv"),
        "--validation",
        str(tiny_data / "validation.csv"),
        "--json",
        str(out_json),
        "--plot",
        str(out_png),
        *FAST,
    )
    assert code == 0, output
    report = json.loads(out_json.read_text())
    assert report["schema"] == SCHEMA
    assert set(report) == {"schema", "created", "machine", "settings", "skipped", "gemm_rates", "contenders"}
    assert report["settings"]["runs"] == 5 and report["settings"]["block"] == 2
    assert report["settings"]["data_texts"] == 10
    assert report["skipped"] == []
    rates = report["gemm_rates"]
    assert rates["threads"] == 1 and rates["int8"] == max(rates["int8_u8_weights"], rates["int8_s8_weights"])
    rows = report["contenders"]
    assert [r["kind"] for r in rows] == ["teacher", "optimum", "peer", "bundle", "bundle"]
    assert rows[3]["name"] != rows[4]["name"], "the same bundle twice gets two names"
    assert [r["highlight"] for r in rows] == [False, False, False, True, False]
    bundle_method = rows[3]["accuracy"]["oos_method"]
    for row in rows:
        assert set(row) == ROW_KEYS
        lat = row["latency"]
        assert set(lat) == LATENCY_KEYS and lat["runs"] == 5
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        assert row["throughput"]["texts_per_s"] > 0 and row["size"]["bytes"] > 0
        acc = row["accuracy"]
        assert set(acc) == ACCURACY_KEYS and 0 <= acc["accuracy"] <= 1 and 0 <= acc["argmax_accuracy"] <= 1
        assert acc["oos_label"] == "oos" and acc["oos_recall"] is not None
        assert set(row["vs_teacher"]) == {
            "speedup",
            "speedup_ci95",
            "throughput_ratio",
            "size_ratio",
            "accuracy_delta",
            "accuracy_basis",
        }
        shares_rule = row["kind"] != "peer" or bundle_method == "max_probability"
        assert row["vs_teacher"]["accuracy_basis"] == ("threshold" if shares_rule else "argmax")
        assert (row["floor"] is None) == (row["kind"] != "bundle")
        assert (row["build"] is None) == (row["kind"] != "optimum")
        curves = acc["tradeoff"]
        assert set(curves) == {"test", "validation"}, "CLINC-format data: validation curves too"
        for curve in curves.values():
            assert len(curve["in_scope_accuracy"]) == len(curve["oos_recall"]) == 43
            assert curve["in_scope_accuracy"][0] >= curve["in_scope_accuracy"][-1] == 0.0
            assert curve["oos_recall"][0] <= curve["oos_recall"][-1] == 1.0
            assert (curve["shipped"] is None) == (acc["threshold"] is None)
    teacher_row, optimum_row, peer_row, bundle_row = rows[:4]
    assert teacher_row["accuracy"]["threshold_source"] == "validation"
    assert optimum_row["accuracy"]["threshold_source"] == "validation"
    assert optimum_row["size"]["bytes"] == Path(optimum_row["path"]).stat().st_size
    assert f"{optimum_row['name']}: ORTOptimizer {optimum_row['build']['optimization_level']}" in output
    assert bundle_row["accuracy"]["threshold_source"] == "bundle"
    # The peer's pipeline returns probabilities only: it shares the bundle's threshold when the bundle's rule
    # is the top probability, and answers by argmax when the bundle's graph computes its own score.
    if bundle_row["accuracy"]["oos_method"] == "max_probability":
        assert peer_row["accuracy"]["threshold"] == bundle_row["accuracy"]["threshold"]
    else:
        assert peer_row["accuracy"]["threshold"] is None
        assert peer_row["accuracy"]["accuracy"] == peer_row["accuracy"]["argmax_accuracy"]
    test_curve = bundle_row["accuracy"]["tradeoff"]["test"]
    assert test_curve["shipped"] == [
        bundle_row["accuracy"]["in_scope_accuracy"],
        bundle_row["accuracy"]["oos_recall"],
    ]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert bundle_row["accuracy"]["accuracy"] == pytest.approx(
        manifest["metrics"]["test_thresholded"]["accuracy"]
    )
    assert bundle_row["accuracy"]["argmax_accuracy"] == pytest.approx(manifest["metrics"]["test"]["accuracy"])
    assert teacher_row["vs_teacher"]["speedup"] == pytest.approx(1.0)
    assert teacher_row["vs_teacher"]["speedup_ci95"] == pytest.approx([1.0, 1.0])
    low, high = bundle_row["vs_teacher"]["speedup_ci95"]
    assert low <= high and low > 0
    assert teacher_row["vs_teacher"]["accuracy_delta"] == 0.0
    assert teacher_row["size"]["bytes"] == sum(p.stat().st_size for p in teacher.glob("*.safetensors"))
    assert bundle_row["size"]["bytes"] == (bundle / "model.onnx").stat().st_size
    assert bundle_row["size"]["total_bytes"] > bundle_row["size"]["bytes"]
    floor = bundle_row["floor"]
    assert set(floor) == FLOOR_KEYS and floor["queries"] == report["settings"]["queries"]
    assert floor["latency_over_floor"] == pytest.approx(bundle_row["latency"]["p50_ms"] / floor["floor_ms"])
    assert 0 < floor["floor_ms"] < floor["median_query"]["graph_ms"]
    assert out_png.read_bytes()[:8] == PNG
    for name in ("teacher", "speed-up", "oos recall", bundle.name, "Physical floor", "p50/floor"):
        assert name in output


def test_single_split_data_compares_with_the_teacher_by_argmax(
    built: tuple[Path, Path], tiny_data: Path, tmp_path: Path
) -> None:
    bundle, teacher = built
    out_json = tmp_path / "r.json"
    args = [str(bundle), "--teacher", str(teacher), "--data", str(tiny_data / "test.csv"), "--no-floor"]
    code, output = _bench(*args, "--no-optimum-teacher", "--json", str(out_json), *FAST)
    assert code == 0, output
    report = json.loads(out_json.read_text())
    teacher_row, bundle_row = report["contenders"]
    assert teacher_row["accuracy"]["threshold"] is None and report["gemm_rates"] is None
    vs = bundle_row["vs_teacher"]
    assert vs["accuracy_basis"] == "argmax" and bundle_row["floor"] is None
    expected = bundle_row["accuracy"]["argmax_accuracy"] - teacher_row["accuracy"]["argmax_accuracy"]
    assert vs["accuracy_delta"] == pytest.approx(expected)
    assert "(argmax)" in output


def test_floor_counts_the_graphs_multiply_accumulates(built: tuple[Path, Path]) -> None:
    """The tiny student (1 layer, hidden 32, FFN 64, dynamic INT8): every product counted, none twice."""
    bundle = built[0]
    manifest = json.loads((bundle / "manifest.json").read_text())
    ids = Tokenizer.from_file(str(bundle / "tokenizer.json")).encode("book a flight to paris").ids
    profile = profile_graph((bundle / "model.onnx").read_bytes(), manifest, [ids], threads=1, runs=1)
    seq, hidden, ffn, labels = len(ids), 32, 64, manifest["model"]["num_labels"]
    layer = seq * hidden * 3 * hidden + seq * hidden * hidden + 2 * seq * hidden * ffn
    pooler_and_classifier = hidden * hidden + hidden * labels
    assert profile[seq].int8_macs == layer + pooler_and_classifier
    # The out-of-scope score's product runs in float after the INT8 graph: features x a table, per text.
    in_scope = labels - 1
    oos_table = {"mahalanobis": hidden * hidden + hidden * in_scope, "centroid_cosine": hidden * in_scope}
    oos_macs = oos_table.get(manifest["oos"]["method"], 0)
    # Attention scores and context, in float
    assert profile[seq].fp32_macs == seq * seq * 2 * hidden + oos_macs
    assert profile[seq].int8_gemm_ms > 0 and profile[seq].other_ms > 0


def test_kernel_macs_by_op() -> None:
    assert kernel_macs("MatMul", [[2, 5, 8], [8, 16]], [[2, 5, 16]]) == (0, 2 * 5 * 16 * 8)
    assert kernel_macs("DynamicQuantizeMatMul", [[1, 7, 8], [16], [16]], [[1, 7, 16]]) == (7 * 16 * 8, 0)
    assert kernel_macs("Attention", [[1, 4, 8], [24], [1]], [[1, 4, 8]]) == (0, 4 * 8 * 24 + 4 * 4 * 16)
    assert kernel_macs("SkipLayerNormalization", [[1, 4, 8]] * 5, [[1, 4, 8]]) == (0, 0)


def test_gemm_rates_are_measured() -> None:
    rates = gemm_rates(threads=1, shape=(64, 64, 64), repeats=3)
    assert min(rates.fp32, rates.int8_u8_weights, rates.int8_s8_weights) > 0
    assert rates.int8 == max(rates.int8_u8_weights, rates.int8_s8_weights)
    assert rates.to_dict()["shape"] == [64, 64, 64]


def test_without_data_latency_uses_sample_queries(
    built: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ../shared/data/clinc150 from here
    code, output = _bench(str(built[0]), "--no-teacher", "--json", "r.json", "--plot", "r.png", *FAST)
    assert code == 0, output
    assert "accuracy is not measured" in output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["settings"]["queries"] == len(SAMPLE_QUERIES) and report["settings"]["data"] is None
    row = report["contenders"][0]
    assert row["accuracy"] is None and row["vs_teacher"] is None
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG


def test_missing_teacher_and_peer_are_skipped(
    built: tuple[Path, Path], tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "optimum.onnxruntime", None)  # as if optimum were not installed
    out_json = tmp_path / "r.json"
    data = ["--data", str(tiny_data / "test.csv")]
    args = [str(built[0]), "--teacher", "nobody/no-such-model", "--peer", "optimum", "--json", str(out_json)]
    code, output = _bench(*args, *data, *FAST)
    assert code == 0, output
    assert "skipping the teacher: Model 'nobody/no-such-model'" in output
    assert "skipping the peer: optimum's onnxruntime support is not installed" in output
    assert "skipping Optimum's INT8 model of the teacher: optimum's onnxruntime support" in output
    report = json.loads(out_json.read_text())
    assert [s["contender"] for s in report["skipped"]] == ["teacher", "optimum", "peer"]
    assert [r["kind"] for r in report["contenders"]] == ["bundle"]


def test_a_base_model_is_not_a_teacher(built: tuple[Path, Path], tiny_model: Path, tiny_data: Path) -> None:
    code, output = _bench(
        str(built[0]), "--teacher", str(tiny_model), "--data", str(tiny_data / "test.csv"), *FAST
    )
    assert code == 0, output
    assert "skipping the teacher:" in output and "not a fine-tuned classifier" in output


def test_bad_arguments_are_clear_errors(built: tuple[Path, Path], tmp_path: Path) -> None:
    bundle = str(built[0])
    code, output = _bench(str(tmp_path / "absent"))
    assert code == 2 and "no such bundle folder" in output
    not_a_bundle = tmp_path / "empty"
    not_a_bundle.mkdir()
    code, output = _bench(str(not_a_bundle))
    assert code == 2 and "is not a valid bundle" in output and "manifest.json" in output
    code, output = _bench(bundle, "--runs", "0")
    assert code == 2 and "--runs" in output
    bad_data = tmp_path / "data.txt"
    bad_data.write_text("hello")
    code, output = _bench(bundle, "--data", str(bad_data))
    assert code == 2 and "--data" in output and "unsupported file type" in output
    code, output = _bench(bundle, "--data", str(tmp_path / "absent.csv"))
    assert code == 2 and "--data" in output
    code, output = _bench(bundle, "--json", str(tmp_path / "no" / "r.json"))
    assert code == 2 and "--json" in output
    code, output = _bench()
    assert code == 2 and "BUNDLE" in output


def test_the_datas_oos_label_is_renamed_to_the_bundles(
    built: tuple[Path, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """The tiny data with its out-of-scope class called `out_of_scope` (the bundle's is `oos`): unknown to the
    bundle without --oos-label; with it, scored as the build scored the original data."""
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for split in ("train", "validation", "test"):
        with (tiny_data / f"{split}.csv").open(newline="", encoding="utf-8") as handle:
            rows = [[text, "out_of_scope" if label == "oos" else label] for text, label in csv.reader(handle)]
        with (renamed / f"{split}.csv").open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)
    bundle = built[0]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["oos"]["label"] == "oos"
    args = [str(bundle), "--data", str(renamed), "--no-teacher", "--no-floor", *FAST]
    accuracy = {}
    for option in ([], ["--oos-label", "out_of_scope"]):
        out_json = tmp_path / f"r{len(option)}.json"
        code, output = _bench(*args, *option, "--json", str(out_json))
        assert code == 0, output
        (row,) = json.loads(out_json.read_text())["contenders"]
        accuracy[bool(option)] = row["accuracy"]
    unnamed, named = accuracy[False], accuracy[True]
    assert unnamed["unknown_labels"] == ["out_of_scope"] and unnamed["oos_recall"] is None
    assert named["unknown_labels"] == [] and named["oos_label"] == "oos" and named["texts"] == 10
    assert named["oos_recall"] is not None and set(named["tradeoff"]) == {"test", "validation"}
    assert named["accuracy"] == pytest.approx(manifest["metrics"]["test_thresholded"]["accuracy"])
    assert named["argmax_accuracy"] == pytest.approx(manifest["metrics"]["test"]["accuracy"])


def test_the_speedups_interval_keeps_each_rounds_pair_together() -> None:
    rng = np.random.default_rng(1)
    drift = rng.uniform(0.5, 2.0, size=60)  # the machine slows down and speeds up from round to round
    timed = [list(d * rng.uniform(0.9, 1.1, 10)) for d in drift]
    assert speedup_interval([[15 * t for t in r] for r in timed], timed) == pytest.approx([15.0, 15.0])
    noisy = [list(15 * d * rng.uniform(0.9, 1.1, 10)) for d in drift]
    low, high = speedup_interval(noisy, timed)
    assert low < 15 < high and high - low < 1.5


def test_labelled_texts_are_scored_one_per_call() -> None:
    """A dynamic INT8 model's answer in a batch depends on its neighbours: accuracy and a contender's
    threshold come from single-text calls, as it answers a query."""
    calls: list[int] = []
    labels = ["alarm", "weather", "oos"]

    def scored(texts: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        calls.append(batch_size)
        rows = {"set an alarm": [0.7, 0.2, 0.1], "rain today": [0.2, 0.5, 0.3], "who won": [0.3, 0.4, 0.3]}
        probs = np.array([rows[t] for t in texts])
        return probs, probs.max(axis=1)

    c = lib.Contender(
        name="m",
        kind="optimum",
        path=Path("m.onnx"),
        predict=lambda text: "alarm",
        predict_batch=lambda texts, batch_size: [],
        scored_batch=scored,
        size={},
        labels=labels,
        oos_label="oos",
    )
    pairs = [("set an alarm", "alarm"), ("rain today", "weather"), ("who won", "oos")]
    result = accuracy(c, pairs, validation=pairs)
    assert result["argmax_accuracy"] == pytest.approx(2 / 3) and result["tradeoff"] is not None
    assert lib.validation_threshold(c, pairs) == pytest.approx(0.45)
    assert calls and set(calls) == {lib.SCORING_BATCH} == {1}
    assert len(calls) == 1, "the same texts (here test and validation alike) are scored once"


def test_summary_percentiles_are_ordered() -> None:
    stats = summarize([5.0, 1.0, 3.0, 2.0, 100.0, 4.0], warmup=3)
    assert stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= 100.0
    assert stats["runs"] == 6 and stats["warmup"] == 3 and stats["std_ms"] > 0


def test_the_bundles_own_teacher_by_default(
    built: tuple[Path, Path], tiny_data: Path, tmp_path: Path
) -> None:
    bundle, teacher = built
    out_json = tmp_path / "r.json"
    args = [str(bundle), "--data", str(tiny_data / "test.csv"), "--no-floor", "--json", str(out_json)]
    code, output = _bench(*args, *FAST)
    assert code == 0, output
    assert f"comparing with the bundle's teacher at {teacher}" in output
    report = json.loads(out_json.read_text())
    assert [r["kind"] for r in report["contenders"]] == ["teacher", "optimum", "bundle"]
    assert report["contenders"][0]["path"] == str(teacher)
    code, output = _bench(*args, "--no-optimum-teacher", *FAST)
    assert code == 0, output
    assert [r["kind"] for r in json.loads(out_json.read_text())["contenders"]] == ["teacher", "bundle"]
    code, output = _bench(*args, "--no-teacher", *FAST)
    assert code == 0, output
    assert "comparing with" not in output
    assert [r["kind"] for r in json.loads(out_json.read_text())["contenders"]] == ["bundle"]
    code, output = _bench(str(bundle), "--teacher", str(teacher), "--no-teacher")
    assert code == 2 and "--no-teacher" in output


def _pairs(path: Path) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return [(row["text"], row["label"]) for row in csv.DictReader(handle)]


def test_optimum_teacher_is_built_once_and_answers(built: tuple[Path, Path], tiny_data: Path) -> None:
    """Export, ORTOptimizer (O2, else O1), avx2 dynamic INT8: cached beside the teacher's cache folder."""
    import onnx

    teacher = built[1]
    for earlier in teacher.parent.parent.glob("optimum-*"):  # built by an earlier test: build it here
        shutil.rmtree(earlier)
    logs: list[str] = []
    c = lib.optimum_teacher_contender(str(teacher), 1, 32, _pairs(tiny_data / "validation.csv"), logs.append)
    assert c.kind == "optimum" and c.path.parent.parent == teacher.parent.parent
    assert c.path.parent.name.startswith("optimum-") and (c.path.parent / ".complete").is_file()
    assert c.build is not None
    level = c.build["optimization_level"]
    assert level in lib.OPTIMUM_LEVELS and c.name == f"teacher (optimum {level} int8)"
    assert list(c.build["failed_levels"]) == list(lib.OPTIMUM_LEVELS[: lib.OPTIMUM_LEVELS.index(level)])
    assert c.size["bytes"] == c.path.stat().st_size
    ops = [node.op_type for node in onnx.load(str(c.path)).graph.node]
    assert ops.count("DynamicQuantizeLinear") > 0 and ops.count("MatMulInteger") > 0, "not quantized"
    assert c.threshold is not None and c.threshold_source == "validation" and c.oos_label == "oos"
    assert c.predict("what is the weather today") in c.labels
    probs, _ = c.scored_batch(["set an alarm", "how tall is everest"], 2)
    assert probs.shape == (2, len(c.labels)) and abs(float(probs[0].sum()) - 1) < 1e-4
    assert any("building Optimum's INT8 model" in line for line in logs)
    logs.clear()
    again = lib.optimum_teacher_contender(str(teacher), 1, 32, None, logs.append)
    assert again.path == c.path and again.build == c.build and not logs, "built twice"


def test_optimum_teacher_that_fails_every_level_is_skipped(
    built: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lib, "OPTIMUM_LEVELS", ("O9",))  # a level Optimum does not have
    with pytest.raises(lib.SkipContender, match=r"Optimum cannot build an INT8 model of .*O9: ") as err:
        lib.optimum_teacher_contender(str(built[1]), 1, 32)
    assert "\n" not in str(err.value)
    assert not [p for p in built[1].parent.parent.glob("optimum-*") if not (p / ".complete").exists()]


def test_a_broken_teacher_folder_is_skipped_with_its_reason(
    built: tuple[Path, Path], tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(built[1], broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    monkeypatch.chdir(tmp_path)  # a teacher outside a build's cache: Optimum's model goes to .cache/edgepack
    out_json = tmp_path / "r.json"
    args = [str(built[0]), "--teacher", str(broken), "--data", str(tiny_data / "test.csv"), "--no-floor"]
    code, output = _bench(*args, "--json", str(out_json), *FAST)
    assert code == 0, output
    assert "skipping the teacher: cannot load the teacher" in output
    assert "skipping Optimum's INT8 model of the teacher: Optimum cannot build an INT8 model of" in output
    report = json.loads(out_json.read_text())
    assert [s["contender"] for s in report["skipped"]] == ["teacher", "optimum"]
    assert [r["kind"] for r in report["contenders"]] == ["bundle"]
    assert list((tmp_path / ".cache" / "edgepack").glob("optimum-*")) == [], "a failed build left files"


def test_bundle_teacher_reads_the_manifest_and_the_cache(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    manifest = {"teacher": {"cache_key": "abc"}, "recipe": {"cache_dir": "cache"}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    folder = tmp_path / "cache" / "teacher-abc"
    assert bundle_teacher(bundle, root=tmp_path) == (folder / "model", False)  # not cached
    (folder / "model").mkdir(parents=True)
    assert bundle_teacher(bundle, root=tmp_path) == (folder / "model", False)  # not complete
    (folder / ".complete").touch()
    assert bundle_teacher(bundle, root=tmp_path) == (folder / "model", True)
    manifest["recipe"]["cache_dir"] = str(tmp_path / "cache")  # absolute: the root does not matter
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert bundle_teacher(bundle, root=tmp_path / "elsewhere") == (folder / "model", True)
    (bundle / "manifest.json").write_text(json.dumps({"teacher": {"cached": False}}))
    assert bundle_teacher(bundle) == (None, False)
    # a checkpoint that kept its head is its own teacher, wherever the build found it
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "model.safetensors").touch()
    kept = {"teacher": {"fine_tuned_here": False, "model": str(checkpoint)}, "recipe": {"cache_dir": "cache"}}
    (bundle / "manifest.json").write_text(json.dumps(kept))
    assert bundle_teacher(bundle) == (checkpoint, True)
    kept["teacher"]["model"] = str(tmp_path / "moved")
    (bundle / "manifest.json").write_text(json.dumps(kept))
    assert bundle_teacher(bundle) == (tmp_path / "moved", False)
    assert bundle_teacher(tmp_path / "absent") == (None, False)


def _python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def test_without_the_bench_extra_bench_names_it_and_build_does_not_need_it() -> None:
    """optimum and matplotlib made unimportable: `edgepack bench` says which extra to install, in one line;
    `edgepack --help`, `build -h` and every build-side module still import."""
    script = """
import pkgutil, sys
sys.modules["matplotlib"] = None  # as if the bench extra were not installed
sys.modules["optimum"] = None
from click.testing import CliRunner
import edgepack
from edgepack.cli import main
for args in (["--help"], ["build", "-h"]):
    assert CliRunner().invoke(main, args).exit_code == 0, args
for module in pkgutil.iter_modules(edgepack.__path__):
    if module.name not in ("bench", "cli"):
        __import__(f"edgepack.{module.name}")
result = CliRunner().invoke(main, ["bench", "somewhere"])
print(result.exit_code)
print(result.stderr)
"""
    out = _python(script)
    assert out.returncode == 0, out.stderr
    code, message = out.stdout.split("\n", 1)
    assert code == "1" and "Traceback" not in message
    assert message.startswith("Error: edgepack bench needs") and "pip install 'edgepack[bench]'" in message


def test_interleaved_rounds_give_every_contender_the_same_queries_behind_varying_predecessors() -> None:
    """A rotating order kept each contender behind the same one every round, so the one after the biggest model
    always paid for its cache sweep; the shuffled order does not."""
    calls_made: list[tuple[str, str]] = []
    names = ["teacher", "optimum", "first", "second", "third"]
    calls = {name: (lambda text, name=name: calls_made.append((name, text))) for name in names}
    texts = [f"query {i}" for i in range(7)]
    times = interleaved_times(calls, texts, runs=200, warmup=0, block=5)
    assert all(len(times[name]) == 40 and sum(map(len, times[name])) == 200 for name in names)
    for r in range(40):  # each round: every contender, the same 5 queries
        round_calls = calls_made[r * 25 : (r + 1) * 25]
        assert {name for name, _ in round_calls} == set(names)
        assert {tuple(text for n, text in round_calls if n == name) for name in names} == {
            tuple(texts[i % 7] for i in range(r * 5, r * 5 + 5))
        }
    # one entry per contender and round, in the order they ran
    order = [name for i, (name, _) in enumerate(calls_made) if i % 5 == 0]
    behind = {name: {order[i - 1] for i in range(1, len(order)) if order[i] == name} for name in names}
    assert all(len(predecessors) >= 3 for predecessors in behind.values()), behind
    first_run = list(calls_made)
    calls_made.clear()
    interleaved_times(calls, texts, runs=200, warmup=0, block=5)
    assert calls_made == first_run, "seeded: every run follows the same schedule"
