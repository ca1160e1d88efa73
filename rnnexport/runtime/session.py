"""``StatefulSession``: stream through a graph whose state goes in and comes out.

The state lives in two pre-allocated sets of buffers on the session's device
(CPU memory, or CUDA memory for the CUDA and TensorRT providers). Each call
reads one set and writes the other, then they swap: no host round trip of the
state and no per-step allocation beyond the output the caller gets. A step is
one ``run_with_iobinding`` on bindings made once per stream.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnxruntime as ort

from rnnexport.bundle import Bundle
from rnnexport.core.contract import TIME, Form, IOSpec, StateSpec, check_array, check_lengths
from rnnexport.core.errors import RunError, RuntimeContractError, describe
from rnnexport.core.ort import Device, ProviderRequest, check_timeout
from rnnexport.runtime.buffers import Buffer, bind_state, bound_call, concrete, run_bound
from rnnexport.runtime.engine import Engine, Graph, LoadOptions, open_engine

STEP, SEQUENCE = Form.STEP, Form.SEQUENCE

__all__ = ["StatefulSession", "load"]


def refuse_nonfinite(name: str, value: np.ndarray) -> np.ndarray:
    """``value``, or a one-line error when a float array holds NaN or Inf (``check_finite=True``).

    Internal: :class:`StatefulSession` and :class:`~rnnexport.runtime.batcher.StreamBatcher` share it.
    """
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        bad = np.argwhere(~np.isfinite(value))[0]
        raise RuntimeContractError(f"{name} holds {value[tuple(bad)]} at index {tuple(int(i) for i in bad)}: "
                                   "refusing non-finite input (NaN or Inf); clean the input first")
    return value


def checked_state(spec: StateSpec, values: object, batch: int, finite: bool, what: str = "state") -> list[np.ndarray]:
    """A state mapping ``{"h": ..., "c": ...}`` for ``batch`` streams as arrays in the contract's order.

    Internal: the one check of a state that a caller sets (the session's and the batcher's).

    Raises:
        RuntimeContractError: not a mapping, names other than the contract's, a wrong
            shape or dtype, or (``finite``) NaN or Inf.
    """
    if not isinstance(values, Mapping):
        raise RuntimeContractError(f"{what}: expected a mapping of {', '.join(spec.names)}, "
                                   f"got {type(values).__name__}")
    names = set(values.keys())
    if names != set(spec.names):
        raise RuntimeContractError(f"{what}: expected exactly {', '.join(spec.names)}, got "
                                   f"{', '.join(sorted(map(str, names))) or 'nothing'}")
    checked = [check_array(f"{what} {n}", values[n], spec.dtype, spec.shape(i, batch))
               for i, n in enumerate(spec.names)]
    return [refuse_nonfinite(f"{what} {n}", v) if finite else v for n, v in zip(spec.names, checked, strict=True)]


class _State:
    """Two sets of state buffers: ``current`` holds the state, the other receives the next one."""

    def __init__(self, contract: IOSpec, batch: int, device: Device) -> None:
        spec = contract.state
        self.spec = spec
        self.sets = tuple([Buffer(concrete(spec.shape(i, batch)), spec.dtype, device) for i in range(len(spec.names))]
                          for _ in range(2))
        self.current = 0
        if spec.initial is not None:  # the module's own initial state, else the zeros the buffers hold
            for tensor, value in zip(self.inputs, spec.start(batch), strict=True):
                tensor.write(value)

    @property
    def inputs(self) -> list[Buffer]:
        return self.sets[self.current]

    @property
    def outputs(self) -> list[Buffer]:
        return self.sets[1 - self.current]

    def bind(self, binding: ort.IOBinding, reads: int) -> None:
        bind_state(binding, self.spec, [t.value for t in self.sets[reads]], [t.value for t in self.sets[1 - reads]])


class _StepPlan:
    """Bindings made once for one-step calls of a graph: x and y buffers, both state directions."""

    def __init__(self, graph: Graph, contract: IOSpec, state: _State, batch: int, device: Device) -> None:
        form, time = (STEP, TIME) if graph.form == STEP else (SEQUENCE, 1)
        self.graph, self.state = graph, state
        self.x = Buffer(concrete(contract.x_shape(form, batch, time)), contract.x_dtype, device)
        self.y = Buffer(concrete(contract.y_shape(form, batch, time)), contract.y_dtype, device)
        self.bindings = []
        # a sequence graph with a lengths input, run one step at a time: every stream takes the step
        self.lengths = np.ones(batch, np.int64) if graph.form == SEQUENCE and contract.lengths is not None else None
        for reads in (0, 1):
            binding = graph.session.io_binding()
            binding.bind_ortvalue_input(graph.x_name, self.x.value)
            if self.lengths is not None and contract.lengths is not None:
                binding.bind_cpu_input(contract.lengths.name, self.lengths)
            binding.bind_ortvalue_output(graph.y_name, self.y.value)
            state.bind(binding, reads)
            self.bindings.append(binding)

    def __call__(self, x: np.ndarray, timeout: float | None = None) -> Buffer:
        self.x.write(x)
        run_bound(self.graph.session, self.bindings[self.state.current], "a step", timeout)
        self.state.current ^= 1
        return self.y


class _FastStep:
    """What :meth:`StatefulSession.step` needs per call on CPU, made once: the host buffers as
    the step's shapes view them, the accepted ``x``, and one bound call per state direction."""

    def __init__(self, plan: _StepPlan, x_dtype: str, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
        assert plan.x.host is not None and plan.y.host is not None  # made on CPU only
        self.x, self.y = plan.x.host.reshape(x_shape), plan.y.host.reshape(y_shape)  # views: the bound memory
        self.x_dtype, self.x_shape = np.dtype(x_dtype), x_shape
        self.calls = tuple(bound_call(plan.graph.session, b) for b in plan.bindings)


class StatefulSession:
    """One stream (or ``batch`` streams advanced together) through an exported graph.

    Load with :meth:`load`; make more independent streams on the same loaded
    graphs with :meth:`new_stream`. One object must not be used from two
    threads at once; different streams of one load may run in parallel threads.
    """

    def __init__(self, engine: Engine, batch: int = 1, check_finite: bool = False,
                 timeout: float | None = None) -> None:
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise RuntimeContractError(f"batch must be a positive int (the number of streams), got {batch!r}")
        self._timeout = check_timeout(timeout, "timeout", RuntimeContractError)
        self._engine = engine
        self._batch = batch
        # a graph converted with --nan refuse has no NaN guards: its input is always checked
        self._check_finite = bool(check_finite) or engine.refuses_nonfinite
        self._state = _State(engine.contract, batch, engine.device)
        self._plan: _StepPlan | None = None  # made on the first step
        self._fast: _FastStep | None = None  # likewise, on CPU
        contract = engine.contract
        self._step_x = (contract.x_dtype, contract.x_shape(STEP, batch))
        self._step_y_shape = contract.y_shape(STEP, batch)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        providers: ProviderRequest | list[ProviderRequest] | None = None,
        *,
        batch: int = 1,
        form: str | None = None,
        threads: int | None = None,
        session_options: ort.SessionOptions | None = None,
        check_finite: bool = False,
        timeout: float | None = None,
    ) -> StatefulSession:
        """Load a bundle folder, a .zip of one, or a model ``.onnx``, and start from the initial state.

        Args:
            path: the bundle (its manifest's checksums are checked first) or a
                graph exported by ``rnnexport convert`` (its metadata holds the contract).
            providers: None for CPU, or execution providers in priority order, as
                names (``"cuda"``, ``"CUDAExecutionProvider"``) or ``(name, options)``.
            batch: how many streams this session advances together.
            form: load only the ``"step"`` or ``"sequence"`` graph of a bundle.
            threads: onnxruntime intra-op threads (1 is fastest for one small stream).
            session_options: onnxruntime session options to start from.
            check_finite: refuse ``x`` or a state holding NaN or Inf with one line
                (off by default: it reads every input once more; ``rnnexport run`` turns it on).
                Always on for a graph converted with ``--nan refuse``, which has no NaN
                guards (docs/verify.md).
            timeout: seconds one call (:meth:`step`, :meth:`run`, or each step :meth:`run` takes
                through a step graph) may take; one over it is stopped and raises
                :class:`~rnnexport.core.errors.RunTimeout`. None (default): no bound.

        Raises:
            BundleError: unknown schema, malformed manifest, checksum mismatch.
            ProviderError: a provider that is not available or did not start.
            RuntimeContractError: a graph without an rnnexport I/O contract.
        """
        options = LoadOptions(providers, form, threads, session_options)
        check_timeout(timeout, "timeout", RuntimeContractError)  # before the graphs load
        return cls(open_engine(path, options), batch, check_finite, timeout)

    def new_stream(self, batch: int | None = None) -> StatefulSession:
        """An independent stream (at the initial state) on the same loaded graphs."""
        return StatefulSession(self._engine, self._batch if batch is None else batch, self._check_finite,
                               self._timeout)

    @property
    def checks_finite(self) -> bool:
        """Whether ``x`` and a state set are refused when they hold NaN or Inf: ``check_finite``, or a
        graph converted with ``--nan refuse``."""
        return self._check_finite

    @property
    def batch(self) -> int:
        """How many streams one call advances."""
        return self._batch

    @property
    def contract(self) -> IOSpec:
        return self._engine.contract

    @property
    def forms(self) -> tuple[str, ...]:
        """The loaded graphs: ``"step"`` and/or ``"sequence"``."""
        return tuple(self._engine.graphs)

    @property
    def providers(self) -> tuple[str, ...]:
        """The execution providers the sessions run on, as onnxruntime reports them."""
        return self._engine.providers

    @property
    def device(self) -> str:
        """Where the state lives between calls: ``"cpu"`` or ``"cuda:N"``."""
        return str(self._engine.device)

    @property
    def bundle(self) -> Bundle:
        """What was opened: manifest, graph files, test vectors."""
        return self._engine.bundle

    @property
    def description(self) -> str:
        return self._engine.description

    def __repr__(self) -> str:
        return (f"StatefulSession({self._engine.bundle.path}, forms={list(self.forms)}, batch={self._batch}, "
                f"device={self.device})")

    # --- state ---------------------------------------------------------------------------------

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The current state by name (copies), e.g. ``{"h": (B, H), "c": (B, H)}``: save it to resume."""
        return {n: t.read() for n, t in zip(self.contract.state.names, self._state.inputs, strict=True)}

    @state.setter
    def state(self, values: Mapping[str, np.ndarray]) -> None:
        checked = checked_state(self.contract.state, values, self._batch, self._check_finite)
        for tensor, value in zip(self._state.inputs, checked, strict=True):
            tensor.write(value)

    def nested_state(self) -> Any:
        """The current state (copies) as the model holds it: the contract's ``structure``, with
        arrays for tensors, tuples for lists and dicts for dicts (e.g. ``((h1, c1), h2)``).

        A flat state is its one array, or a tuple in the order of the state names.
        """
        return self.contract.state.nest([t.read() for t in self._state.inputs])

    def set_nested_state(self, value: Any) -> None:
        """Set the state from a value shaped as :meth:`nested_state` gives it (lists stand for tuples).

        Raises:
            RuntimeContractError: ``value`` is not shaped as the structure, or an array has the
                wrong shape or dtype (or, with ``check_finite``, holds NaN or Inf).
        """
        spec = self.contract.state
        self.state = dict(zip(spec.names, spec.flatten(value), strict=True))

    def reset(self, streams: int | Iterable[int] | None = None) -> None:
        """Start every stream again, or only ``streams`` (indices along the batch axis): their state becomes
        the initial state (the contract's ``initial``: zeros, or the module's own initial values)."""
        spec = self.contract.state
        if streams is None:
            for tensor, value in zip(self._state.inputs, spec.start(self._batch), strict=True):
                tensor.write(value)
            return
        if isinstance(streams, (int, np.integer)) and not isinstance(streams, (bool, np.bool_)):
            indices = [streams]
        elif isinstance(streams, (str, bytes, bool, np.bool_, float)) or not isinstance(streams, Iterable):
            raise RuntimeContractError(f"reset: give None, a stream index or a list of them, got {streams!r}")
        else:
            indices = list(streams)
        wrong = [i for i in indices if not isinstance(i, (int, np.integer)) or isinstance(i, (bool, np.bool_))]
        if wrong:
            raise RuntimeContractError(f"reset: stream indices are ints, got {wrong[0]!r}")
        bad = [i for i in indices if not 0 <= i < self._batch]
        if bad:
            raise RuntimeContractError(f"reset: stream index {bad[0]!r} is out of range for {self._batch} streams")
        for tensor, start in zip(self._state.inputs, spec.start(len(indices)), strict=True):
            value = tensor.read()
            index: list[slice | list[Any]] = [slice(None)] * value.ndim
            index[spec.batch_axis] = indices
            value[tuple(index)] = start
            tensor.write(value)

    # --- calls ---------------------------------------------------------------------------------

    def step(self, x: np.ndarray) -> np.ndarray:
        """Advance every stream one time step: ``x`` is ``(B, ...)``, returns ``y`` ``(B, ...)``."""
        fast = self._fast
        if fast is not None and type(x) is np.ndarray and x.shape == fast.x_shape and x.dtype == fast.x_dtype:
            if self._check_finite and not np.isfinite(x).all():
                refuse_nonfinite("x", x)  # raises
            np.copyto(fast.x, x)
            state = self._state
            try:
                fast.calls[state.current]()
            except Exception as e:  # onnxruntime's own failures, as run_bound words them
                raise RunError(f"a step failed in onnxruntime: {describe(e)}") from e
            state.current ^= 1
            return fast.y.copy()
        x = self._finite("x", check_array("x", x, *self._step_x))
        y = self._plan_for_step()(x, self._timeout).read()
        return y if y.shape == self._step_y_shape else y.reshape(self._step_y_shape)

    def run(self, xs: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Advance every stream through a chunk: ``xs`` is ``(T, B, ...)`` (or ``(B, T, ...)``
        for batch-major graphs), returns ``y`` of the same layout; the state carries on.

        ``lengths`` (a sequence graph converted with ``--lengths``): each stream's own number
        of steps, ``(B,)`` integers from 0 to T. Stream ``b`` stops after ``lengths[b]`` steps:
        its ``y`` is zero after that and its state is the one after its own last step (a
        length of 0 leaves it as it was), as PyTorch's packed sequences give. Without
        ``lengths`` every stream runs all T steps.

        Raises:
            RuntimeContractError: ``xs`` or ``lengths`` off the contract, or ``lengths`` for a
                graph without a lengths input.
        """
        c = self.contract
        xs = self._finite("x", check_array("x", xs, c.x_dtype, c.x_shape(SEQUENCE, self._batch, TIME)))
        steps = xs.shape[c.time_axis]
        graph = self._engine.graphs.get(SEQUENCE)
        if lengths is not None:
            if graph is None or c.lengths is None:
                what = "no sequence graph" if graph is None else "a sequence graph without a lengths input"
                raise RuntimeContractError(f"lengths: {self._engine.bundle.path} has {what}; convert the "
                                           "sequence graph with --lengths to run streams of different lengths")
            lengths = check_lengths(lengths, self._batch, steps)
        if graph is not None and (graph.seq_len is None or steps % graph.seq_len == 0):
            if graph.seq_len is None:
                return self._run_sequence(graph, xs, lengths)
            parts = np.split(xs, steps // graph.seq_len, axis=c.time_axis)
            return np.concatenate([self._run_sequence(graph, p, _part(lengths, k * graph.seq_len, graph.seq_len))
                                   for k, p in enumerate(parts)], axis=c.time_axis)
        if STEP not in self._engine.graphs or lengths is not None:
            assert graph is not None  # an engine holds a step graph, a sequence graph, or both
            raise RuntimeContractError(f"x: the sequence graph is unrolled at T={graph.seq_len}: run() takes "
                                       f"a multiple of {graph.seq_len} time steps, got {steps}")
        return self._run_steps(xs)

    def _finite(self, name: str, value: np.ndarray) -> np.ndarray:
        return refuse_nonfinite(name, value) if self._check_finite else value

    def _plan_for_step(self) -> _StepPlan:
        if self._plan is not None:
            return self._plan
        graphs = self._engine.graphs
        graph = graphs.get(STEP) or graphs[SEQUENCE]
        if graph.form == SEQUENCE and graph.seq_len not in (None, 1):
            raise RuntimeContractError(f"step() needs a step graph or a sequence graph of any length; this "
                                       f"sequence graph is unrolled at T={graph.seq_len}: use run()")
        self._plan = _StepPlan(graph, self.contract, self._state, self._batch, self._engine.device)
        if self._plan.x.host is not None and self._timeout is None:  # a bounded step goes through run_bound
            dtype, shape = self._step_x
            self._fast = _FastStep(self._plan, dtype, concrete(shape), concrete(self._step_y_shape))
        return self._plan

    def _run_sequence(self, graph: Graph, xs: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
        c = self.contract
        steps = xs.shape[c.time_axis]
        y = Buffer(concrete(c.y_shape(SEQUENCE, self._batch, steps)), c.y_dtype, self._engine.device, zero=False)
        binding = graph.session.io_binding()
        binding.bind_cpu_input(graph.x_name, np.ascontiguousarray(xs))
        if c.lengths is not None:  # the graph takes lengths: every stream runs all T steps unless told
            binding.bind_cpu_input(c.lengths.name, np.full(self._batch, steps, np.int64) if lengths is None else lengths)
        binding.bind_ortvalue_output(graph.y_name, y.value)
        self._state.bind(binding, self._state.current)
        run_bound(graph.session, binding, f"a chunk of {xs.shape[c.time_axis]} steps", self._timeout)
        self._state.current ^= 1
        return y.take()

    def _run_steps(self, xs: np.ndarray) -> np.ndarray:
        c = self.contract
        steps = xs.shape[c.time_axis]
        ys = np.empty(concrete(c.y_shape(SEQUENCE, self._batch, steps)), c.y_dtype)
        plan = self._plan_for_step()
        for t in range(steps):
            x_t = xs[t] if c.time_axis == 0 else xs[:, t]
            y_t = plan(x_t, self._timeout).take()
            if c.time_axis == 0:
                ys[t] = y_t.reshape(ys.shape[1:])
            else:
                ys[:, t] = y_t.reshape(ys.shape[:1] + ys.shape[2:])
        return ys


def _part(lengths: np.ndarray | None, start: int, steps: int) -> np.ndarray | None:
    """How many of the ``steps`` steps from ``start`` on each stream runs, given its whole ``lengths``."""
    return None if lengths is None else np.clip(lengths - start, 0, steps)


#: :meth:`StatefulSession.load` as a function: ``rnnexport.runtime.load("bundle.zip")``.
load = StatefulSession.load
