"""A torch.nn.RNN/LSTM/GRU written out as plain tensor operations.

torch's ONNX exporter lowers ``aten.lstm`` and friends in ways that fix the
sequence length or break on ``proj_size``. :class:`ExplicitRecurrent` computes
exactly what the torch.nn module computes, from the same weights, with matmuls
and pointwise ops only, so tracing it gives a clean graph. It stands in for the
module while tracing; the module itself stays the reference it is checked against.

With ``scanned`` set, each direction of each layer runs as one torch ``scan`` (a higher-order
op that torch's exporter writes as an ONNX ``Scan``, backwards for a reverse direction) over
the input projections computed for all steps at once, so the trace takes any T: the form a
bidirectional layer inside a larger module is traced in (:func:`scanned_copy`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch._higher_order_ops.scan import scan

from rnnexport.source.torchnn import directions, weight_suffix

__all__ = ["ExplicitRecurrent", "explicit_copy", "scanned_copy"]


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
        self.scanned = False
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

    def _input_gates(self, x: torch.Tensor, layer: int, direction: int) -> torch.Tensor:
        gi = x @ self._required("weight_ih", layer, direction).T
        return gi + self._required("bias_ih", layer, direction) if self.bias else gi

    def _recurrent(self, layer: int, direction: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(weight_hh, bias_hh or None, weight_hr or None)`` of one layer and direction."""
        bias = self._required("bias_hh", layer, direction) if self.bias else None
        return self._required("weight_hh", layer, direction), bias, self._weight("weight_hr", layer, direction)

    def _cell(self, gi: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None,
              weights: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step from the input's gate pre-activations ``gi``, the state and :meth:`_recurrent`'s weights."""
        weight_hh, bias_hh, weight_hr = weights
        gh = h @ weight_hh.T
        if bias_hh is not None:
            gh = gh + bias_hh
        if self.mode == "LSTM":
            if c is None:
                raise ValueError("an LSTM step needs its cell state")
            i, f, g, o = (gi + gh).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            if weight_hr is not None:  # LSTM(proj_size=...) only
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

    def _direction(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, layer: int,
                   direction: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One direction of one layer over ``x`` (T, B, I): ``(outputs (T, B, H), h_n, c_n)``."""
        weights = self._recurrent(layer, direction)
        if self.scanned:
            return self._scanned(self._input_gates(x, layer, direction), h, c, weights, bool(direction))
        steps = range(x.shape[0] - 1, -1, -1) if direction else range(x.shape[0])
        ys: list[torch.Tensor] = []  # in the order of ``steps``
        for t in steps:
            h, c = self._cell(self._input_gates(x[t], layer, direction), h, c, weights)
            ys.append(h)
        return torch.stack(ys[::-1] if direction else ys), h, c

    def _scanned(self, gi: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None,
                 weights: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None],
                 reverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        def step(carry: tuple[torch.Tensor, ...], gi_t: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
            h_t, c_t = self._cell(gi_t, carry[0], carry[1] if len(carry) > 1 else None, weights)
            carry_out = (h_t,) if c_t is None else (h_t, c_t)
            return carry_out, h_t.clone()  # a scan output must not alias the carry

        carry, ys = scan(step, (h,) if c is None else (h, c), gi, dim=0, reverse=reverse)
        return ys, carry[0], carry[1] if len(carry) > 1 else None

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
                ys, h, c = self._direction(x, h, c, layer, direction)
                outputs.append(ys)
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


def scanned_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose explicit recurrent layers run as torch scans (traceable at any T)."""
    clone = copy.deepcopy(module)
    for child in clone.modules():
        if isinstance(child, ExplicitRecurrent):
            child.scanned = True
    return clone
