"""The physical floor of a bundle's latency: its multiply-accumulates over this CPU's attainable GEMM rates.

floor = INT8 MACs / attainable INT8 rate + FP32 MACs / attainable FP32 rate, for one query at batch 1. It
ignores everything that is not a matrix product (layer norms, GELU, softmax, quantizing activations, the
embedding lookup, tokenization, the runtime's own work), so latency / floor says how far the whole path is from
the arithmetic it cannot avoid.

MACs are read from an ONNX Runtime profile of the bundle's graph run on the query itself: the kernels ORT
actually ran (after its load-time fusions) with the shapes they saw. A matrix-product kernel does
prod(output shape) x K MACs, K being the last dimension of its first input; a fused attention kernel does the
Q/K/V projection (K x the bias' width per token) plus S x S x (Q/K width + V width) for scores and context.

Rates come from a micro-benchmark on ONNX Runtime's own kernels (MLAS), at one large shape, on the same thread
count: FP32 `MatMul`, and INT8 `DynamicQuantizeMatMul` (what dynamic INT8 bundles run) with uint8 and with
int8 weights; the INT8 rate used is the faster of the two, the CPU's attainable one.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

GEMM_SHAPE = (512, 1024, 1024)  # M x K x N: large enough for MLAS to reach its best rate on one core
INT8_GEMMS = {
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QLinearMatMul",
    "QGemm",
    "QAttention",
}
FP32_GEMMS = {"MatMul", "FusedMatMul", "Gemm", "Attention", "MultiHeadAttention"}
ATTENTION = {"Attention", "QAttention"}


@dataclass
class Rates:
    """Attainable matrix-multiply rates on this CPU, in multiply-accumulates per second."""

    threads: int
    shape: tuple[int, int, int]
    fp32: float
    int8_u8_weights: float
    int8_s8_weights: float

    @property
    def int8(self) -> float:
        return max(self.int8_u8_weights, self.int8_s8_weights)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape), "int8": self.int8}


@dataclass
class GraphProfile:
    """One query through the graph: MACs by precision and kernel time (ms) by kind, as profiled (the profiler
    adds its own cost to every kernel, so these sum to more than the graph's unprofiled run)."""

    tokens: int
    int8_macs: int
    fp32_macs: int
    int8_gemm_ms: float
    fp32_gemm_ms: float
    other_ms: float

    def floor_ms(self, rates: Rates) -> float:
        return 1e3 * (self.int8_macs / rates.int8 + self.fp32_macs / rates.fp32)


# ---------------------------------------------------------------- rates


def _session(model: bytes, threads: int, profile_prefix: str | None = None) -> Any:
    import onnxruntime as ort
    from edgepack_runtime.classifier import session_options

    options = session_options(threads)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _gemm_model(weights: str, m: int, k: int, n: int) -> bytes:
    """One matrix product A[m,k] x B[k,n], B a constant: FP32 MatMul or INT8 DynamicQuantizeMatMul."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a = helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])
    opsets = [helper.make_opsetid("", 17)]
    if weights == "fp32":
        inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "B")]
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
    else:
        dtype = np.uint8 if weights == "u8" else np.int8
        inits = [
            numpy_helper.from_array(rng.integers(0, 127, (k, n)).astype(dtype), "B"),
            numpy_helper.from_array(np.full(n, 0.01, np.float32), "scale"),
            numpy_helper.from_array(np.zeros(n, dtype), "zero_point"),
        ]
        node = helper.make_node(
            "DynamicQuantizeMatMul", ["A", "B", "scale", "zero_point"], ["Y"], domain="com.microsoft"
        )
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    graph = helper.make_graph([node], "gemm", [a], [y], inits)
    return bytes(helper.make_model(graph, opset_imports=opsets).SerializeToString())


def median_run_seconds(session: Any, feeds: dict[str, np.ndarray], warmup: int, runs: int) -> float:
    """Median wall time of `session.run(None, feeds)` over `runs` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _rate(weights: str, threads: int, shape: tuple[int, int, int], repeats: int) -> float:
    m, k, n = shape
    session = _session(_gemm_model(weights, m, k, n), threads)
    feeds = {"A": np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)}
    return m * k * n / median_run_seconds(session, feeds, warmup=3, runs=repeats)


def gemm_rates(threads: int, shape: tuple[int, int, int] = GEMM_SHAPE, repeats: int = 15) -> Rates:
    """Median rates of ONNX Runtime's FP32 and INT8 matrix products at `shape` on `threads` threads."""
    return Rates(
        threads,
        shape,
        fp32=_rate("fp32", threads, shape, repeats),
        int8_u8_weights=_rate("u8", threads, shape, repeats),
        int8_s8_weights=_rate("s8", threads, shape, repeats),
    )


# ---------------------------------------------------------------- MACs


def _dims(shapes: list[dict[str, list[int]]]) -> list[list[int]]:
    return [next(iter(item.values())) for item in shapes]


def kernel_macs(op: str, inputs: list[list[int]], outputs: list[list[int]]) -> tuple[int, int]:
    """(INT8, FP32) multiply-accumulates of one kernel run, from the shapes ONNX Runtime's profiler recorded."""
    int8 = op in INT8_GEMMS
    if op in ATTENTION:
        batch, seq, hidden_in = inputs[0]
        v_width = outputs[0][-1]
        # The bias [Q+K+V widths] is the first 1-D input that wide; prepacked weights are not in the profile.
        qkv_width = next((d[0] for d in inputs[1:] if len(d) == 1 and d[0] > v_width), 3 * v_width)
        qk_width = (qkv_width - v_width) // 2
        projection = batch * seq * hidden_in * qkv_width
        scores_and_context = batch * seq * seq * (qk_width + v_width)  # float even in QAttention
        return (projection, scores_and_context) if int8 else (0, projection + scores_and_context)
    if int8 or op in FP32_GEMMS:
        macs = int(np.prod(outputs[0])) * inputs[0][-1]
        return (macs, 0) if int8 else (0, macs)
    return 0, 0


def _feeds(manifest: dict[str, Any], ids: list[int]) -> dict[str, np.ndarray]:
    """The graph's inputs for one query, as the runtime feeds them (types from the manifest's model.inputs)."""
    from edgepack_runtime.classifier import feeds

    return feeds([ids], {item["name"]: item["type"] for item in manifest["model"]["inputs"]})


def _kernel_events(profile: Path) -> list[list[dict[str, Any]]]:
    """Kernel events grouped by run (ORT writes one `model_run` event after each run's kernels)."""
    runs: list[list[dict[str, Any]]] = [[]]
    for event in json.loads(profile.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            runs[-1].append(event)
        elif event.get("cat") == "Session" and event["name"] == "model_run":
            runs.append([])
    return [run for run in runs if run]


def _summarize(tokens: int, runs: list[list[dict[str, Any]]]) -> GraphProfile:
    macs = {"int8": 0, "fp32": 0}
    for event in runs[0]:
        args = event["args"]
        op = args["op_name"]
        int8, fp32 = kernel_macs(op, _dims(args["input_type_shape"]), _dims(args["output_type_shape"]))
        macs["int8"] += int8
        macs["fp32"] += fp32
    timed = runs[1:] or runs  # the first run pays one-off costs
    ms = {"int8": 0.0, "fp32": 0.0, "other": 0.0}
    for run in timed:
        for event in run:
            op = event["args"]["op_name"]
            kind = "int8" if op in INT8_GEMMS else "fp32" if op in FP32_GEMMS else "other"
            ms[kind] += event["dur"] / 1e3 / len(timed)
    return GraphProfile(tokens, macs["int8"], macs["fp32"], ms["int8"], ms["fp32"], ms["other"])


def profile_graph(
    model: bytes, manifest: dict[str, Any], token_rows: Sequence[list[int]], threads: int, runs: int = 5
) -> dict[int, GraphProfile]:
    """A GraphProfile per distinct sequence length among `token_rows` (MACs depend on the length only)."""
    by_length = {len(ids): ids for ids in token_rows}
    with tempfile.TemporaryDirectory(prefix="edgepack-floor-") as tmp:
        out = {}
        for length, ids in sorted(by_length.items()):
            session = _session(model, threads, profile_prefix=str(Path(tmp) / f"len{length}"))
            feeds = _feeds(manifest, ids)
            for _ in range(runs + 1):
                session.run(None, feeds)
            out[length] = _summarize(length, _kernel_events(Path(session.end_profiling())))
        return out


def graph_ms(model: bytes, manifest: dict[str, Any], ids: list[int], threads: int, runs: int = 100) -> float:
    """Median wall time of the graph alone (InferenceSession.run, no profiling) on one query."""
    return 1e3 * median_run_seconds(_session(model, threads), _feeds(manifest, ids), warmup=10, runs=runs)


def bundle_floor(
    bundle: Path, manifest: dict[str, Any], texts: Sequence[str], rates: Rates, latency_p50_ms: float
) -> dict[str, Any]:
    """The floor of each latency query, and the bundle's median latency over the median floor."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    rows = [e.ids for e in tokenizer.encode_batch(list(texts))]
    model = (bundle / "model.onnx").read_bytes()
    profiles = profile_graph(model, manifest, rows, rates.threads)
    floors = [profiles[len(ids)].floor_ms(rates) for ids in rows]
    median_tokens = int(np.median([len(ids) for ids in rows]))
    typical = profiles[min(profiles, key=lambda n: abs(n - median_tokens))]
    typical_ids = next(ids for ids in rows if len(ids) == typical.tokens)
    floor_ms = float(np.median(floors))
    return {
        "queries": len(rows),
        "median_tokens": median_tokens,
        "floor_ms": floor_ms,
        "latency_over_floor": latency_p50_ms / floor_ms,
        "median_query": asdict(typical)
        | {
            "floor_ms": typical.floor_ms(rates),
            "graph_ms": graph_ms(model, manifest, typical_ids, rates.threads),
        },
    }
