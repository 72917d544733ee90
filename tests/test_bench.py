"""`edgepack bench` on a tiny bundle built here, its cached teacher and the Optimum peer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from edgepack_runtime.bench import SAMPLE_QUERIES
from test_pipeline import _tiny_overrides

from edgepack.bench import SCHEMA, summarize
from edgepack.cli import main
from edgepack.pipeline import build
from edgepack.recipe import load_recipe

PNG = b"\x89PNG\r\n\x1a\n"
ROW_KEYS = {"name", "kind", "path", "highlight", "size", "latency", "throughput", "accuracy", "vs_teacher"}
LATENCY_KEYS = {"runs", "warmup", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms"}
ACCURACY_KEYS = {
    "texts",
    "accuracy",
    "in_scope_accuracy",
    "oos_recall",
    "oos_label",
    "thresholded",
    "unknown_labels",
}
FAST = ["--runs", "5", "--warmup", "2", "--batch-size", "4"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, tiny_model: Path) -> tuple[Path, Path]:
    """(bundle, teacher folder): a tiny bundle and the fine-tuned teacher its build cached."""
    tmp = tmp_path_factory.mktemp("bench")
    overrides = _tiny_overrides(tmp, tiny_data, tiny_model) | {"search.trials": 0}
    bundle = build(load_recipe("clinc", overrides))
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
        "--json",
        str(out_json),
        "--plot",
        str(out_png),
        *FAST,
    )
    assert code == 0, output
    report = json.loads(out_json.read_text())
    assert report["schema"] == SCHEMA
    assert set(report) == {"schema", "created", "machine", "settings", "skipped", "contenders"}
    assert report["settings"]["runs"] == 5 and report["settings"]["data_texts"] == 10
    assert report["skipped"] == []
    rows = report["contenders"]
    assert [r["kind"] for r in rows] == ["teacher", "peer", "bundle", "bundle"]
    assert rows[2]["name"] != rows[3]["name"], "the same bundle twice gets two names"
    assert [r["highlight"] for r in rows] == [False, False, True, False]
    for row in rows:
        assert set(row) == ROW_KEYS
        lat = row["latency"]
        assert set(lat) == LATENCY_KEYS and lat["runs"] == 5
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        assert row["throughput"]["texts_per_s"] > 0 and row["size"]["bytes"] > 0
        assert set(row["accuracy"]) == ACCURACY_KEYS and 0 <= row["accuracy"]["accuracy"] <= 1
        assert row["accuracy"]["oos_label"] == "oos" and row["accuracy"]["oos_recall"] is not None
        assert set(row["vs_teacher"]) == {"speedup", "throughput_ratio", "size_ratio", "accuracy_delta"}
    assert rows[0]["vs_teacher"]["speedup"] == pytest.approx(1.0)
    assert rows[0]["size"]["bytes"] == sum(p.stat().st_size for p in teacher.glob("*.safetensors"))
    assert rows[2]["size"]["bytes"] == (bundle / "model.onnx").stat().st_size
    assert rows[2]["size"]["total_bytes"] > rows[2]["size"]["bytes"]
    assert out_png.read_bytes()[:8] == PNG
    for name in ("teacher", "speed-up", "oos recall", bundle.name):
        assert name in output


def test_without_data_latency_uses_sample_queries(
    built: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ../shared/data/clinc150 from here
    code, output = _bench(str(built[0]), "--json", "r.json", "--plot", "r.png", *FAST)
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
    report = json.loads(out_json.read_text())
    assert [s["contender"] for s in report["skipped"]] == ["teacher", "peer"]
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


def test_summary_percentiles_are_ordered() -> None:
    stats = summarize([5.0, 1.0, 3.0, 2.0, 100.0, 4.0], warmup=3)
    assert stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= 100.0
    assert stats["runs"] == 6 and stats["warmup"] == 3 and stats["std_ms"] > 0
