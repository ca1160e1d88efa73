"""A graph against its PyTorch source: every contract on every engine over the case grid."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from rnnexport.core.compare import Tolerance, graph_precision, tolerance_for, with_rounding
from rnnexport.core.contract import Form, NanPolicy
from rnnexport.core.errors import VerifyError
from rnnexport.core.ort import CPU, available_providers
from rnnexport.engines.base import EngineFailure, EngineKind, EngineUnavailable, Runner, Unavailable
from rnnexport.engines.torch_runner import TorchRunner
from rnnexport.verification import contracts
from rnnexport.verification.cases import Case, StateKind, grid, lengths_of, materialize
from rnnexport.verification.engines import Engine, Lineup, plan
from rnnexport.verification.findings import Diagnosis
from rnnexport.verification.options import Progress, Tick, VerifyOptions
from rnnexport.verification.report import Check, Contract, EngineStatus, Note, Report, ReportKind
from rnnexport.verification.target import SourceLike, Target, load_graph, load_target

__all__ = ["ILL_CONDITIONED", "verify_graph"]

#: Contract 1 is not judged where PyTorch's own float32 error exceeds this share of the output range.
ILL_CONDITIONED = 0.01
#: Outputs by name.
Outputs = dict[str, np.ndarray]
#: The labels of a graph's models in a :class:`Lineup`.
GRAPH, STEP = "graph", "step graph"


def _load_step(options: VerifyOptions, target: Target) -> Path | None:
    if options.step_model is None:
        return None
    if target.form is Form.STEP:
        raise VerifyError(f"{target.path} is itself a step graph; --step takes the step graph that goes "
                          "with a sequence MODEL")
    step = load_target(options.step_model, target.model)
    if step.form is not Form.STEP:
        raise VerifyError(f"--step {options.step_model} is a {step.form.value} graph; give a graph converted "
                          "with --form step")
    return step.path


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """PyTorch's reference on ``threads`` threads for the run only."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _CaseRun:
    """Every contract on one case at a time, on every engine; the checks and figures found."""

    def __init__(self, target: Target, tol: Tolerance, options: VerifyOptions, step_path: Path | None = None) -> None:
        self.target, self.tol, self.options = target, tol, options
        # graphs converted with --nan refuse: on NaN cases, the runtime must refuse their input (contract 5)
        self.refusing = [(path, form) for path, form in ((target.path, target.form), (step_path, Form.STEP))
                         if path is not None and _refuses(path, target if path == target.path else None)]
        self.chunk_sizes = options.sizes.chunk_sizes
        self.torch_seq, self.torch_step = TorchRunner(target.model, Form.SEQUENCE), TorchRunner(target.model, Form.STEP)
        self.io = target.io
        self.checks: list[Check] = []
        self.unavailable: list[Unavailable] = []
        self.skipped: dict[str, int] = {}
        self.chunkable = target.seq_len is None and not target.bidirectional
        self.torch_seconds = 0.0
        self.noise: dict[str, float] = {}
        self.ill_conditioned: dict[str, float] = {}

    def run_all(self, cases: Sequence[Case], engines: Sequence[Engine], progress: Progress | None) -> None:
        """Every case in order, ``progress`` told after each, weighted by its batch x time steps."""
        vocabulary = self.target.model.vocabulary_size()
        total, done, started = sum(c.elements for c in cases), 0, time.perf_counter()
        with self.torch_seq, self.torch_step:
            for number, case in enumerate(cases, 1):
                self.run(case, engines, vocabulary)
                done += case.elements
                if progress is not None:
                    progress(Tick(number, len(cases), done, total, case.id, time.perf_counter() - started))

    def _reference(self, runner: TorchRunner, feeds: Outputs) -> Outputs:
        started = time.perf_counter()
        try:
            return runner.infer(feeds)
        finally:
            self.torch_seconds += time.perf_counter() - started

    def _attempt(self, engine: Engine, case: Case, contract: Contract, fn: Callable[[], Outputs]) -> Outputs | None:
        if engine.stopped:  # a call ran over the time budget: no further call on this engine
            return None
        started = time.perf_counter()
        try:
            return fn()
        except EngineUnavailable as e:
            self.unavailable.append(e.result(case.id))
        except EngineFailure as e:
            self.checks.append(Check(contract, engine.name, case.id, "*", False, detail=str(e)))
        finally:
            engine.seconds += time.perf_counter() - started
        return None

    def run(self, case: Case, engines: Sequence[Engine], vocabulary: int | None) -> None:
        x, state = materialize(case, self.io, vocabulary)
        if case.nonfinite:  # a graph without guards has no NaN pattern to compare: the runtime refuses its input
            for path, form in self.refusing:
                label = "refused" if path == self.target.path else "refused, step graph"
                self.checks += contracts.refused(path, self.io, form, case, x, state, label)
            if any(path == self.target.path for path, _ in self.refusing):
                return
        if self.target.form is Form.SEQUENCE:
            self._sequence(case, engines, x, state)
        else:
            self._step(case, engines, x, state)

    def _pytorch_tolerance(self, feeds: Outputs, want: Outputs, case: Case) -> Tolerance | None:
        """Contract 1's tolerance: ``atol`` plus ``ROUNDING_FACTOR`` (3) times PyTorch's own float32 rounding error.

        Two float32 implementations of a recurrence drift apart along time by rounding
        alone. A float64 run of the same PyTorch model measures how far the float32
        reference is from exact (``e``); a graph at most ``2e`` from exact is at most
        ``3e`` from the reference: no more than twice as inexact as PyTorch itself.
        None when ``e`` exceeds ``ILL_CONDITIONED`` of the output's range: the model is
        chaotic on that input and the case is not judged (reported in the notes).
        """
        if self.tol.dtype != "float32" or case.nonfinite:
            return self.tol
        started = time.perf_counter()
        noise = self.torch_seq.rounding_error(feeds, want)
        self.torch_seconds += time.perf_counter() - started
        if noise is None:
            return self.tol
        self.noise[case.id] = noise
        scale = max(float(np.abs(w).max(initial=0.0)) for w in want.values())
        if noise > ILL_CONDITIONED * max(scale, 1.0):
            self.ill_conditioned[case.id] = noise
            return None  # rounding alone decides the result: no float32 graph can be judged here
        return with_rounding(self.tol, noise)

    def _takes(self, engine: Engine, case: Case) -> bool:
        if engine.stopped:  # a call ran over the time budget: its failure is recorded once
            return False
        if engine.spec.slow and case.elements > self.options.reference_max_elements:
            self.skipped[engine.name] = self.skipped.get(engine.name, 0) + 1
            return False
        return True

    def _sequence(self, case: Case, engines: Sequence[Engine], x: np.ndarray, state: list[np.ndarray]) -> None:
        lengths = lengths_of(case)
        feeds = self.io.feeds(x, state, lengths)
        want = self._reference(self.torch_seq, feeds)
        if not case.nonfinite:
            self.checks += contracts.finite("pytorch", case, want)
        pytorch_tol = self._pytorch_tolerance(feeds, want, case)
        baseline = None
        for engine in engines:
            if self._takes(engine, case):
                got = self._whole(engine, case, feeds, want, pytorch_tol)
                if got is not None and lengths is not None:  # chunks and steps run the full-length cases
                    self.checks += contracts.past_end(engine.name, case, got, self.io, lengths)
                elif got is not None:
                    self._chunks(engine, case, x, state, got)
                    self._streamed(engine, case, x, state, got)
                baseline = self._providers(engine, case, got, baseline) if got is not None else baseline

    def _whole(self, engine: Engine, case: Case, feeds: Outputs, want: Outputs,
               pytorch_tol: Tolerance | None) -> Outputs | None:
        """Contracts 1, 4 and 5 on one call over the whole case; the outputs."""
        runner = engine.runners[GRAPH]
        got = self._attempt(engine, case, Contract.PYTORCH, lambda: runner.infer(contracts.prepare(runner, feeds)))
        if got is None:
            return None
        axes = contracts.time_axes(self.io, Form.SEQUENCE)
        if pytorch_tol is not None:
            self.checks += contracts.against(Contract.PYTORCH, engine.name, case, got, want, pytorch_tol, axes)
        self.checks += contracts.declared_shapes(engine.name, case, self.target.outputs, got, Form.SEQUENCE)
        if not case.nonfinite:
            self.checks += contracts.finite(engine.name, case, got)
        return got

    def _chunks(self, engine: Engine, case: Case, x: np.ndarray, state: list[np.ndarray], got: Outputs) -> None:
        """Contract 2: each chunk length shorter than the case, on the random-state cases."""
        if not self.chunkable or case.state is not StateKind.RANDOM:
            return
        runner, axes = engine.runners[GRAPH], contracts.time_axes(self.io, Form.SEQUENCE)
        for chunk in (c for c in self.chunk_sizes if c < case.time):

            def run_chunked(chunk: int = chunk) -> Outputs:
                return contracts.chunked(runner, self.io, x, state, chunk)

            out = self._attempt(engine, case, Contract.CHUNKED, run_chunked)
            if out is not None:
                self.checks += contracts.against(Contract.CHUNKED, engine.name, case, out, got, self.tol, axes,
                                                 variant=f"chunk={chunk}")

    def _streamed(self, engine: Engine, case: Case, x: np.ndarray, state: list[np.ndarray], got: Outputs) -> None:
        """Contract 3: the step graph streamed over the case, against the sequence graph."""
        step = engine.runners.get(STEP)
        if step is None or (case.nonfinite and len(self.refusing) > 0):  # then only the step graph refuses
            return
        out = self._attempt(engine, case, Contract.STEP, lambda: contracts.stream(step, self.io, x, state))
        if out is not None:
            self.checks += contracts.against(Contract.STEP, engine.name, case, out, got, self.tol,
                                             contracts.time_axes(self.io, Form.SEQUENCE))

    def _step(self, case: Case, engines: Sequence[Engine], x: np.ndarray, state: list[np.ndarray]) -> None:
        io, tol = self.io, self.tol
        seq_axes, step_axes = contracts.time_axes(io, Form.SEQUENCE), contracts.time_axes(io, Form.STEP)
        first = io.feeds(np.take(x, 0, axis=io.time_axis), state)
        want_step = self._reference(self.torch_step, first)
        want_seq = self._reference(self.torch_seq, io.feeds(x, state))
        if not case.nonfinite:
            self.checks += contracts.finite("pytorch", case, want_seq)
        baseline = None
        for engine in (e for e in engines if self._takes(e, case)):
            runner = engine.runners[GRAPH]

            def infer_first(runner: Runner = runner) -> Outputs:
                return runner.infer(contracts.prepare(runner, first))

            got = self._attempt(engine, case, Contract.PYTORCH, infer_first)
            if got is None:
                continue
            self.checks += contracts.against(Contract.PYTORCH, engine.name, case, got, want_step, tol, step_axes,
                                             variant="first step")
            self.checks += contracts.declared_shapes(engine.name, case, self.target.outputs, got, Form.STEP)

            def stream_steps(runner: Runner = runner) -> Outputs:
                return contracts.stream(runner, io, x, state)

            out = self._attempt(engine, case, Contract.STEP, stream_steps)
            if out is None:
                continue
            if not case.nonfinite:
                self.checks += contracts.finite(engine.name, case, out, variant="streamed")
            self.checks += contracts.against(Contract.STEP, engine.name, case, out, want_seq, tol, seq_axes,
                                             variant="vs PyTorch sequence")
            baseline = self._providers(engine, case, out, baseline)

    def _providers(self, engine: Engine, case: Case, got: Outputs, baseline: Outputs | None) -> Outputs | None:
        """Contract 6: keep the CPU provider's outputs, compare every other provider's with them."""
        if engine.spec.provider == CPU:
            return got
        if engine.kind is EngineKind.ONNXRUNTIME and baseline is not None:
            axes = contracts.time_axes(self.io, Form.SEQUENCE)  # a step graph's streamed outputs are sequences
            self.checks += contracts.against(Contract.PROVIDERS, engine.name, case, got, baseline, self.tol, axes)
        return baseline

    def notes(self, target: Target, cases: Sequence[Case]) -> list[Note]:
        """What the reader should know about what ran: contracts that did not, allowances, skips."""
        found = []
        ran = {c.contract for c in self.checks}
        if Contract.STEP not in ran and target.form is Form.SEQUENCE:
            found.append(Note("no_step_graph"))
        if Contract.PROVIDERS not in ran:
            found.append(Note("no_other_provider"))
        if self.refusing:
            names = ["the graph" if path == target.path else "the step graph" for path, _ in self.refusing]
            found.append(Note("nan_refused", {"graphs": " and ".join(names)}))
        if self.ill_conditioned:
            worst = max(self.ill_conditioned, key=self.ill_conditioned.__getitem__)
            found.append(Note("ill_conditioned", {"cases": len(self.ill_conditioned), "share": ILL_CONDITIONED,
                                                  "worst": self.ill_conditioned[worst], "worst_case": worst}))
        noise = {k: v for k, v in self.noise.items() if k not in self.ill_conditioned}
        if noise:
            worst = max(noise, key=noise.__getitem__)
            found.append(Note("rounding_allowance", {"worst": noise[worst], "worst_case": worst}))
        for name, count in self.skipped.items():
            found.append(Note("reference_skipped", {"engine": name, "skipped": count, "cases": len(cases),
                                                    "max_elements": self.options.reference_max_elements}))
        ragged = [c for c in cases if c.lengths is not None]
        if ragged:
            found.append(Note("ragged", {"cases": len(ragged), "batch": ragged[0].batch}))
        return found


def _refuses(path: Path, target: Target | None) -> bool:
    """Whether the graph at ``path`` was converted with ``--nan refuse``."""
    info = target.info if target is not None else load_graph(path)[1]
    return info is not None and info.nan is NanPolicy.REFUSE


def _form_notes(target: Target) -> list[Note]:
    if target.seq_len is not None:
        return [Note("unrolled", {"seq_len": target.seq_len})]
    if target.form is Form.STEP:
        return [Note("step_graph")]
    return [Note("bidirectional")] if target.bidirectional else []


def _diagnose(options: VerifyOptions, target: Target, cases: Sequence[Case], run: _CaseRun,
              tol: Tolerance, engines: Sequence[Engine]) -> Diagnosis | None:
    """The diagnosis of the first failing contract-1 case, unless ``options.diagnose`` is False or an engine
    ran over its time budget (the graph does not finish: there is no divergence to find)."""
    if options.diagnose is False or any(e.stopped for e in engines):
        return None
    from rnnexport.verification.diagnose import AUTO_SECONDS, FORCED_SECONDS, diagnose

    seconds = FORCED_SECONDS if options.diagnose else AUTO_SECONDS
    return diagnose(target, cases, run.checks, tol, run.noise, seconds, options.threads)


def verify_graph(path: str | os.PathLike[str], source: SourceLike | None, options: VerifyOptions,
                 progress: Progress | None = None) -> Report:
    """A graph against its PyTorch source: see :func:`rnnexport.verification.run.verify`."""
    started = time.perf_counter()
    planned, notes = plan(options, baseline=True)  # validates engine names before any slow work
    target = load_target(path, source)
    step_path = _load_step(options, target)
    tol = tolerance_for(graph_precision(target.proto), options.atol, options.rtol)
    sizes = options.sizes
    seq_lens = sizes.seq_lens if target.seq_len is None else (target.seq_len,)
    cases = grid(target.io, sizes.batch_sizes, seq_lens, options.seed, target.model.vocabulary_size())
    models = {GRAPH: target.path, **({STEP: step_path} if step_path else {})}
    run = _CaseRun(target, tol, options, step_path)
    diagnosis = None
    with (Lineup(planned, models, options.threads, options.allow_missing, options.timeout) as lineup,
          _torch_threads(options.threads)):
        if not lineup.stopped:
            run.run_all(cases, lineup.engines, progress)
            diagnosis = _diagnose(options, target, cases, run, tol, lineup.engines)
    notes += [*lineup.notes(), *_form_notes(target), *([] if lineup.stopped else run.notes(target, cases))]
    if options.diagnose and diagnosis is None and not lineup.stopped:
        notes.append(Note("nothing_to_diagnose"))
    pytorch = EngineStatus("pytorch", EngineKind.PYTORCH, None, True, True, seconds=run.torch_seconds)
    return Report(
        model=str(target.path),
        step_model=str(step_path) if step_path else None,
        source=target.model.description,
        form=target.form.value,
        lowering=target.lowering,
        seq_len=target.seq_len,
        seed=options.seed,
        tolerance=tol,
        providers_requested=lineup.requested(),
        providers_available=tuple(available_providers()),
        engines=(pytorch, *lineup.final_statuses()),
        cases=cases,
        checks=tuple(run.checks),
        unavailable=(*lineup.unavailable, *run.unavailable),
        notes=tuple(notes),
        seconds=time.perf_counter() - started,
        kind=ReportKind.GRAPH,
        allow_missing=options.allow_missing,
        grid=options.grid,
        diagnosis=diagnosis,
    )
