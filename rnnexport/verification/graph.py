"""``verify``: run every contract on every engine over the case grid, and report the figures."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rnnexport.core.compare import Tolerance, graph_precision, tolerance_for
from rnnexport.core.contract import Form
from rnnexport.core.errors import VerifyError
from rnnexport.core.ort import CPU as ORT_CPU
from rnnexport.core.ort import available_providers
from rnnexport.engines.base import EngineFailure, EngineUnavailable, Runner, Unavailable
from rnnexport.engines.registry import EngineSpec, engine_spec, make_runner
from rnnexport.engines.torch_runner import TorchRunner
from rnnexport.verification import contracts
from rnnexport.verification.cases import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_SEQ_LENS,
    Case,
    StateKind,
    grid,
    materialize,
)
from rnnexport.verification.report import Check, Contract, EngineStatus, Note, Report
from rnnexport.verification.target import SourceLike, Target, load_target

__all__ = ["DEFAULT_CHUNK_SIZES", "Progress", "VerifyOptions", "verify"]

DEFAULT_CHUNK_SIZES = (1, 3, 64)
#: The most batch x time steps one case may have (the default grid's largest is 16 x 2048).
MAX_CASE_STEPS = 1 << 21
#: Contract 1 is not judged where PyTorch's own float32 error exceeds this share of the output range.
ILL_CONDITIONED = 0.01
CPU = ORT_CPU
#: ``progress(done, total, label)``, called after each case.
Progress = Callable[[int, int, str], None]


@dataclasses.dataclass(frozen=True)
class VerifyOptions:
    """What to verify, on which engines, over which grid.

    Attributes:
        engines: engines to run, by :data:`rnnexport.engines.registry.ENGINES` names (``cpu``,
            ``cuda``, ``tensorrt``, ``reference``, ``openvino``, ``tract``, ``node``, ``wasm``,
            ``browser``; onnxruntime's CPU provider runs too, as contract 6's baseline). Each one
            named must start, unless ``allow_missing``. None: see ``providers``.
        providers: the older spelling, for onnxruntime providers only (plus the ReferenceEvaluator
            when ``reference_evaluator``); None with ``engines`` None: every provider this
            onnxruntime lists and the ReferenceEvaluator, those that do not start reported.
        allow_missing: let a requested engine that cannot start pass (reported, not failed).
        reference_evaluator: run onnx's ReferenceEvaluator when ``engines`` is None ...
        reference_max_elements: ... and every slow engine (reference, node, wasm, browser)
            on cases with ``T * B`` at most this.
        batch_sizes, seq_lens: the grid (an unrolled graph runs only at its fixed T).
        seed: seed of every generated input and state.
        atol, rtol: tolerances; None: the graph's dtype default (see ``DEFAULT_TOLERANCES``).
        chunk_sizes: chunk lengths of contract 2 (run on the random-state cases, each
            chunk size shorter than the case; the last chunk is ragged when T is not a
            multiple).
        step_model: a step graph to stream against the sequence graph (contract 3).
        threads: threads for PyTorch's reference and onnxruntime's sessions (None: their defaults;
            1 is often fastest on small models, and leaves cores to other CI jobs).
    """

    providers: tuple[str, ...] | None = None
    engines: tuple[str, ...] | None = None
    allow_missing: bool = False
    reference_evaluator: bool = True
    reference_max_elements: int = 512
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    seq_lens: tuple[int, ...] = DEFAULT_SEQ_LENS
    seed: int = 0
    atol: float | None = None
    rtol: float | None = None
    chunk_sizes: tuple[int, ...] = DEFAULT_CHUNK_SIZES
    step_model: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        for field in ("providers", "engines", "batch_sizes", "seq_lens", "chunk_sizes"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, field, tuple(value))
        for field in ("batch_sizes", "seq_lens", "chunk_sizes"):
            values = getattr(self, field)
            if not values or any(not isinstance(v, (int, np.integer)) or v < 1 for v in values):
                raise VerifyError(f"{field.replace('_', '-')} must be positive integers, got {list(values)}")
        largest = max(self.batch_sizes) * max(self.seq_lens)
        if largest > MAX_CASE_STEPS:
            raise VerifyError(f"the grid's largest case is batch {max(self.batch_sizes)} x T {max(self.seq_lens)} = "
                              f"{largest:,} steps, over the limit of {MAX_CASE_STEPS:,}; choose smaller "
                              "--batch-sizes or --seq-lens")
        if self.providers is not None and not self.providers:
            raise VerifyError("give at least one execution provider, e.g. --providers cpu")
        if self.engines is not None and not self.engines:
            raise VerifyError("give at least one engine, e.g. --engines cpu,reference")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise VerifyError(f"--threads must be a positive integer, got {self.threads!r}")
        if self.engines is not None and self.providers is not None:
            raise VerifyError("give --engines or --providers (its older spelling), not both")
        for field in ("atol", "rtol"):
            value = getattr(self, field)
            if value is not None and not value >= 0:
                raise VerifyError(f"--{field} must be a number >= 0, got {value}")


@dataclasses.dataclass
class _Engine:
    spec: EngineSpec
    runner: Runner
    step_runner: Runner | None
    requested: bool
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.runner.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def provider(self) -> str | None:
        return self.spec.provider


def _plan(options: VerifyOptions) -> tuple[list[tuple[EngineSpec, bool]], list[Note]]:
    """``[(engine, requested)]``, onnxruntime's CPU provider first (contract 6's baseline), and notes.

    Validates every name before any slow work.
    """
    if options.engines is None and options.providers is None:
        listed = sorted(available_providers(), key=lambda p: p != CPU)
        planned = [(engine_spec(p), False) for p in listed]
        if options.reference_evaluator:
            planned.append((engine_spec("reference"), False))
        return planned, []
    names = options.engines if options.engines is not None else options.providers
    assert names is not None
    wanted = list(dict.fromkeys(engine_spec(n) for n in names))
    if options.engines is None and options.reference_evaluator:
        wanted.append(engine_spec("reference"))
        requested = [(spec, spec.kind == "onnxruntime") for spec in wanted]
    else:
        requested = [(spec, True) for spec in wanted]
    requested.sort(key=lambda pair: pair[0].provider != CPU)
    if not any(spec.provider == CPU for spec, _ in requested):
        return [(engine_spec("cpu"), False), *requested], [Note("cpu_baseline")]
    return requested, []


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


def _start(runner: Runner, unavailable: list[Unavailable], what: str = "") -> bool:
    try:
        runner.activate()
    except EngineUnavailable as e:
        unavailable.append(Unavailable(e.engine, what + e.reason))
        return False
    return True


def _engines(target: Target, step_path: Path | None, planned: list[tuple[EngineSpec, bool]],
             unavailable: list[Unavailable], statuses: list[EngineStatus], threads: int | None) -> list[_Engine]:
    engines = []
    for spec, requested in planned:
        model = target.proto if spec.kind == "reference" else target.path
        runner = make_runner(spec, model, threads)
        step = make_runner(spec, step_path, threads) if step_path else None
        ok = _start(runner, unavailable)
        if ok and step is not None and not _start(step, unavailable, "for the step graph (contract 3): "):
            step = None
        reason = "" if ok else unavailable[-1].reason
        statuses.append(EngineStatus(runner.name, spec.kind, spec.provider, requested, ok, reason,
                                     detail=runner.detail))
        if ok:
            engines.append(_Engine(spec, runner, step, requested))
    return engines


class _CaseRun:
    """Every contract on one case, on every engine."""

    def __init__(self, target: Target, tol: Tolerance, options: VerifyOptions, torch_seq: TorchRunner,
                 torch_step: TorchRunner) -> None:
        self.target, self.tol, self.options = target, tol, options
        self.torch_seq, self.torch_step = torch_seq, torch_step
        self.io = target.io
        self.checks: list[Check] = []
        self.unavailable: list[Unavailable] = []
        self.skipped: dict[str, int] = {}
        self.chunkable = target.seq_len is None and not target.bidirectional
        self.torch_seconds = 0.0
        self.noise: dict[str, float] = {}
        self.ill_conditioned: dict[str, float] = {}

    def _reference(self, runner: TorchRunner, feeds: dict) -> dict:
        started = time.perf_counter()
        try:
            return runner.infer(feeds)
        finally:
            self.torch_seconds += time.perf_counter() - started

    def _attempt(self, engine: _Engine, case: Case, contract: Contract, fn: Callable[[], dict]) -> dict | None:
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

    def run(self, case: Case, engines: Sequence[_Engine], vocabulary: int | None) -> None:
        x, state = materialize(case, self.io, vocabulary)
        if self.target.form is Form.SEQUENCE:
            self._sequence(case, engines, x, state)
        else:
            self._step(case, engines, x, state)

    def _pytorch_tolerance(self, feeds: dict, want: dict, case: Case) -> Tolerance | None:
        """Contract 1's tolerance: ``atol`` plus three times PyTorch's own float32 rounding error.

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
        return dataclasses.replace(self.tol, atol=self.tol.atol + 3 * noise)

    def _takes(self, engine: _Engine, case: Case) -> bool:
        if engine.spec.slow and case.elements > self.options.reference_max_elements:
            self.skipped[engine.name] = self.skipped.get(engine.name, 0) + 1
            return False
        return True

    def _sequence(self, case: Case, engines: Sequence[_Engine], x: np.ndarray, state: list[np.ndarray]) -> None:
        io, tol, seq_axes = self.io, self.tol, contracts.time_axes(self.io, Form.SEQUENCE)
        feeds = io.feeds(x, state)
        want = self._reference(self.torch_seq, feeds)
        if not case.nonfinite:
            self.checks += contracts.finite("pytorch", case, want)
        pytorch_tol = self._pytorch_tolerance(feeds, want, case)
        baseline = None
        for engine in engines:
            if not self._takes(engine, case):
                continue
            runner = engine.runner

            def infer(runner: Runner = runner) -> dict:
                return runner.infer(contracts.prepare(runner, feeds))

            got = self._attempt(engine, case, Contract.PYTORCH, infer)
            if got is None:
                continue
            if pytorch_tol is not None:
                self.checks += contracts.against(Contract.PYTORCH, engine.name, case, got, want, pytorch_tol,
                                                 seq_axes)
            self.checks += contracts.declared_shapes(engine.name, case, self.target.outputs, got, Form.SEQUENCE)
            if not case.nonfinite:
                self.checks += contracts.finite(engine.name, case, got)
            if self.chunkable and case.state is StateKind.RANDOM:
                for chunk in self.options.chunk_sizes:
                    if chunk >= case.time:
                        continue

                    def run_chunked(chunk: int = chunk, runner: Runner = runner) -> dict:
                        return contracts.chunked(runner, io, x, state, chunk)

                    out = self._attempt(engine, case, Contract.CHUNKED, run_chunked)
                    if out is not None:
                        self.checks += contracts.against(Contract.CHUNKED, engine.name, case, out, got, tol,
                                                         seq_axes, variant=f"chunk={chunk}")
            if engine.step_runner is not None:
                step = engine.step_runner

                def stream(step: Runner = step) -> dict:
                    return contracts.stream(step, io, x, state)

                out = self._attempt(engine, case, Contract.STEP, stream)
                if out is not None:
                    self.checks += contracts.against(Contract.STEP, engine.name, case, out, got, tol, seq_axes)
            baseline = self._providers(engine, case, got, baseline, seq_axes)

    def _step(self, case: Case, engines: Sequence[_Engine], x: np.ndarray, state: list[np.ndarray]) -> None:
        io, tol = self.io, self.tol
        seq_axes, step_axes = contracts.time_axes(io, Form.SEQUENCE), contracts.time_axes(io, Form.STEP)
        first = io.feeds(np.take(x, 0, axis=io.time_axis), state)
        want_step = self._reference(self.torch_step, first)
        want_seq = self._reference(self.torch_seq, io.feeds(x, state))
        if not case.nonfinite:
            self.checks += contracts.finite("pytorch", case, want_seq)
        baseline = None
        for engine in engines:
            if not self._takes(engine, case):
                continue
            runner = engine.runner

            def infer_first(runner: Runner = runner) -> dict:
                return runner.infer(contracts.prepare(runner, first))

            got = self._attempt(engine, case, Contract.PYTORCH, infer_first)
            if got is None:
                continue
            self.checks += contracts.against(Contract.PYTORCH, engine.name, case, got, want_step, tol, step_axes,
                                             variant="first step")
            self.checks += contracts.declared_shapes(engine.name, case, self.target.outputs, got, Form.STEP)

            def stream_steps(runner: Runner = runner) -> dict:
                return contracts.stream(runner, io, x, state)

            out = self._attempt(engine, case, Contract.STEP, stream_steps)
            if out is None:
                continue
            if not case.nonfinite:
                self.checks += contracts.finite(engine.name, case, out, variant="streamed")
            self.checks += contracts.against(Contract.STEP, engine.name, case, out, want_seq, tol, seq_axes,
                                             variant="vs PyTorch sequence")
            baseline = self._providers(engine, case, out, baseline, seq_axes)

    def _providers(self, engine: _Engine, case: Case, got: dict, baseline: dict | None, axes) -> dict | None:
        """Contract 6: keep the CPU provider's outputs, compare every other provider's with them."""
        if engine.provider == CPU:
            return got
        if engine.kind == "onnxruntime" and baseline is not None:
            self.checks += contracts.against(Contract.PROVIDERS, engine.name, case, got, baseline, self.tol, axes)
        return baseline


def _options(options: VerifyOptions | None, kwargs: dict) -> VerifyOptions:
    if options is not None and kwargs:
        raise TypeError("give either options= or keyword options, not both")
    if options is not None:
        return options
    known = {f.name for f in dataclasses.fields(VerifyOptions)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"verify() got unknown option {unknown[0]!r}; options are {', '.join(sorted(known))}")
    return VerifyOptions(**kwargs)


def verify(
    model_path: str | os.PathLike,
    source: SourceLike | None = None,
    *,
    options: VerifyOptions | None = None,
    progress: Progress | None = None,
    **kwargs,
) -> Report:
    """Check that an exported graph computes what its PyTorch source computes.

    Args:
        model_path: the ``.onnx`` graph (sequence or step form).
        source: the PyTorch reference: anything :func:`rnnexport.convert` takes
            (``"lstm"``, a :class:`~rnnexport.SourceSpec`, a model name, ``"file.py:factory"``,
            a torch.nn module, a :class:`~rnnexport.RecurrentModel`). None: rebuilt from
            the graph's metadata, when it records a built-in cell or a trained model.
        options: a :class:`VerifyOptions`; or give its fields as keyword arguments.
        progress: called as ``progress(done, total, case_id)`` after each case.

    Returns:
        A :class:`~rnnexport.verification.report.Report`: every check with its figures, and
        the engines that could not run, with reasons. ``report.passed`` says all passed.

    Raises:
        VerifyError: the file is not an ONNX model or lacks the I/O contract, the source
            does not match the graph (shapes, parameter hash) or cannot be rebuilt, or an
            option is invalid (an unknown provider name, a bad grid).
    """
    opts = _options(options, kwargs)
    started = time.perf_counter()
    planned, notes = _plan(opts)  # validates engine names before any slow work
    target = load_target(model_path, source)
    step_path = _load_step(opts, target)
    tol = tolerance_for(graph_precision(target.proto), opts.atol, opts.rtol)
    seq_lens = opts.seq_lens
    if target.seq_len is not None:
        seq_lens = (target.seq_len,)
        notes.append(Note("unrolled", {"seq_len": target.seq_len}))
    if target.form is Form.SEQUENCE and target.seq_len is None and target.bidirectional:
        notes.append(Note("bidirectional"))
    if target.form is Form.STEP:
        notes.append(Note("step_graph"))
    vocabulary = target.model.vocabulary_size()
    cases = grid(target.io, opts.batch_sizes, seq_lens, opts.seed, vocabulary)
    unavailable: list[Unavailable] = []
    statuses: list[EngineStatus] = []
    engines = _engines(target, step_path, planned, unavailable, statuses, opts.threads)
    torch_seq, torch_step = TorchRunner(target.model, Form.SEQUENCE), TorchRunner(target.model, Form.STEP)
    torch_seq.activate()
    torch_step.activate()
    run = _CaseRun(target, tol, opts, torch_seq, torch_step)
    import torch  # the reference's threads, for the run only

    torch_threads = torch.get_num_threads()
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    try:
        for done, case in enumerate(cases, 1):
            run.run(case, engines, vocabulary)
            if progress is not None:
                progress(done, len(cases), case.id)
    finally:
        torch.set_num_threads(torch_threads)
        for engine in engines:
            engine.runner.deactivate()
            if engine.step_runner is not None:
                engine.step_runner.deactivate()
    ran = {c.contract for c in run.checks}
    if Contract.STEP not in ran and target.form is Form.SEQUENCE:
        notes.append(Note("no_step_graph"))
    if Contract.PROVIDERS not in ran:
        notes.append(Note("no_other_provider"))
    if run.ill_conditioned:
        worst = max(run.ill_conditioned, key=run.ill_conditioned.__getitem__)
        notes.append(Note("ill_conditioned", {"cases": len(run.ill_conditioned), "share": ILL_CONDITIONED,
                                              "worst": run.ill_conditioned[worst], "worst_case": worst}))
        for case_id in run.ill_conditioned:
            run.noise.pop(case_id, None)
    if run.noise:
        worst = max(run.noise, key=run.noise.__getitem__)
        notes.append(Note("rounding_allowance", {"worst": run.noise[worst], "worst_case": worst}))
    for name, count in run.skipped.items():
        notes.append(Note("reference_skipped", {"engine": name, "skipped": count, "cases": len(cases),
                                                "max_elements": opts.reference_max_elements}))
    seconds = {e.name: e.seconds for e in engines}
    statuses = [EngineStatus("pytorch", "pytorch", None, True, True, seconds=run.torch_seconds),
                *(dataclasses.replace(s, seconds=seconds.get(s.name, 0.0)) for s in statuses)]
    return Report(
        model=str(target.path),
        step_model=str(step_path) if step_path else None,
        source=target.model.description,
        form=target.form.value,
        lowering=target.lowering,
        seq_len=target.seq_len,
        seed=opts.seed,
        tolerance=tol,
        providers_requested=(None if opts.providers is None and opts.engines is None else
                             tuple(spec.provider or spec.kind for spec, r in planned if r)),
        providers_available=tuple(available_providers()),
        engines=tuple(statuses),
        cases=cases,
        checks=tuple(run.checks),
        unavailable=(*unavailable, *run.unavailable),
        notes=tuple(notes),
        seconds=time.perf_counter() - started,
        allow_missing=opts.allow_missing,
    )
