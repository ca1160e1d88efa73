"""One runner per engine, each with ``activate() / infer(feeds) -> dict / deactivate()``.

- :class:`TorchRunner`: the PyTorch reference (sequence or step).
- :class:`OrtRunner`: onnxruntime on one execution provider (``cpu``, ``cuda``,
  ``tensorrt``); a provider that does not start raises :class:`EngineUnavailable`.
- :class:`ReferenceRunner`: onnx's ``ReferenceEvaluator``, an independent engine.
- OpenVINO, tract and onnxruntime's JavaScript builds, by name through
  :func:`rnnexport.engines.registry.make_runner`; :func:`~rnnexport.engines.registry.running`
  is the one place an engine is started and stopped.

Names are imported on first use, so that ``rnnexport.engines.base`` (what a report
and the bundle reader need) loads with neither onnxruntime nor torch installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rnnexport.core.lazy import lazy_exports

if TYPE_CHECKING:
    from rnnexport.engines.base import (
        EngineFailure,
        EngineKind,
        EngineUnavailable,
        GraphTensor,
        Runner,
        Unavailable,
        check_feeds,
        graph_tensors,
    )
    from rnnexport.engines.onnxrt import OrtRunner
    from rnnexport.engines.reference import ReferenceRunner, reference_limitations
    from rnnexport.engines.torch_runner import TorchRunner

#: Public name -> the module that defines it (onnxrt needs onnxruntime, torch_runner needs torch).
_LAZY = {
    "EngineFailure": "rnnexport.engines.base",
    "EngineKind": "rnnexport.engines.base",
    "EngineUnavailable": "rnnexport.engines.base",
    "GraphTensor": "rnnexport.engines.base",
    "Runner": "rnnexport.engines.base",
    "Unavailable": "rnnexport.engines.base",
    "check_feeds": "rnnexport.engines.base",
    "graph_tensors": "rnnexport.engines.base",
    "OrtRunner": "rnnexport.engines.onnxrt",
    "ReferenceRunner": "rnnexport.engines.reference",
    "reference_limitations": "rnnexport.engines.reference",
    "TorchRunner": "rnnexport.engines.torch_runner",
}

__all__ = [
    "EngineFailure",
    "EngineKind",
    "EngineUnavailable",
    "GraphTensor",
    "OrtRunner",
    "ReferenceRunner",
    "Runner",
    "TorchRunner",
    "Unavailable",
    "check_feeds",
    "graph_tensors",
    "reference_limitations",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
