"""When parity fails, say where: the first diverging graph value, and the known mistake it matches.

:func:`diagnose` takes the failing contract-1 case that is cheapest to re-run (onnxruntime's
CPU provider first, finite inputs first, fewest batch x time steps), and within a time bound:

1. runs it again with every graph value exposed (:mod:`~rnnexport.verification.exposed`) and
   finds, per output, the first time step and the streams out of tolerance;
2. finds the first graph value that diverges from what PyTorch computed on the case
   (:mod:`~rnnexport.verification.localize`), with its operator, its inputs' error and where it
   sits; inside a native RNN/LSTM/GRU operator, which gates first differ from the source's
   (:mod:`~rnnexport.verification.onnxcells`); where onnxruntime cannot run the case, the node
   it stopped at and that node's inputs;
3. tries each known mistake undone on a copy (:mod:`~rnnexport.verification.hints`) and names
   those whose undoing makes the case pass.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np

from rnnexport.core.compare import Tolerance, compare, with_rounding
from rnnexport.core.contract import BATCH, Form
from rnnexport.core.errors import describe
from rnnexport.export.passes.graph import constant_value
from rnnexport.source.plan import NativeLayer
from rnnexport.verification import hints as known
from rnnexport.verification.cases import Case, lengths_of, materialize
from rnnexport.verification.contracts import time_axes
from rnnexport.verification.exposed import (
    RunFailure,
    node_inputs_at_failure,
    run_exposed,
    run_graph,
)
from rnnexport.verification.findings import (
    Diagnosis,
    Finding,
    Hint,
    InputError,
    InputStatus,
    Location,
    OutputDivergence,
)
from rnnexport.verification.localize import RECURRENT, Graph, first_divergence, record_pool
from rnnexport.verification.report import Check, Contract
from rnnexport.verification.target import Target

__all__ = ["AUTO_SECONDS", "CPU_ENGINE", "FORCED_SECONDS", "MAX_EXPOSED_STEPS", "diagnose", "pick_case"]

LOG = logging.getLogger("rnnexport.verification")

#: The time bound of the diagnosis verify runs by itself on a contract-1 failure.
AUTO_SECONDS = 30.0
#: The time bound of ``--diagnose``.
FORCED_SECONDS = 120.0
CPU_ENGINE = "onnxruntime:cpu"
#: The most batch x time steps whose every value is exposed and matched: a larger failing case is cut
#: to its first failing stream and, where the graph takes any length, to the step it first fails at.
MAX_EXPOSED_STEPS = 4096
Outputs = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """A case's inputs, its feeds and PyTorch's outputs on them."""

    x: np.ndarray
    state: list[np.ndarray]
    feeds: dict[str, np.ndarray]
    want: dict[str, np.ndarray]


def pick_case(cases: Sequence[Case], checks: Sequence[Check]) -> tuple[Case, str] | None:
    """The failing contract-1 case to diagnose and its engine: onnxruntime's CPU provider, finite, smallest."""
    by_id = {c.id: c for c in cases}
    failed = {(c.case, c.engine) for c in checks if c.contract is Contract.PYTORCH and not c.passed and c.case in by_id}
    if not failed:
        return None
    case_id, engine = min(failed, key=lambda f: (f[1] != CPU_ENGINE, by_id[f[0]].nonfinite,
                                                 by_id[f[0]].lengths is not None, by_id[f[0]].elements, f[0], f[1]))
    return by_id[case_id], engine


def _batch_axes(target: Target, form: Form) -> dict[str, int | None]:
    io = target.io
    y = io.y_shape(form)
    axes: dict[str, int | None] = {io.outputs(form)[0].name: y.index(BATCH) if BATCH in y else None}
    for name in io.state.output_names:
        axes[name] = io.state.batch_axis
    return axes


def _divergences(target: Target, form: Form, got: Outputs, want: Outputs, tol: Tolerance) -> list[OutputDivergence]:
    """Per output: max abs error, and where it leaves the tolerance: first time step, streams."""
    times, batches = time_axes(target.io, form), _batch_axes(target, form)
    found = []
    for name, reference in want.items():
        if name not in got:
            found.append(OutputDivergence(name, None, detail="the graph returned no such output"))
            continue
        array = np.asarray(got[name])
        figures = compare(array, reference, tol, times.get(name))
        if figures.max_abs is None:
            found.append(OutputDivergence(name, None, detail=figures.detail))
            continue
        first: int | None = None
        streams: tuple[int, ...] = ()
        if not figures.passed:
            with np.errstate(invalid="ignore", over="ignore"):
                a, b = array.astype(np.float64), np.asarray(reference, np.float64)
                same = (a == b) | (np.isnan(a) & np.isnan(b))
                bad = ~same & ~(np.abs(a - b) <= tol.atol + tol.rtol * np.abs(b))
            axis, batch = times.get(name), batches.get(name)
            if axis is not None:
                first = int(np.argmax(bad.any(axis=tuple(i for i in range(bad.ndim) if i != axis))))
            if batch is not None and batch < bad.ndim:
                per = bad.any(axis=tuple(i for i in range(bad.ndim) if i != batch))
                streams = tuple(int(i) for i in np.flatnonzero(per))
        found.append(OutputDivergence(name, figures.max_abs, first, streams, figures.detail))
    return found


def _failing(divergences: Sequence[OutputDivergence], tol: Tolerance, want: Outputs, got: Outputs) -> list[str]:
    names = []
    for d in divergences:
        if d.output not in got or d.max_abs is None:
            names.append(d.output)
        elif not compare(got[d.output], want[d.output], tol).passed:
            names.append(d.output)
    return names


def _words(array: np.ndarray) -> str:
    """A small constant in words (``[5, -1, 8]``), else its type and shape."""
    if array.size <= 8:
        values = [f"{v:g}" if isinstance(v, float) else str(v) for v in array.ravel().tolist()]
        return values[0] if array.ndim == 0 else f"[{', '.join(values)}]"
    return f"{array.dtype.name}[{', '.join(map(str, array.shape))}]"


class _Diagnosis:
    """One diagnosis in progress: the case, its feeds and PyTorch's outputs, and what was found so far."""

    def __init__(self, target: Target, case: Case, engine: str, tol: Tolerance, deadline: float,
                 threads: int) -> None:
        self.target, self.case, self.engine, self.tol = target, case, engine, tol
        self.deadline, self.threads = deadline, threads
        io, model = target.io, target.model
        x, state = materialize(case, io, model.vocabulary_size())
        self.form = target.form
        if self.form is Form.STEP:
            x = np.take(x, 0, axis=io.time_axis)
        self.lengths = lengths_of(case) if self.form is Form.SEQUENCE else None
        self.full = self.inputs(x, state, self.lengths)
        self.feeds, self.want = self.full.feeds, self.full.want
        self.notes: list[str] = []
        self.complete = True
        self.constants: list[str] = []

    def inputs(self, x: np.ndarray, state: list[np.ndarray], lengths: np.ndarray | None = None) -> _Inputs:
        io, model = self.target.io, self.target.model
        want = model.run_sequence(x, state, lengths) if self.form is Form.SEQUENCE else model.run_step(x, state)
        return _Inputs(x, state, io.feeds(x, state, lengths), dict(zip([s.name for s in io.outputs(self.form)], want, strict=True)))

    def reduced(self, outputs: Sequence[OutputDivergence]) -> _Inputs | None:
        """The case, or its first failing stream up to the step it first fails at when it is too large to expose."""
        io, x, state = self.target.io, self.full.x, self.full.state
        if self.lengths is not None:  # each stream ran alone on its own length: PyTorch's values differ in shape
            self.notes.append("a ragged case (a lengths input): no value was located; the full-length cases locate")
            return None
        if self.case.elements <= MAX_EXPOSED_STEPS or self.form is Form.STEP:
            return self.full
        stream = min((s for o in outputs for s in o.streams), default=0)
        x = np.take(x, [stream], axis=io.batch_axis)
        state = [np.take(s, [stream], axis=io.state.batch_axis) for s in state]
        steps = [o.first_step for o in outputs if o.first_step is not None]
        cut = self.target.seq_len is None and not self.target.bidirectional and steps
        if cut:
            x = np.take(x, np.arange(min(steps) + 1), axis=io.time_axis)
        if x.shape[io.time_axis] > MAX_EXPOSED_STEPS:
            self.notes.append(f"the case is too long to expose every value (over {MAX_EXPOSED_STEPS} steps in one "
                              "stream): no value was located")
            return None
        self.notes.append(f"values were read on stream {stream} alone" +
                          (f", over its first {x.shape[io.time_axis]} steps" if cut else ""))
        return self.inputs(x, state)

    def late(self, stage: str) -> bool:
        if time.perf_counter() <= self.deadline:
            return False
        self.complete = False
        self.notes.append(f"the time bound was reached before {stage}")
        return True

    # --- the first diverging value -------------------------------------------------------------------

    def locate(self, inputs: _Inputs) -> tuple[Finding | None, str]:
        """The first diverging value on ``inputs``, and how it was found."""
        run = run_exposed(self.target.proto, inputs.feeds, self.threads)
        if isinstance(run, RunFailure):
            self.notes.append(f"the graph with its values exposed did not run: {run.message}")
            return None, ""
        got = {name: run.values[name] for name in inputs.want if name in run.values}
        failing = _failing(_divergences(self.target, self.form, got, inputs.want, self.tol), self.tol,
                           inputs.want, got)
        if not failing:
            self.notes.append("the part of the case whose values were read matches PyTorch: no value was located")
            return None, ""
        model = self.target.model
        modules = [model.sequence_module, model.trace_module] if self.form is Form.SEQUENCE else \
            [model.step_module(), model.trace_step_module()]
        pool = record_pool(modules, inputs.x, inputs.state, self.tol)
        if pool.partial:
            self.notes.append("PyTorch computed more than the recorder keeps; only the first tensors were matched")
        graph = Graph(self.target.proto, run.values, inputs.feeds)
        if not graph.judge(pool, failing, self.deadline):
            self.late("every graph value was matched")
        method = (f"every graph value read on {CPU_ENGINE} (the top graph; each Scan body value at each step; each "
                  f"native operator's Y at each step and direction) was matched against the {pool.count} tensors "
                  "PyTorch computed on the case; the first value that matches none while its inputs do is reported")
        first = first_divergence(graph, failing)
        if first is None:
            return None, method
        details: list[str] = []
        location = first.location
        if location.scope == "native" and location.direction is not None:
            details = self._gates(location, {**run.values, **inputs.feeds})
        shape = None if first.array is None else tuple(int(d) for d in first.array.shape)
        error = None if first.array is None else pool.nearest(first.array)
        return Finding(location, error, graph.inputs_of(first), tuple(details), shape), method

    def _gates(self, location: Location, values: Mapping[str, np.ndarray]) -> list[str]:
        proto = self.target.proto
        nodes = [n for n in proto.graph.node if n.op_type in RECURRENT]
        plan = self.target.model.native
        if location.layer is None or location.layer >= len(nodes):
            return []
        layer: NativeLayer | None = None
        if plan is not None and len(plan.layers) == len(nodes):
            layer = plan.layers[location.layer]
        assert location.direction is not None  # scope native with a direction
        return known.gate_details(proto, nodes[location.layer], layer, values, location.direction,
                                  location.reverse, self.tol)

    def stopped(self, failure: RunFailure) -> Finding:
        """Where onnxruntime stopped: the node it names, and that node's inputs on the case."""
        node, inputs = node_inputs_at_failure(self.target.proto, failure, self.feeds)
        if node is None:
            location = Location(failure.op or "?", failure.node or "?", "?")
            return Finding(location, None, (), (failure.message,), failed=True)
        found = []
        for name in (i for i in node.input if i):
            constant = constant_value(self.target.proto.graph, name)
            if constant is not None:
                self.constants.append(_words(constant))
                words = f"constant {_words(constant)}" if constant.size <= 8 else "constant"
                found.append(InputError(name, words, InputStatus.CONSTANT, None, tuple(constant.shape)))
                continue
            array = inputs.get(name)
            status = InputStatus.GIVEN if name in self.feeds else InputStatus.NOT_COMPARED
            producer = "graph input" if name in self.feeds else "computed"
            found.append(InputError(name, producer, status, None,
                                    None if array is None else tuple(int(d) for d in array.shape)))
        location = Location(node.op_type, node.name or node.output[0], node.output[0] if node.output else "")
        return Finding(location, None, tuple(found), (f"onnxruntime cannot run it on this case: {failure.message}",),
                       failed=True)

    # --- known mistakes ------------------------------------------------------------------------------------

    def hints(self, checks: Sequence[Check], cases: Sequence[Case], got_time: int | None) -> list[Hint]:
        found, complete = known.confirm(
            known.trials(self.target.proto, self.target.io, self.target.model.native, self.feeds),
            self.want, self.tol, self.case.id, self.deadline)
        if not complete:
            self.complete = False
            self.notes.append("the time bound was reached before every known mistake was tried")
        by_id = {c.id: c for c in cases}
        lengths: dict[int, bool] = {}
        for check in checks:
            if check.contract is Contract.PYTORCH and check.engine == self.engine and check.case in by_id:
                t = by_id[check.case].time
                lengths[t] = lengths.get(t, True) and check.passed
        y = self.target.io.outputs(self.form)[0].name
        declared = next((t.shape for t in self.target.outputs if t.name == y), None)
        fixed = known.fixed_time(lengths, declared, self.target.io.time_axis, got_time, self.case.time,
                                 self.constants) if self.form is Form.SEQUENCE else None
        return ([fixed] if fixed else []) + found


def _engine_only(case: Case, engine: str, checks: Sequence[Check]) -> bool:
    """Whether onnxruntime's CPU provider passed every contract-1 check of ``case`` that ``engine`` failed."""
    cpu = [c for c in checks if c.contract is Contract.PYTORCH and c.case == case.id and c.engine == CPU_ENGINE]
    return engine != CPU_ENGINE and bool(cpu) and all(c.passed for c in cpu)


def diagnose(target: Target, cases: Sequence[Case], checks: Sequence[Check], tol: Tolerance,
             noise: Mapping[str, float], seconds: float = AUTO_SECONDS, threads: int = 1) -> Diagnosis | None:
    """Where the first failing contract-1 case first parts from PyTorch; None when contract 1 did not fail.

    Args:
        target: the graph and its source, as verify loaded them.
        cases, checks: the run's cases and checks.
        tol: the graph's tolerance; ``noise``: PyTorch's own float32 rounding error per case id
            (contract 1's allowance).
        seconds: the time bound: stages not reached by then are skipped, and the diagnosis says so.
    """
    picked = pick_case(cases, checks)
    if picked is None:
        return None
    started = time.perf_counter()
    case, engine = picked
    if _engine_only(case, engine, checks):
        note = (f"{CPU_ENGINE} computes PyTorch's values on this case, {engine} does not: the graph is right and "
                f"{engine} computes one of its operators otherwise")
        return Diagnosis(case.id, engine, CPU_ENGINE, notes=(note,), seconds=time.perf_counter() - started)
    work = _Diagnosis(target, case, engine, with_rounding(tol, noise.get(case.id)), started + seconds, threads)
    try:
        return _run(work, checks, cases, started)
    except Exception as e:  # a diagnosis must not turn a verify report into a crash
        LOG.warning("the diagnosis of %s failed", case.id, exc_info=True)
        return Diagnosis(case.id, engine, CPU_ENGINE, notes=(f"the diagnosis failed: {describe(e)}",),
                         seconds=time.perf_counter() - started, complete=False)


def _run(work: _Diagnosis, checks: Sequence[Check], cases: Sequence[Case], started: float) -> Diagnosis:
    got = run_graph(work.target.proto, work.feeds, work.threads)
    first: Finding | None = None
    method = ""
    got_time = None
    if isinstance(got, RunFailure):
        outputs = [OutputDivergence(name, None, detail="not computed: onnxruntime stopped") for name in work.want]
        first = work.stopped(got)
        method = f"onnxruntime ({CPU_ENGINE}) stopped at a node; its inputs were computed on the case"
    else:
        outputs = _divergences(work.target, work.form, got, work.want, work.tol)
        y = next(iter(work.want))
        if work.form is Form.SEQUENCE and y in got and got[y].ndim > work.target.io.time_axis:
            got_time = int(got[y].shape[work.target.io.time_axis])
        inputs = work.reduced(outputs)
        if not _failing(outputs, work.tol, work.want, got):
            work.notes.append(f"on {CPU_ENGINE} this case now matches PyTorch: the failure was {work.engine}'s")
        elif inputs is not None and not work.late("the graph's values were matched with PyTorch's"):
            first, method = work.locate(inputs)
    found = [] if work.late("the known mistakes were tried") else work.hints(checks, cases, got_time)
    return Diagnosis(work.case.id, work.engine, CPU_ENGINE, tuple(outputs), first, tuple(found), method,
                     tuple(work.notes), time.perf_counter() - started, work.complete)
