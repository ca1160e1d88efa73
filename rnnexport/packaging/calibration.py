"""Calibration that knows about state: activation ranges from whole sequences, streamed as an app streams them.

A calibration set is a list of sequences; each is one or more calls of ``x`` (in the
graph's layout) from a starting state (zeros, or the state a test set starts from). A
sequence graph takes each call whole; a step graph takes it one time step at a time. The
state outputs of each call are the state inputs of the next, and every sequence starts
again from its own state, so the ranges cover what a stream sees from its first step to
its last, and nothing one stream leaves behind leaks into the next.

The ranges are those of the values the quantized products read (:func:`rnnexport.packaging.qdq.to_observe`),
inside Scan and Loop bodies too: a copy of the graph passes each such value out of its
body (per step, stacked by the loop) to a graph output, and onnxruntime's CPU provider
runs that copy.

Where the sequences come from: the bundle's own test sets (:func:`from_calls`), and with
them a file the user gives (:func:`read_calibration`): a NumPy ``.npy``/``.npz`` of ``x``
arrays, each one sequence, or for a model with a vocabulary a UTF-8 text. The test sets
always take part: the bundle is proven on them (their single call starts from a random
state), so the ranges must hold them.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from rnnexport.core.contract import Form, IOSpec
from rnnexport.core.errors import BundleError
from rnnexport.core.ort import run_limited, start_session
from rnnexport.export.onnxutil import GraphBuilder, names_in
from rnnexport.packaging.qdq import Observed, graph_at

__all__ = ["MAX_CALIBRATION_BYTES", "Calibration", "CalibrationSequence", "calibrate", "from_calls",
           "read_calibration"]

#: The largest calibration file read.
MAX_CALIBRATION_BYTES = 256 << 20
#: Time steps per call when a long sequence of a calibration file is streamed through a sequence graph.
CHUNK = 64
#: Streams of a text calibration file (its characters split into this many consecutive pieces).
TEXT_STREAMS = 8

Key = tuple[tuple[tuple[int, int], ...], str]


@dataclasses.dataclass(frozen=True)
class CalibrationSequence:
    """Calls of one stream, in order (``x`` of each, in the graph's layout), from ``state`` (None: a new stream's, the initial state)."""

    calls: tuple[np.ndarray, ...]
    state: tuple[np.ndarray, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The sequences activation ranges are measured on, and where they came from (for the manifest)."""

    sequences: tuple[CalibrationSequence, ...]
    source: str

    def joined(self, other: Calibration) -> Calibration:
        """Both sets' sequences (``other``'s first)."""
        return Calibration(other.sequences + self.sequences, f"{other.source} and {self.source}")

    def steps(self, io: IOSpec) -> int:
        """Time steps over all sequences and streams."""
        return sum(int(x.shape[io.time_axis]) * int(x.shape[io.batch_axis]) for s in self.sequences for x in s.calls)


def from_calls(calls: Iterable[tuple[str, int | None, np.ndarray, Sequence[np.ndarray] | None]], source: str
               ) -> Calibration:
    """Sequences from test-set calls ``(kind, stream, x, state)``: a single call alone, a stream's calls together.

    ``state`` is the state a call starts from (None: the one its stream's earlier call left).
    """
    streams: dict[int, list[np.ndarray]] = {}
    starts: dict[int, tuple[np.ndarray, ...] | None] = {}
    sequences = []
    for kind, stream, x, state in calls:
        if kind == "stream":
            key = stream or 0
            if key not in streams:
                streams[key] = []
                starts[key] = tuple(state) if state is not None else None
            streams[key].append(x)
        else:
            sequences.append(CalibrationSequence((x,), tuple(state) if state is not None else None))
    sequences += [CalibrationSequence(tuple(xs), starts[k]) for k, xs in streams.items()]
    return Calibration(tuple(sequences), source)


def _expose(model: onnx.ModelProto, key: Key, builder: GraphBuilder) -> str:
    """Make the value ``key`` names a main-graph output of ``model`` (stacked by every loop around it)."""
    path, name = key
    for depth in range(len(path), 0, -1):
        body, parent = graph_at(model, path[:depth]), graph_at(model, path[:depth - 1])
        node = parent.node[path[depth - 1][0]]
        if node.op_type not in ("Scan", "Loop"):
            raise BundleError(f"cannot calibrate a value inside a {node.op_type} body")
        inner, outer = builder.fresh(f"{name}_observed"), builder.fresh(f"{name}_stacked")
        body.node.append(helper.make_node("Identity", [name], [inner], name=builder.fresh("observe")))
        body.output.append(helper.make_tensor_value_info(inner, onnx.TensorProto.FLOAT, None))
        node.output.append(outer)
        for attr in node.attribute:
            if attr.name in ("scan_output_axes", "scan_output_directions"):
                attr.ints.append(0)
        name = outer
    out = builder.fresh(f"{key[1]}_observed")
    model.graph.node.append(helper.make_node("Identity", [name], [out], name=builder.fresh("observe")))
    model.graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    return out


def _calls(sequence: CalibrationSequence, io: IOSpec, form: Form, seq_len: int | None) -> Iterable[np.ndarray]:
    """The ``x`` of each graph call that streams ``sequence``."""
    for x in sequence.calls:
        steps = int(x.shape[io.time_axis])
        if form is Form.STEP:
            yield from (np.take(x, t, axis=io.time_axis) for t in range(steps))
        elif seq_len is not None:
            yield from (np.take(x, range(t, t + seq_len), axis=io.time_axis)
                        for t in range(0, steps - seq_len + 1, seq_len))
        else:
            yield x


def calibrate(model: onnx.ModelProto, keys: Sequence[Key], calibration: Calibration, io: IOSpec, form: Form,
              seq_len: int | None, timeout: float | None = None) -> dict[Key, Observed]:
    """The range of every value ``keys`` names over ``calibration``, streamed through ``model`` (not edited),
    each call within ``timeout`` seconds (:class:`~rnnexport.core.errors.RunTimeout` past it)."""
    if not keys:
        return {}
    observing = onnx.ModelProto()
    observing.CopyFrom(model)
    builder = GraphBuilder(names_in(observing.graph))
    outputs = [_expose(observing, key, builder) for key in keys]
    session = start_session(observing.SerializeToString(), "cpu", name="the calibration graph").session
    state_out = list(io.state.output_names)
    names = state_out + outputs
    found = {key: Observed() for key in keys}
    for sequence in calibration.sequences:
        batch = int(sequence.calls[0].shape[io.batch_axis])
        state = list(sequence.state) if sequence.state is not None else io.state.start(batch)
        for x in _calls(sequence, io, form, seq_len):
            got = run_limited(session, names, io.feeds(x.astype(io.x_dtype, copy=False), state), timeout,
                              "a calibration call")
            state = got[:len(state_out)]
            for key, value in zip(keys, got[len(state_out):], strict=True):
                found[key].add(value)
    return found


def _text_sequences(text: str, io: IOSpec) -> list[np.ndarray]:
    assert io.vocabulary is not None
    index = {token: i for i, token in enumerate(io.vocabulary)}
    ids = [index[ch] for ch in text if ch in index]
    if len(ids) < TEXT_STREAMS * 2:
        raise BundleError(f"the calibration text holds {len(ids)} characters of the model's vocabulary; "
                          f"give at least {TEXT_STREAMS * 2}")
    length = len(ids) // TEXT_STREAMS
    rows = np.asarray(ids[:length * TEXT_STREAMS]).reshape(TEXT_STREAMS, length).T  # (T, streams)
    if io.x_encoding == "one-hot":
        x = np.eye(len(io.vocabulary), dtype=io.x_dtype)[rows]
    else:
        x = rows.astype(io.x_dtype)
    return [x if io.time_axis == 0 else np.swapaxes(x, 0, 1)]


def _check_array(name: str, x: np.ndarray, io: IOSpec) -> np.ndarray:
    want = tuple(io.x_features) if io.x_encoding != "token-ids" else ()
    if x.ndim != 2 + len(want) or tuple(x.shape[2:]) != want or x.shape[0] < 1 or x.shape[1] < 1:
        layout = "(T, B" if io.time_axis == 0 else "(B, T"
        raise BundleError(f"calibration array {name} has shape {list(x.shape)}; each array is one sequence of "
                          f"x as the sequence graph takes it: {layout}{''.join(f', {d}' for d in want)})")
    if x.dtype.kind not in "fiu" or (x.dtype.kind == "f" and not np.isfinite(x).all()):
        raise BundleError(f"calibration array {name} must hold finite numbers (it holds {x.dtype})")
    return np.ascontiguousarray(x.astype(io.x_dtype))


def read_calibration(path: str | os.PathLike[str], io: IOSpec) -> Calibration:
    """The sequences of a calibration file (see the module docstring), checked against the I/O contract.

    Raises:
        BundleError: a file that is missing, too large, of another format, or whose arrays do not fit ``x``.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise BundleError(f"cannot read the calibration file {path}: {e.strerror}") from e
    if size > MAX_CALIBRATION_BYTES:
        raise BundleError(f"the calibration file {path} is {size / 2**20:.0f} MiB; at most "
                          f"{MAX_CALIBRATION_BYTES >> 20} MiB is read")
    arrays: list[tuple[str, np.ndarray]]
    if path.suffix in (".npy", ".npz"):
        try:
            loaded = np.load(path, allow_pickle=False)
            arrays = list(loaded.items()) if isinstance(loaded, Mapping) else [(path.name, loaded)]
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise BundleError(f"the calibration file {path} is not a NumPy file without pickles: {e}") from e
    elif io.vocabulary is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise BundleError(f"the calibration file {path} is not UTF-8 text: {e}") from e
        arrays = [(path.name, x) for x in _text_sequences(text, io)]
    else:
        raise BundleError(f"the calibration file {path} must be a .npy or .npz of x sequences (text needs a "
                          "model with a vocabulary)")
    if not arrays:
        raise BundleError(f"the calibration file {path} holds no arrays")
    sequences = []
    for name, x in arrays:
        x = _check_array(name, x, io)
        steps = x.shape[io.time_axis]
        chunks = tuple(np.take(x, range(t, min(t + CHUNK, steps)), axis=io.time_axis) for t in range(0, steps, CHUNK))
        sequences.append(CalibrationSequence(chunks))
    return Calibration(tuple(sequences), f"file {path.name}")
