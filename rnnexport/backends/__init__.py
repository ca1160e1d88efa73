"""One runner per engine, each with ``activate() / infer(feeds) -> dict / deactivate()``.

- :class:`TorchRunner`: the PyTorch reference (sequence or step).
- :class:`OrtRunner`: onnxruntime on one execution provider (``cpu``, ``cuda``,
  ``tensorrt``); a provider that does not start raises :class:`EngineUnavailable`.
- :class:`ReferenceRunner`: onnx's ``ReferenceEvaluator``, an independent engine.
"""

from __future__ import annotations

from typing import Any

from rnnexport.backends.base import (
    EngineUnavailable,
    GraphTensor,
    Runner,
    Unavailable,
    check_feeds,
    graph_tensors,
)
from rnnexport.backends.onnxrt import (
    PROVIDERS,
    EngineFailure,
    OrtRunner,
    available_providers,
    resolve_provider,
)
from rnnexport.backends.reference import ReferenceRunner, reference_limitations

__all__ = [
    "PROVIDERS",
    "EngineFailure",
    "EngineUnavailable",
    "GraphTensor",
    "OrtRunner",
    "ReferenceRunner",
    "Runner",
    "TorchRunner",
    "Unavailable",
    "available_providers",
    "check_feeds",
    "graph_tensors",
    "reference_limitations",
    "resolve_provider",
]


def __getattr__(name: str) -> Any:
    """``TorchRunner`` is imported on first use: the other runners need no PyTorch."""
    if name == "TorchRunner":
        from rnnexport.backends.torch_runner import TorchRunner

        return TorchRunner
    raise AttributeError(f"module 'rnnexport.backends' has no attribute {name!r}")
