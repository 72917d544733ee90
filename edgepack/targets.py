"""Per-target INT8 presets, after Optimum's `AutoQuantizationConfig.avx2() / avx512_vnni() / arm64()` and
ONNX Runtime's own guidance for CPUs (`onnxruntime.quantization.quantize`, "Choosing parameters for CPU inference").

A target names the CPU features the quantized graph relies on; the runtime warns when the CPU lacks them.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgepack.recipe import QuantizeConfig, QuantType


@dataclass(frozen=True)
class Target:
    name: str
    cpu_features: tuple[str, ...]  # /proc/cpuinfo spellings: avx2, avx512f, avx512_vnni; neon on arm
    weight_type: QuantType
    activation_type: QuantType
    per_channel: bool
    reduce_range: bool
    note: str


TARGETS: dict[str, Target] = {
    # ONNX Runtime's advice for x86 without VNNI: u8 activations, s8 weights in 7 bits (reduce_range), so
    # AVX2's u8 x s8 pair-sum (VPMADDUBSW) cannot saturate; per-channel. Optimum's avx2 preset uses u8 weights
    # instead, whose kernels are slower: on the CLINC student (benchmarks/RESULTS.md) u8/s8-7bit ran at 0.74x
    # the latency of u8/u8 on an AVX-512 VNNI core, at the same accuracy (0.8967 vs 0.8905 thresholded).
    "cpu-avx2": Target(
        "cpu-avx2", ("avx2",), QuantType.INT8, QuantType.UINT8, True, True, "x86-64 with AVX2"
    ),
    # Optimum avx512_vnni: u8 activations, s8 weights (VNNI's u8 x s8 dot product), per-channel, full range.
    "cpu-avx512-vnni": Target(
        "cpu-avx512-vnni",
        ("avx2", "avx512f", "avx512_vnni"),
        QuantType.INT8,
        QuantType.UINT8,
        True,
        False,
        "x86-64 with AVX-512 VNNI (Cascade Lake and newer, Zen 4)",
    ),
    # Optimum arm64: u8 activations, s8 symmetric weights, per-channel, full range.
    "arm64": Target(
        "arm64", ("neon",), QuantType.INT8, QuantType.UINT8, True, False, "ARMv8 / Apple silicon"
    ),
}


@dataclass(frozen=True)
class ResolvedQuantization:
    """Recipe values with the target's preset filled in where the recipe left them unset."""

    mode: str
    weight_type: QuantType
    activation_type: QuantType
    per_channel: bool
    reduce_range: bool
    calibration_method: str
    calibration_samples: int


def resolve_quantization(config: QuantizeConfig, target_name: str) -> ResolvedQuantization:
    target = TARGETS[target_name]
    return ResolvedQuantization(
        mode=config.mode.value,
        weight_type=config.weight_type or target.weight_type,
        activation_type=config.activation_type or target.activation_type,
        per_channel=target.per_channel if config.per_channel is None else config.per_channel,
        reduce_range=target.reduce_range if config.reduce_range is None else config.reduce_range,
        calibration_method=config.calibration_method.value,
        calibration_samples=config.calibration_samples,
    )
