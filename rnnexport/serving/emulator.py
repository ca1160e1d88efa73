"""Triton's sequence batcher, emulated offline with onnxruntime: a model folder driven as the server drives it.

:func:`emulate_sequence_batcher` reads ``config.pbtxt`` and runs the folder's graph the
way the sequence batcher with implicit state does: sequences start at different
times and send their steps at random moments; each call stacks up to
``max_batch_size`` pending requests, in random order, on axis 0; each sequence's
state is gathered by its id before the call and scattered back after it, output
states paired with input states as Triton pairs them (by rank of the two sorted
name lists, server issue #8586); a sequence starts from its initial state (zeros,
the values of its ``data_file`` in ``initial_state/``, or random values where the
config gives none, as uninitialised memory would) and its state is dropped at its
end. Each call's outputs are split among its requests as the ONNX Runtime backend
splits them (:meth:`_Server.split`), including how it fails a state output that is
also listed as an output. Compare its outputs with each
sequence run alone to see whether a configuration batches exactly. Torch-free
(onnxruntime and numpy).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rnnexport.core.errors import ContractError, describe
from rnnexport.core.ort import ProviderRequest, start_session
from rnnexport.serving.checks import initial_state_path, model_file, read_config
from rnnexport.serving.config import (
    INITIAL_STATE_FOLDER,
    schema,
    state_dtype,
    triton_pairing,
)

__all__ = ["EmulatedRun", "emulate_sequence_batcher"]


@dataclasses.dataclass(frozen=True)
class EmulatedRun:
    """What the emulated server returned.

    Attributes:
        outputs: per sequence, each config output by name, stacked over its steps ``(T, ...)``;
            NaN (or 0 for integers) at a step whose request failed.
        batch_sizes: how many requests each call stacked, in call order.
        errors: one line per failed request, ``sequence I step T: <the server's message>``, in
            call order. The server answers such a request with that error, keeps the
            sequence's state as the failed step left it, and the sequence goes on.
    """

    outputs: tuple[dict[str, np.ndarray], ...]
    batch_sizes: tuple[int, ...]
    errors: tuple[str, ...] = ()


@dataclasses.dataclass
class _Sequence:
    index: int
    xs: np.ndarray
    start: int
    done: int = 0
    state: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    outputs: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)


class _Server:
    """One model instance behind the sequence batcher: the config, the session, the state store."""

    def __init__(self, folder: Path, providers: ProviderRequest | Sequence[ProviderRequest] | None,
                 rng: np.random.Generator) -> None:
        pb = schema()
        config = read_config(folder)
        if len(config.input) != 1:
            raise ContractError(f"{folder}: the emulator feeds one input per request, the config lists "
                                f"{len(config.input)}")
        path = model_file(folder, config)
        if path is None:
            raise ContractError(f"{folder} holds no version folder with a model")
        self.session = start_session(path, providers, name=str(path)).session
        self.input = config.input[0].name
        self.max_batch = max(1, config.max_batch_size)
        self.states = list(config.sequence_batching.state)
        self.feeds = triton_pairing([(s.input_name, s.output_name) for s in self.states])
        self.outputs = [e.name for e in config.output]
        self.fetch = list(dict.fromkeys([*self.outputs, *self.feeds]))
        self.initial = {s.input_name: self._initial(pb, s, folder, rng) for s in self.states}

    @staticmethod
    def _initial(pb: Any, entry: Any, folder: Path, rng: np.random.Generator) -> np.ndarray:
        found = state_dtype(pb, entry.data_type)
        dtype = np.dtype("float32") if found is None else found.newbyteorder("=")
        if entry.initial_state:
            initial = entry.initial_state[0]
            kind = initial.WhichOneof("state_data")
            if kind == "zero_data":  # Triton zeroes it whatever the flag's value
                return np.zeros(list(initial.dims), dtype)
            if kind == "data_file":
                return _read_initial(pb, entry.input_name, initial, folder)
        return rng.standard_normal(list(entry.dims)).astype(dtype)  # what uninitialised memory might hold

    def call(self, batch: list[_Sequence]) -> list[str]:
        """One model call: stack the requests on axis 0, run, split outputs and state back per request.

        Returns:
            One line per request that failed, as the server would answer it.
        """
        feeds = {self.input: np.stack([s.xs[s.done] for s in batch])}
        for entry in self.states:
            name = entry.input_name
            feeds[name] = np.stack([s.state.get(name, self.initial[name]) for s in batch])
        try:
            values = dict(zip(self.fetch, self.session.run(self.fetch, feeds), strict=True))
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ContractError(f"the model refused a batch of {len(batch)} as Triton would send it: "
                                f"{describe(e)}") from e
        failed: dict[int, str] = {}
        for name in sorted(values):  # the backend keeps its outputs in a std::map: by name
            rows = values[name].shape[0]
            if name in self.outputs:
                rows = self.split(name, "output tensor", rows, len(batch), failed)
            if name in self.feeds:
                self.split(name, "output state tensor", rows, len(batch), failed)
                for row, sequence in enumerate(batch):
                    if row not in failed:  # the backend updates a state tensor by tensor
                        sequence.state[self.feeds[name]] = values[name][row]
        errors = []
        for row, sequence in enumerate(batch):
            for name in self.outputs:
                value = values[name][row]
                if row in failed:  # an error response carries no outputs
                    value = np.full_like(value, np.nan if value.dtype.kind == "f" else 0)
                sequence.outputs.setdefault(name, []).append(value)
            if row in failed:
                errors.append(f"sequence {sequence.index} step {sequence.done}: {failed[row]}")
            sequence.done += 1
            if sequence.done == len(sequence.xs):
                sequence.state = {}  # sequence_end: Triton frees the state
        return errors

    @staticmethod
    def split(name: str, what: str, rows: int, requests: int, failed: dict[int, str]) -> int:
        """Split one tensor of ``rows`` rows among ``requests`` one-row requests as the backend does.

        The ONNX Runtime backend reads a tensor's shape once and hands the same shape
        vector first to the output split, then to the state split. Each split checks
        every request against the batch size it found there, and sets that size to the
        request's own (1) as it goes: so a state output that is also an output is
        state-split against a batch of 1, and every request after the first fails.
        A request that failed is marked in ``failed`` and skipped by later tensors.

        Returns:
            The batch size the split leaves in the shape vector.
        """
        for row in range(requests):
            if row + 1 > rows and row not in failed:
                failed[row] = (f"failed to split the {what} '{name}' in responses: expected batch size of at "
                               f"least {row + 1} in model output, got {rows}")
        return 1 if requests else rows


def _read_initial(pb: Any, name: str, initial: Any, folder: Path) -> np.ndarray:
    """An initial state's ``data_file`` as Triton reads it: the first dims x itemsize bytes, row-major.

    Raises:
        ContractError: a name that is not a plain file name (this reads nothing outside
            the folder), a data type or dims Triton would refuse, or a file it would
            refuse to load: missing, or shorter than the state.
    """
    file, dims = initial.data_file, list(initial.dims)
    dtype = state_dtype(pb, initial.data_type)
    path = initial_state_path(folder, file)
    if path is None or dtype is None or not dims or min(dims) < 1:
        raise ContractError(f"{folder}: the initial state of {name} ({file!r:.80}, dims {dims}) is not one Triton "
                            "loads: run check_model_folder for what is wrong")
    size = math.prod(dims) * dtype.itemsize
    where = f"Triton would not load {folder}: initial state of {name}: {INITIAL_STATE_FOLDER}/{file}"
    if not path.is_file():  # never open a pipe or a device
        raise ContractError(f"{where} is missing or not a file")
    try:
        with path.open("rb") as f:
            data = f.read(size)  # Triton uses the first bytes of a longer file
    except OSError as e:
        raise ContractError(f"{where} cannot be read: {e.strerror or describe(e)}") from e
    if len(data) < size:
        raise ContractError(f"{where} holds {len(data)} bytes, the state needs {size}")
    return np.frombuffer(data, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def emulate_sequence_batcher(
    folder: str | os.PathLike[str],
    sequences: Sequence[np.ndarray],
    seed: int = 0,
    arrival: float = 0.6,
    providers: ProviderRequest | Sequence[ProviderRequest] | None = None,
) -> EmulatedRun:
    """Run ``sequences`` through model folder ``folder`` as Triton's sequence batcher would.

    Args:
        folder: ``REPOSITORY/NAME`` with ``config.pbtxt`` and a version folder.
        sequences: per sequence, its inputs over time, ``(T, ...)`` (lengths may differ).
        seed: seeds start times, arrivals, batch order and missing initial states.
        arrival: the chance that a started sequence sends its next request in a given tick.
        providers: onnxruntime execution providers (default CPU).

    Returns:
        An :class:`EmulatedRun`: each sequence's outputs, the size of every call, and the
        requests the server would have failed.

    Raises:
        ContractError: a config with other than one input, an arrival outside (0, 1], or a
            batch the model refuses.
    """
    if not 0 < arrival <= 1:
        raise ContractError(f"arrival is a probability above 0 and at most 1, got {arrival!r}")
    rng = np.random.default_rng(seed)
    server = _Server(Path(folder), providers, rng)
    longest = max((len(xs) for xs in sequences), default=0)
    pending = [_Sequence(i, np.asarray(xs), int(rng.integers(0, max(1, longest)))) for i, xs in enumerate(sequences)]
    sizes: list[int] = []
    errors: list[str] = []
    tick = 0
    while any(s.done < len(s.xs) for s in pending):
        ready = [s for s in pending if s.start <= tick and s.done < len(s.xs) and rng.random() < arrival]
        order = [ready[i] for i in rng.permutation(len(ready))]
        for first in range(0, len(order), server.max_batch):
            batch = order[first:first + server.max_batch]
            errors += server.call(batch)
            sizes.append(len(batch))
        tick += 1
    outputs = tuple({name: np.stack(values) for name, values in s.outputs.items()} for s in pending)
    return EmulatedRun(outputs, tuple(sizes), tuple(errors))
