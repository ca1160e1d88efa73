"""The seed's three recurrent cells, in its calling convention.

Each cell is ``f(inputs, state, params) -> (outputs, state)`` where ``inputs`` is
time-major ``(T, B, V)``, ``state`` is a tuple of ``(B, H)`` tensors (``(H,)`` for
rnn and gru, ``(H, C)`` for lstm) and ``params`` is a flat list in the order given
by :data:`PARAM_NAMES`. ``outputs`` is ``torch.cat`` of the per-step outputs along
dim 0, i.e. shape ``(T * B, Q)``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch

__all__ = [
    "CellKind",
    "PARAM_NAMES",
    "STATE_NAMES",
    "gru",
    "init_params",
    "init_state",
    "lstm",
    "param_shapes",
    "rnn",
]


class CellKind(str, enum.Enum):
    """The seed's cell families."""

    RNN = "rnn"
    LSTM = "lstm"
    GRU = "gru"


PARAM_NAMES: dict[CellKind, tuple[str, ...]] = {
    CellKind.RNN: ("W_xh", "W_hh", "b_h", "W_hq", "b_q"),
    CellKind.LSTM: (
        "W_xi", "W_hi", "b_i",
        "W_xf", "W_hf", "b_f",
        "W_xo", "W_ho", "b_o",
        "W_xc", "W_hc", "b_c",
        "W_hq", "b_q",
    ),
    CellKind.GRU: (
        "W_xz", "W_hz", "b_z",
        "W_xr", "W_hr", "b_r",
        "W_xh", "W_hh", "b_h",
        "W_hq", "b_q",
    ),
}  # fmt: skip

STATE_NAMES: dict[CellKind, tuple[str, ...]] = {
    CellKind.RNN: ("h",),
    CellKind.LSTM: ("h", "c"),
    CellKind.GRU: ("h",),
}


def rnn(inputs: torch.Tensor, state: Sequence[torch.Tensor],
        params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The seed's plain RNN: ``H = tanh(X W_xh + H W_hh + b_h)``, ``Y = H W_hq + b_q``."""
    W_xh, W_hh, b_h, W_hq, b_q = params
    (H,) = state
    outputs = []
    for X in inputs:
        H = torch.tanh(torch.mm(X, W_xh) + torch.mm(H, W_hh) + b_h)
        Y = torch.mm(H, W_hq) + b_q
        outputs.append(Y)
    return torch.cat(outputs, dim=0), (H,)


def lstm(inputs: torch.Tensor, state: Sequence[torch.Tensor],
         params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The seed's LSTM with input, forget and output gates and a candidate cell."""
    [W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c, W_hq, b_q] = params
    (H, C) = state
    outputs = []
    for X in inputs:
        I = torch.sigmoid((X @ W_xi) + (H @ W_hi) + b_i)  # noqa: E741 - the seed's name
        F = torch.sigmoid((X @ W_xf) + (H @ W_hf) + b_f)
        O = torch.sigmoid((X @ W_xo) + (H @ W_ho) + b_o)  # noqa: E741
        C_tilda = torch.tanh((X @ W_xc) + (H @ W_hc) + b_c)
        C = F * C + I * C_tilda
        H = O * torch.tanh(C)
        Y = (H @ W_hq) + b_q
        outputs.append(Y)
    return torch.cat(outputs, dim=0), (H, C)


def gru(inputs: torch.Tensor, state: Sequence[torch.Tensor],
        params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The seed's GRU; the reset gate applies to H *before* the matmul with W_hh."""
    W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q = params
    (H,) = state
    outputs = []
    for X in inputs:
        Z = torch.sigmoid((X @ W_xz) + (H @ W_hz) + b_z)
        R = torch.sigmoid((X @ W_xr) + (H @ W_hr) + b_r)
        H_tilda = torch.tanh((X @ W_xh) + ((R * H) @ W_hh) + b_h)
        H = Z * H + (1 - Z) * H_tilda
        Y = H @ W_hq + b_q
        outputs.append(Y)
    return torch.cat(outputs, dim=0), (H,)


CELL_FUNCTIONS = {CellKind.RNN: rnn, CellKind.LSTM: lstm, CellKind.GRU: gru}


def param_shapes(
    kind: CellKind | str, input_size: int, hidden_size: int, output_size: int | None = None
) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter of a seed cell, in the seed's order.

    Args:
        kind: ``"rnn"``, ``"lstm"`` or ``"gru"``.
        input_size: I, the size of one input vector (the vocabulary for one-hot inputs).
        hidden_size: H.
        output_size: Q; defaults to ``input_size`` as in the seed's language models.
    """
    kind = CellKind(kind)
    q = input_size if output_size is None else output_size
    shapes: dict[str, tuple[int, ...]] = {}
    for name in PARAM_NAMES[kind]:
        if name == "W_hq":
            shapes[name] = (hidden_size, q)
        elif name == "b_q":
            shapes[name] = (q,)
        elif name.startswith("W_x"):
            shapes[name] = (input_size, hidden_size)
        elif name.startswith("W_h"):
            shapes[name] = (hidden_size, hidden_size)
        else:
            shapes[name] = (hidden_size,)
    return shapes


def init_params(
    kind: CellKind | str,
    input_size: int,
    hidden_size: int,
    output_size: int | None = None,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Deterministic parameters for a seed cell, as the seed initialises them.

    Weights are ``N(0, 0.01)``, biases zero, drawn from a private generator so
    the result depends only on the arguments.

    Returns:
        The flat parameter list in :data:`PARAM_NAMES` order.
    """
    generator = torch.Generator().manual_seed(seed)
    params = []
    for name, shape in param_shapes(kind, input_size, hidden_size, output_size).items():
        if name.startswith("W"):
            params.append(torch.randn(shape, generator=generator) * 0.01)
        else:
            params.append(torch.zeros(shape))
    return params


def init_state(kind: CellKind | str, batch_size: int, hidden_size: int) -> tuple[torch.Tensor, ...]:
    """The seed's initial state: zeros, one ``(B, H)`` tensor per state name."""
    kind = CellKind(kind)
    return tuple(torch.zeros(batch_size, hidden_size) for _ in STATE_NAMES[kind])
