"""The model matrix the tests run: every supported source kind, with fixed seeds.

``LOWERINGS`` says which sequence lowerings apply to each configuration; a test
checks that the others are refused with a reason, so the table cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch

import rnnexport
from rnnexport.source import cells
from rnnexport.source.model import RecurrentModel


def seed_params(kind: str, i: int = 10, h: int = 16, q: int = 7, seed: int = 0) -> list[torch.Tensor]:
    """Seed-layout parameters big enough to make every gate matter (unlike init_params' 0.01)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = cells.param_shapes(kind, i, h, q).values()
    return [torch.randn(s, generator=gen) * (0.4 if len(s) == 2 else 0.2) for s in shapes]


def _seeded(factory: Callable[[], torch.nn.Module]) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return factory().eval()
    return build


class TokenLM(torch.nn.Module):
    """Embedding -> LSTM -> Linear: a module built around a torch.nn recurrent layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(20, 8)
        self.rnn = torch.nn.LSTM(8, 16)
        self.head = torch.nn.Linear(16, 20)

    def forward(self, x, state):
        y, state = self.rnn(self.embed(x), state)
        return self.head(y), state


class BatchFirstRegressor(torch.nn.Module):
    """Linear -> GRU(batch_first) -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(6, 10)
        self.rnn = torch.nn.GRU(10, 16, batch_first=True)
        self.out = torch.nn.Linear(16, 3)

    def forward(self, x, h):
        y, h = self.rnn(torch.tanh(self.inp(x)), h)
        return self.out(y), h


def leaky_cell(inputs, state, params):
    """A user loop that is none of the seed cells: a leaky tanh RNN with a skip output."""
    W_x, W_h, b, W_o = params
    (H,) = state
    outputs = []
    for X in inputs:
        H = 0.5 * H + 0.5 * torch.tanh(X @ W_x + H @ W_h + b)
        outputs.append(H @ W_o + X[:, :3])
    return torch.cat(outputs, dim=0), (H,)


def _leaky() -> RecurrentModel:
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(s, generator=gen) * 0.4 for s in ((10, 16), (16, 16), (16,), (16, 3))]
    return rnnexport.from_cell(leaky_cell, params, (torch.zeros(2, 16),))


def _seed_as_user_loop() -> RecurrentModel:
    def my_gru(inputs, state, params):  # the seed's gru, written by a user
        return cells.gru(inputs, state, params)
    return rnnexport.from_cell(my_gru, seed_params("gru", seed=4), (torch.zeros(2, 16),))


CONFIGS: dict[str, Callable[[], RecurrentModel | torch.nn.Module]] = {
    "seed_rnn": lambda: rnnexport.builtin("rnn", params=seed_params("rnn", seed=1)),
    "seed_lstm": lambda: rnnexport.builtin("lstm", params=seed_params("lstm", seed=2)),
    "seed_gru": lambda: rnnexport.builtin("gru", params=seed_params("gru", seed=3)),
    "nn_rnn_tanh_2layer": _seeded(lambda: torch.nn.RNN(10, 16, num_layers=2)),
    "nn_rnn_relu": _seeded(lambda: torch.nn.RNN(10, 16, nonlinearity="relu", batch_first=True)),
    "nn_lstm_proj": _seeded(lambda: torch.nn.LSTM(10, 16, proj_size=5)),
    "nn_lstm_2layer_bi_batch_first": _seeded(
        lambda: torch.nn.LSTM(10, 16, num_layers=2, bidirectional=True, batch_first=True)),
    "nn_gru_3layer_bi": _seeded(lambda: torch.nn.GRU(10, 16, num_layers=3, bidirectional=True)),
    "nn_gru_2layer_nobias": _seeded(lambda: torch.nn.GRU(10, 16, num_layers=2, bias=False)),
    "wrapped_token_lm": _seeded(TokenLM),
    "wrapped_batch_first_gru": _seeded(BatchFirstRegressor),
    "user_leaky_cell": _leaky,
    "user_seed_gru": _seed_as_user_loop,
}

#: Sequence lowerings that apply to each configuration (unrolled applies to all).
LOWERINGS: dict[str, tuple[str, ...]] = {
    "seed_rnn": ("native", "scan"),
    "seed_lstm": ("native", "scan"),
    "seed_gru": ("native", "scan"),
    "nn_rnn_tanh_2layer": ("native", "scan"),
    "nn_rnn_relu": ("scan",),
    "nn_lstm_proj": ("scan",),
    "nn_lstm_2layer_bi_batch_first": ("native", "scan"),
    "nn_gru_3layer_bi": ("native", "scan"),
    "nn_gru_2layer_nobias": ("native", "scan"),
    "wrapped_token_lm": ("scan",),
    "wrapped_batch_first_gru": ("scan",),
    "user_leaky_cell": ("scan",),
    "user_seed_gru": ("native", "scan"),
}

BIDIRECTIONAL = {"nn_lstm_2layer_bi_batch_first", "nn_gru_3layer_bi"}


def heavy(name: str, lowering: str) -> bool:
    """Whether a case exports or runs a large graph: a bidirectional configuration (3-layer or
    batch-first), a bidirectional module, or an unrolled graph of anything but a seed cell."""
    return name in BIDIRECTIONAL or "_bi" in name or (lowering == "unrolled" and not name.startswith("seed_"))


def fast_lane(cases: Iterable[tuple[str, str]]) -> list[Any]:
    """``(name, lowering)`` cases as pytest parameters, the :func:`heavy` ones marked slow: the full
    suite runs every case, the fast lane (``-m "not slow"``) one of each kind."""
    return [pytest.param(*case, marks=pytest.mark.slow) if heavy(*case) else case for case in cases]
#: What auto must pick: native when it applies, except scan for plain-RNN sequences.
RNN_FAMILY = {"seed_rnn", "nn_rnn_tanh_2layer", "nn_rnn_relu"}
AUTO = {name: "scan" if name in RNN_FAMILY else lowerings[0] for name, lowerings in LOWERINGS.items()}
#: Vocabulary of token-input configurations.
VOCABULARY = {"wrapped_token_lm": 20}


def build(name: str) -> RecurrentModel:
    from rnnexport.source.sources import load_source

    return load_source(CONFIGS[name]())
