"""Execution providers, resolved loudly: what was asked, what is available, what started."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import onnxruntime as ort

from rnnexport.errors import RnnexportError

__all__ = ["CPU", "Device", "ProviderError", "ProviderRequest", "check_started", "resolve_providers"]

CPU = "CPUExecutionProvider"

#: Short names accepted for the common providers.
ALIASES = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}

#: Providers whose tensors live in CUDA device memory.
_CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")

ProviderRequest = str | tuple[str, dict[str, Any]]


class ProviderError(RnnexportError):
    """An execution provider that was asked for is not available or did not start."""


@dataclasses.dataclass(frozen=True)
class Device:
    """Where the session keeps the state between calls: ``cpu`` or ``cuda`` and its id."""

    type: str = "cpu"
    id: int = 0

    def __str__(self) -> str:
        return self.type if self.type == "cpu" else f"{self.type}:{self.id}"


def _name(request: ProviderRequest) -> str:
    return request[0] if isinstance(request, tuple) else request


def resolve_providers(providers: ProviderRequest | Sequence[ProviderRequest] | None) -> list[ProviderRequest]:
    """Full provider names (aliases expanded), each available in this onnxruntime build.

    Args:
        providers: None (CPU), one provider, or a list in priority order; each a
            name (``"cuda"`` or ``"CUDAExecutionProvider"``) or ``(name, options)``.

    Raises:
        ProviderError: naming the provider and listing the available ones.
    """
    if providers is None:
        return [CPU]
    if isinstance(providers, str) or (isinstance(providers, tuple) and len(providers) == 2
                                      and isinstance(providers[1], dict)):
        providers = [providers]
    available = ort.get_available_providers()
    resolved: list[ProviderRequest] = []
    for request in providers:
        name = _name(request)
        if not isinstance(name, str) or (isinstance(request, tuple) and not isinstance(request[1], dict)):
            raise ProviderError(f"a provider is a name or (name, options dict), got {request!r}")
        full = ALIASES.get(name.lower(), name)
        if full not in available:
            raise ProviderError(f"execution provider {name!r} is not available in this onnxruntime "
                                f"build (available: {', '.join(available)})")
        if full not in [_name(r) for r in resolved]:
            resolved.append((full, request[1]) if isinstance(request, tuple) else full)
    if not resolved:
        raise ProviderError(f"no execution provider given (available: {', '.join(available)})")
    return resolved


def check_started(session: ort.InferenceSession, requested: Sequence[ProviderRequest]) -> Device:
    """The device the session's state lives on, once every requested provider is active.

    onnxruntime silently falls back to CPU when a provider cannot start (for
    CUDA: missing CUDA or cuDNN libraries, no GPU). A session that fell back
    never counts as the provider that was asked for: this raises instead.

    Raises:
        ProviderError: naming the provider that did not start and what runs instead.
    """
    active = session.get_providers()
    for request in requested:
        if _name(request) not in active:
            raise ProviderError(
                f"{_name(request)} was requested but did not start; the session would run on "
                f"{', '.join(active)} (onnxruntime's log above says why, e.g. missing CUDA/cuDNN "
                f"libraries); to run on CPU, ask for the CPU provider ('cpu')")
    first = _name(requested[0])
    if first in _CUDA_PROVIDERS:
        options = requested[0][1] if isinstance(requested[0], tuple) else {}
        return Device("cuda", int(options.get("device_id", 0)))
    return Device()
