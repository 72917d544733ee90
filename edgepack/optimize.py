"""Optimize stage: ONNX Runtime's transformer graph fusion, with the fused operators counted and checked against
what ORT fuses for the model's family (edgepack.architectures). A family ORT cannot fuse ships unfused.

One fusion stays off: residual Add + LayerNormalization into SkipLayerNormalization. ONNX Runtime 1.32's CPU kernel
for it is a scalar loop with a division per element, 3-7x slower than the two operators it replaces
(benchmarks/layernorm_kernels.py); without it the default bundle's graph takes 24% less time (RESULTS.md, "Session
13"). The runtime keeps ORT from fusing them back when it loads a graph (edgepack_runtime.classifier)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack import architectures
from edgepack.errors import StageError
from edgepack.recipe import OptimizeConfig

log = logging.getLogger(__name__)


@dataclass
class OptimizeResult:
    onnx_path: Path
    record: dict[str, Any]


def expected_fusions(num_layers: int, architecture: str = "bert") -> dict[str, int]:
    """What a fully fused encoder of `num_layers` layers of the family of `architecture` (a model_type) holds;
    empty for a family ORT does not fuse."""
    family = architectures.family_of(architecture)
    return family.expected_fusions(num_layers) if family else {}


def fused_counts(stats: dict[str, int]) -> dict[str, int]:
    gelu = sum(stats.get(k, 0) for k in ("Gelu", "BiasGelu", "FastGelu"))
    counts = {k: v for k, v in stats.items() if v}
    counts["Gelu"] = gelu
    return counts


def run(
    onnx_path: Path, num_layers: int, config: OptimizeConfig, out: Path, architecture: str = "bert"
) -> OptimizeResult:
    """Fuse the graph at `onnx_path` (an encoder of `num_layers` layers, config model_type `architecture`)
    into `out`."""
    family = architectures.family_of(architecture)
    if family is None:
        return _unfused(onnx_path, architecture, out)
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    model_type = family.ort_model_type
    options = FusionOptions(model_type)
    options.enable_skip_layer_norm = False  # slow on CPU: see the module's docstring
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
    expected = family.expected_fusions(num_layers)
    missing = {k: (counts.get(k, 0), v) for k, v in expected.items() if counts.get(k, 0) < v}
    record = {
        "tool": "onnxruntime.transformers.optimizer",
        "family": family.name,
        "model_type": model_type,
        "fused_operators": counts,
        "expected": expected,
        "complete": not missing,
    }
    if missing:
        found = ", ".join(f"{k}: {got} of {want}" for k, (got, want) in missing.items())
        if config.require_fusions:
            raise StageError(
                f"optimize: expected fusions did not happen ({found}) in the {family.name} graph; ONNX Runtime "
                f"fuses a {num_layers}-layer {family.name} encoder into {expected}. The export likely used an "
                "attention implementation the fuser does not recognise. Set [optimize] require_fusions = false "
                "to ship the partly fused graph anyway."
            )
        log.warning("optimize: the %s graph is only partly fused (%s); shipping it", family.name, found)
    log.info("optimize: fused %s", counts)
    return OptimizeResult(out, record)


def _unfused(onnx_path: Path, architecture: str, out: Path) -> OptimizeResult:
    """A family edgepack does not know how ORT fuses: the exported graph goes on as it is."""
    reason = (
        f"model_type {architecture!r} is not a family whose ONNX Runtime fusions edgepack knows "
        f"({architectures.SUPPORTED}); the graph ships unfused (INT8 still applies, attention runs as plain ops)"
    )
    log.warning("optimize: %s", reason)
    shutil.copyfile(onnx_path, out)
    record: dict[str, Any] = {
        "tool": None,
        "family": None,
        "model_type": None,
        "fused_operators": {},
        "expected": {},
        "complete": False,
        "skipped": reason,
    }
    return OptimizeResult(out, record)
