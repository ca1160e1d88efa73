"""Cases run together: the streams of several cases side by side along the batch axis, in one call.

A recurrent model's streams are independent (the runtime's :class:`~rnnexport.runtime.StreamBatcher`
relies on it), so the cases of one length can share a call: PyTorch's reference runs once per
:class:`Stack` rather than once per case, and so do the chunked and streamed runs of contracts
2 and 3, whose cost is one call per step or chunk, whatever the batch. Each case's figures
are still its own: the outputs are split back into cases before any comparison. The NaN
cases and ragged cases run alone, as do cases too large to share a call (``BATCH_VALUES``).

A stack's batch is the sum of its cases' batch sizes, so a graph that mishandles one batch size
(B=1 most often) could pass every run over stacks. So for each batch size of the grid, one case
runs alone (:func:`lone_cases`): every engine and every contract then sees each batch size at
least once, at the cost of a few calls on a short case.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from rnnexport.core.contract import BATCH, Form, IOSpec, TensorSpec
from rnnexport.verification.cases import Case, StateKind

__all__ = ["BATCH_VALUES", "Stack", "batches", "lone_cases"]

#: The most values one batch's ``x``, ``y`` and state may hold together (64 MiB of float32): the
#: cases of a small model share a call at every length of the full grid, those of a large one fewer.
BATCH_VALUES = 1 << 24


def batches(cases: Sequence[Case], io: IOSpec, max_values: int = BATCH_VALUES) -> tuple[tuple[Case, ...], ...]:
    """``cases`` grouped into the batches that run as one, in the order of each batch's first case.

    The finite full-length cases of one length share a batch while its ``x``, ``y`` and state
    hold at most ``max_values`` values; a NaN case, a ragged case and each batch size's
    :func:`lone_cases` case are batches of their own.
    """
    per_stream = _values_per_stream(io)
    lone = set(lone_cases(cases))
    found: list[list[Case]] = []
    open_batch: dict[int, list[Case]] = {}
    for case in cases:
        alone = case.nonfinite or case.lengths is not None or case in lone
        current = None if alone else open_batch.get(case.time)
        streams = case.batch + sum(c.batch for c in current or ())
        if current is not None and streams * per_stream(case.time) <= max_values:
            current.append(case)
            continue
        found.append([case])
        if not alone:
            open_batch[case.time] = found[-1]
    return tuple(tuple(group) for group in found)


def lone_cases(cases: Sequence[Case]) -> tuple[Case, ...]:
    """For each batch size of ``cases``, the finite full-length case that runs alone, in order of batch size.

    The shortest random-state case of more than one step (contract 2 chunks only random-state
    cases, and only into chunks shorter than the case), else the shortest random-state case, else
    the shortest case; the first of equals in ``cases``' order. Each batch size's is run at
    exactly that batch size by every engine that takes it, chunked and streamed.
    """
    def rank(case: Case) -> tuple[bool, bool, int]:
        return case.state is not StateKind.RANDOM, case.time < 2, case.time

    chosen: dict[int, Case] = {}
    for case in cases:
        if case.nonfinite or case.lengths is not None:
            continue
        best = chosen.get(case.batch)
        if best is None or rank(case) < rank(best):
            chosen[case.batch] = case
    return tuple(chosen[b] for b in sorted(chosen))


def _values_per_stream(io: IOSpec) -> Callable[[int], int]:
    """How many values of ``x``, ``y`` and the state one stream of ``time`` steps holds."""
    x, y = (math.prod(shape) for shape in (io.x_features, io.y_features))
    state = sum(math.prod(s.concrete(1)) for s in io.state.inputs())
    return lambda time: time * (x + y) + state


def _batch_axes(specs: Sequence[TensorSpec]) -> dict[str, int]:
    return {s.name: s.shape.index(BATCH) for s in specs if BATCH in s.shape}


@dataclasses.dataclass(frozen=True)
class Stack:
    """Cases of one length with their inputs, and those inputs side by side: one batch of streams.

    Attributes:
        io: the contract that says where each tensor's batch axis is.
        cases: the cases, in the order their streams take in the batch.
        inputs: each case's ``x`` and initial state (:func:`~rnnexport.verification.cases.materialize`).
    """

    io: IOSpec
    cases: tuple[Case, ...]
    inputs: tuple[tuple[np.ndarray, list[np.ndarray]], ...]

    @property
    def time(self) -> int:
        return self.cases[0].time

    @property
    def nonfinite(self) -> bool:
        return any(c.nonfinite for c in self.cases)

    @functools.cached_property
    def x(self) -> np.ndarray:
        """Every case's ``x`` along the batch axis."""
        if len(self.inputs) == 1:
            return self.inputs[0][0]
        return np.concatenate([x for x, _ in self.inputs], axis=self.io.batch_axis)

    @functools.cached_property
    def state(self) -> list[np.ndarray]:
        """Every case's initial state along the state's batch axis."""
        if len(self.inputs) == 1:
            return self.inputs[0][1]
        axis = self.io.state.batch_axis
        return [np.concatenate(parts, axis=axis) for parts in zip(*(s for _, s in self.inputs), strict=True)]

    def select(self, cases: Sequence[Case]) -> Stack:
        """The stack of ``cases`` (some of this stack's), in this stack's order."""
        keep = set(cases)
        pairs = [(c, i) for c, i in zip(self.cases, self.inputs, strict=True) if c in keep]
        return Stack(self.io, tuple(c for c, _ in pairs), tuple(i for _, i in pairs))

    def split(self, outputs: Mapping[str, np.ndarray], form: Form) -> list[dict[str, np.ndarray]]:
        """Outputs of the whole batch (in ``form``'s layout, by name) cut into each case's, in order."""
        if len(self.cases) == 1:
            return [dict(outputs)]
        axes = _batch_axes(self.io.outputs(form))
        bounds = np.cumsum([c.batch for c in self.cases])[:-1]
        parts: list[dict[str, np.ndarray]] = [{} for _ in self.cases]
        for name, array in outputs.items():
            if name not in axes:
                raise ValueError(f"{name!r} is not an output of the contract: it cannot be split into cases")
            for part, piece in zip(parts, np.split(np.asarray(array), bounds, axis=axes[name]), strict=True):
                part[name] = piece
        return parts
