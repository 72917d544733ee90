"""Quantize stage: INT8 with ONNX Runtime, dynamic (default) or static with calibration, per-target presets.

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

from edgepack.targets import ResolvedQuantization

log = logging.getLogger(__name__)

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
    record: dict[str, Any]


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


def calibration_feeds(
    tokenizer: Any, texts: list[str], max_length: int, names: list[str]
) -> list[dict[str, np.ndarray]]:
    """One unpadded feed per calibration text, as the calibrator expects."""
    feeds = []
    for text in texts:
        encoded = tokenizer([text], truncation=True, max_length=max_length, return_tensors="np")
        feeds.append({k: encoded[k].astype(np.int64) for k in names})
    return feeds


def _qtype(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "int8" else QuantType.QUInt8


def run(
    onnx_path: Path, settings: ResolvedQuantization, calibration_feeds: list[dict[str, np.ndarray]], out: Path
) -> QuantizeResult:
    import onnx
    from onnxruntime import quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True}
    if settings.mode == "dynamic":
        q.quantize_dynamic(
            str(onnx_path),
            str(out),
            weight_type=_qtype(settings.weight_type),
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            extra_options=extra,
        )
    else:
        # The QDQ quantizer needs every tensor's type; plain ONNX shape inference does not know the fused
        # contrib ops (Attention, SkipLayerNormalization, ...), ORT's symbolic shape inference does.
        shaped = out.with_name(f"{out.stem}-shaped.onnx")
        quant_pre_process(str(onnx_path), str(shaped), skip_optimization=True, skip_symbolic_shape=False)
        onnx_path = shaped
        feeds = calibration_feeds[: settings.calibration_samples]
        method = {
            "minmax": q.CalibrationMethod.MinMax,
            "entropy": q.CalibrationMethod.Entropy,
            "percentile": q.CalibrationMethod.Percentile,
        }[settings.calibration_method]
        q.quantize_static(
            str(onnx_path),
            str(out),
            _CalibrationReader(feeds),
            quant_format=q.QuantFormat.QDQ,
            activation_type=_qtype(settings.activation_type),
            weight_type=_qtype(settings.weight_type),
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            calibrate_method=method,
            extra_options=extra | {"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    counts, int8_matmuls = graph_structure(out)
    record = asdict(settings) | {
        "weight_type": str(settings.weight_type),
        "activation_type": str(settings.activation_type),
        "calibration_samples": min(len(calibration_feeds), settings.calibration_samples)
        if settings.mode == "static"
        else 0,
        "quantized_matmuls": int8_matmuls,
        "op_counts": counts,
        "int8_bytes": out.stat().st_size,
        "fp32_bytes": onnx_path.stat().st_size,
    }
    if int8_matmuls == 0:
        log.warning("quantize: no MatMul was quantized; the graph will run at fp32 speed")
    log.info(
        "quantize: %s INT8, %d quantized MatMul/Attention ops, %.1f MB",
        settings.mode,
        record["quantized_matmuls"],
        record["int8_bytes"] / 1e6,
    )
    return QuantizeResult(out, record)


def agreement(fp32_logits: np.ndarray, int8_logits: np.ndarray) -> dict[str, float]:
    """fp32-vs-int8 label agreement and largest probability difference over the same (validation) rows."""
    from edgepack.metrics import softmax

    a, b = softmax(fp32_logits), softmax(int8_logits)
    return {
        "label_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "max_probability_diff": float(np.abs(a - b).max()),
        "rows": int(a.shape[0]),
    }
