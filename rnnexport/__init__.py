"""rnnexport: recurrent PyTorch networks as ONNX graphs with explicit state.

Convert a seed cell, a torch.nn RNN/LSTM/GRU or your own loop into ONNX graphs
that take the state in and give it back, verify them against PyTorch on every
execution provider, and package them for apps that stream through them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from rnnexport.convert import ConvertResult, convert  # noqa: E402
from rnnexport.errors import RnnexportError  # noqa: E402
from rnnexport.model import Form, IOSpec, Lowering, RecurrentModel, StateSpec  # noqa: E402
from rnnexport.sources import SourceSpec, builtin, from_cell, from_module  # noqa: E402

__all__ = [
    "ConvertResult",
    "Form",
    "IOSpec",
    "Lowering",
    "RecurrentModel",
    "RnnexportError",
    "SourceSpec",
    "StateSpec",
    "__version__",
    "builtin",
    "convert",
    "from_cell",
    "from_module",
]
