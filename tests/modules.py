"""User modules with their own loops and nested state (tuples, lists, dicts): the tests convert them.

Every reference value comes from running the torch module itself.
"""

from __future__ import annotations

import torch
from torch import nn


class LSTMCellLoop(nn.Module):
    """An nn.LSTMCell loop with a head; ``initial_state`` gives ``(h, c)``."""

    def __init__(self, hidden: int = 5) -> None:
        super().__init__()
        self.hidden = hidden
        self.cell = nn.LSTMCell(3, hidden)
        self.head = nn.Linear(hidden, 2)

    def initial_state(self, batch: int):
        return torch.zeros(batch, self.hidden), torch.zeros(batch, self.hidden)

    def forward(self, x, state):
        h, c = state
        ys = []
        for t in range(x.shape[0]):
            h, c = self.cell(x[t], (h, c))
            ys.append(self.head(h))
        return torch.stack(ys), (h, c)


class StackedCells(nn.Module):
    """Two LSTMCells, a list of ``(h, c)`` tuples as state, found from ``forward(x, None)``."""

    def __init__(self) -> None:
        super().__init__()
        self.cells = nn.ModuleList([nn.LSTMCell(3, 4), nn.LSTMCell(4, 4)])

    def forward(self, x, state=None):
        if state is None:
            state = [(x.new_zeros(x.shape[1], 4), x.new_zeros(x.shape[1], 4)) for _ in self.cells]
        state, ys = list(state), []
        for t in range(x.shape[0]):
            inp = x[t]
            for k, cell in enumerate(self.cells):
                state[k] = cell(inp, state[k])
                inp = state[k][0]
            ys.append(inp)
        return torch.stack(ys), state


class LstmThenGru(nn.Module):
    """An nn.LSTM then a 2-layer nn.GRU: state ``((h1, c1), h2)``, found from ``forward(x)``."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 6)
        self.gru = nn.GRU(6, 4, num_layers=2)

    def forward(self, x, state=None):
        first, second = state if state is not None else (None, None)
        y, first = self.lstm(x, first)
        y, second = self.gru(y, second)
        return y, (first, second)


class ResidualNormCell(nn.Module):
    """A GRUCell with a residual connection and LayerNorm in its step; batch-first, dict state."""

    batch_first = True

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(4, 4)
        self.norm = nn.LayerNorm(4)

    def initial_state(self, batch: int):
        return {"h": torch.zeros(batch, 4)}

    def forward(self, x, state):
        h, ys = state["h"], []
        for t in range(x.shape[1]):
            h = self.norm(self.cell(x[:, t], h) + x[:, t])
            ys.append(h)
        return torch.stack(ys, dim=1), {"h": h}


class PlainGRU(nn.Module):
    """A minimal GRU in plain torch ops; the state is one tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.x_gates = nn.Linear(3, 15)
        self.h_gates = nn.Linear(5, 15, bias=False)

    def initial_state(self, batch: int):
        return torch.zeros(batch, 5)

    def forward(self, x, h):
        ys = []
        for t in range(x.shape[0]):
            xr, xz, xn = self.x_gates(x[t]).chunk(3, -1)
            hr, hz, hn = self.h_gates(h).chunk(3, -1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            h = (1 - z) * torch.tanh(xn + r * hn) + z * h
            ys.append(h)
        return torch.stack(ys), h


class LstmThenCell(nn.Module):
    """An nn.LSTM (state ``(1, B, H)``) then a residual GRUCell loop (``(B, H)``): batch axes differ."""

    def __init__(self, input_size: int = 3) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, 4)
        self.cell = nn.GRUCell(4, 4)

    def initial_state(self, batch: int):
        return {"lstm": (torch.zeros(1, batch, 4), torch.zeros(1, batch, 4)), "cell": torch.zeros(batch, 4)}

    def forward(self, x, state):
        y, lstm = self.lstm(x, state["lstm"])
        h, ys = state["cell"], []
        for t in range(y.shape[0]):
            h = self.cell(y[t], h) + y[t]
            ys.append(h)
        return torch.stack(ys), {"lstm": lstm, "cell": h}


class GruCellLoop(nn.Module):
    """An nn.GRUCell loop whose output is its state: ``y_t = h_t``."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(3, 4)

    def initial_state(self, batch: int):
        return torch.zeros(batch, 4)

    def forward(self, x, h):
        ys = []
        for t in range(x.shape[0]):
            h = self.cell(x[t], h)
            ys.append(h)
        return torch.stack(ys), h


class LstmCellThenGruCell(nn.Module):
    """An nn.LSTMCell then an nn.GRUCell, state ``((h, c), g)``; the output is the last state tensor: ``y_t = g_t``."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.gru, self.out = nn.LSTMCell(3, 4), nn.GRUCell(4, 2), nn.Identity()

    def initial_state(self, batch: int):
        return (torch.zeros(batch, 4), torch.zeros(batch, 4)), torch.zeros(batch, 2)

    def forward(self, x, state):
        (h, c), g = state
        ys = []
        for t in range(x.shape[0]):
            h, c = self.lstm(x[t], (h, c))
            g = self.gru(h, g)
            ys.append(self.out(g))
        return torch.stack(ys), ((h, c), g)


class LearnedStart(LstmCellThenGruCell):
    """The same with a head (``y_t = head(g_t)``) and a learned initial ``((h, c), g)``, expanded over the batch."""

    def __init__(self) -> None:
        torch.manual_seed(5)
        super().__init__()
        self.out = nn.Linear(2, 2)
        self.h0, self.c0, self.g0 = (nn.Parameter(torch.randn(size)) for size in (4, 4, 2))

    def initial_state(self, batch: int):
        return (self.h0.expand(batch, -1), self.c0.expand(batch, -1)), self.g0.expand(batch, -1)


#: name -> (module class, expected state names, expected structure)
MODULES = {
    "lstm_cell_loop": (LSTMCellLoop, ("s0", "s1"), ("s0", "s1")),
    "stacked_cells": (StackedCells, ("s0_0", "s0_1", "s1_0", "s1_1"), (("s0_0", "s0_1"), ("s1_0", "s1_1"))),
    "lstm_then_gru": (LstmThenGru, ("s0_0", "s0_1", "s1"), (("s0_0", "s0_1"), "s1")),
    "residual_norm_cell": (ResidualNormCell, ("h",), {"h": "h"}),
    "plain_gru": (PlainGRU, ("h",), None),
    "lstm_then_cell": (LstmThenCell, ("lstm_0", "lstm_1", "cell"), {"lstm": ("lstm_0", "lstm_1"), "cell": "cell"}),
}


def user_module(name: str) -> nn.Module:
    """A fresh module ``name`` of :data:`MODULES`, its weights seeded, in eval mode."""
    torch.manual_seed(0)
    return MODULES[name][0]().eval()
