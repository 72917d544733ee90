"""Optimize stage: ONNX Runtime's transformer graph fusion, with the fused operators counted and checked."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack.errors import StageError
from edgepack.recipe import OptimizeConfig

log = logging.getLogger(__name__)


@dataclass
class OptimizeResult:
    onnx_path: Path
    record: dict[str, Any]


def expected_fusions(num_layers: int) -> dict[str, int]:
    """What a fully fused BERT encoder of `num_layers` layers holds."""
    return {
        "EmbedLayerNormalization": 1,
        "Attention": num_layers,
        "SkipLayerNormalization": 2 * num_layers,
        "Gelu": num_layers,
    }


def fused_counts(stats: dict[str, int]) -> dict[str, int]:
    gelu = sum(stats.get(k, 0) for k in ("Gelu", "BiasGelu", "FastGelu"))
    counts = {k: v for k, v in stats.items() if v}
    counts["Gelu"] = gelu
    return counts


def run(onnx_path: Path, num_layers: int, config: OptimizeConfig, out: Path) -> OptimizeResult:
    """Fuse the BERT-family graph at `onnx_path` (an encoder of `num_layers` layers) into `out`."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    model_type = "bert"
    options = FusionOptions(model_type)
    # num_heads / hidden_size 0 = read them from the graph, which also works after head pruning.
    optimized = optimizer.optimize_model(
        str(onnx_path),
        model_type=model_type,
        num_heads=0,
        hidden_size=0,
        optimization_options=options,
        opt_level=0,
    )
    counts = fused_counts(optimized.get_fused_operator_statistics())
    optimized.save_model_to_file(str(out))
    expected = expected_fusions(num_layers)
    missing = {k: (counts.get(k, 0), v) for k, v in expected.items() if counts.get(k, 0) < v}
    record = {
        "tool": "onnxruntime.transformers.optimizer",
        "model_type": model_type,
        "fused_operators": counts,
        "expected": expected,
        "complete": not missing,
    }
    if missing and config.require_fusions:
        found = ", ".join(f"{k}: {got} of {want}" for k, (got, want) in missing.items())
        raise StageError(
            f"optimize: expected fusions did not happen ({found}). The export likely used an attention "
            "implementation the fuser does not recognise (use eager attention), or the model is not BERT-like. "
            "Set [optimize] require_fusions = false to ship the unfused graph anyway."
        )
    log.info("optimize: fused %s", counts)
    return OptimizeResult(out, record)
