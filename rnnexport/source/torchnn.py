"""What rnnexport knows of torch.nn's recurrent modules, in one place.

Mode names and families, the weight names of each layer and direction, the module classes,
which layers a module holds, torch's calling convention as ``forward(x, *state)``, and the
ONNX operators' weights for a bare module (gates reordered by :mod:`rnnexport.source.gates`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from rnnexport.source import gates
from rnnexport.source.cells import CellKind
from rnnexport.source.plan import NativeLayer, NativePlan

__all__ = ["FAMILY", "MODULES", "TorchSequence", "directions", "is_bidirectional", "native_plan",
           "recurrent_layers", "weight_suffix"]

#: torch's ``RNNBase.mode`` -> the cell family.
FAMILY = {"RNN_TANH": CellKind.RNN, "RNN_RELU": CellKind.RNN, "LSTM": CellKind.LSTM, "GRU": CellKind.GRU}
#: torch's ``RNNBase.mode`` -> the module class that has it.
MODULES: dict[str, Callable[..., torch.nn.RNNBase]] = {"RNN_TANH": torch.nn.RNN, "RNN_RELU": torch.nn.RNN,
                                              "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}


def weight_suffix(layer: int, direction: int) -> str:
    """How torch names a layer's and direction's weights: ``weight_ih`` + ``_l1_reverse``."""
    return f"_l{layer}" + ("_reverse" if direction else "")


def directions(rnn: torch.nn.RNNBase) -> int:
    """1, or 2 for a bidirectional module."""
    return 2 if rnn.bidirectional else 1


def recurrent_layers(module: torch.nn.Module) -> list[torch.nn.RNNBase]:
    """The torch.nn RNN/LSTM/GRU modules inside ``module`` (itself included)."""
    return [m for m in module.modules() if isinstance(m, torch.nn.RNNBase)]


def is_bidirectional(module: torch.nn.Module) -> bool:
    """Whether any recurrent layer in ``module`` reads the sequence in both directions."""
    return any(rnn.bidirectional for rnn in recurrent_layers(module))


class TorchSequence(torch.nn.Module):
    """A module with torch's ``forward(x, state) -> (y, state)`` as ``forward(x, *state)``."""

    def __init__(self, module: torch.nn.Module, is_lstm: bool) -> None:
        super().__init__()
        self.module = module
        self.is_lstm = is_lstm

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y, state_out = self.module(x, tuple(state) if self.is_lstm else state[0])
        return (y, *state_out) if self.is_lstm else (y, state_out)


def native_plan(rnn: torch.nn.RNNBase) -> tuple[NativePlan | None, str]:
    """The ONNX operators' weights for ``rnn`` (gates reordered), or None and why none applies."""
    if getattr(rnn, "proj_size", 0):
        return None, "the ONNX LSTM operator has no projection (proj_size), so it cannot carry the projected state"
    if rnn.mode == "RNN_RELU":
        return None, ("the ONNX RNN operator's Relu activation does not run the same everywhere (tract computes "
                      "tanh instead, onnx's ReferenceEvaluator refuses it), so a relu RNN is scanned or traced")
    kind = FAMILY[rnn.mode]
    count = directions(rnn)
    layers = []
    for layer in range(rnn.num_layers):
        Ws, Rs, Bs = [], [], []
        for d in range(count):
            suffix = weight_suffix(layer, d)
            def get(name: str, suffix: str = suffix) -> np.ndarray:
                return getattr(rnn, name + suffix).detach().float().numpy()
            Ws.append(gates.torch_to_onnx_gates(kind, get("weight_ih")))
            Rs.append(gates.torch_to_onnx_gates(kind, get("weight_hh")))
            if rnn.bias:
                Bs.append(np.concatenate([gates.torch_to_onnx_gates(kind, get("bias_ih")),
                                          gates.torch_to_onnx_gates(kind, get("bias_hh"))]))
        layers.append(NativeLayer(
            op=gates.ONNX_OP[kind],
            W=np.stack(Ws),
            R=np.stack(Rs),
            B=np.stack(Bs) if Bs else None,
            hidden_size=rnn.hidden_size,
            activations=("Tanh",) * count if kind is CellKind.RNN else None,
            linear_before_reset=1 if kind is CellKind.GRU else None,
        ))
    return NativePlan(layers=tuple(layers)), ""
