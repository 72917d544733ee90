"""Encoder families beyond BERT on tiny random models: DistilBERT, RoBERTa and XLM-R build end to end (a student
from the teacher's layers, fused as ONNX Runtime fuses each family, INT8, a bundle the runtime answers with as
PyTorch does); their structure prunes; a family edgepack does not know ships unfused, with a warning."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from edgepack_runtime import Classifier
from test_pipeline import _tiny_overrides
from tiny_models import save_tiny_encoder

from edgepack import architectures, distill, export, graphs, models, optimize, prune, quantize, teacher
from edgepack.cache import Cache
from edgepack.data import load_splits
from edgepack.data import run as data_stage
from edgepack.distill import student_from_teacher_layers
from edgepack.errors import StageError
from edgepack.pipeline import build
from edgepack.recipe import DataConfig, DistillConfig, ExportConfig, OptimizeConfig, PruneConfig, load_recipe
from edgepack.targets import QuantizeConfig
from edgepack.training import DistillResult, predict_logits

MAX_LENGTH = 32
# What ONNX Runtime's optimizer makes of a 2-layer student of each family (edgepack.architectures says why).
FUSED = {
    "distilbert": {"EmbedLayerNormalization": 1, "Attention": 2, "LayerNormalization": 4, "Gelu": 2},
    "roberta": {"Attention": 2, "LayerNormalization": 5, "Gelu": 2},
    "xlm-roberta": {"Attention": 2, "LayerNormalization": 5, "Gelu": 2},
}
DATA_LABELS = ["alarm", "balance", "oos", "transfer", "weather"]
FAMILY_NAMES = {"distilbert": "DistilBERT", "roberta": "RoBERTa", "xlm-roberta": "XLM-R"}


def _family_overrides(tmp: Path, data: Path, model: Path) -> dict[str, Any]:
    """The tiny pipeline with a 3-layer teacher trained long enough to tell the intents apart."""
    return _tiny_overrides(tmp, data, model) | {
        "teacher.epochs": 10,
        "teacher.learning_rate": 3e-3,
        "distill.layers": [0, 2],
        "distill.epochs": 6,
        "distill.learning_rate": 3e-3,
        "search.trials": 0,
        "package.name": "family-int8",
    }


@pytest.fixture(scope="module", params=sorted(FUSED))
def family_build(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_data: Path,
    tiny_family_model: Callable[[str], Path],
) -> tuple[str, Path, dict[str, Any]]:
    """(model_type, bundle, recipe overrides) of a full tiny build per family."""
    family = request.param
    tmp = tmp_path_factory.mktemp(f"build-{family}")
    overrides = _family_overrides(tmp, tiny_data, tiny_family_model(family))
    return family, build(load_recipe("clinc-4l", overrides)).path, overrides


def test_the_family_table() -> None:
    assert architectures.family_of("bert") and architectures.family_of("electra") is None
    roberta, xlmr = architectures.family_of("roberta"), architectures.family_of("xlm-roberta")
    assert roberta and xlmr and xlmr.name == "XLM-R" and xlmr.layout == roberta.layout
    bert = optimize.expected_fusions(3)
    assert bert == {"EmbedLayerNormalization": 1, "Attention": 3, "LayerNormalization": 6, "Gelu": 3}
    for model_type, fused in FUSED.items():
        assert optimize.expected_fusions(2, model_type) == fused
    assert optimize.expected_fusions(2, "electra") == {}


def test_each_family_builds_and_fuses_as_ort_fuses_it(family_build: tuple[str, Path, dict]) -> None:
    family, bundle, _ = family_build
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["model"]["architecture"] == family and m["model"]["layers"] == 2
    assert [i["name"] for i in m["model"]["inputs"]] == ["input_ids", "attention_mask"]  # no token types
    assert m["model"]["max_position_embeddings"] == 64  # RoBERTa's table has 66 rows, the first 2 unused
    assert m["distillation"]["student"] == "teacher-layers" and m["distillation"]["layers"] == [0, 2]
    assert m["export"]["attention"] == ("sdpa" if family == "distilbert" else "eager")
    fused = m["optimization"]
    assert fused["family"] == FAMILY_NAMES[family] and fused["complete"] is True
    assert fused["expected"] == FUSED[family]
    assert {k: fused["fused_operators"].get(k, 0) for k in FUSED[family]} == FUSED[family]
    if family != "distilbert":  # ORT's EmbedLayerNormalization counts positions from 0, RoBERTa's do not
        assert "EmbedLayerNormalization" not in fused["fused_operators"]
    q = m["quantization"]
    assert q["op_counts"].get("QAttention") == 2
    assert q["quantized_matmuls"] >= 8  # per layer: QAttention, attention output, two FFN MatMuls


def test_each_family_bundle_answers_as_pytorch_does(family_build: tuple[str, Path, dict]) -> None:
    _, bundle, overrides = family_build
    m = json.loads((bundle / "manifest.json").read_text())
    student = Path(overrides["cache_dir"]) / f"student-{m['distillation']['cache_key']}" / "model"
    data = load_splits(DataConfig(source=overrides["data.source"]))
    texts = data.texts["train"] + data.texts["test"]
    logits = predict_logits(
        models.load_classifier(student), models.load_tokenizer(student), texts, MAX_LENGTH
    )
    torch_probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    clf = Classifier.load(bundle, threads=1)
    preds = clf.predict_batch(texts, top_k=len(clf.labels))
    runtime_probs = np.array([[dict(p.top_k)[label] for label in clf.labels] for p in preds])
    assert np.abs(runtime_probs - torch_probs).max() < 0.02  # INT8 noise only
    ranked = np.sort(torch_probs, axis=1)
    clear = ranked[:, -1] - ranked[:, -2] > 0.02  # not a near tie that INT8 rounding may flip
    torch_labels = [clf.labels[i] for i in logits.argmax(axis=1)]
    expected = [label for label, c in zip(torch_labels, clear, strict=True) if c]
    assert len(expected) >= 10 and len(set(expected)) >= 2, "the student tells some intents apart"
    assert [p.top_k[0][0] for p, c in zip(preds, clear, strict=True) if c] == expected


@pytest.mark.parametrize("family", ["distilbert", "roberta"])
def test_student_takes_the_teacher_layers(family: str, tiny_family_model: Callable[[str], Path]) -> None:
    teacher_model = models.load_classifier(tiny_family_model(family), ["a", "b"])
    student = student_from_teacher_layers(teacher_model, [2, 0])
    fam = architectures.family_of(family)
    assert fam is not None
    blocks, taught_blocks = fam.encoder_layers(student), fam.encoder_layers(teacher_model)
    assert len(blocks) == 2 and student.config.num_hidden_layers == 2
    for got, source in zip(blocks, (taught_blocks[2], taught_blocks[0]), strict=True):
        w = fam.part(got, "ffn_in").weight
        assert (
            torch.equal(w, fam.part(source, "ffn_in").weight)
            and w.data_ptr() != fam.part(source, "ffn_in").weight.data_ptr()
        )
    assert len(taught_blocks) == 3 and teacher_model.config.num_hidden_layers == 3


@pytest.fixture(scope="module", params=["distilbert", "roberta"])
def taught(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_data: Path,
    tiny_family_model: Callable[[str], Path],
) -> Any:
    """A fine-tuned 3-layer, 4-head teacher of the family."""
    recipe = load_recipe(
        "clinc-4l",
        _family_overrides(tmp_path_factory.mktemp("t"), tiny_data, tiny_family_model(request.param)),
    )
    splits = load_splits(recipe.data)
    return teacher.run(splits, recipe.teacher, MAX_LENGTH, Cache(recipe.cache_dir))


def test_head_importance_is_the_gradient_of_a_head_mask(taught: Any) -> None:
    """The mask on the context entering the attention's output projection (DistilBERT's out_lin, RoBERTa's
    output.dense) has the gradient of transformers' own head_mask."""
    model = models.load_classifier(taught.model_dir).eval()
    tokenizer = models.load_tokenizer(taught.model_dir)
    batches = []
    for i, text in enumerate(taught.splits.texts["train"][:3]):
        batch = dict(tokenizer([text], return_tensors="pt"))
        batch["labels"] = torch.tensor([int(taught.splits.label_ids["train"][i])])
        batch["teacher_logits"] = torch.from_numpy(taught.logits["train"][i : i + 1])
        batches.append(batch)
    ours = prune._importance(model, batches, DistillConfig(batch_size=1), prune._head_unit)
    expected = np.zeros((3, 4))
    for batch in batches:
        head_mask = torch.ones(3, 4, requires_grad=True)
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "teacher_logits")}
        logits = model(**inputs, head_mask=head_mask).logits
        loss = prune.distillation_loss(logits, batch["teacher_logits"], batch["labels"], 0.5, 4.0)
        expected += torch.autograd.grad(loss, head_mask)[0].abs().numpy()
    np.testing.assert_allclose(np.stack(ours), expected / 3, rtol=1e-4, atol=1e-7)


def test_structured_pruning_per_family(tmp_path: Path, taught: Any) -> None:
    settings = DistillConfig(epochs=1, learning_rate=1e-3, batch_size=8)
    distilled = DistillResult(taught.model_dir, settings, {"settings": {}, "cache_key": "fine-tuned"})
    knobs = PruneConfig(
        drop_layers=[1], heads_fraction=0.5, ffn_fraction=0.5, multiple_of=16, recovery_epochs=1
    )
    result = prune.run(taught, distilled, knobs, MAX_LENGTH, Cache(tmp_path / "cache"))
    record = result.record
    assert record is not None and record["layers"]["dropped"] == [1]
    model = models.load_classifier(result.model_dir)  # the saved folder loads back with the pruned shapes
    fam = architectures.family_of(model.config.model_type)
    assert fam is not None
    blocks = fam.encoder_layers(model)
    heads = [int(fam.part(b, "heads")) for b in blocks]
    assert len(blocks) == 2 and model.config.num_hidden_layers == 2
    assert sum(heads) == 4 and min(heads) >= 1  # 4 of 8 heads removed, every layer keeps one
    for block, n in zip(blocks, heads, strict=True):
        assert tuple(fam.part(block, "attention_output").weight.shape) == (32, 8 * n)
        assert tuple(fam.part(block, "ffn_in").weight.shape) == (32, 32)  # 64 -> 32 neurons
        assert tuple(fam.part(block, "ffn_out").weight.shape) == (32, 32)
    assert getattr(model.config, fam.layout.ffn_size_key) == 32
    assert record["before"]["heads"] == [4, 4, 4] and record["after"]["heads"] == heads
    assert record["after"]["intermediate_size"] == [32, 32] and record["reload_max_abs_logit_diff"] < 1e-5

    exported = export.run(result.model_dir, ExportConfig(), MAX_LENGTH, tmp_path / "m.onnx")
    assert exported.record["parity_max_abs_logit_diff"] < 1e-4
    fused = optimize.run(
        exported.onnx_path, 2, OptimizeConfig(), tmp_path / "f.onnx", model.config.model_type
    )
    assert fused.record["complete"] and fused.record["expected"] == FUSED[model.config.model_type]
    quantized = quantize.quantize_graph(fused.onnx_path, QuantizeConfig.avx2(), [], tmp_path / "q.onnx")
    assert quantized["op_counts"].get("QAttention") == 2


@pytest.fixture(scope="module")
def tiny_electra(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A family edgepack does not know (ELECTRA), with the tiny WordPiece tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-electra")
    return save_tiny_encoder(folder, "electra", models.load_tokenizer(tiny_model), layers=2, heads=2)


def test_an_unknown_family_ships_unfused_with_a_warning(
    tmp_path: Path, tiny_data: Path, tiny_electra: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = _family_overrides(tmp_path, tiny_data, tiny_electra) | {"distill.student": "teacher"}
    with caplog.at_level(logging.WARNING, logger="edgepack.optimize"):
        bundle = build(load_recipe("clinc-4l", overrides)).path
    assert any(
        "'electra' is not a family" in r.getMessage() and "ships unfused" in r.getMessage()
        for r in caplog.records
    )
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["model"]["architecture"] == "electra"
    assert m["optimization"]["fused_operators"] == {} and m["optimization"]["complete"] is False
    assert "ships unfused" in m["optimization"]["skipped"]
    ops = m["quantization"]["op_counts"]
    assert "Attention" not in ops and "QAttention" not in ops and m["quantization"]["quantized_matmuls"] >= 8
    labels = json.loads((bundle / "labels.json").read_text())
    assert Classifier.load(bundle, threads=1).predict("what is my account balance").label in labels


def test_an_unknown_family_is_refused_where_its_structure_is_needed(tiny_electra: Path) -> None:
    model = models.load_classifier(tiny_electra, ["a", "b"])
    with pytest.raises(
        StageError, match=r"teacher-layers' needs an encoder of a known family.*'electra'.*\"teacher\""
    ):
        student_from_teacher_layers(model, [0])
    with pytest.raises(StageError, match=r"prune: structured pruning needs .*BERT \(bert\), DistilBERT"):
        prune.shape(model)
    with pytest.raises(StageError, match=r"layers = \"auto\" needs a teacher of a known .*'electra'"):
        distill.teacher_depth(tiny_electra)


@pytest.mark.parametrize(("family", "depth", "kept"), [("bert", 2, [0]), ("distilbert", 3, [0, 2])])
def test_auto_layers_come_from_the_teacher_depth(
    tmp_path: Path,
    tiny_data: Path,
    tiny_model: Path,
    tiny_family_model: Callable[[str], Path],
    family: str,
    depth: int,
    kept: list[int],
) -> None:
    """The generic recipe's layers = "auto" on a 2-layer BERT and a 3-layer DistilBERT teacher: the resolved
    list is what is trained, recorded, matched by the hidden-state loss (and pruning's recovery) and keyed:
    the same list asked for explicitly is the same cached student."""
    model = tiny_model if family == "bert" else tiny_family_model(family)
    overrides = _family_overrides(tmp_path, tiny_data, model) | {"teacher.epochs": 2, "distill.epochs": 1}
    del overrides["distill.layers"]
    dropped = [0] if len(kept) > 1 else []  # the recovery then matches student layer 0 to teacher layer 2
    overrides |= {"distill.hidden_weight": 1.0, "prune.drop_layers": dropped, "prune.recovery_epochs": 1}
    recipe = load_recipe("generic", overrides)
    assert recipe.distill.layers == "auto"
    m = build(recipe).manifest
    assert m["recipe"]["distill"]["layers"] == "auto"
    record = m["distillation"]
    assert record["layers"] == kept and record["settings"]["layers"] == kept
    assert record["teacher_layers"] == depth and "round(2N/3)" in record["layers_rule"]
    assert m["teacher"]["layers"] == depth
    if dropped:
        assert m["pruning"]["layers"]["dropped"] == [0] and m["pruning"]["recovery"]["hidden_weight"] == 1.0
    assert m["model"]["layers"] == len(kept) - len(dropped)
    splits, max_length = data_stage(recipe.data, recipe.teacher.model)
    cache = Cache(recipe.cache_dir)
    taught = teacher.run(splits, recipe.teacher, max_length, cache)
    assert taught.record["cached"] is True
    explicit = replace(recipe.distill, layers=kept)
    again = distill.run(taught, explicit, recipe.search, max_length, cache)
    assert again.record["cached"] is True and again.record["cache_key"] == record["cache_key"]
    assert "layers_rule" not in again.record and again.settings.layers == kept


@pytest.mark.parametrize("family", ["distilbert", "roberta"])
@pytest.mark.parametrize(
    "settings",
    [
        {"mode": "static", "calibration_method": "minmax", "calibration_samples": 16},
        {"embedding_bits": 4},
    ],
    ids=["static", "4-bit-embeddings"],
)
def test_other_quantization_modes_take_each_family(
    tmp_path: Path, tiny_data: Path, tiny_family_model: Callable[[str], Path], family: str, settings: dict
) -> None:
    """Static INT8 needs ORT's symbolic shape inference to follow the whole graph (RoBERTa's token types are
    fed as zeros shaped like the input for that); 4-bit embeddings need the word table found in either graph."""
    folder = tmp_path / "head"
    models.load_classifier(tiny_family_model(family), DATA_LABELS).save_pretrained(folder)
    tokenizer = models.load_tokenizer(tiny_family_model(family))
    tokenizer.save_pretrained(folder)
    exported = export.run(folder, ExportConfig(), MAX_LENGTH, tmp_path / "m.onnx")
    fused = optimize.run(exported.onnx_path, 3, OptimizeConfig(), tmp_path / "f.onnx", family)
    config = QuantizeConfig(**settings).for_target("cpu-avx512-vnni")
    splits = load_splits(DataConfig(source=str(tiny_data)))
    feeds = quantize.calibration_feeds(tokenizer, splits.texts["train"], MAX_LENGTH, exported.input_names)
    record = quantize.quantize_graph(fused.onnx_path, config, feeds, tmp_path / "q.onnx")
    assert record["quantized_matmuls"] >= 3 * 3
    if config.embedding_bits == 4:
        assert record["op_counts"].get("GatherBlockQuantized") == 1
    else:
        assert record["op_counts"].get("QuantizeLinear", 0) > 0 and record["calibration_samples"] == 16
    texts = splits.texts["test"]
    fp32 = graphs.graph_logits(tmp_path / "f.onnx", tokenizer, texts, MAX_LENGTH)
    int8 = graphs.graph_logits(tmp_path / "q.onnx", tokenizer, texts, MAX_LENGTH, batch_size=1)
    assert np.abs(fp32 - int8).max() < 0.05
