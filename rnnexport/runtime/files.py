"""Streaming from files: ``x.npy`` in, ``y.npy`` and the state as ``.npz`` out, so a stream
can be resumed in another process. What ``rnnexport run`` calls."""

from __future__ import annotations

import dataclasses
import os
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rnnexport.core.contract import Form, show_shape
from rnnexport.core.errors import RuntimeContractError, describe
from rnnexport.core.io import atomic_write, check_writable, refuse_overwrite
from rnnexport.core.ort import ProviderRequest
from rnnexport.runtime.buffers import concrete
from rnnexport.runtime.engine import LoadOptions, open_engine
from rnnexport.runtime.session import StatefulSession

if TYPE_CHECKING:
    from rnnexport.runtime.batcher import StreamBatcher

STEP, SEQUENCE = Form.STEP, Form.SEQUENCE

__all__ = ["RunSummary", "run_files", "save_npy", "save_npz"]


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What :func:`run_files` did."""

    model: Path
    forms: tuple[str, ...]
    providers: tuple[str, ...]
    call: str  # "step" (x was one time step) or "run" (a chunk)
    steps: int
    batch: int
    y_shape: tuple[int, ...]
    y_path: Path | None
    state_in: Path | None
    state_out: Path | None
    lengths: Path | None = None


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as ``.npy``, atomically (a temporary file, then a rename)."""
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False), "output")


def save_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> None:
    """Write named arrays as ``.npz``, atomically."""
    # numpy stub: **kwds could land on allow_pickle: bool; the keys here are state names
    atomic_write(path, lambda f: np.savez(f, **arrays), "state")  # type: ignore[arg-type]


def _load_array(path: Path, what: str) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise RuntimeContractError(f"cannot read {what} {path}: {describe(e)}") from e


Named = tuple[str, "str | os.PathLike[str] | None"]


def _check_outputs(outputs: list[Named], inputs: list[Named],
                   updates: tuple[str, str | os.PathLike[str]] | None = None) -> None:
    """Before any work: no output writes over an input or another output, and every one can be written.

    ``updates`` is the one output allowed to replace an input (``--state-out`` the file given to
    ``--state-in``: the saved state moves on, written atomically after it was read).
    """
    given = [(what, path) for what, path in outputs if path is not None]
    sources = [(what, path) for what, path in inputs if path is not None]
    refuse_overwrite(given, sources, RuntimeContractError, allowed=updates)
    for what, path in given:
        check_writable(path, what, RuntimeContractError)


def _batch_of(session: StatefulSession, x: np.ndarray) -> tuple[str, int]:
    c = session.contract
    step_rank = 1 + len(c.x_features)
    if x.ndim == step_rank:
        return STEP, x.shape[0]
    if x.ndim == step_rank + 1:
        return SEQUENCE, x.shape[c.batch_axis]
    raise RuntimeContractError(
        f"x: expected one step {show_shape(c.x_shape(STEP))} or a chunk {show_shape(c.x_shape(SEQUENCE))} "
        f"of {c.x_dtype}, got shape {show_shape(x.shape)}")


def run_files(
    model: str | os.PathLike[str],
    x_path: str | os.PathLike[str],
    state_in: str | os.PathLike[str] | None = None,
    state_out: str | os.PathLike[str] | None = None,
    y_path: str | os.PathLike[str] | None = None,
    providers: ProviderRequest | list[ProviderRequest] | None = None,
    check_finite: bool = True,
    lengths_path: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
) -> RunSummary:
    """Run ``x.npy`` through a bundle or model, from a saved state or the initial state (zeros, or the module's own).

    ``x`` is one time step ``(B, ...)`` or a chunk ``(T, B, ...)`` (``(B, T, ...)``
    for batch-major graphs); B is read from it. ``y`` and the state are written
    atomically. ``lengths_path``: a ``.npy`` of ``(B,)`` integers, each stream's own
    number of steps in the chunk (a sequence graph converted with ``--lengths``).
    ``timeout``: seconds each graph call may take (None: no bound).

    Raises:
        RnnexportError: for an unreadable file, a bad bundle, or inputs off the contract;
            :class:`~rnnexport.core.errors.RunTimeout` for a call over ``timeout``.
    """
    _check_outputs([("-o", y_path), ("--state-out", state_out)],
                   [("the model", model), ("the input", x_path), ("the saved state", state_in),
                    ("the lengths", lengths_path)],
                   updates=("--state-out", state_in) if state_out is not None and state_in is not None else None)
    x = _load_array(Path(x_path), "input")
    if not isinstance(x, np.ndarray):
        raise RuntimeContractError(f"input {x_path} is not a single .npy array")
    lengths = None
    if lengths_path is not None:
        lengths = _load_array(Path(lengths_path), "lengths")
        if not isinstance(lengths, np.ndarray):
            raise RuntimeContractError(f"lengths {lengths_path} is not a single .npy array")
    probe = StatefulSession.load(model, providers, check_finite=check_finite, timeout=timeout)
    call, batch = _batch_of(probe, x)
    if lengths is not None and call == STEP:
        raise RuntimeContractError(f"--lengths goes with a chunk {show_shape(probe.contract.x_shape(SEQUENCE))}; "
                                   f"input {x_path} is one step, which every stream takes")
    session = probe if batch == 1 else probe.new_stream(batch)
    if state_in is not None:
        saved = _load_array(Path(state_in), "state")
        if not isinstance(saved, np.lib.npyio.NpzFile):
            raise RuntimeContractError(f"state {state_in} is not an .npz file of named state arrays")
        with saved:
            try:
                arrays = {k: saved[k] for k in saved.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise RuntimeContractError(f"cannot read state {state_in}: {describe(e)}; it is damaged or "
                                           "not a state file written by rnnexport run") from e
            session.state = arrays
    y = session.step(x) if call == STEP else session.run(x, lengths=lengths)
    if y_path is not None:
        save_npy(y_path, y)
    if state_out is not None:
        save_npz(state_out, session.state)
    return RunSummary(
        model=Path(model), forms=session.forms, providers=session.providers, call=call,
        steps=1 if call == STEP else x.shape[session.contract.time_axis], batch=batch, y_shape=y.shape,
        y_path=Path(y_path) if y_path else None, state_in=Path(state_in) if state_in else None,
        state_out=Path(state_out) if state_out else None, lengths=Path(lengths_path) if lengths_path else None)


@dataclasses.dataclass(frozen=True)
class StreamsSummary:
    """What :func:`run_stream_files` did: one stream per input file, advanced together."""

    model: Path
    providers: tuple[str, ...]
    steps: tuple[int, ...]
    calls: int
    y_paths: tuple[Path, ...]
    #: ``"step"``: one step-graph call per tick (a :class:`StreamBatcher`); ``"sequence"``: the
    #: streams padded to the longest and run in one call of a sequence graph with a lengths input.
    form: str = "step"


def run_stream_files(
    model: str | os.PathLike[str],
    x_paths: list[str | os.PathLike[str]],
    y_paths: list[str | os.PathLike[str]],
    providers: ProviderRequest | list[ProviderRequest] | None = None,
    check_finite: bool = True,
    timeout: float | None = None,
) -> StreamsSummary:
    """Run several streams at once, one per ``x.npy``.

    Each ``x`` is one stream's chunk ``(T, 1, ...)`` (``(1, T, ...)`` for batch-major graphs),
    of any T (0 included: that stream's ``y`` is empty). When the model's sequence graph takes
    lengths (converted with ``--lengths``) and any T, the streams are padded to the longest and
    run in one call, each stopping at its own length; otherwise a :class:`StreamBatcher` runs,
    at every tick, the streams that still have a step in one call. Each ``y`` is written
    (atomically) as that stream's chunk, after all of them have run. Streams start from the initial state.
    ``timeout``: seconds each graph call may take (None: no bound).

    Raises:
        RnnexportError: an unreadable file, one ``-o`` per input missing, inputs off the contract.
    """
    from rnnexport.runtime.batcher import StreamBatcher

    if len(y_paths) not in (0, len(x_paths)):
        raise RuntimeContractError(f"give one -o per --input ({len(x_paths)}), or none; got {len(y_paths)}")
    _check_outputs([("-o", path) for path in y_paths],
                   [("the model", model), *(("an input", path) for path in x_paths)])
    engine = open_engine(model, LoadOptions(providers))
    c = engine.contract
    chunks = []
    for path in x_paths:
        x = _load_array(Path(path), "input")
        if not isinstance(x, np.ndarray) or x.ndim != 2 + len(c.x_features) or x.shape[c.batch_axis] != 1:
            raise RuntimeContractError(f"input {path}: one stream's chunk is {show_shape(c.x_shape(SEQUENCE, 1))} "
                                       f"of {c.x_dtype}, got {show_shape(getattr(x, 'shape', ()))}")
        chunks.append(np.moveaxis(x, c.time_axis, 0))  # (T, 1, ...): one step per row
    sequence = engine.graphs.get(SEQUENCE)
    if c.lengths is not None and sequence is not None and sequence.seq_len is None:
        ys = _run_ragged(StatefulSession(engine, len(chunks), check_finite, timeout), chunks)
        calls, form = int(any(len(chunk) for chunk in chunks)), SEQUENCE.value
    else:
        with StreamBatcher(engine, max_batch=max(1, len(x_paths)), check_finite=check_finite,
                           timeout=timeout) as batcher:
            ys, calls = _run_ticks(batcher, chunks)
        form = STEP.value
    written = []
    for y, path in zip(ys, y_paths, strict=False):
        save_npy(path, np.moveaxis(y, 0, c.time_axis))
        written.append(Path(path))
    return StreamsSummary(Path(model), engine.providers, tuple(len(chunk) for chunk in chunks), calls,
                          tuple(written), form)


def _run_ticks(batcher: StreamBatcher, chunks: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Each chunk's ``y`` (time first), running every tick's live streams in one step call; and the calls."""
    c = batcher.contract
    streams = [batcher.join() for _ in chunks]
    ys: list[list[np.ndarray]] = [[] for _ in chunks]
    calls = 0
    for t in range(max((len(chunk) for chunk in chunks), default=0)):
        live = {s: chunk[t] for s, chunk in zip(streams, chunks, strict=True) if t < len(chunk)}
        out = batcher.step(live)
        calls += 1
        for index, stream in enumerate(streams):
            if stream in out:
                ys[index].append(out[stream])
    empty = np.zeros((0, *concrete(c.y_shape(STEP, 1))), c.y_dtype)  # (T=0, 1, ...)
    return [np.stack(ys_i) if ys_i else empty for ys_i in ys], calls


def _run_ragged(session: StatefulSession, chunks: list[np.ndarray]) -> list[np.ndarray]:
    """Each chunk's ``y`` (time first), from one call on the chunks padded to the longest, with their lengths."""
    c = session.contract
    lengths = np.array([len(chunk) for chunk in chunks], np.int64)
    steps = int(lengths.max(initial=0))
    xs = np.zeros(concrete(c.x_shape(SEQUENCE, len(chunks), steps)), c.x_dtype)
    for b, chunk in enumerate(chunks):  # chunk: (T_b, 1, ...)
        index: list[slice | int] = [slice(None)] * xs.ndim
        index[c.time_axis], index[c.batch_axis] = slice(0, len(chunk)), b
        xs[tuple(index)] = chunk[:, 0]
    y = np.moveaxis(session.run(xs, lengths=lengths), c.time_axis, 0) if steps else \
        np.zeros((0, len(chunks), *c.y_features), c.y_dtype)
    return [y[:length, b:b + 1] for b, length in enumerate(lengths)]
