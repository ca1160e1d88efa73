"""``StreamBatcher``: many independent streams through one step graph, one call per tick.

Each stream has its own state, kept in a slot of a state pool laid out as the
contract has it (the batch axis is the slot axis). A :meth:`StreamBatcher.step`
gathers the states of the streams that have an input this tick into one batch,
runs the step graph once with IO binding on buffers made once per batch size,
and leaves the new states in those buffers: the next tick with the same streams
reads them in place, any other tick or state access first writes them back to
the pool. No per-step allocation beyond the outputs it returns.
:meth:`StreamBatcher.submit` is the same for apps whose streams live on different
threads: a worker groups the pending steps into one call, waiting at most
``max_wait`` seconds for more to arrive.

Each stream gets what it would get alone: on onnxruntime's CPU provider a row of
the LSTM and GRU operators and of Gemm and MatMul on constant weights does not
depend on the batch it runs in (their weights are pre-packed), so the results equal
a one-stream :class:`StatefulSession` bit for bit. The RNN operator would be the
exception (its kernel passes unpacked weights to MLAS, whose sgemm sums a single row
in another order than a batch), so plain-RNN step graphs are written with Gemm and
Tanh instead (docs/embedding.md).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from concurrent.futures import Future

import numpy as np
import onnxruntime as ort

from rnnexport.bundle import open_bundle
from rnnexport.core.contract import Form, IOSpec, StateSpec, check_array
from rnnexport.core.errors import RnnexportError, RunError, RuntimeContractError, describe
from rnnexport.core.ort import ProviderRequest, check_timeout
from rnnexport.runtime.buffers import bind_state, bound_call, concrete, run_bound
from rnnexport.runtime.engine import Engine, Graph, LoadOptions, open_engine
from rnnexport.runtime.session import checked_state, refuse_nonfinite

__all__ = ["BatcherStats", "StreamBatcher", "StreamId"]

#: A stream's name: any hashable value (``join()`` hands out ints when none is given).
StreamId = Hashable

DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_WAIT = 0.002  # seconds
#: The most streams one batcher holds unless told otherwise (each costs its state, e.g. 2 KB for H=256).
DEFAULT_MAX_STREAMS = 4096
#: Bounds on the sizes a caller may ask for: a larger max_batch would allocate buffers of that many rows.
MAX_BATCH_LIMIT = 1 << 16
MAX_STREAMS_LIMIT = 1 << 24
#: How many evicted stream ids :attr:`StreamBatcher.evicted` remembers.
EVICTED_KEPT = 1024


def _step_graph(engine: Engine) -> Graph:
    """The graph one tick runs: the step graph, or a sequence graph that takes any length."""
    graph = engine.graphs.get(Form.STEP) or engine.graphs[Form.SEQUENCE]
    if graph.form is Form.SEQUENCE and graph.seq_len not in (None, 1):
        raise RuntimeContractError(f"StreamBatcher needs a step graph or a sequence graph of any length; "
                                   f"{graph.name} is unrolled at T={graph.seq_len}: export a step graph")
    return graph


@dataclasses.dataclass(frozen=True)
class BatcherStats:
    """How the work went: ``steps`` stream steps run in ``calls`` graph calls."""

    calls: int
    steps: int

    @property
    def mean_batch(self) -> float:
        """Streams per call, on average."""
        return self.steps / self.calls if self.calls else 0.0


class _Pool:
    """Every stream's state: one array per state tensor, slots along the contract's batch axis."""

    def __init__(self, spec: StateSpec, capacity: int) -> None:
        self.spec = spec
        self.arrays = spec.start(capacity)
        self.initial = spec.start(1)  # one stream's initial state: zeros, or the module's own
        self.free = list(range(capacity - 1, -1, -1))

    def _at(self, slots: np.ndarray | slice) -> tuple[slice | np.ndarray, ...]:
        return (slice(None),) * self.spec.batch_axis + (slots,)

    def take(self) -> int:
        """A slot at the initial state, growing the pool (doubling) when all are in use."""
        if not self.free:
            capacity = self.arrays[0].shape[self.spec.batch_axis]
            self.arrays = [np.concatenate([a, a], axis=self.spec.batch_axis) for a in self.arrays]  # taken slots are set
            self.free = list(range(2 * capacity - 1, capacity - 1, -1))
        slot = self.free.pop()
        self.write(slot, None)
        return slot

    def give(self, slot: int) -> None:
        self.free.append(slot)

    def read(self, slot: int) -> list[np.ndarray]:
        """Copies of one stream's state, each with a batch of 1."""
        return [a[self._at(slice(slot, slot + 1))].copy() for a in self.arrays]

    def write(self, slot: int, values: list[np.ndarray] | None) -> None:
        """Set one stream's state (batch-of-1 arrays), or start it again (``None``: the initial state)."""
        for a, value in zip(self.arrays, self.initial if values is None else values, strict=True):
            a[self._at(slice(slot, slot + 1))] = value

    def gather(self, slots: np.ndarray, into: list[np.ndarray]) -> None:
        for a, out in zip(self.arrays, into, strict=True):
            np.take(a, slots, axis=self.spec.batch_axis, out=out, mode="clip")  # "clip": unbuffered

    def scatter(self, slots: np.ndarray, values: list[np.ndarray]) -> None:
        for a, value in zip(self.arrays, values, strict=True):
            a[self._at(slots)] = value


@dataclasses.dataclass(frozen=True)
class _Views:
    """The buffers of a call for ``n`` streams (views of the first rows of each) and their bindings.

    Two sets of state buffers, as in :class:`StatefulSession`: ``bindings[r]`` reads
    ``states[r]`` and writes ``states[1 - r]``.
    """

    x: np.ndarray  # (n, *x_features): filled row by row
    y: np.ndarray  # (n, *y_features): copied out
    states: tuple[list[np.ndarray], list[np.ndarray]]
    bindings: tuple[ort.IOBinding, ort.IOBinding]
    calls: tuple[Callable[[], None], Callable[[], None]]  # each binding's run, made once (bound_call)


class _Buffers:
    """x, y and state buffers for ``max_batch`` streams, made once; views and bindings per batch size on first use."""

    def __init__(self, graph: Graph, contract: IOSpec, max_batch: int) -> None:
        self.graph, self.contract = graph, contract
        spec = contract.state
        self.x = np.zeros(concrete(contract.x_shape(Form.STEP, max_batch)), contract.x_dtype)
        self.y = np.zeros(concrete(contract.y_shape(Form.STEP, max_batch)), contract.y_dtype)
        self.states = tuple([np.zeros(max_batch * int(np.prod(d)), spec.dtype) for d in spec.dims] for _ in range(2))
        self.views: dict[int, _Views] = {}
        # a sequence graph's lengths input, one step for every stream
        self.lengths = contract.lengths.name if contract.lengths is not None and graph.form is Form.SEQUENCE else None
        self.ones = np.ones(max_batch, np.int64)

    def at(self, n: int) -> _Views:
        views = self.views.get(n)
        if views is None:
            views = self.views[n] = self._make(n)
        return views

    def _make(self, n: int) -> _Views:
        c, graph, spec = self.contract, self.graph, self.contract.state
        shapes = [concrete(spec.shape(i, n)) for i in range(len(spec.names))]
        sets = tuple([b[:int(np.prod(s))].reshape(s) for b, s in zip(flat, shapes, strict=True)] for flat in self.states)
        # a sequence graph's (1, n, ...) or (n, 1, ...) is the same memory as the step's (n, ...)
        x = self.x[:n].reshape(concrete(c.x_shape(graph.form, n, 1)))
        y = self.y[:n].reshape(concrete(c.y_shape(graph.form, n, 1)))
        bindings = []
        for reads in (0, 1):
            binding = graph.session.io_binding()
            binding.bind_ortvalue_input(graph.x_name, ort.OrtValue.ortvalue_from_numpy(x))  # host memory, no copy
            binding.bind_ortvalue_output(graph.y_name, ort.OrtValue.ortvalue_from_numpy(y))
            if self.lengths is not None:
                binding.bind_ortvalue_input(self.lengths, ort.OrtValue.ortvalue_from_numpy(self.ones[:n]))
            bind_state(binding, spec, [ort.OrtValue.ortvalue_from_numpy(v) for v in sets[reads]],
                       [ort.OrtValue.ortvalue_from_numpy(v) for v in sets[1 - reads]])
            bindings.append(binding)
        calls = (bound_call(graph.session, bindings[0]), bound_call(graph.session, bindings[1]))
        return _Views(self.x[:n], self.y[:n], (sets[0], sets[1]), (bindings[0], bindings[1]), calls)


@dataclasses.dataclass
class _Resident:
    """The streams of the last call, whose newest state is still in its buffers (``views.states[current]``).

    Written back to the pool lazily: when the next call has other streams, or before the
    state of a stream is read or changed. A tick with the same streams as the last one
    then costs no gather and no scatter.
    """

    slots: list[int]
    views: _Views
    current: int


@dataclasses.dataclass(frozen=True)
class _Order:
    """What :meth:`StreamBatcher.tick` runs: the joined streams' pool slots in joining order, the ``xs``
    shape it takes, and the call's buffers (None when more than ``max_batch`` streams take several calls)."""

    slots: list[int]
    shape: tuple[int, ...]
    views: _Views | None


@dataclasses.dataclass
class _Request:
    """One submitted step; ``joined`` tells the stream from a later one of the same id."""

    stream: StreamId
    joined: int
    x: np.ndarray
    future: Future[np.ndarray]
    arrived: float


class _Queue:
    """Pending :meth:`StreamBatcher.submit` steps, in arrival order, and the worker that runs them."""

    def __init__(self, batcher: StreamBatcher) -> None:
        self.batcher = batcher
        self.cond = threading.Condition()
        self.pending: collections.deque[_Request] = collections.deque()
        self.counts: collections.Counter[StreamId] = collections.Counter()
        self.closing = False
        self.thread: threading.Thread | None = None

    def put(self, request: _Request) -> None:
        with self.cond:
            if self.closing:
                raise RuntimeContractError("submit: this StreamBatcher is closed; make a new one")
            if self.thread is None:
                self.thread = threading.Thread(target=self._work, name="rnnexport-batcher", daemon=True)
                self.thread.start()
            self.pending.append(request)
            self.counts[request.stream] += 1
            self.cond.notify()

    def has(self, stream: StreamId) -> bool:
        """Whether ``stream`` has a step waiting."""
        with self.cond:
            return stream in self.counts

    def drop(self, stream: StreamId) -> list[_Request]:
        """Take a stream's pending steps out of the queue (it left)."""
        with self.cond:
            dropped = [r for r in self.pending if r.stream == stream]
            if dropped:
                self.pending = collections.deque(r for r in self.pending if r.stream != stream)
                del self.counts[stream]
            self.cond.notify()  # one stream fewer: the others may all be waiting now
            return dropped

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()
            thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _full(self) -> bool:
        """Whether waiting longer cannot grow the next call."""
        distinct = len(self.counts)
        return distinct >= self.batcher.max_batch or distinct >= len(self.batcher)

    def _next_batch(self) -> list[_Request] | None:
        """Wait for a first request, then up to ``max_wait`` for more; the first step of each stream."""
        with self.cond:
            while True:
                if not self.pending:
                    if self.closing:
                        return None
                    self.cond.wait()
                    continue
                left = self.pending[0].arrived + self.batcher.max_wait - time.monotonic()
                if self.closing or self._full() or left <= 0:
                    return self._pop_batch()
                self.cond.wait(left)

    def _pop_batch(self) -> list[_Request]:
        batch: list[_Request] = []
        seen: set[StreamId] = set()
        rest: collections.deque[_Request] = collections.deque()
        for request in self.pending:
            if request.stream in seen or len(batch) == self.batcher.max_batch:
                rest.append(request)
                continue
            seen.add(request.stream)
            batch.append(request)
            self.counts[request.stream] -= 1
            if not self.counts[request.stream]:
                del self.counts[request.stream]
        self.pending = rest
        return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self.batcher._run_requests([r for r in batch if r.future.set_running_or_notify_cancel()])


def _check_int(what: str, value: object, limit: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
        raise RuntimeContractError(f"{what} must be an int from 1 to {limit}, got {value!r:.80}")


def _check_id(stream: object, what: str) -> None:
    try:
        hash(stream)
    except TypeError:
        raise RuntimeContractError(f"{what}: a stream id must be hashable (an int or a str), got "
                                   f"{type(stream).__name__}") from None


def _fail(requests: Iterable[_Request], message: str) -> None:
    for request in requests:
        if request.future.set_running_or_notify_cancel():
            request.future.set_exception(RuntimeContractError(message))


class StreamBatcher:
    """Independent streams that join and leave at any time, advanced together through one graph.

    ``step({stream: x_t, ...})`` runs every stream that has an input this tick in one
    call and returns ``{stream: y_t}``; each ``x_t`` and ``y_t`` is what a one-stream
    :class:`~rnnexport.runtime.StatefulSession` takes and gives (``(1, ...)``).
    Every method is thread-safe; :meth:`submit` groups steps from many threads.
    A stream's steps run in the order they were asked for; do not mix :meth:`step`
    and :meth:`submit` for one stream, or :meth:`reset` it while it has a pending step.
    """

    def __init__(self, engine: Engine, *, max_batch: int = DEFAULT_MAX_BATCH,
                 max_wait: float = DEFAULT_MAX_WAIT, check_finite: bool = False,
                 max_streams: int = DEFAULT_MAX_STREAMS, idle_timeout: float | None = None,
                 on_evict: Callable[[StreamId], None] | None = None, timeout: float | None = None) -> None:
        _check_int("max_batch", max_batch, MAX_BATCH_LIMIT)
        self._timeout = check_timeout(timeout, "timeout", RuntimeContractError)
        _check_int("max_streams", max_streams, MAX_STREAMS_LIMIT)
        if not isinstance(max_wait, (int, float)) or isinstance(max_wait, bool) or not 0 <= max_wait <= 60:
            raise RuntimeContractError(f"max_wait must be seconds from 0 to 60, got {max_wait!r}")
        if idle_timeout is not None and (not isinstance(idle_timeout, (int, float)) or isinstance(idle_timeout, bool)
                                         or not 0 < idle_timeout <= 7 * 86400):
            raise RuntimeContractError(f"idle_timeout must be seconds above 0 (at most a week) or None, "
                                       f"got {idle_timeout!r}")
        if on_evict is not None and not callable(on_evict):
            raise RuntimeContractError(f"on_evict must be a function of the stream id, got {on_evict!r:.80}")
        self._engine = engine
        self.max_batch, self.max_wait = max_batch, float(max_wait)
        self.max_streams = max_streams
        self.idle_timeout = None if idle_timeout is None else float(idle_timeout)
        self._on_evict = on_evict
        self._last_used: dict[StreamId, float] = {}  # stream -> when it last joined, stepped or changed
        self._evicted: collections.deque[StreamId] = collections.deque(maxlen=EVICTED_KEPT)
        # a graph converted with --nan refuse has no NaN guards: its input is always checked
        self._check_finite = bool(check_finite) or engine.refuses_nonfinite
        self._graph = _step_graph(engine)
        contract = engine.contract
        self._x = (np.dtype(contract.x_dtype), contract.x_shape(Form.STEP, 1))
        self._pool = _Pool(contract.state, max_batch)
        self._buffers = _Buffers(self._graph, contract, max_batch)
        self._slot_buffer = np.zeros(max_batch, np.intp)
        self._resident: _Resident | None = None
        self._streams: dict[StreamId, int] = {}  # stream -> its slot in the pool
        self._order: _Order | None = None  # what tick() runs for the streams joined; None: to be made
        self._joined: dict[StreamId, int] = {}  # stream -> when it joined (a count of joins)
        self._joins = itertools.count()
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._queue = _Queue(self)
        self._calls = self._steps = 0

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        providers: ProviderRequest | list[ProviderRequest] | None = None,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait: float = DEFAULT_MAX_WAIT,
        threads: int | None = None,
        session_options: ort.SessionOptions | None = None,
        check_finite: bool = False,
        max_streams: int = DEFAULT_MAX_STREAMS,
        idle_timeout: float | None = None,
        on_evict: Callable[[StreamId], None] | None = None,
        timeout: float | None = None,
    ) -> StreamBatcher:
        """Load a bundle, a .zip of one, or a model ``.onnx`` (its step graph) with no streams yet.

        Args:
            path: as :meth:`StatefulSession.load` takes it.
            providers: None for CPU, or execution providers in priority order.
            max_batch: the most streams one call runs (more in a tick run in several calls).
            max_wait: how long :meth:`submit`'s worker waits after the first pending step for
                others to join its call, in seconds.
            threads: onnxruntime intra-op threads.
            session_options: onnxruntime session options to start from.
            check_finite: refuse an ``x`` or a state holding NaN or Inf with one line (always on
                for a graph converted with ``--nan refuse``).
            max_streams: the most streams joined at once; one more :meth:`join` is refused.
            idle_timeout: seconds after which a stream that has not stepped (nor joined, nor had
                its state set or reset) is evicted, as if it had left; None keeps streams until
                they leave. Checked whenever a stream joins or steps.
            on_evict: called with each evicted stream's id (outside the batcher's lock); the last
                ones are also listed in :attr:`evicted`.
            timeout: seconds one graph call may take; one over it is stopped and raises
                :class:`~rnnexport.core.errors.RunTimeout`. None (default): no bound.

        Raises:
            BundleError, ProviderError, RuntimeContractError: as :meth:`StatefulSession.load`;
            RuntimeContractError also for a graph unrolled at a fixed T.
        """
        check_timeout(timeout, "timeout", RuntimeContractError)  # before the graph loads
        bundle = open_bundle(path)
        form = "step" if any(s.form is Form.STEP for s in bundle.graphs.values()) else None
        engine = open_engine(bundle, LoadOptions(providers, form, threads, session_options))
        return cls(engine, max_batch=max_batch, max_wait=max_wait, check_finite=check_finite,
                   max_streams=max_streams, idle_timeout=idle_timeout, on_evict=on_evict, timeout=timeout)

    # --- what it is ----------------------------------------------------------------------------

    @property
    def contract(self) -> IOSpec:
        return self._engine.contract

    @property
    def providers(self) -> tuple[str, ...]:
        return self._engine.providers

    @property
    def streams(self) -> tuple[StreamId, ...]:
        """The streams that have joined and not left, in joining order."""
        with self._lock:
            return tuple(self._streams)

    @property
    def evicted(self) -> tuple[StreamId, ...]:
        """The streams evicted for idling, oldest first (the last ``EVICTED_KEPT``)."""
        with self._lock:
            return tuple(self._evicted)

    @property
    def stats(self) -> BatcherStats:
        with self._lock:
            return BatcherStats(self._calls, self._steps)

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, stream: object) -> bool:
        return stream in self._streams

    def __repr__(self) -> str:
        return (f"StreamBatcher({self._engine.bundle.path}, streams={len(self)}, max_batch={self.max_batch}, "
                f"max_wait={self.max_wait})")

    def __enter__(self) -> StreamBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- streams -------------------------------------------------------------------------------

    def join(self, stream: StreamId | None = None, state: Mapping[str, np.ndarray] | None = None) -> StreamId:
        """Add a stream, from the initial state (the contract's ``initial``: zeros, or the module's own) or
        ``state`` (``{"h": (1, H), ...}``); returns its id.

        Raises:
            RuntimeContractError: the id is already in use or not hashable, a malformed state, or
                ``max_streams`` streams have joined already.
        """
        self.evict_idle()
        with self._lock:
            if stream is None:
                stream = next(i for i in self._ids if i not in self._streams)
            else:
                _check_id(stream, "join")
                if stream in self._streams:
                    raise RuntimeContractError(f"join: stream {stream!r:.80} has already joined; leave() it first "
                                               f"or pick another id")
            if len(self._streams) >= self.max_streams:
                raise RuntimeContractError(f"join: this batcher holds its limit of {self.max_streams} streams; "
                                           "leave() one first, or make the batcher with a larger max_streams")
            values = None if state is None else self._checked_state(stream, state)
            slot = self._pool.take()
            if values is not None:
                self._pool.write(slot, values)
            self._streams[stream] = slot
            self._order = None
            self._joined[stream] = next(self._joins)
            self._last_used[stream] = time.monotonic()
            return stream

    def leave(self, stream: StreamId) -> None:
        """Remove a stream; its pending :meth:`submit` steps fail with RuntimeContractError."""
        with self._lock:
            slot = self._slot(stream, "leave")
            dropped = self._remove(stream, slot)
        _fail(dropped, f"stream {stream!r:.80} left before this step ran")

    def evict_idle(self) -> tuple[StreamId, ...]:
        """Evict the streams idle for longer than ``idle_timeout`` (none without one); returns them.

        An evicted stream is gone as if it had left: its id may join again, from the initial state.
        """
        if self.idle_timeout is None:
            return ()
        deadline = time.monotonic() - self.idle_timeout
        with self._lock:
            idle = [s for s, used in self._last_used.items() if used < deadline and not self._queue.has(s)]
            dropped = [r for s in idle for r in self._remove(s, self._streams[s])]
            self._evicted.extend(idle)
        _fail(dropped, "the stream was evicted for idling before this step ran")
        for stream in idle:
            if self._on_evict is not None:
                self._on_evict(stream)
        return tuple(idle)

    def reset(self, stream: StreamId) -> None:
        """Zero one stream's state."""
        with self._lock:
            slot = self._slot(stream, "reset")
            self._write_back()
            self._pool.write(slot, None)
            self._touch((stream,))

    def get_state(self, stream: StreamId) -> dict[str, np.ndarray]:
        """One stream's state by name (copies, each with a batch of 1): save it to resume."""
        with self._lock:
            slot = self._slot(stream, "get_state")
            self._write_back()
            values = self._pool.read(slot)
        return dict(zip(self.contract.state.names, values, strict=True))

    def set_state(self, stream: StreamId, state: Mapping[str, np.ndarray]) -> None:
        """Set one stream's state from ``{"h": (1, H), ...}`` (the contract's shapes with a batch of 1)."""
        with self._lock:
            slot = self._slot(stream, "set_state")
            values = self._checked_state(stream, state)
            self._write_back()
            self._pool.write(slot, values)
            self._touch((stream,))

    def nested_state(self, stream: StreamId) -> object:
        """One stream's state (copies, a batch of 1) as the model holds it: the contract's structure,
        with arrays for tensors, tuples for lists and dicts for dicts, objects and buffers
        (:meth:`StatefulSession.nested_state`)."""
        return self.contract.state.nest(list(self.get_state(stream).values()))

    def set_nested_state(self, stream: StreamId, value: object) -> None:
        """Set one stream's state from a value shaped as :meth:`nested_state` gives it (lists stand for tuples).

        Raises:
            RuntimeContractError: ``value`` is not shaped as the structure, or an array has the
                wrong shape or dtype.
        """
        spec = self.contract.state
        self.set_state(stream, dict(zip(spec.names, spec.flatten(value, f"state of stream {stream!r}"), strict=True)))

    # --- steps ---------------------------------------------------------------------------------

    def step(self, inputs: Mapping[StreamId, np.ndarray]) -> dict[StreamId, np.ndarray]:
        """Advance the streams in ``inputs`` one step: ``{stream: x_t (1, ...)}`` -> ``{stream: y_t (1, ...)}``.

        Every input is checked before any state changes: a bad one raises
        RuntimeContractError and leaves every stream as it was.
        """
        if not isinstance(inputs, Mapping):
            raise RuntimeContractError(f"step: expected a mapping of stream id to x, got {type(inputs).__name__}")
        self.evict_idle()
        with self._lock:
            slots, xs = self._checked_inputs(inputs)
            ys: list[np.ndarray] = []
            for start in range(0, len(slots), self.max_batch):
                end = start + self.max_batch
                ys.extend(self._run(slots[start:end], xs[start:end]))
            self._touch(inputs)
        return dict(zip(inputs, ys, strict=True))

    def tick(self, xs: np.ndarray) -> np.ndarray:
        """Advance every joined stream one step, as arrays: row ``i`` of ``xs`` ``(S, ...)`` is the input
        of the ``i``-th stream in joining order (:attr:`streams`), and row ``i`` of the ``y`` returned
        ``(S, ...)`` its output.

        For an app that runs a fixed set of streams in lockstep: the same results as :meth:`step`
        with ``{stream: xs[i:i + 1]}``, bit for bit, without a dict per tick: one copy in, one
        call per ``max_batch`` streams, one copy out. ``xs`` is checked before any state changes.

        Raises:
            RuntimeContractError: no stream has joined, or ``xs`` is not an array of the contract's
                dtype with one row per joined stream (or, when checked, holds NaN or Inf).
        """
        if self.idle_timeout is not None:
            self.evict_idle()
        with self._lock:
            order = self._order if self._order is not None else self._join_order()
            slots, want, views = order.slots, order.shape, order.views
            if not (type(xs) is np.ndarray and xs.dtype is self._x[0] and xs.shape == want):
                xs = self._checked_tick(xs, want)
            if self._check_finite and not np.isfinite(xs).all():
                refuse_nonfinite("tick: xs", xs)  # raises
            if views is not None:
                np.copyto(views.x, xs)
                self._call(slots, views)
                ys = views.y.copy()
            else:
                parts = []
                for start in range(0, len(slots), self.max_batch):
                    chunk = slots[start:start + self.max_batch]
                    views = self._buffers.at(len(chunk))
                    np.copyto(views.x, xs[start:start + len(chunk)])
                    self._call(chunk, views)
                    parts.append(views.y.copy())
                ys = np.concatenate(parts, axis=0)
            self._touch(self._streams)
        return ys

    def submit(self, stream: StreamId, x: np.ndarray) -> Future[np.ndarray]:
        """Queue one step of ``stream``; the Future gives its ``y_t`` once a grouped call ran it.

        The input is checked (and copied) now: a bad one raises here, not in the Future.
        """
        with self._lock:
            self._slot(stream, "submit")
            x = np.array(self._checked_x(stream, x), copy=True)
            joined = self._joined[stream]
        future: Future[np.ndarray] = Future()
        self._queue.put(_Request(stream, joined, x, future, time.monotonic()))
        return future

    def close(self) -> None:
        """Run the pending :meth:`submit` steps and stop its worker; later submits are refused."""
        self._queue.close()

    # --- internals -----------------------------------------------------------------------------

    def _remove(self, stream: StreamId, slot: int) -> list[_Request]:
        """Take ``stream`` out (under the lock); its pending requests, to fail outside it."""
        self._write_back()
        self._pool.give(slot)
        del self._streams[stream], self._joined[stream], self._last_used[stream]
        self._order = None
        return self._queue.drop(stream)

    def _touch(self, streams: Iterable[StreamId]) -> None:
        if self.idle_timeout is None:  # when a stream was last used matters only for evicting idle ones
            return
        now = time.monotonic()
        for stream in streams:
            if stream in self._last_used:
                self._last_used[stream] = now

    def _slot(self, stream: StreamId, what: str) -> int:
        try:
            return self._streams[stream]
        except (KeyError, TypeError):
            raise RuntimeContractError(f"{what}: no stream {stream!r} has joined this batcher "
                                       f"(join() it first; {len(self._streams)} streams have)") from None

    def _checked_x(self, stream: StreamId, x: object) -> np.ndarray:
        dtype, shape = self._x
        x = check_array(f"x of stream {stream!r}", x, str(dtype), shape)
        return refuse_nonfinite(f"x of stream {stream!r}", x) if self._check_finite else x

    def _checked_inputs(self, inputs: Mapping[StreamId, np.ndarray]) -> tuple[list[int], list[np.ndarray]]:
        """The slot and the checked x of each input; one loop, the common case inlined (it runs per stream per tick).

        A fitting x need not be contiguous here: it is copied into the call's buffer. With
        ``check_finite``, every x is checked for NaN and Inf at once, before any state changes.
        """
        streams, (dtype, shape) = self._streams, self._x
        slots: list[int] = []
        xs: list[np.ndarray] = []
        for stream, x in inputs.items():
            slot = streams.get(stream)
            if slot is None:
                slot = self._slot(stream, "step")  # raises
            if not (type(x) is np.ndarray and x.dtype is dtype and x.shape == shape):
                x = check_array(f"x of stream {stream!r}", x, str(dtype), shape)
            slots.append(slot)
            xs.append(x)
        if self._check_finite and xs and not np.isfinite(np.concatenate(xs, axis=0)).all():
            for stream, x in zip(inputs, xs, strict=True):
                refuse_nonfinite(f"x of stream {stream!r}", x)  # raises at the first
        return slots, xs

    def _join_order(self) -> _Order:
        """What tick() runs for the joined streams (kept until one joins or leaves)."""
        if not self._streams:
            raise RuntimeContractError("tick: no stream has joined this batcher; join() the streams first")
        slots = list(self._streams.values())
        shape = (len(slots), *concrete(self._x[1])[1:])
        self._order = _Order(slots, shape, self._buffers.at(len(slots)) if len(slots) <= self.max_batch else None)
        return self._order

    def _checked_tick(self, xs: object, want: tuple[int, ...]) -> np.ndarray:
        """``xs`` as tick() takes it, or one line saying what it should be."""
        dtype = str(self._x[0])
        if isinstance(xs, np.ndarray) and xs.dtype == dtype and xs.shape[1:] == want[1:] and xs.ndim == len(want):
            raise RuntimeContractError(f"tick: xs has {xs.shape[0]} rows, but {want[0]} streams have joined: "
                                       "give one row per stream, in joining order (see .streams)")
        return check_array("tick: xs", xs, dtype, want)

    def _checked_state(self, stream: StreamId, state: object) -> list[np.ndarray]:
        return checked_state(self.contract.state, state, 1, self._check_finite, f"state of stream {stream!r}")

    def _run(self, slots: list[int], xs: list[np.ndarray]) -> list[np.ndarray]:
        """One graph call for the streams in pool ``slots`` (at most ``max_batch``) on ``xs``: their y rows."""
        n = len(slots)
        if not n:
            return []
        views = self._buffers.at(n)
        np.concatenate(xs, axis=0, out=views.x)
        self._call(slots, views)
        return list(views.y.reshape(n, 1, *views.y.shape[1:]).copy())  # a (1, ...) view per stream

    def _call(self, slots: list[int], views: _Views) -> None:
        """One graph call for the streams in pool ``slots`` on the x rows already in ``views.x``."""
        resident = self._resident
        same = resident is not None and (resident.slots is slots or resident.slots == slots)
        if resident is not None and same:
            reads = resident.current  # the same streams as the last call: their state is in place
        else:
            self._write_back()
            reads = 0
            self._pool.gather(self._index(slots), views.states[0])
        if self._timeout is not None:  # a bounded call goes through run_bound (the fast call has no budget)
            run_bound(self._graph.session, views.bindings[reads], f"a step of {len(slots)} streams", self._timeout)
        else:
            try:
                views.calls[reads]()
            except Exception as e:  # onnxruntime's own failures, as run_bound words them
                raise RunError(f"a step of {len(slots)} streams failed in onnxruntime: {describe(e)}") from e
        if resident is not None and same:
            resident.current = 1 - reads  # the same streams' newest state, now in the other set
        else:
            self._resident = _Resident(slots, views, 1 - reads)
        self._calls += 1
        self._steps += len(slots)

    def _write_back(self) -> None:
        """Put the last call's states into the pool (before the pool is read or changed)."""
        resident, self._resident = self._resident, None
        if resident is not None:
            self._pool.scatter(self._index(resident.slots), resident.views.states[resident.current])

    def _index(self, slots: list[int]) -> np.ndarray:
        index = self._slot_buffer[:len(slots)]
        index[:] = slots
        return index

    def _run_requests(self, batch: list[_Request]) -> None:
        """Run the worker's batch and settle its futures (a stream that left meanwhile fails alone)."""
        with self._lock:
            live = [r for r in batch if self._joined.get(r.stream) == r.joined]
            for r in batch:
                if self._joined.get(r.stream) != r.joined:
                    r.future.set_exception(RuntimeContractError(f"stream {r.stream!r} left before this step ran"))
            try:
                ys = self._run([self._streams[r.stream] for r in live], [r.x for r in live])
            except RnnexportError as e:
                for r in live:
                    r.future.set_exception(e)
                return
            self._touch(r.stream for r in live)
        for r, y in zip(live, ys, strict=True):
            r.future.set_result(y)
