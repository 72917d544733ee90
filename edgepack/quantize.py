"""Quantize stage: INT8 with ONNX Runtime, dynamic, static (QDQ) or static-integer, with per-target presets
(edgepack.targets); then the INT8 graph is checked against the fp32 one on validation.

`static-integer` is dynamic INT8 with every activation scale fixed: ONNX Runtime's dynamic graph, each
DynamicQuantizeLinear replaced by a QuantizeLinear whose scale and zero point come from the tensor's min and max
over training texts (`fix_activation_scales`). It keeps the dynamic graph's integer kernels (QAttention,
MatMulInteger), so it runs as fast, and a text's answer no longer depends on the texts batched with it, so the
runtime batches it. ONNX Runtime's own static QOperator graph of the default CLINC student ran 1.4x slower
per query, 0.2 points lower on validation (it runs attention in float); its QDQ graph, our `static`, is
slower still.

`run` is the stage, shaped like Optimum's `ORTQuantizer` (`fit` picks calibration data and computes ranges,
`quantize` writes the graph): it picks calibration texts from the training split, quantizes the graph
(`quantize_graph`), and measures fp32-vs-INT8 agreement and the fp32 graph's own scores.

With `embedding_bits = 4` the word-embedding table is stored in 4-bit blocks (ONNX Runtime's
GatherBlockQuantized, from its MatMulNBitsQuantizer); the fused EmbedLayerNormalization only takes fp32 or INT8
tables, so it is written back as plain ops (Gathers, Add, LayerNormalization) first. Every other fusion stays.

We call `onnxruntime.quantization` directly rather than Optimum's `ORTQuantizer`: on an ORT-fused graph
(ORT 1.32, Optimum 2.1) the latter fails with "Unable to find data type for weight_name"; passing
`DefaultTensorType=FLOAT`, which Optimum does not expose, fixes it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepack import metrics
from edgepack.data import LabelledSplits
from edgepack.errors import StageError
from edgepack.graphs import graph_logits
from edgepack.targets import QuantizeConfig, QuantMode

log = logging.getLogger(__name__)
CALIBRATION_SEED = 0  # which training texts calibrate static quantization (recorded in the manifest's seeds)

_QUANTIZED_MATMUL_OPS = (
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "QAttention",
    "QLinearMatMul",
    "MatMulIntegerToFloat",
    "QOrderedMatMul",
)


@dataclass
class QuantizeResult:
    onnx_path: Path
    record: dict[str, Any]  # settings, graph structure, sizes, fp32_vs_int8_validation
    fp32_metrics: dict[str, Any]  # the fp32 graph's validation and test scores (metrics.split_report)


def graph_structure(onnx_path: Path) -> tuple[dict[str, int], int]:
    """Operator counts, and how many MatMul-like nodes run on INT8 weights.

    Dynamic (QOperator) graphs have integer ops (MatMulInteger, QAttention, ...); static QDQ graphs keep
    MatMul / Attention nodes fed by DequantizeLinear, which ONNX Runtime fuses into INT8 kernels.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    counts = dict(Counter(node.op_type for node in graph.node))
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    integer = sum(counts.get(op, 0) for op in _QUANTIZED_MATMUL_OPS)
    qdq = sum(
        1
        for node in graph.node
        if node.op_type in ("MatMul", "Gemm", "Attention") and any(i in dequantized for i in node.input[1:])
    )
    return counts, integer + qdq


class _CalibrationReader:
    """Feeds ONNX Runtime's calibrator one tokenized training sample at a time."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self._iter: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)


def calibration_texts(texts: list[str], count: int, seed: int = CALIBRATION_SEED) -> list[str]:
    """`count` texts drawn without replacement (seeded), in their original order."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(texts), size=min(count, len(texts)), replace=False)
    return [texts[i] for i in sorted(picked)]


def calibration_feeds(
    tokenizer: Any, texts: list[str], max_length: int, names: list[str]
) -> list[dict[str, np.ndarray]]:
    """One unpadded feed per calibration text, as the calibrator expects."""
    feeds = []
    for text in texts:
        encoded = tokenizer([text], truncation=True, max_length=max_length, return_tensors="np")
        feeds.append({k: encoded[k].astype(np.int64) for k in names})
    return feeds


def _qtype(name: object) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "int8" else QuantType.QUInt8


def run(
    fused: Path,
    config: QuantizeConfig,
    tokenizer: Any,
    input_names: list[str],
    splits: LabelledSplits,
    max_length: int,
    out: Path,
) -> QuantizeResult:
    """The stage: INT8 graph at `out`, its fp32-vs-INT8 agreement on validation, and the fp32 graph's scores."""
    feeds = []
    if config.is_calibrated:
        texts = calibration_texts(splits.texts["train"], config.calibration_samples or 0)
        feeds = calibration_feeds(tokenizer, texts, max_length, input_names)
    record = quantize_graph(fused, config, feeds, out)
    fp32 = {s: graph_logits(fused, tokenizer, splits.texts[s], max_length) for s in ("validation", "test")}
    # One text per run: dynamic INT8 scales activations per batch, as the runtime does (batch_invariant).
    int8 = graph_logits(out, tokenizer, splits.texts["validation"], max_length, batch_size=1)
    record["fp32_vs_int8_validation"] = agreement(fp32["validation"], int8)
    return QuantizeResult(out, record, metrics.split_report(fp32, splits.label_ids, splits.oos_id()))


def _static_op_types() -> list[str]:
    """What static INT8 quantizes: ORT's default (every operator it has a quantized form of) but the residual
    Adds and LayerNormalization, which stay float as they were inside SkipLayerNormalization (edgepack.optimize
    keeps them apart). Q/DQ on them took a tiny test model's INT8-FP32 agreement from >= 0.8 to 0.6; without,
    the default student's static graph has the same Q/DQ nodes and validation accuracy as when fused."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) - {"Add", "LayerNormalization"})


def quantize_graph(
    onnx_path: Path, settings: QuantizeConfig, calibration_feeds: list[dict[str, np.ndarray]], out: Path
) -> dict[str, Any]:
    """Write the INT8 graph of `onnx_path` to `out` (static and static-integer calibrate on
    `calibration_feeds`); returns the record: the settings, quantized operator counts and sizes."""
    import onnx
    from onnxruntime import quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    optional = {"embedding_block_size"} | (
        set() if settings.is_calibrated else {"calibration_method", "calibration_samples"}
    )
    unset = [k for k, v in asdict(settings).items() if v is None and k not in optional]
    if unset:
        raise ValueError(
            f"quantize_graph needs complete settings, {unset} are unset: use QuantizeConfig(...).for_target(name) "
            "or a preset such as QuantizeConfig.avx2()"
        )
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True}
    fp32_bytes = onnx_path.stat().st_size
    feeds = calibration_feeds[: settings.calibration_samples] if settings.is_calibrated else []
    excluded: list[str] = []
    if settings.embedding_bits == 4:  # the word Gather stays fp32 through INT8, then goes 4-bit
        onnx_path, word = unfuse_embeddings(onnx_path, out.with_name(f"{out.stem}-unfused.onnx"))
        excluded = [word]
    if not settings.is_static:
        q.quantize_dynamic(
            str(onnx_path),
            str(out),
            nodes_to_exclude=excluded,
            weight_type=_qtype(settings.weight_type),
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            extra_options=extra,
        )
    else:
        # The QDQ quantizer needs every tensor's type; plain ONNX shape inference does not know the fused
        # contrib ops (Attention, BiasGelu, ...), ORT's symbolic shape inference does.
        shaped = out.with_name(f"{out.stem}-shaped.onnx")
        quant_pre_process(str(onnx_path), str(shaped), skip_optimization=True, skip_symbolic_shape=False)
        onnx_path = shaped
        method = {
            "minmax": q.CalibrationMethod.MinMax,
            "entropy": q.CalibrationMethod.Entropy,
            "percentile": q.CalibrationMethod.Percentile,
        }[str(settings.calibration_method)]
        q.quantize_static(
            str(onnx_path),
            str(out),
            _CalibrationReader(feeds),
            quant_format=q.QuantFormat.QDQ,
            op_types_to_quantize=_static_op_types(),
            activation_type=_qtype(settings.activation_type),
            weight_type=_qtype(settings.weight_type),
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            calibrate_method=method,
            nodes_to_exclude=excluded,
            extra_options=extra | {"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    if excluded:
        assert settings.embedding_block_size  # QuantizeConfig sets it with embedding_bits = 4
        quantize_word_embedding(out, excluded[0], settings.embedding_block_size)
        log.info("quantize: word embeddings in 4-bit blocks of %d", settings.embedding_block_size)
    if settings.mode is QuantMode.STATIC_INTEGER:
        fix_activation_scales(out, feeds)
    counts, int8_matmuls = graph_structure(out)
    record = asdict(settings) | {
        "mode": str(settings.mode),
        "weight_type": str(settings.weight_type),
        "activation_type": str(settings.activation_type),
        "calibration_method": settings.calibration_method and str(settings.calibration_method),
        "calibration_samples": len(feeds) if settings.is_calibrated else None,
        "quantized_matmuls": int8_matmuls,
        "op_counts": counts,
        "int8_bytes": out.stat().st_size,
        "fp32_bytes": fp32_bytes,
    }
    if int8_matmuls == 0:
        log.warning("quantize: no MatMul was quantized; the graph will run at fp32 speed")
    log.info(
        "quantize: %s INT8, %d quantized MatMul/Attention ops, %.1f MB",
        settings.mode,
        record["quantized_matmuls"],
        record["int8_bytes"] / 1e6,
    )
    return record


def fix_activation_scales(onnx_path: Path, feeds: list[dict[str, np.ndarray]]) -> int:
    """Replace, in place, each DynamicQuantizeLinear of a dynamic INT8 graph by a QuantizeLinear with the scale
    and zero point it would compute over all of `feeds` at once (uint8, ONNX Runtime's compute_scale_zp over
    the tensor's min and max, zero included); returns how many. The ranges come from the graph itself, run one
    feed at a time: ORT's calibrators find only 7 of the default CLINC graph's 14 such tensors (they skip what
    ONNX shape inference cannot type, the outputs of the contrib ops QAttention and BiasGelu)."""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    if not feeds:
        raise ValueError("fix_activation_scales needs at least one calibration feed")
    model = onnx.load(str(onnx_path))
    dynamic = {id(n): n for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"}
    if not dynamic:  # nothing was quantized (quantize_graph warns): no scale to fix
        return 0
    lowest, highest = _ranges(model, [n.input[0] for n in dynamic.values()], feeds)
    qmin, qmax = get_qmin_qmax_for_qType(onnx.TensorProto.UINT8)
    rewritten = []
    for node in model.graph.node:
        if id(node) not in dynamic:
            rewritten.append(node)
            continue
        x, (q, scale, zero_point) = node.input[0], node.output
        zp, step = compute_scale_zp(np.float32(lowest[x]), np.float32(highest[x]), qmin, qmax)
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(step, dtype=np.float32), scale),
                numpy_helper.from_array(np.array(zp, dtype=np.uint8), zero_point),
            ]
        )
        rewritten.append(helper.make_node("QuantizeLinear", [x, scale, zero_point], [q], name=node.name))
    del model.graph.node[:]
    model.graph.node.extend(rewritten)
    fused = _fuse_integer_matmuls(model.graph)
    if fused and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(onnx_path))
    log.info(
        "quantize: %d activation scales fixed by min-max over %d texts; %d MatMulIntegerToFloat",
        len(dynamic),
        len(feeds),
        fused,
    )
    return len(dynamic)


def _ranges(
    model: Any, tensors: list[str], feeds: list[dict[str, np.ndarray]]
) -> tuple[dict[str, float], dict[str, float]]:
    """The min and max each float tensor takes over `feeds` (the graph run with them as extra outputs)."""
    import onnxruntime as ort
    from edgepack_runtime.classifier import session_options
    from onnx import TensorProto, helper
    from tqdm.auto import tqdm

    probe = type(model)()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    session = ort.InferenceSession(
        probe.SerializeToString(), session_options(0), providers=["CPUExecutionProvider"]
    )
    lowest = dict.fromkeys(tensors, np.inf)
    highest = dict.fromkeys(tensors, -np.inf)
    for feed in tqdm(feeds, desc="calibrate", unit="text", leave=False, disable=len(feeds) < 500):
        for name, value in zip(tensors, session.run(tensors, feed), strict=True):
            lowest[name] = min(lowest[name], float(value.min()))
            highest[name] = max(highest[name], float(value.max()))
    return lowest, highest


def _fuse_integer_matmuls(graph: Any) -> int:
    """Each QuantizeLinear -> MatMulInteger -> Cast -> Mul(a_scale * b_scale) [-> Add(bias)] as one
    com.microsoft MatMulIntegerToFloat, in place; returns how many. ONNX Runtime fuses this chain itself only
    after a DynamicQuantizeLinear; left apart, it made the default CLINC graph 2-3% slower."""
    from onnx import helper, numpy_helper

    producer = {out: node for node in graph.node for out in node.output}
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    vectors = {t.name for t in graph.initializer if numpy_helper.to_array(t).ndim == 1}

    def only_user(name: str, op_type: str) -> Any:
        found = users.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    def other_input(node: Any, name: str) -> str:
        return str(node.input[1] if node.input[0] == name else node.input[0])

    def chain_after(node: Any) -> tuple[list[Any], list[str], str] | None:
        """The nodes to fold into `node` (a MatMulInteger), the fused node's inputs and its output."""
        quantized = producer.get(node.input[0])
        if quantized is None or quantized.op_type != "QuantizeLinear" or len(node.input) != 4:
            return None
        cast = only_user(node.output[0], "Cast")
        mul = cast and only_user(cast.output[0], "Mul")
        scales = mul and producer.get(other_input(mul, cast.output[0]))
        a_scale = quantized.input[1]
        if not scales or scales.op_type != "Mul" or a_scale not in scales.input:
            return None
        if len(users[scales.output[0]]) > 1:  # the scale product feeds something else too
            return None
        a, b, a_zero, b_zero = node.input
        inputs = [a, b, a_scale, other_input(scales, a_scale), a_zero, b_zero]
        chain, out = [cast, mul, scales], mul.output[0]
        add = only_user(out, "Add")
        if add is not None and other_input(add, out) in vectors:  # the bias
            chain, inputs, out = [*chain, add], [*inputs, other_input(add, out)], add.output[0]
        return chain, inputs, out

    dropped: set[int] = set()
    count = 0
    for node in graph.node:
        found = chain_after(node) if node.op_type == "MatMulInteger" else None
        if found is None:
            continue
        chain, inputs, out = found
        fused = helper.make_node(
            "MatMulIntegerToFloat", inputs, [out], name=node.name, domain="com.microsoft"
        )
        node.CopyFrom(fused)
        dropped |= {id(n) for n in chain}
        count += 1
    kept = [n for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    return count


def unfuse_embeddings(onnx_path: Path, out: Path) -> tuple[Path, str]:
    """Write `onnx_path` to `out` with its EmbedLayerNormalization (if any) as plain ops, the other fusions kept;
    returns `out` and the name of the word-embedding Gather (the one with the most rows)."""
    import onnx

    model = onnx.load(str(onnx_path))
    graph = model.graph
    fused = next((k for k, n in enumerate(graph.node) if n.op_type == "EmbedLayerNormalization"), None)
    if fused is not None:
        plain = _plain_embeddings(graph.node[fused], graph)
        del graph.node[fused]
        for k, node in enumerate(plain):
            graph.node.insert(fused + k, node)
    rows = {t.name: t.dims[0] for t in graph.initializer if len(t.dims) == 2}
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in rows]
    if not gathers:
        raise StageError(
            "quantize: embedding_bits = 4 found no embedding table (a Gather on a constant 2-D table, or "
            "EmbedLayerNormalization) in the graph; set [quantize] embedding_bits = 8."
        )
    word = max(gathers, key=lambda n: rows[n.input[0]])
    word.name = word.name or "word_embeddings/Gather"
    onnx.save(model, str(out))
    return out, word.name


def _plain_embeddings(node: Any, graph: Any) -> list[Any]:
    """EmbedLayerNormalization as ONNX ops: Gathers of the word, position and token-type tables, their sum,
    LayerNormalization, and the Attention mask index (tokens per row, as ReduceSum)."""
    from onnx import helper, numpy_helper

    ids, segments, word, position, segment_table, gamma, beta, mask, positions = [*node.input, *[""] * 9][:9]
    out, mask_index, summed = [*node.output, "", ""][:3]
    p = f"{node.name or 'EmbedLayerNormalization'}/"
    for name, value in (("zero", 0), ("one", 1), ("axis1", [1])):
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), p + name))
    nodes: list[Any] = []

    def op(op_type: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    total = op("Gather", [word, ids], p + "word")
    if not positions:  # 0 .. length - 1
        length = op("Gather", [op("Shape", [ids], p + "shape"), p + "one"], p + "length")
        positions = op("Range", [p + "zero", length, p + "one"], p + "positions")
    total = op("Add", [total, op("Gather", [position, positions], p + "position")], p + "sum")
    if segments:
        total = op("Add", [total, op("Gather", [segment_table, segments], p + "segment")], p + "sum2")
    if summed:
        op("Identity", [total], summed)
    epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
    op("LayerNormalization", [total, gamma, beta], out, epsilon=epsilon)
    if mask_index:
        if not mask:
            raise StageError(
                "quantize: embedding_bits = 4 cannot rewrite an EmbedLayerNormalization without a mask"
            )
        op("ReduceSum", [mask, p + "axis1"], mask_index, keepdims=0)
    return nodes


def quantize_word_embedding(onnx_path: Path, gather: str, block_size: int) -> None:
    """Store the table of the Gather named `gather` in 4-bit blocks of `block_size` along the hidden axis, a
    scale and zero point each (GatherBlockQuantized), in place. A zero-width Gather beside it keeps ids past
    the table an error, as with INT8 (GatherBlockQuantized answers them with zeros on CPU)."""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
    model = onnx.load(str(onnx_path))
    others = [n.name for n in model.graph.node if n.op_type == "Gather" and n.name != gather]
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=4,
        block_size=block_size,
        is_symmetric=False,
        op_types_to_quantize=("Gather",),
        quant_axes=(("Gather", 1),),
        nodes_to_exclude=others,
    )
    with np.errstate(invalid="ignore"):  # all-zero blocks (the [PAD] row) get scale 0, handled by ORT
        quantizer.process()  # also raises the opset to 21 and the IR version to 10 (4-bit types)
    graph = quantizer.model.model.graph
    k, node = next((k, n) for k, n in enumerate(graph.node) if n.op_type == "GatherBlockQuantized")
    rows = next(t.dims[0] for t in graph.initializer if t.name == node.input[0])
    looked_up, checked, empty = node.output[0], f"{gather}/checked", f"{gather}/no_columns"
    node.output[0] = f"{gather}/unchecked"
    graph.initializer.append(numpy_helper.from_array(np.zeros((rows, 0), np.float32), empty))
    graph.node.insert(k + 1, helper.make_node("Gather", [empty, node.input[1]], [checked], name=checked))
    concat = helper.make_node(
        "Concat", [node.output[0], checked], [looked_up], name=f"{gather}/concat", axis=-1
    )
    graph.node.insert(k + 2, concat)
    onnx.save(quantizer.model.model, str(onnx_path))


def agreement(fp32_logits: np.ndarray, int8_logits: np.ndarray) -> dict[str, float]:
    """fp32-vs-int8 label agreement and largest probability difference over the same (validation) rows."""
    a, b = metrics.softmax(fp32_logits), metrics.softmax(int8_logits)
    return {
        "label_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "max_probability_diff": float(np.abs(a - b).max()),
        "rows": int(a.shape[0]),
    }
