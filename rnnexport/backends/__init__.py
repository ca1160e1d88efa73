"""One runner per engine, each with ``activate() / infer(feeds) -> dict / deactivate()``.

- :class:`TorchRunner`: the PyTorch reference (sequence or step).
- :class:`OrtRunner`: onnxruntime on one execution provider (``cpu``, ``cuda``,
  ``tensorrt``); a provider that does not start raises :class:`EngineUnavailable`.
- :class:`ReferenceRunner`: onnx's ``ReferenceEvaluator``, an independent engine.

Names are imported on first use, so that ``rnnexport.backends.base`` (what a report
and the bundle reader need) loads with neither onnxruntime nor torch installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rnnexport.lazy import lazy_exports

if TYPE_CHECKING:
    from rnnexport.backends.base import (
        EngineFailure,
        EngineUnavailable,
        GraphTensor,
        Runner,
        Unavailable,
        check_feeds,
        graph_tensors,
    )
    from rnnexport.backends.onnxrt import (
        PROVIDERS,
        OrtRunner,
        available_providers,
        resolve_provider,
    )
    from rnnexport.backends.reference import ReferenceRunner, reference_limitations
    from rnnexport.backends.torch_runner import TorchRunner

#: Public name -> the module that defines it (onnxrt needs onnxruntime, torch_runner needs torch).
_LAZY = {
    "EngineFailure": "rnnexport.backends.base",
    "EngineUnavailable": "rnnexport.backends.base",
    "GraphTensor": "rnnexport.backends.base",
    "Runner": "rnnexport.backends.base",
    "Unavailable": "rnnexport.backends.base",
    "check_feeds": "rnnexport.backends.base",
    "graph_tensors": "rnnexport.backends.base",
    "PROVIDERS": "rnnexport.backends.onnxrt",
    "OrtRunner": "rnnexport.backends.onnxrt",
    "available_providers": "rnnexport.backends.onnxrt",
    "resolve_provider": "rnnexport.backends.onnxrt",
    "ReferenceRunner": "rnnexport.backends.reference",
    "reference_limitations": "rnnexport.backends.reference",
    "TorchRunner": "rnnexport.backends.torch_runner",
}

__all__ = [
    "EngineFailure",
    "EngineUnavailable",
    "GraphTensor",
    "OrtRunner",
    "PROVIDERS",
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


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
