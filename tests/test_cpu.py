"""The CPU features a bundle records, and the note a reader gives when the CPU it runs on differs."""

from __future__ import annotations

import platform
import sys

import pytest

from rnnexport.bundle import cpu_difference
from rnnexport.core.cpu import FEATURES, Cpu, cpu_features, cpu_machine, cpuinfo_features, this_cpu

# The first lines of /proc/cpuinfo as Linux writes them (flag lists shortened, spelling kept).
EPYC_ZEN2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c bmi1 avx2 bmi2 sha_ni
bogomips\t: 4499.99

processor\t: 1
flags\t\t: fpu avx2 avx512f avx512bw avx512_vnni
"""
SAPPHIRE_RAPIDS = ("flags\t\t: fpu sse sse2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx_vnni "
                   "avx512_bf16 avx512vbmi avx512_vnni avx512_bitalg amx_bf16 avx512_fp16 amx_tile amx_int8\n")
GRAVITON3 = ("processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
             "asimdhp asimdrdm lrcpc dcpop sha3 asimddp sha512 sve asimdfhm svei8mm svebf16 i8mm bf16 rng\n")
CORTEX_A72 = "Features\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize(("text", "expected"), [
    (EPYC_ZEN2, ("avx2",)),  # the first CPU's list only
    (SAPPHIRE_RAPIDS, ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")),
    (GRAVITON3, ("neon", "dotprod", "i8mm")),  # svei8mm is not i8mm
    (CORTEX_A72, ("neon",)),
    ("processor\t: 0\nmodel name\t: unknown\n", ()),
])
def test_cpuinfo_features_name_the_kernel_relevant_flags_only(text, expected):
    assert cpuinfo_features(text) == expected


def test_this_cpu_is_read_from_the_machine():
    cpu = this_cpu()
    assert cpu == Cpu(cpu_machine(), cpu_features())
    assert set(cpu.features) <= set(FEATURES) and list(cpu.features) == sorted(cpu.features, key=FEATURES.index)
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert cpu.machine == "x86_64"


@pytest.mark.skipif(not sys.platform.startswith("linux") or cpu_machine() != "x86_64",
                    reason="compares /proc/cpuinfo with the CPUID instruction, on Linux x86-64 only")
def test_x86_features_agree_with_what_cpuid_reports():
    """numpy asks the CPU itself (CPUID); /proc/cpuinfo is the kernel's account of the same bits.

    Under a user-mode emulator (qemu-x86_64 -cpu Haswell) the two part: /proc/cpuinfo is the
    host's, CPUID the emulated CPU's. That is a limit of emulation; on a real CPU they agree.
    """
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as cpuid
    except ImportError:
        pytest.skip("this numpy does not expose its CPUID features")
    found = set(cpu_features())
    for name, bit in {"avx2": "AVX2", "avx512f": "AVX512F", "avx512bw": "AVX512BW",
                      "avx512_vnni": "AVX512VNNI"}.items():
        assert (name in found) == bool(cpuid.get(bit)), (name, found)


AVX2 = Cpu("x86_64", ("avx2",))
VNNI = Cpu("x86_64", ("avx2", "avx512f", "avx512bw", "avx512_vnni"))


def test_same_cpu_features_give_no_note():
    assert cpu_difference(VNNI, Cpu("x86_64", VNNI.features)) is None
    assert cpu_difference(this_cpu()) is None  # this CPU by default


def test_a_cpu_without_the_proof_cpus_features_is_named():
    note = cpu_difference(VNNI, AVX2)
    assert note is not None and "\n" not in note
    assert "proven on x86_64 (avx2, avx512f, avx512bw, avx512_vnni)" in note
    assert "lacks avx512f, avx512bw, avx512_vnni" in note and "adds" not in note
    assert "adds avx512f, avx512bw, avx512_vnni" in (cpu_difference(AVX2, VNNI) or "")


def test_another_architecture_or_no_record_is_a_difference():
    note = cpu_difference(VNNI, Cpu("arm64", ("neon", "dotprod")))
    assert note is not None and "another architecture: arm64 (neon, dotprod)" in note
    note = cpu_difference(None, AVX2)
    assert note is not None and "does not record the CPU" in note and "x86_64 (avx2)" in note
