"""A bundle's test vectors: inputs, expected outputs, and the tolerance each set is judged by.

Three sets per graph: one call from a random state, and a streaming pair whose second
call starts from the first one's state outputs. A sequence graph with a lengths input
takes lengths in every set (each stream's full T in those three) and has a fourth,
ragged set: streams of lengths 1, T and 0, from a random state. Expected outputs come from PyTorch
when the source is known, else from onnxruntime's CPU provider. Each set records a
rounding-aware tolerance (see :class:`~rnnexport.bundle.VectorEntry`): the float32
default plus three times the expected outputs' own float32 rounding error, measured
against a float64 run of the source, as ``rnnexport verify`` allows for contract 1.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from rnnexport.bundle import VectorEntry
from rnnexport.bundle.vectors import write_set
from rnnexport.core.compare import rounding_error, tolerance_for, with_rounding
from rnnexport.core.contract import Form, GraphInfo
from rnnexport.core.inputs import random_inputs, random_state
from rnnexport.core.ort import run_limited, start_session
from rnnexport.source.model import RecurrentModel

__all__ = ["RAGGED_LENGTHS", "STREAM_T", "VECTOR_BATCH", "Vectors", "make_vectors"]

VECTOR_BATCH = 2
SINGLE_T, STREAM_T = 8, (5, 4)
#: The ragged set's lengths (a sequence graph with a lengths input): 1, T and 0, unsorted.
RAGGED_LENGTHS = (1, SINGLE_T, 0)


class _Expect:
    """Expected outputs: PyTorch when the source is known, else the CPU execution provider."""

    def __init__(self, path: Path, info: GraphInfo, source: RecurrentModel | None, timeout: float | None) -> None:
        self.source = source
        self.info = info
        self.timeout = timeout
        self.session = None if source else start_session(path, "cpu", name=str(path)).session

    @property
    def name(self) -> str:
        return "pytorch" if self.source else "onnxruntime-cpu"

    def __call__(self, x: np.ndarray, state: list[np.ndarray], lengths: np.ndarray | None = None) -> list[np.ndarray]:
        if self.source is not None:
            if self.info.form is Form.STEP:
                return [np.ascontiguousarray(a) for a in self.source.run_step(x, state)]
            return [np.ascontiguousarray(a) for a in self.source.run_sequence(x, state, lengths)]
        names = [s.name for s in self.info.io.outputs(self.info.form)]
        assert self.session is not None
        return run_limited(self.session, names, self.info.io.feeds(x, state, lengths), self.timeout,
                           f"a test-vector call of the {self.info.form.value} graph")

    def rounding_error(self, x: np.ndarray, state: list[np.ndarray], outputs: list[np.ndarray],
                       lengths: np.ndarray | None = None) -> float | None:
        """Max ``|expected - exact|`` against a float64 run of the source; None without one."""
        if self.source is None:
            return None
        step = self.info.form is Form.STEP
        time_axis = self.info.io.time_axis
        exact = self.source.run_sequence_float64(np.expand_dims(x, time_axis) if step else x, state, lengths)
        if exact is None:
            return None
        if step:
            exact = [exact[0].squeeze(time_axis), *exact[1:]]
        return rounding_error(outputs, exact)


def _tolerance(error: float | None) -> dict[str, float]:
    tol = with_rounding(tolerance_for("float32"), error)
    return {"atol": tol.atol, "rtol": tol.rtol, **({} if error is None else {"float32_error": error})}


@dataclasses.dataclass(frozen=True)
class Vectors:
    """The test sets written for one graph.

    Attributes:
        entries: their manifest entries.
        expected_from: where the expected outputs came from.
        calls: each set's call as ``(kind, stream, x, state)``, the state it starts from (None:
            the state its stream's earlier call left), in order: calibration streams them.
    """

    entries: list[VectorEntry]
    expected_from: str
    calls: list[tuple[str, int | None, np.ndarray, list[np.ndarray] | None]]


def make_vectors(root: Path, prefix: str, graph: str, path: Path, info: GraphInfo,
                 source: RecurrentModel | None, vocabulary: int | None, timeout: float | None = None) -> Vectors:
    """Write the test sets of the graph file ``path`` under ``root/prefix`` (onnxruntime's calls within
    ``timeout`` seconds each: :class:`~rnnexport.core.errors.RunTimeout` past it)."""
    io, form = info.io, info.form
    expect = _Expect(path, info, source, timeout)
    rng = np.random.default_rng(2024)
    in_names = [s.name for s in io.inputs(form)]
    out_names = [s.name for s in io.outputs(form)]

    def x_for(t: int | None, batch: int = VECTOR_BATCH) -> np.ndarray:
        return random_inputs(io, form, batch, None if form is Form.STEP else (info.seq_len or t), rng,
                             vocabulary=vocabulary)

    start = random_state(io, VECTOR_BATCH, rng, 0.5)
    # (kind, call, x, initial state or None for the stream's carried one, lengths or None for all T)
    sets: list[tuple[str, int | None, np.ndarray, list[np.ndarray] | None, np.ndarray | None]] = [
        ("single", None, x_for(SINGLE_T), start, None),
        *(("stream", call, x_for(t), None, None) for call, t in enumerate(STREAM_T))]
    if io.lengths is not None and form is Form.SEQUENCE:
        ragged = x_for(SINGLE_T, len(RAGGED_LENGTHS))
        sets.append(("single", None, ragged, random_state(io, len(RAGGED_LENGTHS), rng, 0.5),
                     np.array([1, ragged.shape[io.time_axis], 0], np.int64)))
    entries: list[VectorEntry] = []
    calls: list[tuple[str, int | None, np.ndarray, list[np.ndarray] | None]] = []
    previous: list[np.ndarray] = [np.zeros(0), *io.state.start(VECTOR_BATCH)]  # call 0: a new stream's state
    for index, (kind, call, x, given, lengths) in enumerate(sets):
        state = given if given is not None else previous[1:]
        if lengths is None:  # every step of every stream: what calibration streams
            calls.append((kind, 0 if kind == "stream" else None, x, state if given is not None or call == 0 else None))
        outputs = expect(x, state, lengths)
        if kind == "stream":
            previous = outputs
        folder = f"{prefix}test_data_set_{index}"
        feeds = io.feeds(x, state, lengths)  # the lengths of a graph that takes them: each stream's own, or all T
        write_set(root / folder, [(name, feeds[name]) for name in in_names], list(zip(out_names, outputs, strict=True)))
        batch = int(x.shape[io.batch_axis]) if form is Form.SEQUENCE else int(x.shape[0])
        entries.append(VectorEntry(folder, graph, kind, 0 if kind == "stream" else None, call, batch,
                                   None if form is Form.STEP else int(x.shape[io.time_axis]), expect.name,
                                   _tolerance(expect.rounding_error(x, state, outputs, lengths))))
    return Vectors(entries, expect.name, calls)
