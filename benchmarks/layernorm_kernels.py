"""Why edgepack's graphs keep residual Add + LayerNormalization apart: ONNX Runtime's CPU kernel for the fused
com.microsoft SkipLayerNormalization against the two operators it replaces, on encoder-shaped tensors.

    python benchmarks/layernorm_kernels.py --threads 1

Each graph is one operator (or the Add, bias Add and LayerNormalization the fusion replaces) on [batch, tokens,
hidden] float tensors; sessions run with graph fusions as edgepack's runtime does (SkipLayerNormFusion off, so
the unfused graph stays unfused); rounds alternate between the two; the figure is the median over rounds of each
round's median time per call.
Both graphs' outputs are compared on the same inputs. Writes the `layernorm_kernels` section of RESULTS.md.
"""

from __future__ import annotations

import platform
import statistics
from importlib.metadata import version
from typing import Any

import click
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# [batch, tokens, hidden]: one CLINC query (11 tokens on average) and a batch of 32, for MiniLM (384) and BERT-base.
SHAPES = ((1, 11, 384), (32, 11, 384), (1, 11, 768), (32, 11, 768))
EPSILON = 1e-12


def _graph(fused: bool, hidden: int) -> bytes:
    rng = np.random.default_rng(0)
    params = [
        numpy_helper.from_array(rng.normal(size=hidden).astype(np.float32), n) for n in ("g", "b", "bias")
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "tokens", hidden]) for n in "xs"]
    if fused:
        nodes = [
            helper.make_node(
                "SkipLayerNormalization",
                ["x", "s", "g", "b", "bias"],
                ["y"],
                domain="com.microsoft",
                epsilon=EPSILON,
            )
        ]
    else:
        nodes = [
            helper.make_node("Add", ["x", "bias"], ["xb"]),
            helper.make_node("Add", ["xb", "s"], ["sum"]),
            helper.make_node("LayerNormalization", ["sum", "g", "b"], ["y"], axis=-1, epsilon=EPSILON),
        ]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "layernorm", inputs, [output], params)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def measure(threads: int, rounds: int, calls: int) -> list[dict[str, Any]]:
    import onnxruntime as ort
    from edgepack_runtime.classifier import session_options

    from edgepack.bench.floor import median_run_seconds

    rows = []
    for batch, tokens, hidden in SHAPES:
        rng = np.random.default_rng(1)
        feeds = {n: rng.normal(size=(batch, tokens, hidden)).astype(np.float32) for n in "xs"}
        sessions = {
            k: ort.InferenceSession(
                _graph(k == "fused", hidden), session_options(threads), providers=["CPUExecutionProvider"]
            )
            for k in ("fused", "apart")
        }
        outputs = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(rounds):
            for k, s in sessions.items():
                times[k].append(1e6 * median_run_seconds(s, feeds, warmup=0, runs=calls))
        fused, apart = (statistics.median(times[k]) for k in ("fused", "apart"))
        rows.append(
            {
                "shape": (batch, tokens, hidden),
                "fused_us": fused,
                "apart_us": apart,
                "ratio": fused / apart,
                "max_abs_diff": float(np.abs(outputs["fused"] - outputs["apart"]).max()),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], threads: int, rounds: int, calls: int) -> str:
    from results_md import cpu_description

    lines = [
        "## SkipLayerNormalization against Add + LayerNormalization (`benchmarks/layernorm_kernels.py`)",
        "",
        f"`python benchmarks/layernorm_kernels.py --threads {threads}`: one ONNX Runtime session per graph, "
        f"{rounds} alternating rounds of {calls} calls, microseconds per call (median over rounds of each round's "
        "median); inputs [batch, tokens, hidden] float32. "
        "Add + LayerNormalization is what edgepack's graphs run since session 13 "
        "(edgepack.optimize), SkipLayerNormalization what ORT's transformer optimizer fuses them into.",
        "",
        "| batch x tokens x hidden | SkipLayerNormalization us | Add + bias Add + LayerNormalization us | "
        "fused / apart | max abs output difference |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        shape = " x ".join(str(d) for d in r["shape"])
        lines.append(
            f"| {shape} | {r['fused_us']:.1f} | {r['apart_us']:.1f} | {r['ratio']:.1f}x | {r['max_abs_diff']:.1e} |"
        )
    lines += [
        "",
        f"Machine: {cpu_description()}; {threads} thread(s); Python {platform.python_version()}, "
        f"onnxruntime {version('onnxruntime')}, onnx {onnx.__version__}.",
    ]
    return "\n".join(lines)


@click.command()
@click.option("--threads", type=int, default=1, show_default=True, help="ONNX Runtime intra-op threads.")
@click.option("--rounds", type=int, default=7, show_default=True)
@click.option("--calls", type=int, default=300, show_default=True, help="Calls per round and graph.")
@click.option("--write/--no-write", default=True, show_default=True, help="Write the RESULTS.md section.")
def main(threads: int, rounds: int, calls: int, write: bool) -> None:
    from results_md import write_section

    rows = measure(threads, rounds, calls)
    text = markdown(rows, threads, rounds, calls)
    click.echo(text)
    if write:
        write_section("layernorm_kernels", text)


if __name__ == "__main__":
    main()
