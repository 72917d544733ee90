"""INT8 quantization settings and the per-target presets they start from.

After Optimum's `AutoQuantizationConfig.avx2() / avx512_vnni() / arm64()` and ONNX Runtime's own guidance for
CPUs (`onnxruntime.quantization.quantize`, "Choosing parameters for CPU inference"). A target names the CPU
features the quantized graph relies on; the runtime warns when the CPU lacks them.

A leaf module: the recipe holds a `QuantizeConfig` and the quantize stage runs one, both import this.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from edgepack.errors import as_enum, check


class QuantMode(enum.StrEnum):
    DYNAMIC = "dynamic"  # activation scales computed per batch at run time (ONNX Runtime: always uint8)
    STATIC = "static"  # activation scales fixed by calibration on training texts (QDQ graph)
    # dynamic mode's graph and integer kernels, each activation scale fixed by min-max calibration on training
    # texts: as fast as dynamic, and a text's answer no longer depends on the other texts in its batch
    STATIC_INTEGER = "static-integer"


class CalibrationMethod(enum.StrEnum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class QuantType(enum.StrEnum):
    INT8 = "int8"
    UINT8 = "uint8"


# (method, samples) per calibrated mode. static-integer calibrates on more texts: its pass is one INT8 run per
# text (about 2 s for 4,096 CLINC queries), and min-max over more texts clips fewer activations later.
DEFAULT_CALIBRATION = {
    QuantMode.STATIC: (CalibrationMethod.MINMAX, 256),
    QuantMode.STATIC_INTEGER: (CalibrationMethod.MINMAX, 4096),
}
DEFAULT_EMBEDDING_BLOCK = 64  # CLINC student: 32, 64 and 128 all kept accuracy; 64 saves 5.0 of 11.7 MB


@dataclass
class QuantizeConfig:
    """INT8 quantization. A recipe's `[quantize]` leaves unset (None) what its target's preset decides;
    `for_target` fills those in, so the config the stage runs and the manifest records is complete.

    Settings a mode ignores are refused, not recorded: dynamic mode has no calibration and quantizes
    activations to uint8 (ONNX Runtime's DynamicQuantizeLinear), so it takes neither calibration settings nor
    int8 activations.
    """

    mode: QuantMode = QuantMode.DYNAMIC
    weight_type: QuantType | None = None
    activation_type: QuantType | None = None
    per_channel: bool | None = None
    reduce_range: bool | None = None
    calibration_method: CalibrationMethod | None = None  # static only (default minmax)
    calibration_samples: int | None = None  # static only (default 256)
    # The word-embedding table: 8 = INT8 like the weights; 4 = 4-bit blocks along the hidden axis, each with its
    # own scale and zero point (ONNX Runtime's GatherBlockQuantized); embedding_block_size: values per block.
    embedding_bits: int = 8
    embedding_block_size: int | None = None  # 4-bit only (default 64)

    def __post_init__(self) -> None:
        self.mode = as_enum(QuantMode, self.mode, "quantize", "mode")
        if self.weight_type is not None:
            self.weight_type = as_enum(QuantType, self.weight_type, "quantize", "weight_type")
        if self.activation_type is not None:
            self.activation_type = as_enum(QuantType, self.activation_type, "quantize", "activation_type")
        if self.calibration_method is not None:
            self.calibration_method = as_enum(
                CalibrationMethod, self.calibration_method, "quantize", "calibration_method"
            )
        if self.calibration_samples is not None:
            check(
                self.calibration_samples >= 1,
                "quantize",
                "calibration_samples",
                self.calibration_samples,
                ">= 1",
            )
        if self.mode is QuantMode.DYNAMIC:
            self._refuse_static_only()
        if self.mode is QuantMode.STATIC_INTEGER:
            self._refuse_beyond_integer_kernels()
        self._check_embedding()

    def _check_embedding(self) -> None:
        bits, block = self.embedding_bits, self.embedding_block_size
        check(bits in (4, 8), "quantize", "embedding_bits", bits, "8 (INT8, the default) or 4 (4-bit blocks)")
        if bits == 8:
            why = (
                "unset (--set quantize.embedding_block_size=none), or embedding_bits = 4 (only the 4-bit "
                "table is stored in blocks)"
            )
            check(block is None, "quantize", "embedding_block_size", block, why)
            return
        if block is None:
            self.embedding_block_size = block = DEFAULT_EMBEDDING_BLOCK
        power_of_two = isinstance(block, int) and block >= 16 and block & (block - 1) == 0
        check(
            power_of_two, "quantize", "embedding_block_size", block, "a power of two >= 16 (e.g. 32, 64, 128)"
        )

    def _refuse_static_only(self) -> None:
        why = (
            'unset, or mode = "static" or "static-integer" (dynamic INT8 computes activation scales at run time, '
            "uncalibrated)"
        )
        for key in ("calibration_method", "calibration_samples"):
            value = getattr(self, key)
            check(value is None, "quantize", key, value, why)
        check(
            self.activation_type in (None, QuantType.UINT8),
            "quantize",
            "activation_type",
            self.activation_type,
            '"uint8" or unset with mode = "dynamic" (ONNX Runtime quantizes activations to uint8 there), '
            'or mode = "static"',
        )

    def _refuse_beyond_integer_kernels(self) -> None:
        """static-integer keeps dynamic mode's kernels, which take uint8 activations, and calibrates min-max."""
        check(
            self.activation_type in (None, QuantType.UINT8),
            "quantize",
            "activation_type",
            self.activation_type,
            '"uint8" or unset with mode = "static-integer" (it keeps dynamic INT8\'s uint8 kernels), '
            'or mode = "static"',
        )
        check(
            self.calibration_method in (None, CalibrationMethod.MINMAX),
            "quantize",
            "calibration_method",
            self.calibration_method,
            '"minmax" or unset with mode = "static-integer", or mode = "static" for entropy or percentile',
        )

    @property
    def is_static(self) -> bool:
        """Static QDQ quantization (ONNX Runtime's quantize_static)."""
        return self.mode is QuantMode.STATIC

    @property
    def is_calibrated(self) -> bool:
        """Activation scales fixed at build time from training texts (static or static-integer)."""
        return self.mode in DEFAULT_CALIBRATION

    def for_target(self, target: str) -> QuantizeConfig:
        """These settings with every unset one taken from `target`'s preset."""
        preset = TARGETS[target].preset(mode=self.mode)
        unset = {
            f.name: getattr(preset, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is None
        }
        return dataclasses.replace(self, **unset)

    @classmethod
    def avx2(cls, is_static: bool = False) -> QuantizeConfig:
        return TARGETS["cpu-avx2"].preset(is_static)

    @classmethod
    def avx512_vnni(cls, is_static: bool = False) -> QuantizeConfig:
        return TARGETS["cpu-avx512-vnni"].preset(is_static)

    @classmethod
    def arm64(cls, is_static: bool = False) -> QuantizeConfig:
        return TARGETS["arm64"].preset(is_static)


@dataclass(frozen=True)
class Target:
    name: str
    cpu_features: tuple[str, ...]  # /proc/cpuinfo spellings: avx2, avx512f, avx512_vnni; neon on arm
    weight_type: QuantType
    activation_type: QuantType
    per_channel: bool
    reduce_range: bool
    note: str

    def preset(self, is_static: bool = False, mode: QuantMode | None = None) -> QuantizeConfig:
        """The complete settings this target recommends, dynamic or static (or `mode`, when given)."""
        mode = mode or (QuantMode.STATIC if is_static else QuantMode.DYNAMIC)
        method, samples = DEFAULT_CALIBRATION.get(mode, (None, None))
        return QuantizeConfig(
            mode=mode,
            weight_type=self.weight_type,
            activation_type=self.activation_type,
            per_channel=self.per_channel,
            reduce_range=self.reduce_range,
            calibration_method=method,
            calibration_samples=samples,
        )


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
