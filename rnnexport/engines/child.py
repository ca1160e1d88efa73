"""An in-process engine (the ReferenceEvaluator, OpenVINO, tract) run in a child process, bounded in time.

None of these engines can be stopped in the middle of a call, and tract aborts the whole
process when it panics (on an allocation it cannot make, say). :class:`ChildRunner` runs
the engine's runner in a Python child process (:mod:`rnnexport.engines.worker`), started
with :func:`rnnexport.core.process.start_child` so that it dies with this process, and
talks to it over its stdin and stdout: a call over the budget kills the child and raises
:class:`~rnnexport.engines.base.EngineTimeout`; a child that dies raises
:class:`~rnnexport.engines.base.EngineFailure`. Either way, the runner takes no further call.

Messages, both ways: an 8-byte little-endian length, a JSON header, then each array the
header lists as an 8-byte length and its raw bytes (numeric dtypes only, never pickles).

A graph with external data (a bundle's graph and the weights file it shares, checked) is
written with its files into a scratch folder, and the child's engine loads it from there with
its own external-data loader, as an app on the device would.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import json
import os
import queue
import shutil
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

import numpy as np
import onnx

from rnnexport.core.errors import describe
from rnnexport.core.external import ExternalModel, materialize
from rnnexport.core.io import scratch_folder
from rnnexport.core.process import python_child_env, start_child, stop_child
from rnnexport.engines.base import (
    START_ALLOWANCE,
    EngineFailure,
    EngineKind,
    EngineTimeout,
    EngineUnavailable,
    GraphTensor,
    Runner,
)

__all__ = ["CHILD_KINDS", "ChildRunner", "Ended", "Late", "blocking_reader", "local_class", "receive", "send",
           "shared_workers"]

#: The engines that run in a child process.
CHILD_KINDS = (EngineKind.REFERENCE, EngineKind.OPENVINO, EngineKind.TRACT)
#: The largest message header and array accepted from the other side (bytes).
MAX_HEADER, MAX_ARRAY = 1 << 20, 1 << 34
_LENGTH = struct.Struct("<Q")
_KINDS = frozenset("biuf")  # bool, signed and unsigned integers, floats


class Late(Exception):
    """The other side did not answer before the deadline."""


class Ended(Exception):
    """The other side closed its end (the child ended)."""


def local_class(kind: EngineKind) -> type[Runner]:
    """The in-process runner class of ``kind`` (what the child runs)."""
    if kind is EngineKind.REFERENCE:
        from rnnexport.engines.reference import ReferenceRunner

        return ReferenceRunner
    if kind is EngineKind.OPENVINO:
        from rnnexport.engines.openvino import OpenVinoRunner

        return OpenVinoRunner
    if kind is EngineKind.TRACT:
        from rnnexport.engines.tract import TractRunner

        return TractRunner
    raise ValueError(f"{kind.value} does not run in a child process")


def send(stream: IO[bytes], header: dict[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> None:
    """Write one message: ``header`` (JSON-able) and ``arrays`` by name."""
    items = [(name, np.ascontiguousarray(array)) for name, array in (arrays or {}).items()]
    head = {**header, "arrays": [{"name": name, "dtype": a.dtype.str, "shape": list(a.shape)} for name, a in items]}
    data = json.dumps(head).encode()
    stream.write(_LENGTH.pack(len(data)) + data)
    for _, array in items:
        stream.write(_LENGTH.pack(array.nbytes))
        stream.write(array.tobytes())
    stream.flush()


class _Pipe:
    """Reads a child's answers with a deadline: a daemon thread moves what arrives into a queue (a
    thread rather than ``select``, which takes no pipes on Windows); it ends when the child does."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.chunks: queue.Queue[bytes] = queue.Queue()
        self.buffer = bytearray()
        self.ended = False
        threading.Thread(target=self._pump, args=(stream,), name="rnnexport-child-reader", daemon=True).start()

    def _pump(self, stream: IO[bytes]) -> None:
        fd = stream.fileno()
        try:
            while chunk := os.read(fd, 1 << 16):
                self.chunks.put(chunk)
        except OSError:
            pass
        self.chunks.put(b"")  # the end

    def read(self, size: int, deadline: float | None) -> bytes:
        while len(self.buffer) < size:
            if self.ended:
                raise Ended
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise Late
            try:
                chunk = self.chunks.get(timeout=left)
            except queue.Empty as e:
                raise Late from e
            if not chunk:
                self.ended = True
                raise Ended
            self.buffer += chunk
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


def blocking_reader(stream: IO[bytes]) -> Callable[[int, float | None], bytes]:
    """A :func:`receive` reader over a plain stream (a child's stdin, bytes in memory), which ignores deadlines:
    the side that waits on a child keeps the time budget, not the child."""
    def read(size: int, deadline: float | None) -> bytes:
        data = stream.read(size)
        if len(data) < size:
            raise Ended
        return data

    return read


def _length(data: bytes, limit: int) -> int:
    (size,) = _LENGTH.unpack(data)
    if size > limit:
        raise ValueError(f"message part of {size} bytes, over the limit of {limit}")
    return int(size)


def _array(item: Any, data: bytes) -> np.ndarray:
    dtype = np.dtype(str(item["dtype"]))
    shape = tuple(int(d) for d in item["shape"])
    if dtype.kind not in _KINDS or dtype.hasobject:
        raise ValueError(f"array of dtype {dtype} is not numeric")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def receive(read: Callable[[int, float | None], bytes],
            deadline: float | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read one message with ``read(size, deadline) -> bytes``: its header and arrays.

    Raises:
        Late: the deadline passed. Ended: the other side closed. ValueError: a malformed message.
    """
    header = json.loads(read(_length(read(_LENGTH.size, deadline), MAX_HEADER), deadline))
    if not isinstance(header, dict):
        raise ValueError("message header is not an object")
    arrays = {}
    for item in header.get("arrays", []):
        size = _length(read(_LENGTH.size, deadline), MAX_ARRAY)
        arrays[str(item["name"])] = _array(item, read(size, deadline))
    return header, arrays


def _tensors(items: Any) -> tuple[GraphTensor, ...]:
    return tuple(GraphTensor(str(t["name"]), str(t["dtype"]), None if t["shape"] is None else tuple(t["shape"]))
                 for t in items)


def _replay(caught: Any) -> None:
    """The child's Python warnings, raised again here (where verify logs them)."""
    import builtins

    for category, message in caught or []:
        kind = getattr(builtins, str(category), UserWarning)
        warnings.warn(str(message), kind if isinstance(kind, type) and issubclass(kind, Warning) else UserWarning,
                      stacklevel=2)


#: The engines of a child run on one thread (OpenVINO is told so; these cover numpy's BLAS, which the
#: ReferenceEvaluator calls): a pool of BLAS threads would only compete with the parent's engines,
#: and starting one costs the child a third of its start-up CPU time.
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class _Worker:
    """One child process (:mod:`rnnexport.engines.worker`) that holds graphs, each under a number."""

    def __init__(self) -> None:
        self.process = start_child([sys.executable, "-m", "rnnexport.engines.worker"], stdin=-1, stdout=-1,
                                   stderr=-3, env=python_child_env(ONE_THREAD), close_fds=True)
        assert self.process.stdin is not None and self.process.stdout is not None  # both are pipes
        self.requests: IO[bytes] = self.process.stdin
        self.pipe = _Pipe(self.process.stdout)
        self.numbers = itertools.count()
        self.gone: str | None = None  # why the process is gone: stopped over a budget, or it died

    def exchange(self, header: dict[str, Any], arrays: Mapping[str, np.ndarray] | None = None,
                 deadline: float | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """One request and its answer (the child's warnings raised again here).

        Raises:
            Late: no answer by ``deadline``. Ended, OSError, ValueError: the child is gone or garbled.
        """
        send(self.requests, header, arrays)
        answer, outputs = receive(self.pipe.read, deadline)
        _replay(answer.get("warnings"))
        return answer, outputs

    def tell(self, header: dict[str, Any]) -> None:
        """A request that has no answer (a graph to drop); nothing if the child is gone."""
        if self.gone is None:
            with contextlib.suppress(OSError, ValueError):
                send(self.requests, header)

    def stop(self, why: str) -> str:
        """Kill the child (if it still runs) and reap it; how it ended (its exit status or signal)."""
        if self.gone is None:
            stop_child(self.process)
            self.gone = f"{why} ({_status(self.process)})"
        return _status(self.process)


class _Shared:
    """The workers of one :func:`shared_workers` block: one per engine kind, reused by every runner."""

    def __init__(self) -> None:
        self.workers: dict[EngineKind, _Worker] = {}

    def worker(self, kind: EngineKind) -> _Worker:
        found = self.workers.get(kind)
        if found is None or found.gone is not None:
            found = self.workers[kind] = _Worker()
        return found

    def close(self) -> None:
        for worker in self.workers.values():
            worker.stop("the run ended")


_SHARED: contextvars.ContextVar[_Shared | None] = contextvars.ContextVar("rnnexport_child_workers", default=None)


@contextlib.contextmanager
def shared_workers() -> Iterator[None]:
    """Inside the block, :class:`ChildRunner` s of one engine kind share one child process; all end with it.

    A verification starts its engines inside one (:class:`~rnnexport.verification.engines.Lineup`):
    one process per engine kind, not one per graph and variant. When a call runs over its budget
    the shared process is killed, and the other graphs it held take no further call either.

    A block inside another uses the outer block's processes, which end with the outer block: an
    app (or a test session) that verifies many graphs wraps them in one block and starts each
    engine's process once, not once per verification.
    """
    if _SHARED.get() is not None:  # nested: the outer block's processes serve, and end with it
        yield
        return
    token = _SHARED.set(_Shared())
    try:
        yield
    finally:
        shared = _SHARED.get()
        _SHARED.reset(token)
        if shared is not None:
            shared.close()


class ChildRunner(Runner):
    """The runner of ``kind`` (reference, openvino or tract) in a child process, each call within ``timeout``.

    Args:
        kind: which engine.
        model: a graph file, its bytes (with its external data), or a ModelProto.
        timeout: seconds one call may take (None: no bound); loading the graph may take
            :data:`~rnnexport.engines.base.START_ALLOWANCE` more.

    Outside a :func:`shared_workers` block the runner has a process of its own, killed when it
    is deactivated.
    """

    def __init__(self, kind: EngineKind, model: str | os.PathLike[str] | bytes | ExternalModel | onnx.ModelProto,
                 timeout: float | None = None) -> None:
        super().__init__(timeout)
        self.kind = kind
        self.model = model
        self.local = local_class(kind)
        self.name = str(self.local.name)
        self.worker: _Worker | None = None
        self.own = False  # the process is this runner's alone
        self.number = 0
        self.folder: str | None = None  # where a graph with external data was written for the child

    def _path(self) -> str | None:
        """The graph's path for the child: given, or written with its external data files; None: sent as bytes."""
        if isinstance(self.model, ExternalModel):
            self.folder = str(scratch_folder("weights"))
            return str(materialize(self.model, self.folder))
        return os.fspath(self.model) if isinstance(self.model, (str, os.PathLike)) else None

    def _deadline(self, seconds: float | None) -> float | None:
        return None if seconds is None else time.monotonic() + seconds

    def _activate(self) -> None:
        proto = self.local.prepare(self.model)  # type: ignore[attr-defined]  # the cheap refusals, before a process
        try:
            self._start(proto, self._path())
        except BaseException:
            self._remove_folder()
            raise

    def _remove_folder(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def _start(self, proto: onnx.ModelProto, path: str | None) -> None:
        budget = START_ALLOWANCE + (self.timeout or 0.0)
        shared = _SHARED.get()
        try:
            worker = shared.worker(self.kind) if shared is not None else _Worker()
        except OSError as e:
            raise EngineUnavailable(self.name, f"cannot start a process for it: {describe(e)}") from e
        number = next(worker.numbers)
        start = {"op": "start", "id": number, "kind": self.kind.value, "path": path}
        payload = {} if path else {"model": np.frombuffer(proto.SerializeToString(), np.uint8)}
        try:
            header, _ = worker.exchange(start, payload, self._deadline(budget))
        except (Late, Ended, OSError, ValueError) as e:
            late = isinstance(e, Late)
            how = worker.stop("stopped while it loaded a graph" if late else "it ended while it loaded a graph")
            why = (f"did not load this graph within {budget:g} s and was stopped" if late
                   else f"its process ended while it loaded this graph ({how})")
            raise EngineUnavailable(self.name, why) from e
        if "unavailable" in header:
            if shared is None:
                worker.stop("not needed")
            raise EngineUnavailable(self.name, str(header["unavailable"]))
        self.worker, self.own, self.number = worker, shared is None, number
        self.inputs, self.outputs = _tensors(header["inputs"]), _tensors(header["outputs"])
        self.detail = str(header.get("detail", ""))

    def _deactivate(self) -> None:
        if self.worker is not None:
            if self.own:
                self.worker.stop("the runner was deactivated")
            else:
                self.worker.tell({"op": "stop", "id": self.number})
            self.worker = None
        self._remove_folder()

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        worker = self.worker
        if worker is None or worker.gone is not None:
            raise EngineUnavailable(self.name, f"not run: its process is gone ({worker.gone if worker else 'stopped'})")
        try:
            answer, outputs = worker.exchange({"op": "infer", "id": self.number}, feeds, self._deadline(self.timeout))
        except Late as e:
            worker.stop(f"killed when a call ran over its time budget of {self.timeout:g} s")
            raise EngineTimeout(self.name, self.timeout or 0.0) from e
        except (Ended, OSError, ValueError) as e:
            how = worker.stop("it ended while it ran a graph")
            raise EngineFailure(f"{self.name} ended while it ran the graph ({how})") from e
        if "unavailable" in answer:
            raise EngineUnavailable(self.name, str(answer["unavailable"]))
        if "failure" in answer:
            raise EngineFailure(str(answer["failure"]))
        return {t.name: outputs[t.name] for t in self.outputs}


def _status(process: Any) -> str:
    """How a reaped child ended: its exit code or the signal that killed it."""
    import signal

    code = process.returncode
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
