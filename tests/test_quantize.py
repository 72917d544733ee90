"""The quantize stage's 4-bit word-embedding table on the tiny fixtures: the graph it makes, its size, its
agreement with fp32, and refused settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edgepack import export, graphs, optimize, quantize, teacher
from edgepack.cache import Cache
from edgepack.data import load_splits
from edgepack.errors import RecipeError
from edgepack.recipe import DataConfig, ExportConfig, OptimizeConfig, TeacherConfig, load_recipe
from edgepack.targets import QuantizeConfig, QuantMode

MAX_LENGTH = 32


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, tiny_model: Path) -> tuple:
    """The tiny BERT fine-tuned (so its answers differ between texts), exported and fused."""
    work = tmp_path_factory.mktemp("quantize")
    settings = TeacherConfig(model=str(tiny_model), epochs=8, learning_rate=3e-3, batch_size=8)
    taught = teacher.run(load_splits(DataConfig(source=str(tiny_data))), settings, MAX_LENGTH, Cache(work))
    exported = export.run(taught.model_dir, ExportConfig(), MAX_LENGTH, work / "fp32.onnx")
    optimized = optimize.run(exported.onnx_path, exported.model.layers, OptimizeConfig(), work / "fused.onnx")
    assert optimized.record["fused_operators"]["EmbedLayerNormalization"] == 1
    return optimized.onnx_path, exported.tokenizer, exported.input_names, taught.splits


def _four_bit(block_size: int | None = None, mode: str = "dynamic") -> QuantizeConfig:
    return QuantizeConfig(QuantMode(mode), embedding_bits=4, embedding_block_size=block_size).for_target(
        "cpu-avx2"
    )


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_a_4bit_embedding_table_is_smaller_and_keeps_the_other_fusions(
    tmp_path: Path, fused: tuple, mode: str
) -> None:
    onnx_path, tokenizer, names, splits = fused
    feeds = quantize.calibration_feeds(tokenizer, splits.texts["train"], MAX_LENGTH, names)
    int8 = QuantizeConfig(QuantMode(mode)).for_target("cpu-avx2")
    eight = quantize.quantize_graph(onnx_path, int8, feeds, tmp_path / "q8.onnx")
    four = quantize.run(
        onnx_path, _four_bit(mode=mode), tokenizer, names, splits, MAX_LENGTH, tmp_path / "q4.onnx"
    )
    counts = four.record["op_counts"]
    assert (eight["embedding_bits"], eight["embedding_block_size"]) == (8, None)
    assert (four.record["embedding_bits"], four.record["embedding_block_size"]) == (4, 64)
    assert counts["GatherBlockQuantized"] == 1
    assert not {"EmbedLayerNormalization", "QEmbedLayerNormalization"} & set(counts)
    for op in ("Attention", "QAttention", "BiasGelu"):
        assert counts.get(op) == eight["op_counts"].get(op), op
    # the embeddings' LayerNormalization, fused into (Q)EmbedLayerNormalization with the 8-bit table, runs alone
    assert counts["LayerNormalization"] == eight["op_counts"]["LayerNormalization"] + 1
    assert four.record["quantized_matmuls"] == eight["quantized_matmuls"]
    if (
        mode == "dynamic"
    ):  # static adds Q/DQ pairs around the unfused ops: a few KB, more than this table saves
        assert four.record["int8_bytes"] < eight["int8_bytes"]
    assert four.record["fp32_vs_int8_validation"]["label_agreement"] >= 0.8


@pytest.mark.parametrize("block_size", [16, 32])  # the default, 64, is wider than the 32 columns: one block
def test_a_4bit_table_runs_and_agrees_with_fp32(tmp_path: Path, fused: tuple, block_size: int) -> None:
    onnx_path, tokenizer, _, splits = fused
    out = tmp_path / "q4.onnx"
    quantize.quantize_graph(onnx_path, _four_bit(block_size), [], out)
    texts = [t for split in splits.texts.values() for t in split]
    fp32 = graphs.graph_logits(onnx_path, tokenizer, texts, MAX_LENGTH).argmax(1)
    four = graphs.graph_logits(out, tokenizer, texts, MAX_LENGTH, batch_size=1).argmax(1)
    assert len(np.unique(fp32)) >= 2, "the model gives one answer for every text: agreement would be trivial"
    assert (fp32 == four).mean() >= 0.8


def test_ids_past_the_4bit_table_are_still_an_error(tmp_path: Path, fused: tuple) -> None:
    """The runtime's probe relies on it; GatherBlockQuantized alone answers such ids with zeros."""
    onnx_path, tokenizer, *_ = fused
    out = tmp_path / "q4.onnx"
    quantize.quantize_graph(onnx_path, _four_bit(), [], out)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])

    def run(token: int) -> Any:
        ids = np.array([[2, token, 3]], np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        return session.run(["logits"], feeds)

    rows = len(tokenizer)
    run(rows - 1)
    with pytest.raises(Exception, match="out of data bounds"):
        run(rows)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"quantize.embedding_bits": 2}, r"\[quantize\] embedding_bits = 2 is invalid: expected 8 .* or 4"),
        (
            {"quantize.embedding_block_size": 64},
            r"embedding_block_size = 64 is invalid: expected unset \(--set quantize.embedding_block_size=none\), "
            "or embedding_bits = 4",
        ),
        (
            {"quantize.embedding_bits": 4, "quantize.embedding_block_size": 48},
            r"embedding_block_size = 48 is invalid: expected a power of two >= 16",
        ),
        (
            {"quantize.embedding_bits": 4, "quantize.embedding_block_size": 8},
            r"embedding_block_size = 8 is invalid: expected a power of two >= 16",
        ),
    ],
)
def test_bad_embedding_settings_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe("clinc-4l", overrides)


def test_the_embedding_settings_are_recorded_in_the_recipe() -> None:
    settings = load_recipe("clinc-4l", {"quantize.embedding_bits": 4}).quantize
    assert (settings.embedding_bits, settings.embedding_block_size) == (4, 64)
    assert load_recipe("clinc-4l").to_dict()["quantize"]["embedding_bits"] == 8


# -- static-integer: dynamic INT8's kernels with calibrated activation scales ----------------------------------


def _static_integer() -> QuantizeConfig:
    return QuantizeConfig(QuantMode.STATIC_INTEGER).for_target("cpu-avx2")


def test_static_integer_keeps_the_dynamic_kernels_with_fixed_scales(tmp_path: Path, fused: tuple) -> None:
    onnx_path, tokenizer, names, splits = fused
    feeds = quantize.calibration_feeds(tokenizer, splits.texts["train"], MAX_LENGTH, names)
    dynamic = quantize.quantize_graph(
        onnx_path, QuantizeConfig().for_target("cpu-avx2"), [], tmp_path / "d.onnx"
    )
    fixed = quantize.quantize_graph(onnx_path, _static_integer(), feeds, tmp_path / "f.onnx")
    counts = fixed["op_counts"]
    assert "DynamicQuantizeLinear" not in counts
    assert counts["QuantizeLinear"] == dynamic["op_counts"]["DynamicQuantizeLinear"] > 0
    for op in ("QAttention", "QEmbedLayerNormalization", "DequantizeLinear"):
        assert counts.get(op) == dynamic["op_counts"].get(op), op
    # the chain ORT fuses by itself only after DynamicQuantizeLinear, fused here: MatMulIntegerToFloat
    assert counts["MatMulIntegerToFloat"] == dynamic["op_counts"]["MatMulInteger"] > 0
    assert "MatMulInteger" not in counts
    assert (fixed["mode"], fixed["calibration_method"], fixed["calibration_samples"]) == (
        "static-integer",
        "minmax",
        len(feeds),  # fewer training texts than the 4,096 the preset asks for: all of them
    )


def test_calibrated_on_one_text_static_integer_gives_that_texts_dynamic_answer(
    tmp_path: Path, fused: tuple
) -> None:
    """Over a single text, the fixed scale and zero point are the ones DynamicQuantizeLinear computes for it."""
    onnx_path, tokenizer, names, splits = fused
    text, other = splits.texts["validation"][:2]
    quantize.quantize_graph(onnx_path, QuantizeConfig().for_target("cpu-avx2"), [], tmp_path / "d.onnx")
    feeds = quantize.calibration_feeds(tokenizer, [text], MAX_LENGTH, names)
    quantize.quantize_graph(onnx_path, _static_integer(), feeds, tmp_path / "f.onnx")

    def logits(graph: str, texts: list[str]) -> np.ndarray:
        return graphs.graph_logits(tmp_path / graph, tokenizer, texts, MAX_LENGTH, batch_size=1)

    # The same integers; the float scaling after them runs in another order (ORT fuses the dynamic graph's).
    np.testing.assert_allclose(logits("f.onnx", [text]), logits("d.onnx", [text]), rtol=0, atol=1e-6)
    apart = np.abs(logits("f.onnx", [other]) - logits("d.onnx", [other])).max()
    assert apart > 1e-4, "another text's answer differs: its dynamic scales are its own"


def test_a_static_integer_graph_answers_each_text_alike_in_any_batch(tmp_path: Path, fused: tuple) -> None:
    onnx_path, tokenizer, names, splits = fused
    texts = [t for split in splits.texts.values() for t in split]
    feeds = quantize.calibration_feeds(tokenizer, splits.texts["train"], MAX_LENGTH, names)
    quantize.quantize_graph(onnx_path, QuantizeConfig().for_target("cpu-avx2"), [], tmp_path / "d.onnx")
    quantize.quantize_graph(onnx_path, _static_integer(), feeds, tmp_path / "f.onnx")

    def logits(graph: str, batch_size: int) -> np.ndarray:
        return graphs.graph_logits(tmp_path / graph, tokenizer, texts, MAX_LENGTH, batch_size=batch_size)

    assert np.array_equal(logits("f.onnx", 16), logits("f.onnx", 1))  # padded batches of mixed lengths
    assert not np.array_equal(logits("d.onnx", 16), logits("d.onnx", 1)), (
        "dynamic INT8 shares a batch's scale"
    )
    fp32 = graphs.graph_logits(onnx_path, tokenizer, texts, MAX_LENGTH).argmax(1)
    assert len(np.unique(fp32)) >= 2, "the model gives one answer for every text: agreement would be trivial"
    assert (logits("f.onnx", 1).argmax(1) == fp32).mean() >= 0.8


def test_a_graph_without_dynamic_quantization_is_left_as_it_is(tmp_path: Path) -> None:
    """static-integer on a graph ONNX Runtime quantized nothing in: no scale to fix, no probe to run."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "plain", [x], [y])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    before = path.read_bytes()
    assert quantize.fix_activation_scales(path, [{"x": np.ones((1, 4), np.float32)}]) == 0
    assert path.read_bytes() == before
