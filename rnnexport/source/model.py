"""The internal model every source becomes: a PyTorch reference, its I/O contract and parameters.

The contract itself (:class:`~rnnexport.core.contract.IOSpec` and friends) lives in the
torch-free :mod:`rnnexport.core.contract`; this module holds what needs torch.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rnnexport.core.contract import IOSpec
from rnnexport.source.torchnn import is_bidirectional

if TYPE_CHECKING:
    from rnnexport.source.plan import NativePlan

__all__ = ["RecurrentModel", "SourceKind", "run_ragged"]


class SourceKind(str, enum.Enum):
    """Where a model came from."""

    BUILTIN = "builtin"  # a seed cell, with generated or loaded weights
    MODULE = "module"  # a torch.nn module: an RNN/LSTM/GRU or one built around it
    CELL = "cell"  # a user's loop in the seed's convention


@dataclasses.dataclass(frozen=True, eq=False)
class RecurrentModel:
    """A recurrent model ready to export: a torch reference, its contract and parameters. Frozen.

    Attributes:
        kind: where it came from.
        family: ``"rnn"``, ``"lstm"`` or ``"gru"`` when known, else None.
        io: the I/O contract.
        sequence_module: ``forward(x, *state) -> (y, *state_out)`` in the contract's
            layout; the reference every lowering and check is compared with.
        params: named parameters, for the parameter hash.
        native: the native plan, or None with ``native_reason`` saying why.
        scan_reason: why the scan lowering cannot apply, or None when it can.
        origin: JSON-able description that lets a built-in model be rebuilt.
        description: one line for humans.
        trace_module: computes what ``sequence_module`` computes, in a form that
            torch's exporter traces cleanly (None: ``sequence_module``).
        card: the model card, for trained example models.
    """

    kind: SourceKind
    family: str | None
    io: IOSpec
    sequence_module: torch.nn.Module
    params: list[tuple[str, torch.Tensor]]
    native: NativePlan | None = None
    native_reason: str = ""
    scan_reason: str | None = None
    origin: dict[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""
    trace_module: torch.nn.Module | None = None
    card: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.sequence_module.eval()
        if self.trace_module is None:
            object.__setattr__(self, "trace_module", self.sequence_module)
        else:
            self.trace_module.eval()

    def __repr__(self) -> str:
        return f"RecurrentModel({self.description or self.kind.value})"

    def step_module(self) -> torch.nn.Module:
        """``forward(x_t, *state) -> (y_t, *state_out)``: the sequence module on one step."""
        return _OneStep(self.sequence_module, self.io.time_axis)

    def trace_step_module(self) -> torch.nn.Module:
        """One step of ``trace_module``: what the step and scan lowerings trace."""
        assert self.trace_module is not None  # set in __post_init__
        return _OneStep(self.trace_module, self.io.time_axis)

    def bidirectional(self) -> bool:
        """Whether the model holds a torch.nn layer that reads the sequence in both directions."""
        return is_bidirectional(self.sequence_module)

    def vocabulary_size(self) -> int | None:
        """The vocabulary of a token model: the card's ``vocabulary``, else the first nn.Embedding's size."""
        if self.card and self.card.get("vocabulary"):
            return len(self.card["vocabulary"])
        for module in self.sequence_module.modules():
            if isinstance(module, torch.nn.Embedding):
                return int(module.num_embeddings)
        return None

    def params_sha256(self) -> str:
        """SHA-256 over every parameter's name, dtype, shape and bytes, in order."""
        digest = hashlib.sha256()
        for name, tensor in self.params:
            array = tensor.detach().cpu().contiguous().numpy()
            header = json.dumps([name, str(array.dtype), list(array.shape)])
            digest.update(header.encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    def with_lengths(self) -> RecurrentModel:
        """This model with a ``lengths`` input on its sequence graph (ragged batches)."""
        return dataclasses.replace(self, io=self.io.with_lengths())

    @torch.no_grad()
    def run_sequence(self, x: np.ndarray, state: list[np.ndarray],
                     lengths: np.ndarray | None = None) -> list[np.ndarray]:
        """The PyTorch reference on numpy arrays: ``[y, *state_out]``.

        With ``lengths`` (one per stream), each stream runs alone on its first ``lengths[b]``
        steps (see :func:`run_ragged`): what PyTorch's packed sequences compute.
        """
        if lengths is not None:
            return run_ragged(self.io, self.run_sequence, x, state, lengths)
        outputs = self.sequence_module(torch.from_numpy(x), *(torch.from_numpy(s.copy()) for s in state))
        return [o.detach().numpy() for o in outputs]

    @torch.no_grad()
    def run_sequence_float64(self, x: np.ndarray, state: list[np.ndarray],
                             lengths: np.ndarray | None = None) -> list[np.ndarray] | None:
        """The reference computed in float64, or None when the model does not run in float64.

        Verification uses it to measure the float32 reference's own rounding error.
        """
        if lengths is not None:
            try:
                return run_ragged(self.io, self._run_float64, x, state, lengths)
            except _NoFloat64:
                return None
        try:
            return self._run_float64(x, state)
        except _NoFloat64:
            return None

    def _run_float64(self, x: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
        x64 = torch.from_numpy(x).double() if np.issubdtype(x.dtype, np.floating) else torch.from_numpy(x)
        try:
            outputs = self._float64_module(x64, *(torch.from_numpy(s).double() for s in state))
        except (RuntimeError, TypeError) as e:  # a user loop that builds float32 tensors inside
            raise _NoFloat64 from e
        return [o.detach().numpy() for o in outputs]

    @functools.cached_property
    def _float64_module(self) -> torch.nn.Module:
        return copy.deepcopy(self.sequence_module).double()

    @torch.no_grad()
    def run_step(self, x: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
        """One step of the PyTorch reference on numpy arrays."""
        outputs = self.step_module()(torch.from_numpy(x), *(torch.from_numpy(s.copy()) for s in state))
        return [o.detach().numpy() for o in outputs]


class _NoFloat64(Exception):
    """The model does not run in float64."""


Run = Callable[[np.ndarray, list[np.ndarray]], list[np.ndarray]]


def run_ragged(io: IOSpec, run: Run, x: np.ndarray, state: list[np.ndarray], lengths: np.ndarray) -> list[np.ndarray]:
    """``run`` (a full-length sequence run) on a ragged batch: each stream alone on its own length.

    Stream ``b`` runs on ``x``'s first ``lengths[b]`` steps from its own initial state; its ``y``
    is zero after that (as ``pad_packed_sequence`` pads) and its final state is where it ended;
    a length of 0 leaves its initial state. The definition of the lengths input's semantics,
    for every source: torch.nn modules, seed cells, user loops and nested-state modules alike.
    """
    time, batch = x.shape[io.time_axis], x.shape[io.batch_axis]
    lengths = np.asarray(lengths)
    if lengths.shape != (batch,) or ((lengths < 0) | (lengths > time)).any():
        raise ValueError(f"lengths must be {batch} values from 0 to {time}, got {lengths!r:.80}")
    axis = io.state.batch_axis
    y: np.ndarray | None = None
    final = [np.array(s, copy=True) for s in state]
    for b, length in enumerate(int(n) for n in lengths):
        if length == 0:
            continue
        x_b = np.take(np.take(x, [b], axis=io.batch_axis), range(length), axis=io.time_axis)
        out = run(np.ascontiguousarray(x_b), [np.ascontiguousarray(np.take(s, [b], axis=axis)) for s in state])
        if y is None:
            shape = list(out[0].shape)
            shape[io.time_axis], shape[io.batch_axis] = time, batch
            y = np.zeros(shape, out[0].dtype)
        index: list[slice | int] = [slice(None)] * y.ndim
        index[io.batch_axis], index[io.time_axis] = slice(b, b + 1), slice(0, length)
        y[tuple(index)] = out[0]
        for k, value in enumerate(out[1:]):
            final[k] = final[k].astype(value.dtype, copy=False)
            at: list[slice] = [slice(None)] * value.ndim
            at[axis] = slice(b, b + 1)
            final[k][tuple(at)] = value
    if y is None:  # every length 0: y's shape and dtype from one full run
        full = run(x, state)[0]
        y = np.zeros_like(full)
    return [y, *final]


class _OneStep(torch.nn.Module):
    def __init__(self, sequence: torch.nn.Module, time_axis: int) -> None:
        super().__init__()
        self.sequence = sequence
        self.time_axis = time_axis

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y, *state_out = self.sequence(x.unsqueeze(self.time_axis), *state)
        return (y.squeeze(self.time_axis), *state_out)
