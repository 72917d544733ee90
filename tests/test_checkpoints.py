"""Fine-tuned checkpoints keep their heads: id2label names in another order are mapped, LABEL_N heads take a
label_map, a head for other labels is refused before any training; a teacher can be a slice of its base model's
layers ([teacher] layers, what --quick fine-tunes); the export-only path bundles the model itself (no
student); and a fine-tuned checkpoint is distilled as it is (not trained again)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from edgepack_runtime import Classifier
from edgepack_runtime.data import DataError
from test_pipeline import _tiny_overrides
from tiny_models import save_tiny_encoder

from edgepack import models, teacher
from edgepack.cache import Cache, cache_key
from edgepack.cli import main
from edgepack.data import LabelledSplits, load_splits
from edgepack.errors import RecipeError, StageError
from edgepack.pipeline import build
from edgepack.recipe import DataConfig, TeacherConfig, load_recipe
from edgepack.training import TeacherResult, predict_logits

MAX_LENGTH = 32
DATA_LABELS = ["alarm", "balance", "oos", "transfer", "weather"]  # the tiny data's, sorted
ORDER = [3, 0, 4, 1, 2]  # the checkpoints' class j is the data's class ORDER[j]


@pytest.fixture(scope="module")
def taught(
    tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, tiny_family_model: Callable[[str], Path]
) -> TeacherResult:
    """A RoBERTa classifier fine-tuned on the tiny data (its head in the data's sorted label order)."""
    splits = load_splits(DataConfig(source=str(tiny_data)))
    config = TeacherConfig(
        model=str(tiny_family_model("roberta")), epochs=10, learning_rate=3e-3, batch_size=8
    )
    return teacher.run(splits, config, MAX_LENGTH, Cache(tmp_path_factory.mktemp("cache")))


def _checkpoint(taught: TeacherResult, folder: Path, names: list[str] | None) -> Path:
    """The fine-tuned model with its classes in ORDER, named `names` (None: LABEL_0..LABEL_4), as a checkpoint."""
    model = models.load_classifier(taught.model_dir)
    out = getattr(model.classifier, "out_proj", model.classifier)  # RoBERTa's head, or BERT's Linear
    with torch.no_grad():
        out.weight.copy_(out.weight[ORDER])
        out.bias.copy_(out.bias[ORDER])
    names = names or [f"LABEL_{i}" for i in range(len(ORDER))]
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}
    model.save_pretrained(folder, safe_serialization=True)
    models.load_tokenizer(taught.model_dir).save_pretrained(folder)
    return folder


def _named(taught: TeacherResult, tmp: Path) -> Path:
    return _checkpoint(taught, tmp / "named", [DATA_LABELS[i] for i in ORDER])


def _run(splits: LabelledSplits, tmp: Path, **config: Any) -> TeacherResult:
    return teacher.run(splits, TeacherConfig(**config), MAX_LENGTH, Cache(tmp / "cache"))


def _answers(result: TeacherResult, split: str = "test") -> list[str]:
    return [result.splits.labels[i] for i in result.logits[split].argmax(axis=1)]


def test_named_labels_in_another_order_keep_the_head(tmp_path: Path, taught: TeacherResult) -> None:
    splits = load_splits(DataConfig(source=str(taught.splits.source)))
    result = _run(splits, tmp_path, model=str(_named(taught, tmp_path)))
    assert result.record["fine_tuned_here"] is False and result.record["head"] == "checkpoint's"
    assert result.record["labels_from"] == "config.json id2label"
    assert result.splits.labels == [DATA_LABELS[i] for i in ORDER]
    gold = [result.splits.labels[i] for i in result.splits.label_ids["test"]]
    assert gold == [splits.labels[i] for i in splits.label_ids["test"]]  # each example keeps its label
    assert _answers(result) == _answers(taught)  # the same model, its classes in another order


@pytest.mark.parametrize("form", ["table", "json object", "json list"])
def test_generic_labels_take_a_label_map(tmp_path: Path, taught: TeacherResult, form: str) -> None:
    folder = _checkpoint(taught, tmp_path / "generic", None)
    mapping: dict[str, str] = {f"LABEL_{j}": DATA_LABELS[i] for j, i in reversed(list(enumerate(ORDER)))}
    label_map: Any = mapping
    if form != "table":
        path = tmp_path / "labels.json"
        by_id = [mapping[f"LABEL_{j}"] for j in range(len(ORDER))]
        path.write_text(json.dumps(by_id if form == "json list" else dict(enumerate(by_id))))
        label_map = str(path)
    splits = load_splits(DataConfig(source=str(taught.splits.source)))
    result = _run(splits, tmp_path, model=str(folder), label_map=label_map)
    assert result.record["fine_tuned_here"] is False
    assert result.record["labels_from"] == "config.json id2label with [teacher] label_map"
    assert result.splits.labels == [DATA_LABELS[i] for i in ORDER]
    assert _answers(result) == _answers(taught)


def test_generic_labels_without_a_map_are_refused_before_training(
    tmp_path: Path, taught: TeacherResult
) -> None:
    folder = _checkpoint(taught, tmp_path / "generic", None)
    splits = load_splits(DataConfig(source=str(taught.splits.source)))
    with pytest.raises(DataError) as caught:
        _run(splits, tmp_path, model=str(folder))
    message = str(caught.value)
    assert "\n" not in message
    assert "['LABEL_0', 'LABEL_1', 'LABEL_2', 'LABEL_3', 'LABEL_4']" in message  # the teacher's side
    assert f"data (train split): {DATA_LABELS}" in message  # the data's side
    assert "[teacher] label_map (e.g. {LABEL_0 = 'alarm'}" in message and 'fine_tune = "always"' in message
    assert not (tmp_path / "cache").exists(), "refused before any training or caching"


@pytest.mark.parametrize(
    ("names", "difference"),
    [
        (["timer", "balance", "oos", "transfer", "weather"], r"do not cover the data's labels: \['alarm'\]"),
        ([*DATA_LABELS, "pizza"], r"has labels the data lacks: \['pizza'\]"),
    ],
)
def test_a_head_for_other_labels_is_refused_listing_both_sides(
    tmp_path: Path,
    tiny_data: Path,
    tiny_family_model: Callable[[str], Path],
    names: list[str],
    difference: str,
) -> None:
    folder = tmp_path / "other"
    base = tiny_family_model("roberta")
    models.load_classifier(base, names).save_pretrained(folder, safe_serialization=True)
    models.load_tokenizer(base).save_pretrained(folder)
    splits = load_splits(DataConfig(source=str(tiny_data)))
    with pytest.raises(DataError, match=difference) as caught:
        _run(splits, tmp_path, model=str(folder))
    assert f"(config.json id2label): {names}" in str(caught.value)
    assert f"data (train split): {DATA_LABELS}" in str(caught.value)
    assert not (tmp_path / "cache").exists()


def test_fine_tune_always_trains_a_matching_head_in_its_order(tmp_path: Path, taught: TeacherResult) -> None:
    splits = load_splits(DataConfig(source=str(taught.splits.source)))
    folder = _named(taught, tmp_path)
    kept = _run(splits, tmp_path, model=str(folder))
    trained = _run(splits, tmp_path, model=str(folder), fine_tune="always", epochs=1, batch_size=8)
    assert trained.record["fine_tuned_here"] is True and trained.record["head"] == "checkpoint's"
    assert trained.splits.labels == [DATA_LABELS[i] for i in ORDER]
    assert trained.record["cache_key"] != kept.record["cache_key"]
    assert trained.model_dir != folder and (trained.model_dir / "model.safetensors").is_file()


def test_fine_tune_always_replaces_a_head_for_other_labels(
    tmp_path: Path, tiny_data: Path, tiny_family_model: Callable[[str], Path]
) -> None:
    folder = tmp_path / "three"
    base = tiny_family_model("roberta")
    models.load_classifier(base, ["x", "y", "z"]).save_pretrained(folder, safe_serialization=True)
    models.load_tokenizer(base).save_pretrained(folder)
    splits = load_splits(DataConfig(source=str(tiny_data)))
    result = _run(splits, tmp_path, model=str(folder), fine_tune="always", epochs=1, batch_size=8)
    assert result.record["head"] == "replaced" and result.record["fine_tuned_here"] is True
    assert result.splits.labels == DATA_LABELS and result.logits["train"].shape == (40, 5)
    assert models.classifier_labels(result.model_dir) == DATA_LABELS


def test_label_map_mistakes_are_refused(
    tmp_path: Path, taught: TeacherResult, tiny_family_model: Callable[[str], Path]
) -> None:
    splits = load_splits(DataConfig(source=str(taught.splits.source)))
    folder = _checkpoint(taught, tmp_path / "generic", None)
    with pytest.raises(RecipeError, match=r"label_map names \['LABEL_9'\], which .* does not have"):
        _run(splits, tmp_path, model=str(folder), label_map={"LABEL_9": "alarm"})
    with pytest.raises(RecipeError, match=r"gives two of .* labels the same name: \['LABEL_1'\]"):
        _run(splits, tmp_path, model=str(folder), label_map={"0": "LABEL_1"})
    with pytest.raises(RecipeError, match="cannot read it as a JSON file"):
        _run(splits, tmp_path, model=str(folder), label_map=str(tmp_path / "absent.json"))
    base = str(tiny_family_model("roberta"))
    with pytest.raises(RecipeError, match="has no sequence-classification head to map"):
        _run(splits, tmp_path, model=base, label_map={"LABEL_0": "alarm"})
    assert not (tmp_path / "cache").exists()
    with pytest.raises(RecipeError, match=r"\[teacher\] fine_tune = 'sometimes' is invalid"):
        TeacherConfig(fine_tune="sometimes")
    with pytest.raises(RecipeError, match="label_map = .* has the wrong type"):
        load_recipe("clinc-4l", {"teacher.label_map": {"LABEL_0": 3}})


def test_default_teacher_settings_keep_their_cache_key() -> None:
    """Teachers cached before fine_tune, label_map, layers, group_by_length and ensemble_seeds existed keep their
    keys: all five are left out at their defaults (an ensemble's members are keyed as single teachers)."""
    before = {"model", "epochs", "learning_rate", "batch_size", "weight_decay", "warmup_ratio", "seed"}
    assert set(teacher._key_settings(TeacherConfig())) == before
    assert set(teacher._key_settings(load_recipe("clinc-4l").teacher)) == before
    assert teacher._key_settings(TeacherConfig(fine_tune="always"))["fine_tune"] == "always"
    assert teacher._key_settings(TeacherConfig(layers=[0, 2]))["layers"] == [0, 2]
    assert teacher._key_settings(TeacherConfig(group_by_length=True))["group_by_length"] is True
    later = {"fine_tune", "label_map", "layers", "group_by_length", "ensemble_seeds"}
    assert set(asdict(TeacherConfig())) == before | later
    # The clinc teacher's settings key, as it was before any of the five existed:
    assert cache_key(teacher._key_settings(load_recipe("clinc-4l").teacher)) == "6c8095d712f44804"


@pytest.fixture(scope="module")
def bert3(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A 3-layer BERT base model (no head) with the tiny WordPiece tokenizer."""
    folder = tmp_path_factory.mktemp("bert3")
    return save_tiny_encoder(folder, "bert", models.load_tokenizer(tiny_model), layers=3, heads=2)


def test_teacher_layers_fine_tune_a_slice_of_the_base_model(
    tmp_path: Path, tiny_data: Path, bert3: Path
) -> None:
    """[teacher] layers = [0, 2] of a 3-layer model: a 2-layer model is fine-tuned, cached and recorded; "auto"
    resolves to the same list by the auto_layers rule, so it is the same cached teacher."""
    splits = load_splits(DataConfig(source=str(tiny_data)))
    settings = {"model": str(bert3), "epochs": 1, "batch_size": 8}
    sliced = _run(splits, tmp_path, layers=[0, 2], **settings)
    config = json.loads((sliced.model_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and sliced.model_dir.parent.name.startswith("teacher-")
    assert len(models.load_classifier(sliced.model_dir).bert.encoder.layer) == 2
    record = sliced.record
    assert record["fine_tuned_here"] is True and record["cached"] is False
    assert (record["kept_layers"], record["base_layers"], record["layers"]) == ([0, 2], 3, 2)
    assert record["settings"]["layers"] == [0, 2] and "layers_rule" not in record
    assert sliced.logits["train"].shape == (40, len(DATA_LABELS))
    auto = _run(splits, tmp_path, layers="auto", **settings)
    assert auto.record["cached"] is True and auto.record["cache_key"] == sliced.record["cache_key"]
    assert auto.record["kept_layers"] == [0, 2] and "round(2N/3)" in auto.record["layers_rule"]
    whole = _run(splits, tmp_path, **settings)
    assert whole.record["cache_key"] != sliced.record["cache_key"] and whole.record["layers"] == 3
    assert whole.record["kept_layers"] is None and "layers" not in whole.record["settings"]


def test_teacher_layers_mistakes_are_refused_before_training(
    tmp_path: Path, tiny_data: Path, bert3: Path, tiny_model: Path
) -> None:
    splits = load_splits(DataConfig(source=str(tiny_data)))
    headed = tmp_path / "headed"  # a head for the data's labels: fine_tune = "auto" uses it as it is
    models.load_classifier(bert3, DATA_LABELS).save_pretrained(headed, safe_serialization=True)
    models.load_tokenizer(bert3).save_pretrained(headed)
    with pytest.raises(
        RecipeError,
        match=r'\[teacher\] layers needs fine-tuning: .* set fine_tune = "always" or remove layers',
    ) as caught:
        _run(splits, tmp_path, model=str(headed), layers=[0])
    assert "\n" not in str(caught.value)
    kept = _run(splits, tmp_path, model=str(headed), layers="auto")  # --quick: the checkpoint as it is
    assert kept.record["kept_layers"] is None and kept.record["layers"] == 3
    shutil.rmtree(tmp_path / "cache")
    beyond = r"\[teacher\] layers = \[0, 3\] asks for layer 3, but .*bert3.* has 3 layers \(0..2\)"
    with pytest.raises(RecipeError, match=beyond):
        _run(splits, tmp_path, model=str(bert3), layers=[0, 3])
    electra = save_tiny_encoder(
        tmp_path / "electra", "electra", models.load_tokenizer(tiny_model), layers=2, heads=2
    )
    unknown = r"\[teacher\] layers = 'auto' needs a model of a known encoder family .*'electra'.*Remove \[teacher\] layers"
    with pytest.raises(RecipeError, match=unknown):
        _run(splits, tmp_path, model=str(electra), layers="auto")
    assert not (tmp_path / "cache").exists(), "refused before any training or caching"


def test_keeping_layers_is_one_function(bert3: Path) -> None:
    """architectures.keep_encoder_layers: what the teacher stage and the students from the teacher's layers use."""
    from edgepack import architectures

    model = models.load_classifier(bert3, ["a", "b"])
    blocks = list(model.bert.encoder.layer)
    kept = architectures.keep_encoder_layers(model, [2, 0], "x", "y", setting="[teacher] layers")
    assert kept is model and list(model.bert.encoder.layer) == [blocks[2], blocks[0]]
    assert model.config.num_hidden_layers == 2
    assert [b.attention.self.layer_idx for b in model.bert.encoder.layer] == [0, 1]
    with pytest.raises(
        StageError, match=r"\[teacher\] layers = \[2\] asks for layer 2, but the model has 2 layers"
    ):
        architectures.keep_encoder_layers(model, [2], "x", "y", setting="[teacher] layers")


def test_export_only_bundles_the_checkpoint_itself(tmp_path: Path, taught: TeacherResult) -> None:
    """A LABEL_N checkpoint with its map in the recipe, no distillation: the model itself is fused, quantized
    and bundled, and answers as it does in PyTorch."""
    folder = _checkpoint(taught, tmp_path / "generic", None)
    table = ", ".join(f'LABEL_{j} = "{DATA_LABELS[i]}"' for j, i in enumerate(ORDER))
    recipe = tmp_path / "export-only.toml"
    recipe.write_text(
        f'extends = "clinc-4l"\n[teacher]\nlabel_map = {{{table}}}\n[distill]\nstudent = "teacher"\n'
    )
    overrides = _tiny_overrides(tmp_path, Path(taught.splits.source), folder) | {
        "package.name": "export-only"
    }
    bundle = build(load_recipe(str(recipe), overrides)).path
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["teacher"]["fine_tuned_here"] is False and m["teacher"]["label_map"] is not None
    assert m["distillation"]["student"] == "teacher" and "export-only" in m["distillation"]["skipped"]
    assert "search" not in m["distillation"] and m["pruning"] is None
    assert m["model"]["layers"] == 3 and m["model"]["architecture"] == "roberta"
    fused = m["optimization"]
    expected = {"Attention": 3, "LayerNormalization": 7, "Gelu": 3}
    assert fused["complete"] and {k: fused["fused_operators"][k] for k in expected} == expected
    assert m["quantization"]["op_counts"].get("QAttention") == 3
    clf = Classifier.load(bundle, threads=1)
    assert clf.labels == [DATA_LABELS[i] for i in ORDER]
    texts = taught.splits.texts["train"]
    logits = predict_logits(models.load_classifier(folder), models.load_tokenizer(folder), texts, MAX_LENGTH)
    probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    ranked = np.sort(probs, axis=1)
    clear = ranked[:, -1] - ranked[:, -2] > 0.02
    expected_labels = [clf.labels[i] for i, c in zip(logits.argmax(axis=1), clear, strict=True) if c]
    got = [p.top_k[0][0] for p, c in zip(clf.predict_batch(texts), clear, strict=True) if c]
    assert len(expected_labels) >= 10 and len(set(expected_labels)) >= 2 and got == expected_labels
    # edgepack bench compares with this checkpoint by default, its LABEL_N named by the recorded label_map
    report = tmp_path / "bench.json"
    args = ["bench", str(bundle), "--data", str(taught.splits.source), "--no-optimum-teacher", "--no-floor"]
    result = CliRunner().invoke(main, [*args, "--runs", "2", "--warmup", "0", "--json", str(report)])
    assert result.exit_code == 0, result.output
    rows = {r["kind"]: r for r in json.loads(report.read_text())["contenders"]}
    assert rows["teacher"]["path"] == str(folder) and rows["teacher"]["accuracy"] is not None


@pytest.mark.parametrize(("family", "layers"), [("distilbert", [0, 2]), ("bert", [0])])
def test_a_fine_tuned_checkpoint_is_distilled_without_training_it_again(
    tmp_path: Path,
    tiny_data: Path,
    tiny_model: Path,
    tiny_family_model: Callable[[str], Path],
    family: str,
    layers: list[int],
) -> None:
    """A DistilBERT / BERT classifier fine-tuned on the tiny data, its classes in another order named by
    config.id2label: the build keeps it as the teacher (no training, its own weights and label order) and
    distills a student from its own layers into a bundle."""
    base = tiny_model if family == "bert" else tiny_family_model(family)
    splits = load_splits(DataConfig(source=str(tiny_data)))
    tuned = _run(splits, tmp_path / "tuning", model=str(base), epochs=30, learning_rate=3e-3, batch_size=8)
    names = [DATA_LABELS[i] for i in ORDER]
    folder = _checkpoint(tuned, tmp_path / "checkpoint", names)
    weights = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    overrides = _tiny_overrides(tmp_path, tiny_data, folder) | {
        "search.trials": 0,
        "distill.layers": layers,
        "distill.epochs": 1,
        "package.name": f"{family}-checkpoint",
    }
    built = build(load_recipe("clinc-4l", overrides))
    bundle, m = built.path, built.manifest
    kept = m["teacher"]
    assert kept["fine_tuned_here"] is False and kept["settings"] is None and kept["head"] == "checkpoint's"
    assert kept["model"] == str(folder) and kept["weights_sha256"] == {"model.safetensors": weights}
    assert not list((tmp_path / "cache").glob("teacher-*/model")), "no fine-tuned copy of the teacher"
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == weights
    # The teacher's logits are the checkpoint's own, in its id2label order, and so is its recorded accuracy.
    model, tokenizer = models.load_classifier(folder), models.load_tokenizer(folder)
    cached = tmp_path / "cache" / f"teacher-{kept['cache_key']}"
    for split, texts in splits.texts.items():
        logits = predict_logits(model, tokenizer, texts, MAX_LENGTH)
        np.testing.assert_allclose(np.load(cached / f"logits-{split}.npy"), logits, atol=1e-5)
        gold = [splits.labels[i] for i in splits.label_ids[split]]
        accuracy = np.mean([names[i] == g for i, g in zip(logits.argmax(axis=1), gold, strict=True)])
        if split == "train":  # a checkpoint that tells the classes apart, so that their names matter
            assert accuracy > 0.4 and len(set(logits.argmax(axis=1))) >= 3, accuracy
        else:
            assert m["metrics"]["teacher"][split]["accuracy"] == pytest.approx(accuracy)
    distilled = m["distillation"]
    assert distilled["student"] == "teacher-layers" and distilled["layers"] == layers
    assert "skipped" not in distilled and distilled["teacher_parameters"] == kept["parameters"]
    assert m["model"]["architecture"] == family and m["model"]["layers"] == len(layers)
    assert json.loads((bundle / "labels.json").read_text()) == names, "the checkpoint's label order"
    clf = Classifier.load(bundle, threads=1)
    assert clf.labels == names and clf.predict(splits.texts["test"][0]).label in names


def test_export_only_flag(tiny_recipe: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["build", "--recipe", str(tiny_recipe), "--export-only", "--name", "export-only-bundle"]
    )
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "bundles" / "export-only-bundle" / "manifest.json").read_text())
    assert m["recipe"]["distill"]["student"] == "teacher" and m["distillation"]["student"] == "teacher"
    assert m["teacher"]["fine_tuned_here"] is True  # a base model is fine-tuned first, then exported as it is
    assert m["model"]["layers"] == m["teacher"]["layers"] == 2
    assert "export-only" in m["distillation"]["skipped"] and m["optimization"]["complete"]
    assert m["pruning"] is None  # the export-only path prunes only when the recipe asks


def test_export_only_prunes_the_teacher_when_asked(tmp_path: Path, tiny_data: Path, tiny_model: Path) -> None:
    overrides = _tiny_overrides(tmp_path, tiny_data, tiny_model) | {
        "distill.student": "teacher",
        "prune.ffn_fraction": 0.5,
        "prune.multiple_of": 16,
    }
    m = build(load_recipe("clinc-4l", overrides)).manifest
    pruning = m["pruning"]
    assert pruning["before"]["layers"] == m["teacher"]["layers"] == 2
    assert pruning["before"]["intermediate_size"] == [64, 64] and pruning["after"]["intermediate_size"] == [
        32,
        32,
    ]
    assert pruning["recovery"]["epochs"] == 1.0 and m["model"]["layers"] == 2


def test_the_quick_overlay_bundles_a_fine_tuned_slice(tmp_path: Path, tiny_recipe: Path, bert3: Path) -> None:
    """`--quick`: "auto" layers of the base model ([0, 2] of 3) fine-tuned directly and bundled as they are
    (export-only: no search, no distillation); the dry run says so first."""
    args = ["build", "--recipe", str(tiny_recipe), "--quick", "--teacher", str(bert3), "--name", "quick"]
    args += ["--set", "teacher.epochs=3", "--set", "teacher.learning_rate=1e-3"]  # the tiny model's budget
    dry = CliRunner().invoke(main, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert (
        "keeping layers [0, 2] of its 3" in dry.stdout
        and "none: the teacher itself is exported" in dry.stdout
    )
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "bundles" / "quick" / "manifest.json").read_text())
    assert m["recipe"]["teacher"]["layers"] == "auto" and m["recipe"]["distill"]["student"] == "teacher"
    assert (m["teacher"]["kept_layers"], m["teacher"]["base_layers"], m["teacher"]["layers"]) == (
        [0, 2],
        3,
        2,
    )
    assert m["model"]["layers"] == 2 and m["optimization"]["fused_operators"]["Attention"] == 2
    assert "export-only" in m["distillation"]["skipped"] and "search" not in m["distillation"]
    assert m["distillation"]["cache_key"] == m["teacher"]["cache_key"] and m["pruning"] is None
