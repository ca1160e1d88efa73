"""A bundle's test vectors: inputs, expected outputs, and the tolerance each set is judged by.

Three sets per graph: one call from a random state, and a streaming pair whose second
call starts from the first one's state outputs. Expected outputs come from PyTorch
when the source is known, else from onnxruntime's CPU provider. Each set records a
rounding-aware tolerance (see :class:`~rnnexport.bundle.VectorEntry`): the float32
default plus three times the expected outputs' own float32 rounding error, measured
against a float64 run of the source, as ``rnnexport verify`` allows for contract 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rnnexport.bundle import VectorEntry
from rnnexport.bundle.vectors import write_set
from rnnexport.core.compare import rounding_error, tolerance_for, with_rounding
from rnnexport.core.contract import Form, GraphInfo
from rnnexport.core.inputs import random_inputs, random_state
from rnnexport.core.ort import start_session
from rnnexport.source.model import RecurrentModel

__all__ = ["STREAM_T", "VECTOR_BATCH", "make_vectors"]

VECTOR_BATCH = 2
SINGLE_T, STREAM_T = 8, (5, 4)


class _Expect:
    """Expected outputs: PyTorch when the source is known, else the CPU execution provider."""

    def __init__(self, path: Path, info: GraphInfo, source: RecurrentModel | None) -> None:
        self.source = source
        self.info = info
        self.session = None if source else start_session(path, "cpu", name=str(path)).session

    @property
    def name(self) -> str:
        return "pytorch" if self.source else "onnxruntime-cpu"

    def __call__(self, x: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
        if self.source is not None:
            run = self.source.run_step if self.info.form is Form.STEP else self.source.run_sequence
            return [np.ascontiguousarray(a) for a in run(x, state)]
        names = [s.name for s in self.info.io.outputs(self.info.form)]
        assert self.session is not None
        return self.session.run(names, self.info.io.feeds(x, state))

    def rounding_error(self, x: np.ndarray, state: list[np.ndarray], outputs: list[np.ndarray]) -> float | None:
        """Max ``|expected - exact|`` against a float64 run of the source; None without one."""
        if self.source is None:
            return None
        step = self.info.form is Form.STEP
        time_axis = self.info.io.time_axis
        exact = self.source.run_sequence_float64(np.expand_dims(x, time_axis) if step else x, state)
        if exact is None:
            return None
        if step:
            exact = [exact[0].squeeze(time_axis), *exact[1:]]
        return rounding_error(outputs, exact)


def _tolerance(error: float | None) -> dict[str, float]:
    tol = with_rounding(tolerance_for("float32"), error)
    return {"atol": tol.atol, "rtol": tol.rtol, **({} if error is None else {"float32_error": error})}


def make_vectors(root: Path, prefix: str, graph: str, path: Path, info: GraphInfo,
                 source: RecurrentModel | None, vocabulary: int | None) -> tuple[list[VectorEntry], str]:
    """Write the test sets of the graph file ``path`` under ``root/prefix``.

    Returns:
        Their manifest entries, and where the expected outputs came from.
    """
    io, form = info.io, info.form
    expect = _Expect(path, info, source)
    rng = np.random.default_rng(2024)
    in_names = [s.name for s in io.inputs(form)]
    out_names = [s.name for s in io.outputs(form)]

    def x_for(t: int | None) -> np.ndarray:
        return random_inputs(io, form, VECTOR_BATCH, None if form is Form.STEP else (info.seq_len or t), rng,
                             vocabulary=vocabulary)

    start = random_state(io, VECTOR_BATCH, rng, 0.5)
    single = ("single", None, x_for(SINGLE_T), start)
    stream = [("stream", call, x_for(t), None) for call, t in enumerate(STREAM_T)]
    entries = []
    previous: list[np.ndarray] = [np.zeros(0), *io.state.zeros(VECTOR_BATCH)]  # call 0 starts from zeros
    for index, (kind, call, x, given) in enumerate([single, *stream]):
        state = given if given is not None else previous[1:]
        outputs = expect(x, state)
        if kind == "stream":
            previous = outputs
        folder = f"{prefix}test_data_set_{index}"
        write_set(root / folder, list(zip(in_names, [x, *state])), list(zip(out_names, outputs)))
        entries.append(VectorEntry(folder, graph, kind, 0 if kind == "stream" else None, call, VECTOR_BATCH,
                                   None if form is Form.STEP else int(x.shape[io.time_axis]), expect.name,
                                   _tolerance(expect.rounding_error(x, state, outputs))))
    return entries, expect.name
