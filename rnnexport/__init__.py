"""rnnexport: recurrent PyTorch networks as ONNX graphs with explicit state.

Convert a seed cell, a torch.nn RNN/LSTM/GRU or your own loop into ONNX graphs
that take the state in and give it back, verify them against PyTorch on every
execution provider, and package them for apps that stream through them.

Names are imported lazily, so that ``import rnnexport.runtime`` (onnxruntime and
numpy only) never pulls in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY: dict[str, tuple[str, str]] = {
    "ConvertResult": ("rnnexport.export.convert", "ConvertResult"),
    "Form": ("rnnexport.core.contract", "Form"),
    "GraphInfo": ("rnnexport.core.contract", "GraphInfo"),
    "IOSpec": ("rnnexport.core.contract", "IOSpec"),
    "Lowering": ("rnnexport.core.contract", "Lowering"),
    "RecurrentModel": ("rnnexport.source.model", "RecurrentModel"),
    "RnnexportError": ("rnnexport.core.errors", "RnnexportError"),
    "SourceSpec": ("rnnexport.source.sources", "SourceSpec"),
    "StateSpec": ("rnnexport.core.contract", "StateSpec"),
    "TensorSpec": ("rnnexport.core.contract", "TensorSpec"),
    "builtin": ("rnnexport.source.sources", "builtin"),
    "convert": ("rnnexport.export.convert", "convert"),
    "from_cell": ("rnnexport.source.sources", "from_cell"),
    "from_module": ("rnnexport.source.sources", "from_module"),
    "load": ("rnnexport.runtime", "load"),
    "package": ("rnnexport.packaging", "package"),
    "verify": ("rnnexport.verification", "verify"),
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        try:  # a submodule, e.g. rnnexport.source.cells
            return importlib.import_module(f"rnnexport.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"rnnexport.{name}":
                raise
            raise AttributeError(f"module 'rnnexport' has no attribute {name!r}") from None
    module, attr = _LAZY[name]
    try:
        value = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as e:  # an optional package: say which extra brings it
        from rnnexport.core.errors import missing_extra

        missing = missing_extra(e, f"rnnexport.{name}")
        if missing is None:
            raise
        raise missing from e
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
