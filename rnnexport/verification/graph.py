"""A graph against its PyTorch source: every contract on every engine over the case grid."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from rnnexport.core.compare import Tolerance, graph_precision, tolerance_for
from rnnexport.core.contract import Form
from rnnexport.core.errors import VerifyError
from rnnexport.core.ort import available_providers
from rnnexport.engines.base import EngineKind
from rnnexport.verification.caserun import GRAPH, STEP, CaseRun
from rnnexport.verification.cases import Case, grid
from rnnexport.verification.engines import Engine, Lineup, plan
from rnnexport.verification.findings import Diagnosis
from rnnexport.verification.options import Progress, VerifyOptions
from rnnexport.verification.report import Contract, EngineStatus, Note, Report, ReportKind
from rnnexport.verification.target import SourceLike, Target, load_target

__all__ = ["verify_graph"]


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


def _form_notes(target: Target) -> list[Note]:
    if target.seq_len is not None:
        return [Note("unrolled", {"seq_len": target.seq_len})]
    if target.form is Form.STEP:
        return [Note("step_graph")]
    return [Note("bidirectional")] if target.bidirectional else []


def _diagnose(options: VerifyOptions, target: Target, cases: Sequence[Case], run: CaseRun,
              tol: Tolerance, engines: Sequence[Engine]) -> Diagnosis | None:
    """The diagnosis of the first failing contract-1 case, unless ``options.diagnose`` is False or an engine
    ran over its time budget (the graph does not finish: there is no divergence to find)."""
    if options.diagnose is False or any(e.stopped for e in engines):
        return None
    if options.diagnose is None and all(c.passed for c in run.checks if c.contract is Contract.PYTORCH):
        return None  # nothing to diagnose (and nothing of it to import)
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
    run = CaseRun(target, tol, options, step_path)
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
