"""CPU feature detection and the target check: warn once, or refuse with strict=True."""

from __future__ import annotations

import warnings

import pytest

from edgepack_runtime import Classifier, TargetMismatchError, cpu

from .bundle_kit import MakeBundle

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme sse sse2 avx avx2 fma bmi2
processor\t: 1
flags\t\t: fpu vme sse sse2 avx avx2 fma bmi2
"""
X86_VNNI = "flags : fpu avx avx2 avx512f avx512dq avx512_vnni avx_vnni\n"
ARM64_CPUINFO = "processor : 0\nFeatures : fp asimd evtstrm aes pmull sha1 sha2 crc32\n"
ARMV7_CPUINFO = "processor : 0\nFeatures : half thumb fastmult vfp edsp neon vfpv3\n"
ARMV7_NO_NEON = "processor : 0\nFeatures : half thumb fastmult vfp edsp\n"


def test_parse_x86() -> None:
    info = cpu.parse_cpuinfo(X86_CPUINFO, "x86_64")
    assert info.present == {"avx2"} and info.checked == set(cpu.FEATURES)
    assert cpu.parse_cpuinfo(X86_VNNI, "x86_64").present == {"avx2", "avx512f", "avx512_vnni"}


def test_parse_arm() -> None:
    assert cpu.parse_cpuinfo(ARM64_CPUINFO, "aarch64").present == {"neon"}
    assert cpu.parse_cpuinfo("", "aarch64").present == {"neon"}  # NEON is part of AArch64
    assert cpu.parse_cpuinfo(ARMV7_CPUINFO, "armv7l").present == {"neon"}
    assert cpu.parse_cpuinfo(ARMV7_NO_NEON, "armv7l").present == frozenset()


def test_parse_unknown() -> None:
    info = cpu.parse_cpuinfo("processor : 0\n", "riscv64")
    assert info.present == frozenset() and info.checked == frozenset()
    x86 = cpu.parse_cpuinfo("", "x86_64")  # no flags line: only "no NEON" is known
    assert x86.checked == {"neon"} and x86.present == frozenset()


def test_detect_is_consistent() -> None:
    info = cpu.detect()
    assert info.present <= info.checked
    assert cpu.detect() is info  # computed once


AVX2_ONLY = cpu.CpuFeatures(frozenset({"avx2"}), frozenset(cpu.FEATURES), "test")


def test_check_target_missing_feature_message() -> None:
    message = cpu.check_target("clinc-int8", "cpu-avx512-vnni", ("avx2", "avx512f", "avx512_vnni"), AVX2_ONLY)
    assert message is not None
    assert "avx512f, avx512_vnni" in message and "lacks them" in message and "(it has: avx2" in message
    assert "INT8 results differ between VNNI and non-VNNI CPUs" in message
    assert "edgepack build --target cpu-avx2" in message
    assert cpu.check_target("b", "cpu-avx2", ("avx2",), AVX2_ONLY) is None
    assert cpu.check_target("b", "any", (), AVX2_ONLY) is None


def test_check_target_on_arm_suggests_arm64() -> None:
    arm = cpu.parse_cpuinfo(ARM64_CPUINFO, "aarch64")
    message = cpu.check_target("b", "cpu-avx2", ("avx2",), arm)
    assert message is not None and "lacks it" in message and "--target arm64" in message


def test_check_target_cannot_check() -> None:
    unknown = cpu.CpuFeatures(frozenset(), frozenset(), "platform (win32, AMD64)")
    message = cpu.check_target("b", "cpu-avx2", ("avx2",), unknown)
    assert message is not None and message.startswith("cannot check whether this CPU has avx2")
    assert "win32" in message and "edgepack build --target" in message
    odd = cpu.check_target("b", "t", ("sve2",), AVX2_ONLY)  # a feature this runtime does not know
    assert odd is not None and "cannot check" in odd and "sve2" in odd


def _missing_feature() -> str:
    """A feature this machine is known to lack (NEON on x86, AVX2 on ARM)."""
    host = cpu.detect()
    lacking = sorted(host.checked - host.present)
    if not lacking:
        pytest.skip("this platform's CPU features cannot be detected")
    return lacking[0]


@pytest.mark.usefixtures("fresh_warnings")
def test_load_warns_once_naming_the_feature(make_bundle: MakeBundle) -> None:
    feature = _missing_feature()
    path = make_bundle(cpu_features=[feature])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = Classifier.load(path)
        Classifier.load(path)
        Classifier.load(path, threads=2)
    relevant = [w for w in caught if issubclass(w.category, cpu.TargetWarning)]
    assert len(relevant) == 1
    text = str(relevant[0].message)
    assert feature in text and "test-target" in text and "edgepack build --target" in text and "VNNI" in text
    assert first.predict("hello").label  # it still runs


@pytest.mark.usefixtures("fresh_warnings")
def test_strict_refuses(make_bundle: MakeBundle) -> None:
    feature = _missing_feature()
    with pytest.raises(TargetMismatchError) as info:
        Classifier.load(make_bundle(cpu_features=[feature]), strict=True)
    assert (
        info.value.file == "manifest.json" and feature in str(info.value) and "strict=True" in str(info.value)
    )


@pytest.mark.usefixtures("fresh_warnings")
def test_supported_target_loads_silently_even_when_strict(make_bundle: MakeBundle) -> None:
    host = cpu.detect()
    path = make_bundle(cpu_features=sorted(host.present))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Classifier.load(path, strict=True)
