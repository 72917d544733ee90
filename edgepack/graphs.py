"""Run an intermediate ONNX graph of the build (fp32, fused or INT8) on texts, with the model's tokenizer.

The runtime runs finished bundles; the stages use this to measure the graphs they make before a bundle exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def graph_outputs(
    onnx_path: Path,
    tokenizer: Any,
    texts: list[str],
    max_length: int,
    outputs: Sequence[str] = ("logits",),
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """The named outputs for texts, in order (batches of similar length, so padding stays small). Dynamic
    INT8 graphs scale activations per batch: batch_size=1 gives what the runtime computes."""
    import onnxruntime as ort
    from edgepack_runtime.classifier import session_options
    from tqdm.auto import tqdm

    session = ort.InferenceSession(str(onnx_path), session_options(0), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    order = np.argsort([len(t) for t in texts], kind="stable")
    found: dict[str, np.ndarray] = {}
    steps = range(0, len(texts), batch_size)
    for start in tqdm(steps, desc=onnx_path.name, unit="batch", leave=False, disable=len(steps) < 100):
        idx = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="np"
        )
        values = session.run(list(outputs), {k: batch[k].astype(np.int64) for k in names})
        for name, value in zip(outputs, values, strict=True):
            if name not in found:
                found[name] = np.zeros((len(texts), *value.shape[1:]), dtype=np.float32)
            found[name][idx] = value
    if not found:
        raise ValueError("graph_outputs: no texts")
    return found


def graph_logits(
    onnx_path: Path, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 64
) -> np.ndarray:
    """Logits of the graph for texts, in order (see graph_outputs)."""
    return graph_outputs(onnx_path, tokenizer, texts, max_length, ("logits",), batch_size)["logits"]
