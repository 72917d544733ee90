"""Stage-level behaviour on the tiny fixtures: teacher label alignment, parity and fusion guards, shared studies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from edgepack_runtime.data import DataError

from edgepack import export, metrics, models, optimize, teacher
from edgepack.cache import Cache
from edgepack.data import load_splits
from edgepack.errors import RecipeError, StageError
from edgepack.recipe import DataConfig, ExportConfig, OptimizeConfig, TeacherConfig
from edgepack.training import mean_log_probs, predict_logits, teacher_logits


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A teacher that already has a head, with its own label order."""
    folder = tmp_path_factory.mktemp("finetuned")
    own = ["weather", "transfer", "oos", "balance", "alarm"]
    models.load_classifier(tiny_model, own).save_pretrained(folder, safe_serialization=True)
    models.load_tokenizer(tiny_model).save_pretrained(folder)
    return folder


def test_a_finetuned_teacher_keeps_its_own_label_order(
    tmp_path: Path, tiny_data: Path, finetuned: Path
) -> None:
    splits = load_splits(DataConfig(source=str(tiny_data)))
    result = teacher.run(splits, TeacherConfig(model=str(finetuned)), 32, Cache(tmp_path))
    assert result.record["fine_tuned_here"] is False
    assert result.splits.labels == ["weather", "transfer", "oos", "balance", "alarm"]
    first = splits.labels[splits.label_ids["test"][0]]
    assert result.splits.labels[result.splits.label_ids["test"][0]] == first
    assert result.logits["train"].shape == (40, 5)


def test_a_teacher_with_other_labels_is_refused(tmp_path: Path, tiny_data: Path, tiny_model: Path) -> None:
    folder = tmp_path / "other"
    models.load_classifier(tiny_model, ["weather", "alarm", "pizza"]).save_pretrained(folder)
    models.load_tokenizer(tiny_model).save_pretrained(folder)
    splits = load_splits(DataConfig(source=str(tiny_data)))
    with pytest.raises(DataError, match=r"teacher's labels do not cover.*\['balance', 'oos', 'transfer'\]"):
        teacher.run(splits, TeacherConfig(model=str(folder)), 32, Cache(tmp_path / "cache"))


def test_an_ensemble_teacher_learns_from_its_members_mean_probabilities(
    tmp_path: Path, tiny_data: Path, tiny_model: Path
) -> None:
    splits = load_splits(DataConfig(source=str(tiny_data)))
    cache, settings = Cache(tmp_path), {"model": str(tiny_model), "epochs": 1, "learning_rate": 1e-3}
    one = teacher.run(splits, TeacherConfig(**settings), 32, cache)
    other = teacher.run(splits, TeacherConfig(**settings, seed=7), 32, cache)
    both = teacher.run(splits, TeacherConfig(**settings, ensemble_seeds=[7]), 32, cache)
    assert not np.allclose(one.logits["test"], other.logits["test"])  # two seeds, two teachers
    # The members are the single teachers, from the cache; the student is made from the first.
    assert both.members == (one.model_dir, other.model_dir) and both.model_dir == one.model_dir
    assert both.record["cached"] and both.record["cache_key"] == one.record["cache_key"] == one.key
    assert both.key != one.key  # what the later stages' cache keys follow: their logits differ
    assert [m["seed"] for m in both.record["ensemble"]["members"]] == [42, 7]
    for split in splits.texts:
        mean = (metrics.softmax(one.logits[split]) + metrics.softmax(other.logits[split])) / 2
        np.testing.assert_allclose(metrics.softmax(both.logits[split]), mean, rtol=1e-5, atol=1e-7)
    assert both.record["metrics"] == metrics.split_report(both.logits, splits.label_ids, splits.oos_id())
    # New text (the augment stage's) gets the ensemble's logits too.
    texts, tokenizer = ["book a table for two", "alarm please"], models.load_tokenizer(one.model_dir)
    each = [predict_logits(models.load_classifier(m), tokenizer, texts, 32) for m in both.members]
    np.testing.assert_allclose(teacher_logits(both, texts, 32, "t"), mean_log_probs(each), rtol=1e-5)
    np.testing.assert_array_equal(teacher_logits(one, texts, 32, "t"), each[0])


def test_an_ensemble_of_a_teacher_used_as_it_is_is_refused(
    tmp_path: Path, tiny_data: Path, finetuned: Path
) -> None:
    splits = load_splits(DataConfig(source=str(tiny_data)))
    with pytest.raises(RecipeError, match=r"ensemble_seeds = \[7\].*used as it is.*fine_tune = \"always\""):
        teacher.run(splits, TeacherConfig(model=str(finetuned), ensemble_seeds=[7]), 32, Cache(tmp_path))


def test_parity_failure_stops_the_build(tmp_path: Path, finetuned: Path) -> None:
    with pytest.raises(StageError, match="differ from torch by .* tolerance"):
        export.run(finetuned, ExportConfig(parity_tolerance=1e-15), 32, tmp_path / "m.onnx")


def test_missing_fusions_fail_loudly(tmp_path: Path, finetuned: Path) -> None:
    exported = export.run(finetuned, ExportConfig(), 32, tmp_path / "m.onnx")
    assert exported.record["parity_max_abs_logit_diff"] < 1e-4
    fused = optimize.run(exported.onnx_path, exported.model.layers, OptimizeConfig(), tmp_path / "f.onnx")
    assert fused.record["fused_operators"]["Attention"] == 2 and fused.record["complete"]
    # A graph claiming more layers than were fused (what an unfusable attention export looks like) is refused.
    with pytest.raises(StageError, match="expected fusions did not happen.*Attention: 2 of 3"):
        optimize.run(exported.onnx_path, 3, OptimizeConfig(), tmp_path / "g.onnx")


def test_search_can_share_a_study_through_storage(tmp_path: Path, tiny_data: Path, tiny_model: Path) -> None:
    import optuna

    from edgepack import distill
    from edgepack.recipe import DistillConfig, SearchConfig

    splits = load_splits(DataConfig(source=str(tiny_data)))
    taught = teacher.run(
        splits, TeacherConfig(model=str(tiny_model), epochs=1, batch_size=8), 32, Cache(tmp_path / "cache")
    )
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    # `trials` is the study's total: a second run (a second machine) with the same total finds nothing to do,
    # and one with a larger total adds only the difference.
    for trials, expected in ((1, 1), (1, 1), (2, 2)):
        search = SearchConfig(trials=trials, epochs=[1, 1], storage=storage, train_fraction=0.5)
        result = distill.run(
            taught, DistillConfig(layers=[1], batch_size=8), search, 32, Cache(tmp_path / "c")
        )
        assert (result.model_dir / "model.safetensors").is_file() and result.record["cached"] is False
        assert len(result.record["search"]["trials"]) == expected
    name = result.record["search"]["study_name"]  # unnamed: named after the data, teacher and search space
    assert name.startswith("edgepack-")
    study = optuna.load_study(study_name=name, storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.trials[0].params != study.trials[1].params  # the second run did not replay the first's seed
    searched = result.record["search"]
    assert searched["best_trial"] == study.best_trial.number and searched["workers"]
    record = json.dumps(result.record)
    assert np.isfinite(result.record["validation_score"]) and "learning_rate" in record
