"""rnnexport: recurrent PyTorch networks as ONNX graphs with explicit state.

Convert a seed cell, a torch.nn RNN/LSTM/GRU or your own loop into ONNX graphs
that take the state in and give it back, verify them against PyTorch on every
execution provider, and package them for apps that stream through them.

Names are imported lazily, so that ``import rnnexport.runtime`` (onnxruntime and
numpy only) never pulls in torch.
"""

from __future__ import annotations

from rnnexport.core.lazy import lazy_exports

__version__ = "0.1.0"

#: Public names, each imported from its module on first use.
_LAZY = {
    "ConvertResult": "rnnexport.export.convert",
    "Form": "rnnexport.core.contract",
    "GraphInfo": "rnnexport.core.contract",
    "IOSpec": "rnnexport.core.contract",
    "Lowering": "rnnexport.core.contract",
    "RecurrentModel": "rnnexport.source.model",
    "RnnexportError": "rnnexport.core.errors",
    "SourceSpec": "rnnexport.source.sources",
    "StateSpec": "rnnexport.core.contract",
    "TensorSpec": "rnnexport.core.contract",
    "builtin": "rnnexport.source.sources",
    "convert": "rnnexport.export.convert",
    "from_cell": "rnnexport.source.sources",
    "from_module": "rnnexport.source.sources",
    "load": "rnnexport.runtime",
    "package": "rnnexport.packaging",
    "verify": "rnnexport.verification",
}

__all__ = ["__version__", *sorted(_LAZY)]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
