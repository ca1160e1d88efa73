"""A torch.nn.RNN/LSTM/GRU written out as plain tensor operations.

torch's ONNX exporter lowers ``aten.lstm`` and friends in ways that fix the
sequence length or break on ``proj_size``. :class:`ExplicitRecurrent` computes
exactly what the torch.nn module computes, from the same weights, with matmuls
and pointwise ops only, so tracing it gives a clean graph. It stands in for the
module while tracing; the module itself stays the reference it is checked against.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from rnnexport.source.torchnn import directions, weight_suffix

__all__ = ["ExplicitRecurrent", "explicit_copy"]


class ExplicitRecurrent(torch.nn.Module):
    """Same ``forward(x, hx) -> (output, h_n)`` as the torch.nn module it copies."""

    def __init__(self, module: torch.nn.RNNBase) -> None:
        super().__init__()
        self.mode = module.mode  # "RNN_TANH", "RNN_RELU", "LSTM", "GRU"
        self.num_layers = module.num_layers
        self.directions = directions(module)
        self.batch_first = module.batch_first
        self.hidden_size = module.hidden_size
        self.proj_size = getattr(module, "proj_size", 0)
        self.bias = module.bias
        for name in module._flat_weights_names:
            self.register_buffer(name, getattr(module, name).detach().clone())

    def _weight(self, kind: str, layer: int, direction: int) -> torch.Tensor | None:
        return getattr(self, kind + weight_suffix(layer, direction), None)

    def _required(self, kind: str, layer: int, direction: int) -> torch.Tensor:
        """A weight every layer of this module has (``weight_ih``, ``bias_hh`` when ``bias``, ...)."""
        weight = self._weight(kind, layer, direction)
        if weight is None:
            raise AttributeError(f"the copied module has no {kind} for layer {layer}, direction {direction}")
        return weight

    def _cell(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, layer: int,
              direction: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        gi = x @ self._required("weight_ih", layer, direction).T
        gh = h @ self._required("weight_hh", layer, direction).T
        if self.bias:
            gi = gi + self._required("bias_ih", layer, direction)
            gh = gh + self._required("bias_hh", layer, direction)
        if self.mode == "LSTM":
            if c is None:
                raise ValueError("an LSTM step needs its cell state")
            i, f, g, o = (gi + gh).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            weight_hr = self._weight("weight_hr", layer, direction)  # LSTM(proj_size=...) only
            if weight_hr is not None:
                h = h @ weight_hr.T
            return h, c
        if self.mode == "GRU":
            i_r, i_z, i_n = gi.chunk(3, dim=-1)
            h_r, h_z, h_n = gh.chunk(3, dim=-1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            return (1 - z) * n + z * h, c
        pre = gi + gh
        return (torch.relu(pre) if self.mode == "RNN_RELU" else torch.tanh(pre)), c

    def forward(self, x: torch.Tensor,
                hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, Any]:
        if self.batch_first:
            x = x.transpose(0, 1)
        is_lstm = self.mode == "LSTM"
        h0: torch.Tensor
        c0: torch.Tensor | None
        if hx is None:
            h0, c0 = self._zeros(x)
        elif isinstance(hx, tuple):
            h0, c0 = hx
        else:
            h0, c0 = hx, None
        h_n: list[torch.Tensor] = []
        c_n: list[torch.Tensor] = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.directions):
                index = layer * self.directions + direction
                h, c = h0[index], c0[index] if is_lstm and c0 is not None else None
                steps = range(x.shape[0] - 1, -1, -1) if direction else range(x.shape[0])
                ys: list[torch.Tensor] = []  # in the order of ``steps``
                for t in steps:
                    h, c = self._cell(x[t], h, c, layer, direction)
                    ys.append(h)
                outputs.append(torch.stack(ys[::-1] if direction else ys))
                h_n.append(h)
                if c is not None:  # LSTM only
                    c_n.append(c)
            x = torch.cat(outputs, dim=-1) if self.directions == 2 else outputs[0]
        y = x.transpose(0, 1) if self.batch_first else x
        h_stacked = torch.stack(h_n)
        return (y, (h_stacked, torch.stack(c_n))) if is_lstm else (y, h_stacked)

    def _zeros(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.num_layers * self.directions
        h = x.new_zeros(n, x.shape[1], self.proj_size or self.hidden_size)
        c = x.new_zeros(n, x.shape[1], self.hidden_size)
        return h, c


def explicit_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with every torch.nn recurrent layer replaced by its explicit form."""
    if isinstance(module, torch.nn.RNNBase):
        return ExplicitRecurrent(module)
    clone = copy.deepcopy(module)
    for parent in clone.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.RNNBase):
                setattr(parent, name, ExplicitRecurrent(child))
    return clone
