"""Reproducible builds: what the manifest records to rebuild a bundle, `edgepack rebuild` and its report, and
two builds of the same recipe and seed on the tiny fixtures."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from edgepack_runtime import Classifier
from edgepack_runtime.bundle import verify_bundle

from edgepack import package, provenance
from edgepack.cli import main
from edgepack.data import load_splits
from edgepack.pipeline import build
from edgepack.rebuild import PINNED_SEARCH_MINUTES, RebuildError, compare, rebuild, rebuild_recipe
from edgepack.recipe import DataConfig, load_recipe

PROBES = ["what is my account balance", "wire money to john", "will it rain tomorrow", "who wrote hamlet"]


def _overrides(tmp: Path, data: Path, model: Path, cache: str = "cache") -> dict[str, Any]:
    return {
        "cache_dir": str(tmp / cache),
        "threads": 1,
        "data.source": str(data),
        "data.max_length": 32,
        "teacher.model": str(model),
        "teacher.epochs": 2,
        "teacher.learning_rate": 1e-3,
        "teacher.batch_size": 8,
        "teacher.seed": 7,
        "distill.layers": [0],
        "distill.epochs": 1,
        "distill.learning_rate": 1e-3,
        "distill.batch_size": 8,
        "search.trials": 0,
        "package.name": "tiny-repro",
        "package.output_dir": str(tmp / "bundles"),
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, tiny_model: Path) -> Path:
    tmp = tmp_path_factory.mktemp("repro")
    return build(load_recipe("clinc-4l", _overrides(tmp, tiny_data, tiny_model))).path


def _manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def _csv_digest(path: Path) -> str:
    """The data digest recomputed from the CSV file alone: JSON lines of [text, label], in file order."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(handle)]
    lines = "".join(json.dumps([t, lbl], separators=(",", ":")) + "\n" for t, lbl in rows)
    return hashlib.sha256(lines.encode("ascii")).hexdigest()


def test_the_manifest_records_what_a_rebuild_needs(built: Path, tiny_data: Path) -> None:
    m = verify_bundle(built)  # the runtime's checks accept the added fields
    data = m["data"]
    for split in ("train", "validation", "test"):
        assert data["sha256"][split] == _csv_digest(tiny_data / f"{split}.csv")
    assert "order" in data["sha256_covers"] and data["source_as_given"] == str(tiny_data)
    cache = Path(m["recipe"]["cache_dir"])
    (weights,) = cache.glob(f"teacher-{m['teacher']['cache_key']}/model/*.safetensors")
    assert m["teacher"]["weights_sha256"] == {weights.name: hashlib.sha256(weights.read_bytes()).hexdigest()}
    seeds = m["reproducibility"]["seeds"]
    assert seeds["teacher"] == 7 and seeds["distill"] == m["recipe"]["distill"]["seed"]
    assert set(seeds) == {
        "teacher",
        "distill",
        "search",
        "augment",
        "data_split",
        "data_subsample",
        "calibration",
    }
    assert m["reproducibility"]["torch_threads"] == 1


def test_versions_are_the_installed_dependency_closure(built: Path) -> None:
    versions = _manifest(built)["versions"]
    # direct requirements, transitive ones (packaging through transformers, filelock through torch), Python
    for name in (
        "torch",
        "transformers",
        "edgepack-runtime",
        "accelerate",
        "safetensors",
        "packaging",
        "filelock",
    ):
        assert versions[name].startswith(metadata.version(name)), name  # + a checkout's commit label
    assert versions["python"] and versions["edgepack"].startswith(metadata.version("edgepack"))
    assert "pytest" not in versions and "mypy" not in versions, "edgepack's dev extra is not followed"


class _Dist:
    def __init__(self, name: str, version: str, requires: list[str]) -> None:
        self.metadata = {"Name": name}
        self.version = version
        self.requires = requires


def test_dependency_closure_honours_markers_and_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    dists = {
        "root": _Dist(
            "root", "1", ["a>=1", "b[fast]", 'win; sys_platform == "win32"', 'dev; extra == "dev"']
        ),
        "a": _Dist("a", "2.0", ["c", "absent"]),
        "b": _Dist("B_Pkg", "3", ['speedup; extra == "fast"', 'slow; extra == "slow"']),
        "c": _Dist("c", "4", ["a"]),  # a cycle
        "speedup": _Dist("speedup", "5", []),
        **{n: _Dist(n, "9", []) for n in ("win", "dev", "slow")},
    }

    def distribution(name: str) -> _Dist:
        if name not in dists:
            raise metadata.PackageNotFoundError(name)
        return dists[name]

    monkeypatch.setattr(provenance.metadata, "distribution", distribution)
    closure = provenance.dependency_closure("root")
    assert closure == {"a": "2.0", "b-pkg": "3", "c": "4", "root": "1", "speedup": "5"}


def test_a_checkout_labels_edgepacks_version_with_its_commit(tmp_path: Path) -> None:
    """Editable installs keep one version number while the code changes: the commit tells builds apart."""
    assert provenance.checkout_label(tmp_path) is None  # not a git checkout: the version says it all
    repo = Path(provenance.__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        pytest.skip("edgepack does not run from a git checkout here")
    label = provenance.checkout_label()
    assert label is not None and re.fullmatch(r"\+g[0-9a-f]{12}(\.dirty)?", label), label
    versions = provenance.versions()
    assert versions["edgepack"].endswith(label) and versions["edgepack-runtime"].endswith(label)


def test_the_digest_covers_examples_and_order_not_the_file_format(tmp_path: Path, tiny_data: Path) -> None:
    def digests(folder: Path) -> dict[str, str]:
        return load_splits(DataConfig(source=str(folder), max_length=32)).record["sha256"]

    as_csv = digests(tiny_data)
    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    for split in ("train", "validation", "test"):
        with (tiny_data / f"{split}.csv").open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if split == "train":
            rows.reverse()  # the same examples in another order
        lines = (json.dumps({"label": r["label"], "text": r["text"], "id": i}) for i, r in enumerate(rows))
        (jsonl / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    as_jsonl = digests(jsonl)
    assert as_jsonl["validation"] == as_csv["validation"] and as_jsonl["test"] == as_csv["test"]
    assert as_jsonl["train"] != as_csv["train"], "another order trains another model: another digest"


def test_rebuild_reports_the_same_inputs_and_a_deterministic_build(built: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in built.iterdir()}
    out = tmp_path / "again"
    result = CliRunner().invoke(
        main, ["rebuild", str(built), "--out", str(out), "--no-cache", "--json", str(tmp_path / "r.json")]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert {s["same"] for s in report["data"]["splits"].values()} == {True}
    assert report["versions"]["changed"] == report["versions"]["added"] == report["versions"]["removed"] == {}
    assert report["seeds"]["changed"] == {} and report["determinism"] == {}
    assert set(report["recipe"]) == {"package.output_dir", "cache_dir"}, "only where it writes and caches"
    assert report["teacher"]["from_cache"] is False and report["teacher"]["weights_same"] is True
    # Determinism: with the cache off, teacher and student are trained again, to the same bytes.
    assert {name: f["same"] for name, f in report["files"].items()} == dict.fromkeys(
        ("model.onnx", "tokenizer.json", "labels.json"), True
    )
    assert all(m["difference"] == 0 for m in report["metrics"]), report["metrics"]
    assert "model.onnx     identical" in result.output and "DIFFERENT" not in result.output
    again = Classifier.load(out / built.name, threads=1).predict_batch(PROBES)
    first = Classifier.load(built, threads=1).predict_batch(PROBES)
    np.testing.assert_array_equal([p.score for p in again], [p.score for p in first])
    assert {p.name: p.read_bytes() for p in built.iterdir()} == before, "the original is untouched"


def test_a_changed_data_file_is_reported(built: Path, tmp_path: Path, tiny_data: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    test_csv = data / "test.csv"
    test_csv.write_text(test_csv.read_text().replace("do i need an umbrella", "do i need a raincoat"))
    result = rebuild(built, out=tmp_path / "changed", data=str(data))
    splits = result.report["data"]["splits"]
    assert (splits["train"]["same"], splits["validation"]["same"], splits["test"]["same"]) == (
        True,
        True,
        False,
    )
    assert splits["test"]["sha256"] == _csv_digest(test_csv)


def _copy_with(built: Path, tmp_path: Path, change: dict[str, Any]) -> Path:
    """A copy of the bundle whose manifest has `change` merged into its data record (digest rewritten)."""
    copy = tmp_path / "copy" / built.name
    shutil.copytree(built, copy)
    manifest = _manifest(copy)
    manifest["data"] |= change
    package.write_manifest(copy, manifest)
    return copy


def test_a_missing_data_source_is_a_clear_error(built: Path, tmp_path: Path) -> None:
    copy = _copy_with(built, tmp_path, {"source": str(tmp_path / "gone")})
    result = CliRunner().invoke(main, ["rebuild", str(copy), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{tmp_path / 'gone'}" in result.output and "does not exist any more" in result.output
    assert "pass --data" in result.output
    assert not (tmp_path / "out").exists()


def test_an_unreadable_or_altered_manifest_is_a_clear_error(built: Path, tmp_path: Path) -> None:
    copy = tmp_path / built.name
    shutil.copytree(built, copy)
    (copy / "manifest.json").write_text("{not json")
    result = CliRunner().invoke(main, ["rebuild", str(copy)])
    assert result.exit_code == 1 and "not valid UTF-8 JSON" in result.output
    assert "restore that manifest, or build afresh with `edgepack build --recipe" in result.output
    altered = _manifest(built)
    altered["recipe"]["teacher"]["seed"] = 8  # without rewriting manifest_sha256
    (copy / "manifest.json").write_text(json.dumps(altered))
    result = CliRunner().invoke(main, ["rebuild", str(copy)])
    assert result.exit_code == 1 and "manifest_sha256" in result.output


def test_the_original_is_never_the_destination(built: Path) -> None:
    with pytest.raises(RebuildError, match="over the original bundle"):
        rebuild(built, out=built.parent)


def test_a_manifest_from_before_the_digests_reports_them_as_not_recorded(built: Path) -> None:
    new = _manifest(built)
    old = json.loads(json.dumps(new))
    del old["data"]["sha256"], old["teacher"]["weights_sha256"], old["reproducibility"]
    old["versions"] = {"python": new["versions"]["python"], "torch": "0.0"}
    report = compare(old, new)
    assert {s["same"] for s in report["data"]["splits"].values()} == {None}
    assert report["teacher"]["weights_same"] is None
    assert report["versions"]["changed"] == {"torch": ["0.0", new["versions"]["torch"]]}
    assert "transformers" in report["versions"]["added"] and report["versions"]["removed"] == {}
    assert report["seeds"]["changed"] == {}, "seeds fall back to the recipe's"


def test_a_rebuild_never_joins_the_original_shared_study(built: Path, tmp_path: Path) -> None:
    manifest = _manifest(built)
    manifest["recipe"]["search"]["storage"] = f"sqlite:///{tmp_path / 'study.db'}"
    recipe = rebuild_recipe(manifest, manifest["data"]["source"], tmp_path / "out")
    assert recipe.search.storage is None, "its trials would mix with other builds' in the shared study"
    assert recipe.package.output_dir == str(tmp_path / "out") and recipe.teacher.seed == 7


def test_a_rebuild_runs_as_many_search_trials_as_the_original(built: Path, tmp_path: Path) -> None:
    manifest = _manifest(built)
    manifest["recipe"]["search"] |= {"trials": 8, "timeout_minutes": 2}
    manifest["distillation"]["search"] = {"trials": [{"number": 0}, {"number": 1}, {"number": 2}]}
    search = rebuild_recipe(manifest, manifest["data"]["source"], tmp_path).search
    assert (search.trials, search.timeout_minutes) == (3, PINNED_SEARCH_MINUTES), "the clock stopped it at 3"
    assert rebuild_recipe(_manifest(built), str(tmp_path), tmp_path).search.trials == 0, "no search: none"
