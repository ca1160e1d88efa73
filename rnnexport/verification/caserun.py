"""The contracts of a graph run over its cases, a batch of cases at a time: :class:`CaseRun`.

The cases of one length run as one batch of streams (:mod:`rnnexport.verification.batches`):
one PyTorch reference per batch, shared by every engine and contract; contract 1 and the
declared shapes per case on each fast engine (one call each, at the case's own batch size),
on a slow engine per batch; one chunked run per chunk length and one streamed run per batch
(contracts 2 and 3). For each batch size of the grid one case runs alone
(:func:`~rnnexport.verification.batches.lone_cases`), so every engine and contract also runs at
each batch size itself, not only at a batch's summed one. The outputs are split into cases
before any comparison, so each case's figures are its own.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from rnnexport.core.compare import Tolerance, rounding_error, with_rounding
from rnnexport.core.contract import Form, NanPolicy
from rnnexport.core.ort import CPU
from rnnexport.engines.base import EngineFailure, EngineKind, EngineUnavailable, Runner, Unavailable
from rnnexport.engines.torch_runner import TorchRunner
from rnnexport.verification import contracts
from rnnexport.verification.batches import Stack, batches
from rnnexport.verification.cases import Case, StateKind, lengths_of, materialize
from rnnexport.verification.engines import Engine
from rnnexport.verification.options import Progress, Tick, VerifyOptions
from rnnexport.verification.report import Check, Contract, Note
from rnnexport.verification.target import Target, load_graph

__all__ = ["GRAPH", "ILL_CONDITIONED", "SLOW_STEPS", "STEP", "CaseRun"]

#: Contract 1 is not judged where PyTorch's own float32 error exceeds this share of the output range.
ILL_CONDITIONED = 0.01
#: The longest case a slow engine takes: its cost is per call and per step (a round trip to another
#: process, a pure-numpy Scan step), hardly per stream, so it runs each length's cases as one batch,
#: and chunks of 1 or a streamed step graph make at most this many calls.
SLOW_STEPS = 64
#: Outputs by name.
Outputs = dict[str, np.ndarray]
#: An engine's whole-sequence runs of a stack's batches, by the batch's cases (None: the call failed).
Runs = dict[tuple[Case, ...], Mapping[Case, Outputs] | None]
#: The labels of a graph's models in a :class:`Lineup`.
GRAPH, STEP = "graph", "step graph"


class CaseRun:
    """Every contract on the grid's cases, a batch of them at a time, on every engine; the checks and figures found."""

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
        """Every case, a batch at a time (:func:`batches`); ``progress`` told after each case, weighted by
        its batch x time steps."""
        vocabulary = self.target.model.vocabulary_size()
        total, done, number, started = sum(c.elements for c in cases), 0, 0, time.perf_counter()
        with self.torch_seq, self.torch_step:
            for group in batches(cases, self.io):
                stack = Stack(self.io, group, tuple(materialize(c, self.io, vocabulary) for c in group))
                self.run(stack, engines)
                for case in group:
                    number, done = number + 1, done + case.elements
                    if progress is not None:
                        progress(Tick(number, len(cases), done, total, case.id, time.perf_counter() - started))

    def _reference(self, runner: TorchRunner, feeds: Outputs) -> Outputs:
        started = time.perf_counter()
        try:
            return runner.infer(feeds)
        finally:
            self.torch_seconds += time.perf_counter() - started

    def _attempt(self, engine: Engine, cases: Sequence[Case], contract: Contract,
                 fn: Callable[[], Outputs]) -> Outputs | None:
        """``fn()``'s outputs, or None after recording why there are none for each of ``cases``."""
        if engine.stopped:  # a call ran over the time budget: no further call on this engine
            return None
        started = time.perf_counter()
        try:
            return fn()
        except EngineUnavailable as e:
            self.unavailable += [e.result(case.id) for case in cases]
        except EngineFailure as e:
            self.checks += [Check(contract, engine.name, case.id, "*", False, detail=str(e)) for case in cases]
        finally:
            engine.seconds += time.perf_counter() - started
        return None

    def run(self, stack: Stack, engines: Sequence[Engine]) -> None:
        """Every contract on the cases of ``stack`` (one NaN case, or cases of one length), on every engine."""
        if stack.nonfinite:  # a graph without guards has no NaN pattern to compare: the runtime refuses its input
            (case,), ((x, state),) = stack.cases, stack.inputs
            for path, form in self.refusing:
                label = "refused" if path == self.target.path else "refused, step graph"
                self.checks += contracts.refused(path, self.io, form, case, x, state, label)
            if any(path == self.target.path for path, _ in self.refusing):
                return
        if self.target.form is Form.SEQUENCE:
            self._sequence(stack, engines)
        else:
            self._step(stack, engines)

    def _rounding(self, stack: Stack, feeds: Outputs, wants: Sequence[Outputs]) -> Callable[[Case], Tolerance | None]:
        """Contract 1's tolerance with PyTorch's own rounding error on a case, measured at the first call.

        Two float32 implementations of a recurrence drift apart along time by rounding
        alone. A float64 run of the same PyTorch model (one for the whole stack, made only
        when a case fails the graph's own tolerance) measures how far the float32 reference
        is from exact (``e``); a graph at most ``2e`` from exact is at most ``3e`` from the
        reference (``ROUNDING_FACTOR``): no more than twice as inexact as PyTorch itself.
        None when ``e`` exceeds ``ILL_CONDITIONED`` of the output's range: the model is
        chaotic on that input and the case is not judged (reported in the notes).
        """
        noise: dict[Case, float | None] = {}

        def tolerance(case: Case) -> Tolerance | None:
            if not noise:
                noise.update(zip(stack.cases, self._rounding_errors(stack, feeds, wants), strict=True))
            error = noise[case]
            return self.tol if error is None else self._allowance(case, wants[stack.cases.index(case)], error)

        return tolerance

    def _rounding_errors(self, stack: Stack, feeds: Outputs, wants: Sequence[Outputs]) -> list[float | None]:
        """Each case's PyTorch float32 rounding error (against a float64 run of the stack); None where it has none."""
        started = time.perf_counter()
        exact = self.torch_seq.exact(feeds)
        self.torch_seconds += time.perf_counter() - started
        if exact is None:
            return [None] * len(wants)
        return [rounding_error([want[n] for n in part], list(part.values()))
                for want, part in zip(wants, stack.split(exact, Form.SEQUENCE), strict=True)]

    def _allowance(self, case: Case, want: Outputs, noise: float) -> Tolerance | None:
        self.noise[case.id] = noise
        scale = max(float(np.abs(w).max(initial=0.0)) for w in want.values())
        if noise > ILL_CONDITIONED * max(scale, 1.0):
            self.ill_conditioned[case.id] = noise
            return None  # rounding alone decides the result: no float32 graph can be judged here
        return with_rounding(self.tol, noise)

    def _takes(self, engine: Engine, case: Case) -> bool:
        if engine.stopped:  # a call ran over the time budget: its failure is recorded once
            return False
        if engine.spec.slow and (case.elements > self.options.reference_max_elements or case.time > SLOW_STEPS):
            self.skipped[engine.name] = self.skipped.get(engine.name, 0) + 1
            return False
        return True

    def _sequence(self, stack: Stack, engines: Sequence[Engine]) -> None:
        """Contract 1 per case on one call each, and the stack's chunked and streamed runs (contracts 2, 3)."""
        io = self.io
        single = stack.cases[0] if len(stack.cases) == 1 else None
        feeds = io.feeds(stack.x, stack.state, lengths_of(single) if single is not None else None)
        wants = stack.split(self._reference(self.torch_seq, feeds), Form.SEQUENCE)
        for case, want in zip(stack.cases, wants, strict=True):
            if not case.nonfinite:
                self.checks += contracts.finite("pytorch", case, want)
        rounding = self._rounding(stack, feeds, wants)
        baselines: dict[Case, Outputs | None] = {}
        for engine in engines:
            whole: dict[Case, Outputs] = {}
            taken = [case for case in stack.cases if self._takes(engine, case)]
            for case, got in self._calls(engine, stack.select(taken)):
                self._judge(engine, case, got, wants[stack.cases.index(case)], rounding)
                lengths = lengths_of(case)
                if lengths is not None:  # chunks and steps run the full-length cases
                    self.checks += contracts.past_end(engine.name, case, got, io, lengths)
                else:
                    whole[case] = got
                baselines[case] = self._providers(engine, case, got, baselines.get(case))
            if whole:
                taken_stack = stack.select(list(whole))
                runs: Runs = {(case,): {case: got} for case, got in whole.items()}
                if engine.spec.slow:  # _calls ran the stack as one batch: that call is its whole run
                    runs[taken_stack.cases] = whole
                self._chunks(engine, taken_stack, runs)
                self._streamed(engine, taken_stack, runs)

    def _calls(self, engine: Engine, stack: Stack) -> list[tuple[Case, Outputs]]:
        """Each case's outputs of one call over all of it: a call per case, or on a slow engine one for the stack."""
        runner = engine.runners[GRAPH]
        if engine.spec.slow and len(stack.cases) > 1:  # a slow engine's cost is per call, hardly per stream
            feeds = self.io.feeds(stack.x, stack.state)
            out = self._attempt(engine, stack.cases, Contract.PYTORCH, functools.partial(_infer, runner, feeds))
            return [] if out is None else list(zip(stack.cases, stack.split(out, Form.SEQUENCE), strict=True))
        found = []
        for case, (x, state) in zip(stack.cases, stack.inputs, strict=True):
            feeds = self.io.feeds(x, state, lengths_of(case))
            got = self._attempt(engine, [case], Contract.PYTORCH, functools.partial(_infer, runner, feeds))
            if got is not None:
                found.append((case, got))
        return found

    def _judge(self, engine: Engine, case: Case, got: Outputs, want: Outputs,
               rounding: Callable[[Case], Tolerance | None]) -> None:
        """Contracts 1, 4 and 5 on a case's outputs of one call over all of it.

        Contract 1 judges the case with the graph's tolerance; where that fails on a finite
        float32 case, again with PyTorch's own rounding error allowed (``rounding``), or not at
        all where that error alone is too large to judge by.
        """
        axes = contracts.time_axes(self.io, Form.SEQUENCE)
        checks = contracts.against(Contract.PYTORCH, engine.name, case, got, want, self.tol, axes)
        if not all(c.passed for c in checks) and self.tol.dtype == "float32" and not case.nonfinite:
            tol = rounding(case)
            checks = [] if tol is None else contracts.against(Contract.PYTORCH, engine.name, case, got, want, tol, axes)
        self.checks += checks
        self.checks += contracts.declared_shapes(engine.name, case, self.target.outputs, got, Form.SEQUENCE)
        if not case.nonfinite:
            self.checks += contracts.finite(engine.name, case, got)

    def _compare(self, contract: Contract, engine: Engine, stack: Stack, out: Outputs,
                 wants: Mapping[Case, Outputs], variant: str = "") -> None:
        """``out`` (the whole stack's, a sequence) cut into cases, each compared with its own ``wants``."""
        axes = contracts.time_axes(self.io, Form.SEQUENCE)
        for case, part in zip(stack.cases, stack.split(out, Form.SEQUENCE), strict=True):
            self.checks += contracts.against(contract, engine.name, case, part, wants[case], self.tol, axes, variant)

    def _chunks(self, engine: Engine, stack: Stack, runs: Runs) -> None:
        """Contract 2: each chunk length shorter than the cases, on the random-state ones, in one batch."""
        if not self.chunkable:
            return
        stack = stack.select([c for c in stack.cases if c.state is StateKind.RANDOM])
        if not stack.cases:
            return
        runner = engine.runners[GRAPH]
        for chunk in (c for c in self.chunk_sizes if c < stack.time):

            def run_chunked(chunk: int = chunk) -> Outputs:
                return contracts.chunked(runner, self.io, stack.x, stack.state, chunk)

            out = self._attempt(engine, stack.cases, Contract.CHUNKED, run_chunked)
            if out is not None:
                whole = self._whole(engine, stack, runs)
                if whole is not None:
                    self._compare(Contract.CHUNKED, engine, stack, out, whole, variant=f"chunk={chunk}")

    def _streamed(self, engine: Engine, stack: Stack, runs: Runs) -> None:
        """Contract 3: the step graph streamed over the cases in one batch, against the sequence graph."""
        step = engine.runners.get(STEP)
        if step is None or (stack.nonfinite and len(self.refusing) > 0):  # then only the step graph refuses
            return
        out = self._attempt(engine, stack.cases, Contract.STEP,
                            lambda: contracts.stream(step, self.io, stack.x, stack.state))
        whole = None if out is None else self._whole(engine, stack, runs)
        if out is not None and whole is not None:
            self._compare(Contract.STEP, engine, stack, out, whole)

    def _whole(self, engine: Engine, stack: Stack, runs: Runs) -> Mapping[Case, Outputs] | None:
        """The engine's whole-sequence outputs of ``stack`` run as the same one batch as its chunked or
        streamed run, cut into cases: from ``runs`` where that batch has run, else one call, kept there.

        Contracts 2 and 3 judge cutting a sequence into chunks or steps, not the batch: an engine's
        kernel may round a row differently in another batch (onnxruntime's RNN operator does, by
        about 1e-5), which would be charged to the chunking if the stack were compared with each case
        run alone. None when that call fails (recorded like any failed call).
        """
        if stack.cases not in runs:
            feeds = self.io.feeds(stack.x, stack.state)
            out = self._attempt(engine, stack.cases, Contract.PYTORCH,
                                functools.partial(_infer, engine.runners[GRAPH], feeds))
            runs[stack.cases] = None if out is None else dict(zip(stack.cases, stack.split(out, Form.SEQUENCE),
                                                                  strict=True))
        return runs[stack.cases]

    def _step(self, stack: Stack, engines: Sequence[Engine]) -> None:
        """A step graph: its first step per case against PyTorch's, and the stack streamed (contract 3)."""
        io, tol = self.io, self.tol
        first = np.take(stack.x, 0, axis=io.time_axis)
        wants_step = stack.split(self._reference(self.torch_step, io.feeds(first, stack.state)), Form.STEP)
        wants_seq = dict(zip(stack.cases, stack.split(self._reference(self.torch_seq, io.feeds(stack.x, stack.state)),
                                                      Form.SEQUENCE), strict=True))
        for case in stack.cases:
            if not case.nonfinite:
                self.checks += contracts.finite("pytorch", case, wants_seq[case])
        baselines: dict[Case, Outputs | None] = {}
        for engine in engines:
            runner, taken = engine.runners[GRAPH], []
            for case, (x, state), want in zip(stack.cases, stack.inputs, wants_step, strict=True):
                if not self._takes(engine, case):
                    continue
                feeds = io.feeds(np.take(x, 0, axis=io.time_axis), state)

                got = self._attempt(engine, [case], Contract.PYTORCH, functools.partial(_infer, runner, feeds))
                if got is None:
                    continue
                self.checks += contracts.against(Contract.PYTORCH, engine.name, case, got, want, tol,
                                                 contracts.time_axes(io, Form.STEP), variant="first step")
                self.checks += contracts.declared_shapes(engine.name, case, self.target.outputs, got, Form.STEP)
                taken.append(case)
            if taken:
                self._stream_steps(engine, stack.select(taken), wants_seq, baselines)

    def _stream_steps(self, engine: Engine, stack: Stack, wants: Mapping[Case, Outputs],
                      baselines: dict[Case, Outputs | None]) -> None:
        """Contracts 3, 5 and 6 of a step graph: streamed over the stack, each case against PyTorch's sequence."""
        runner = engine.runners[GRAPH]
        out = self._attempt(engine, stack.cases, Contract.STEP, lambda: contracts.stream(runner, self.io, stack.x,
                                                                                         stack.state))
        if out is None:
            return
        for case, part in zip(stack.cases, stack.split(out, Form.SEQUENCE), strict=True):
            if not case.nonfinite:
                self.checks += contracts.finite(engine.name, case, part, variant="streamed")
        self._compare(Contract.STEP, engine, stack, out, wants, variant="vs PyTorch sequence")
        for case, part in zip(stack.cases, stack.split(out, Form.SEQUENCE), strict=True):
            baselines[case] = self._providers(engine, case, part, baselines.get(case))

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
                                                    "max_elements": self.options.reference_max_elements,
                                                    "max_steps": SLOW_STEPS}))
        ragged = [c for c in cases if c.lengths is not None]
        if ragged:
            found.append(Note("ragged", {"cases": len(ragged), "batch": ragged[0].batch}))
        return found


def _infer(runner: Runner, feeds: Outputs) -> Outputs:
    """One call of ``runner`` on ``feeds``, cast to the float type its graph declares."""
    return runner.infer(contracts.prepare(runner, feeds))


def _refuses(path: Path, target: Target | None) -> bool:
    """Whether the graph at ``path`` was converted with ``--nan refuse``."""
    info = target.info if target is not None else load_graph(path)[1]
    return info is not None and info.nan is NanPolicy.REFUSE
