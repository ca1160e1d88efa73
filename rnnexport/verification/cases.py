"""The seeded case grid: batch sizes x lengths x input kinds x initial states.

Every case carries its own seed, derived from the run's seed and the case's
coordinates (not its position), so a case's inputs stay the same when the grid
around it changes.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any

import numpy as np

from rnnexport.core.contract import Form, IOSpec
from rnnexport.core.inputs import random_inputs, random_state

__all__ = [
    "RAGGED_BATCH",
    "SATURATING_SCALE",
    "Case",
    "InputKind",
    "StateKind",
    "grid",
    "input_kinds",
    "lengths_of",
    "materialize",
    "ragged",
    "ragged_lengths",
]

#: Saturating inputs are standard normal times this: gates sit at 0 or 1, tanh at +-1.
SATURATING_SCALE = 10.0
#: Streams of a ragged case (graphs with a lengths input): lengths T, 1 and 0 and three drawn, unsorted.
RAGGED_BATCH = 6


class InputKind(str, enum.Enum):
    """What ``x`` holds."""

    NORMAL = "normal"  # standard normal
    SATURATING = "saturating"  # standard normal x SATURATING_SCALE
    ONE_HOT = "one-hot"  # one-hot random tokens, for vocabulary models with vector input
    TOKENS = "tokens"  # random token ids, for int64 inputs
    NAN = "nan"  # standard normal with a NaN in stream 0 halfway through: does NaN propagate as in PyTorch?


class StateKind(str, enum.Enum):
    """The initial state."""

    ZERO = "zero"
    RANDOM = "random"  # standard normal
    NAN = "nan"  # standard normal with a NaN in stream 0's first state tensor


@dataclasses.dataclass(frozen=True)
class Case:
    """One input of the grid: ``batch`` streams of ``time`` steps."""

    batch: int
    time: int
    inputs: InputKind
    state: StateKind
    seed: int
    #: A ragged case's lengths, one per stream (graphs with a lengths input); None: every stream runs T steps.
    lengths: tuple[int, ...] | None = None

    @property
    def id(self) -> str:
        return f"B{self.batch}-T{self.time}-{self.inputs.value}-{self.state.value}" + ("-ragged" if self.lengths else "")

    @property
    def nonfinite(self) -> bool:
        """Whether the case feeds NaN on purpose (its outputs are expected to hold NaN too)."""
        return self.inputs is InputKind.NAN or self.state is StateKind.NAN

    @property
    def elements(self) -> int:
        """``T * B``: the size that decides whether slow engines take the case, and its weight in progress."""
        return self.time * self.batch

    def to_json(self) -> dict[str, Any]:
        data = {"id": self.id, "batch": self.batch, "time": self.time, "inputs": self.inputs.value,
                "state": self.state.value, "seed": self.seed}
        if self.lengths is not None:
            data["lengths"] = list(self.lengths)
        return data


def input_kinds(io: IOSpec, vocabulary: int | None) -> tuple[InputKind, ...]:
    """The input kinds that make sense for ``io``: tokens for int64 inputs, one-hot for vocabularies."""
    if io.x_dtype == "int64":
        return (InputKind.TOKENS,)
    kinds: tuple[InputKind, ...] = (InputKind.NORMAL, InputKind.SATURATING)
    one_hot = getattr(io, "x_encoding", "real") == "one-hot"
    if one_hot or (vocabulary is not None and io.x_features == (vocabulary,)):
        kinds += (InputKind.ONE_HOT,)
    return kinds


def _case_seed(seed: int, batch: int, time: int, inputs: InputKind, state: StateKind, ragged: bool = False) -> int:
    words = [seed, batch, time, list(InputKind).index(inputs), list(StateKind).index(state)] + [1] * ragged
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def ragged_lengths(seed: int, batch: int, time: int) -> tuple[int, ...]:
    """``batch`` lengths from 0 to ``time``: ``time``, 1 and 0 among them, the rest drawn, in a drawn order."""
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([[time, 1, 0], rng.integers(0, time + 1, max(0, batch - 3))])[:batch]
    return tuple(int(n) for n in rng.permutation(lengths))


def ragged(io: IOSpec, seq_lens: Sequence[int], seed: int, vocabulary: int | None = None) -> tuple[Case, ...]:
    """The ragged cases of a graph with a lengths input: one per length of at least 2, random state.

    ``RAGGED_BATCH`` streams each, of lengths :func:`ragged_lengths` (T, 1 and 0 included,
    unsorted, as PyTorch packs them only with ``enforce_sorted=False``).
    """
    if io.lengths is None:
        return ()
    inputs = input_kinds(io, vocabulary)[0]
    cases = []
    for time in (t for t in seq_lens if t >= 2):
        case_seed = _case_seed(seed, RAGGED_BATCH, time, inputs, StateKind.RANDOM, ragged=True)
        cases.append(Case(RAGGED_BATCH, time, inputs, StateKind.RANDOM, case_seed,
                          ragged_lengths(case_seed, RAGGED_BATCH, time)))
    return tuple(cases)


def grid(
    io: IOSpec, batch_sizes: Sequence[int], seq_lens: Sequence[int], seed: int,
    vocabulary: int | None = None,
) -> tuple[Case, ...]:
    """Every length x batch size x input kind x initial state, each with its own seed.

    Length first: the cases of one length are neighbours, as they run (one batch per length,
    :func:`rnnexport.verification.batches.batches`). Then the non-finite cases: at the largest batch up to 4 and the longest length up to 17,
    a NaN in one stream's input halfway (float inputs), and one in its initial state; and for
    a graph with a lengths input, the :func:`ragged` cases.
    """
    cases = []
    for time in seq_lens:
        for batch in batch_sizes:
            for inputs in input_kinds(io, vocabulary):
                for state in (StateKind.ZERO, StateKind.RANDOM):
                    cases.append(Case(batch, time, inputs, state, _case_seed(seed, batch, time, inputs, state)))
    batch = max([b for b in batch_sizes if b <= 4] or [min(batch_sizes)])
    time = max([t for t in seq_lens if t <= 17] or [min(seq_lens)])
    special = [(InputKind.NAN, StateKind.ZERO)] if io.x_dtype != "int64" else []
    special.append((input_kinds(io, vocabulary)[0], StateKind.NAN))
    for inputs, state in special:
        cases.append(Case(batch, time, inputs, state, _case_seed(seed, batch, time, inputs, state)))
    return (*cases, *ragged(io, seq_lens, seed, vocabulary))


def lengths_of(case: Case) -> np.ndarray | None:
    """A ragged case's lengths as the graph takes them (int64); None for a full-length case."""
    return None if case.lengths is None else np.asarray(case.lengths, np.int64)


def materialize(case: Case, io: IOSpec, vocabulary: int | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """The case's ``x`` (a whole sequence, in the contract's layout) and initial state.

    A ragged case's ``x`` holds values past each stream's end too: the graph must not read them.
    """
    rng = np.random.default_rng(case.seed)
    if case.inputs is InputKind.ONE_HOT:
        shape = io.inputs(Form.SEQUENCE, case.time)[0].concrete(case.batch, case.time)
        tokens = rng.integers(0, shape[-1], size=shape[:-1])
        x = np.eye(shape[-1], dtype=io.x_dtype)[tokens]
    else:
        scale = SATURATING_SCALE if case.inputs is InputKind.SATURATING else 1.0
        x = random_inputs(io, Form.SEQUENCE, case.batch, case.time, rng, scale=scale, vocabulary=vocabulary)
    if case.inputs is InputKind.NAN:
        where = [0] * x.ndim
        where[io.time_axis] = case.time // 2
        x[tuple(where)] = np.nan  # stream 0, feature 0
    if case.state is StateKind.ZERO:
        state = io.state.zeros(case.batch)
    else:
        state = random_state(io, case.batch, rng)
    if case.state is StateKind.NAN:
        state[0][(0,) * state[0].ndim] = np.nan  # stream 0 (index 0 on every axis, the batch axis among them)
    return x, state
