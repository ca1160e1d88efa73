"""The CPU this process runs on: its architecture and the instruction-set features that pick kernels.

onnxruntime chooses its int8 (and some float) kernels by the CPU's features: on x86-64 AVX2,
AVX-512 (``avx512f``/``avx512bw``), VNNI (``avx512_vnni``, ``avx_vnni``) and AMX
(``amx_int8``); on arm64 NEON, the dot product (``dotprod``) and ``i8mm`` instructions. A
quantized graph proven on one set of them runs other code on another, so a bundle records
where its variants were proven (:class:`Cpu`) and a reader compares that with :func:`this_cpu`.

Only the features above are reported (a short, stable list), read from ``/proc/cpuinfo`` on
Linux (bounded read) and ``sysctl`` on macOS; elsewhere the list is empty. Torch-free.
"""

from __future__ import annotations

import dataclasses
import platform
import subprocess
import sys

__all__ = ["FEATURES", "Cpu", "cpu_features", "cpu_machine", "cpuinfo_features", "this_cpu"]

#: Linux ``/proc/cpuinfo`` flag (x86 ``flags``, arm64 ``Features``) -> the name reported.
_LINUX_FLAGS = {
    "avx2": "avx2", "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni", "amx_int8": "amx_int8",
    "asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm",
}
#: macOS ``sysctl hw.optional`` key -> the name reported.
_MAC_KEYS = {
    "hw.optional.avx2_0": "avx2", "hw.optional.avx512f": "avx512f", "hw.optional.avx512bw": "avx512bw",
    "hw.optional.avx512vnni": "avx512_vnni", "hw.optional.neon": "neon",
    "hw.optional.arm.FEAT_DotProd": "dotprod", "hw.optional.arm.FEAT_I8MM": "i8mm",
}
#: Every feature name this module reports, in the order it reports them.
FEATURES = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "dotprod", "i8mm")
_MACHINES = {"amd64": "x86_64", "x86_64": "x86_64", "x64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
#: The most of /proc/cpuinfo or of sysctl's answer that is read.
_READ_LIMIT = 1 << 20


@dataclasses.dataclass(frozen=True)
class Cpu:
    """An architecture (``x86_64``, ``arm64``, or what the platform calls it) and its :data:`FEATURES`."""

    machine: str
    features: tuple[str, ...] = ()

    def describe(self) -> str:
        """``x86_64 (avx2, avx512f)``; ``x86_64 (no features known)`` when none were read."""
        return f"{self.machine} ({', '.join(self.features) if self.features else 'no features known'})"


def cpu_machine() -> str:
    """The architecture: ``x86_64`` or ``arm64`` for the usual spellings, else ``platform.machine()`` lowered."""
    name = platform.machine().lower()
    return _MACHINES.get(name, name or "unknown")


def _ordered(found: set[str]) -> tuple[str, ...]:
    return tuple(name for name in FEATURES if name in found)


def cpuinfo_features(text: str) -> tuple[str, ...]:
    """The :data:`FEATURES` named in the text of Linux's ``/proc/cpuinfo`` (x86 or arm64)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # the first CPU's list: all cores share the instruction set
            words = set(value.split())
            return _ordered({name for flag, name in _LINUX_FLAGS.items() if flag in words})
    return ()


def _linux() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return set(cpuinfo_features(f.read(_READ_LIMIT)))
    except OSError:
        return set()


def _sysctl(*keys: str) -> str:
    try:
        proc = subprocess.run(["sysctl", *keys], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout[:_READ_LIMIT].decode("utf-8", "replace")


def _mac() -> set[str]:
    found = set()
    for line in _sysctl("hw.optional", "machdep.cpu.leaf7_features").splitlines():
        key, _, value = line.partition(":")
        name = _MAC_KEYS.get(key.strip())
        if name and value.strip() == "1":
            found.add(name)
        elif key.strip() == "machdep.cpu.leaf7_features" and "AVX512VNNI" in value.split():
            found.add("avx512_vnni")
    return found


def cpu_features() -> tuple[str, ...]:
    """The :data:`FEATURES` this CPU has, in that order; empty where they cannot be read.

    Under a user-mode emulator (``qemu-x86_64 -cpu Haswell``) this reads the host's
    ``/proc/cpuinfo``, not the emulated CPU's.
    """
    if sys.platform.startswith("linux"):
        found = _linux()
    elif sys.platform == "darwin":
        found = _mac()
    else:
        found = set()
    if cpu_machine() == "arm64":
        found.add("neon")  # part of every ARMv8-A CPU
    return _ordered(found)


def this_cpu() -> Cpu:
    """The CPU this process runs on."""
    return Cpu(cpu_machine(), cpu_features())
