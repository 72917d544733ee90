"""Which CPU features this machine has, and whether a bundle's target relies on some it lacks.

No extra dependencies: /proc/cpuinfo on Linux, `sysctl` on Intel macOS, the architecture name for NEON
(mandatory on 64-bit ARM). Anything else is reported as "cannot be checked", never guessed.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass

# The features a manifest may name, spelled as /proc/cpuinfo spells them.
FEATURES = ("avx2", "avx512f", "avx512_vnni", "neon")
# `edgepack build --target` names (edgepack/targets.py) and the features each relies on, best first.
TARGETS = (
    ("cpu-avx512-vnni", ("avx2", "avx512f", "avx512_vnni")),
    ("cpu-avx2", ("avx2",)),
    ("arm64", ("neon",)),
)
# The flags a benchmark report names (describe): what INT8 matrix products run on, x86 spelling.
DESCRIBED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
_X86 = {"x86_64", "amd64", "i386", "i686", "x86"}
_ARM64 = {"arm64", "aarch64", "armv8l", "armv8b"}
_MAC_KEYS = {
    "avx2": "hw.optional.avx2_0",
    "avx512f": "hw.optional.avx512f",
    "avx512_vnni": "hw.optional.avx512vnni",
}


class TargetWarning(UserWarning):
    """The CPU lacks (or cannot be shown to have) a feature the bundle's target relies on."""


@dataclass(frozen=True)
class CpuFeatures:
    present: frozenset[str]
    checked: frozenset[str]  # the features whose presence or absence is known
    source: str  # where the answer came from, for messages


def _by_architecture(machine: str) -> tuple[set[str], set[str]]:
    """(present, checked) that follow from the architecture alone."""
    machine = machine.lower()
    if machine in _X86:
        return set(), {"neon"}
    if machine in _ARM64:
        return {"neon"}, set(FEATURES)
    return set(), set()


def parse_cpuinfo(text: str, machine: str) -> CpuFeatures:
    """Features from the text of /proc/cpuinfo ("flags" lines on x86, "Features" lines on ARM)."""
    present, checked = _by_architecture(machine)
    flags: set[str] = set()
    found = False
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            found = True
            flags.update(value.split())
    if found:
        if "asimd" in flags or "neon" in flags:
            flags.add("neon")
        present |= flags & set(FEATURES)
        checked |= set(FEATURES)
    return CpuFeatures(frozenset(present), frozenset(checked), "/proc/cpuinfo")


def _sysctl(key: str) -> bool | None:
    try:
        out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.stdout.strip()
    return value == "1" if out.returncode == 0 and value in ("0", "1") else None


def _cpuinfo() -> str | None:
    """The text of /proc/cpuinfo, or None where there is none (not Linux, or unreadable)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def detect() -> CpuFeatures:
    """This machine's features (computed once per process)."""
    machine = platform.machine()
    text = _cpuinfo()
    if text is not None:
        return parse_cpuinfo(text, machine)
    present, checked = _by_architecture(machine)
    if sys.platform == "darwin" and machine.lower() in _X86:
        for feature, key in _MAC_KEYS.items():
            has = _sysctl(key)
            if has is not None:
                checked.add(feature)
                if has:
                    present.add(feature)
        return CpuFeatures(frozenset(present), frozenset(checked), "sysctl")
    return CpuFeatures(frozenset(present), frozenset(checked), f"platform ({sys.platform}, {machine or '?'})")


def describe_cpuinfo(text: str | None, processor: str = "", cores: int | None = None) -> str:
    """CPU model, the SIMD flags that matter for INT8 and the core count, from the text of /proc/cpuinfo
    (None: only `processor`, platform.processor()'s answer, is known)."""
    model, flags = "", set()
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name" and not model:
            model = value.strip()
        elif sep and key.strip() == "flags":
            flags = set(value.split())
    shown = [f for f in DESCRIBED_FLAGS if f in flags]
    return f"{model or processor or 'unknown CPU'}, {cores} logical cores, flags: {', '.join(shown) or 'n/a'}"


def describe() -> str:
    """This machine's CPU for a benchmark report, e.g. "AMD EPYC 9B14, 2 logical cores, flags: avx2, ..."."""
    return describe_cpuinfo(_cpuinfo(), platform.processor(), os.cpu_count())


def suggest_target(cpu: CpuFeatures) -> str | None:
    """The best `edgepack build --target` for this CPU, when it is known to support one."""
    return next((name for name, needs in TARGETS if set(needs) <= cpu.present), None)


def check_target(bundle: str, target: str, needs: tuple[str, ...], cpu: CpuFeatures) -> str | None:
    """A warning message when the CPU lacks, or cannot be shown to have, a needed feature; else None."""
    missing = [f for f in needs if f in cpu.checked and f not in cpu.present]
    unchecked = [f for f in needs if f not in cpu.checked]
    if not missing and not unchecked:
        return None
    suggestion = suggest_target(cpu)
    rebuild = (
        f"rebuild it for this CPU with `edgepack build --target {suggestion}`"
        if suggestion
        else "rebuild it with `edgepack build --target ...` naming a target this CPU supports"
    )
    int8 = (
        "INT8 results differ between VNNI and non-VNNI CPUs, so the accuracy recorded in the manifest "
        "may not hold here"
    )
    if missing:
        has = ", ".join(sorted(cpu.present)) or f"none of {', '.join(FEATURES)}"
        return (
            f"bundle '{bundle}' was built for target '{target}', which relies on {', '.join(missing)}; "
            f"this CPU lacks {'it' if len(missing) == 1 else 'them'} (it has: {has}, per {cpu.source}). "
            f"It will run, possibly slower, but {int8}; {rebuild}."
        )
    return (
        f"cannot check whether this CPU has {', '.join(unchecked)}, which bundle '{bundle}' (target "
        f"'{target}') relies on: feature detection is not available via {cpu.source}. If it lacks them, "
        f"{int8}; {rebuild}."
    )


_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(message: str, stacklevel: int = 3) -> None:
    """Emit a TargetWarning the first time this process sees `message`."""
    with _warned_lock:
        if message in _warned:
            return
        _warned.add(message)
    warnings.warn(message, TargetWarning, stacklevel=stacklevel)
