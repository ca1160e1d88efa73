"""Where a verification ran: Python, the platform, the CPU and its kernel-picking features, package versions.

Read without importing the packages (their installed metadata), so that a bundle's
verification stays free of PyTorch. Torch-free.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
from importlib import metadata
from typing import Any

from rnnexport.core.cpu import this_cpu

__all__ = ["PACKAGES", "Environment", "environment"]

#: The packages whose versions a report records (None where one is not installed).
PACKAGES = ("rnnexport", "onnx", "onnxruntime", "onnxruntime-gpu", "torch", "numpy", "openvino", "tract")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@dataclasses.dataclass(frozen=True)
class Environment:
    """The machine and software one report was made on."""

    python: str
    platform: str
    cpu: str
    cpu_features: tuple[str, ...]
    packages: dict[str, str | None]

    def to_json(self) -> dict[str, Any]:
        return {"python": self.python, "platform": self.platform, "cpu": self.cpu,
                "cpu_features": list(self.cpu_features), "packages": dict(self.packages)}

    def lines(self) -> list[str]:
        """``python 3.11.2``, ``cpu x86_64 (avx2, ...)``, ``onnxruntime 1.31.1``, ...: for renderers."""
        installed = ", ".join(f"{k} {v}" for k, v in self.packages.items() if v)
        return [f"python {self.python} on {self.platform}", f"cpu {self.cpu}", installed]


def environment() -> Environment:
    """This process's environment."""
    cpu = this_cpu()
    return Environment(platform.python_version(), f"{sys.platform} {platform.release()}".strip(), cpu.describe(),
                       cpu.features, {name: _version(name) for name in PACKAGES})
