"""The one engine plan of a verification: which engines run, all started before the first case.

:func:`plan` turns :class:`~rnnexport.verification.options.VerifyOptions` into the engines to
run, whether each was asked for by name, with every name checked before any slow work.
:class:`Lineup` starts them all (through :func:`rnnexport.engines.registry.running`, the one
lifecycle) before the first case and stops them at the end, each call within the options'
``timeout``. A requested engine that cannot start stops the run before any case, unless
``allow_missing``; an engine whose call ran over the budget (:attr:`Engine.stopped`) runs no
further case.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from types import TracebackType

from rnnexport.core.ort import CPU
from rnnexport.engines.base import EngineKind, EngineUnavailable, Runner, Unavailable
from rnnexport.engines.child import shared_workers
from rnnexport.engines.registry import EngineSpec, GraphModel, engine_spec, listed_engines, running
from rnnexport.verification.options import VerifyOptions
from rnnexport.verification.report import EngineStatus, Note

__all__ = ["Engine", "Lineup", "Planned", "plan"]


@dataclasses.dataclass(frozen=True)
class Planned:
    """An engine to start, and whether it was asked for by name (then it must start)."""

    spec: EngineSpec
    requested: bool


def plan(options: VerifyOptions, baseline: bool) -> tuple[list[Planned], list[Note]]:
    """The engines to run, onnxruntime's CPU provider first, and the notes that explain the choice.

    Args:
        options: ``engines`` None: ``cpu``, the onnxruntime engines this build lists, and
            ``reference`` (unless ``reference_evaluator`` is off), none of them required.
        baseline: add ``cpu`` when it was not named (a graph's contract 6 compares with it).

    Raises:
        VerifyError: an unknown engine name.
    """
    if options.engines is None:
        names = [*listed_engines(), *(["reference"] if options.reference_evaluator else [])]
        return [Planned(engine_spec(name), False) for name in names], []
    specs = sorted(dict.fromkeys(engine_spec(name) for name in options.engines), key=lambda s: s.provider != CPU)
    planned = [Planned(spec, True) for spec in specs]
    if baseline and specs[0].provider != CPU:
        return [Planned(engine_spec("cpu"), False), *planned], [Note("cpu_baseline")]
    return planned, []


@dataclasses.dataclass
class Engine:
    """A started engine: one runner per model label, and the time spent running them."""

    spec: EngineSpec
    requested: bool
    runners: dict[str, Runner]
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def stopped(self) -> bool:
        """Whether a call ran over the time budget on one of its runners: it takes no further case."""
        return any(r.timed_out is not None for r in self.runners.values())

    @property
    def kind(self) -> EngineKind:
        return self.spec.kind


class Lineup:
    """Every planned engine started on every model, before the first case; stopped on exit.

    Use it with ``with``. ``engines`` are the ones that started; ``statuses`` says for each
    planned engine whether it started and why not; ``stopped`` is true when a requested engine
    did not start and ``allow_missing`` is off: then the run must end before any case.
    """

    def __init__(self, planned: list[Planned], models: Mapping[str, GraphModel], threads: int | None,
                 allow_missing: bool, timeout: float | None = None) -> None:
        self.planned, self.models, self.threads, self.allow_missing = planned, dict(models), threads, allow_missing
        self.timeout = timeout
        self.engines: list[Engine] = []
        self.statuses: list[EngineStatus] = []
        self.unavailable: list[Unavailable] = []
        self._stack = contextlib.ExitStack()

    @property
    def stopped(self) -> bool:
        return not self.allow_missing and any(s.requested and not s.available for s in self.statuses)

    def __enter__(self) -> Lineup:
        with self._stack as stack:
            stack.enter_context(shared_workers())  # one process per engine kind that runs in one
            for item in self.planned:
                self._start(stack, item)
            self._stack = stack.pop_all()
        return self

    def _start(self, stack: contextlib.ExitStack, item: Planned) -> None:
        runners = stack.enter_context(running(item.spec, self.models, self.threads, self.timeout))
        if isinstance(runners, EngineUnavailable):
            self.unavailable.append(runners.result())
            self.statuses.append(EngineStatus(item.spec.name, item.spec.kind, item.spec.provider, item.requested,
                                              False, runners.reason))
            return
        self.engines.append(Engine(item.spec, item.requested, runners))
        detail = next(iter(runners.values())).detail if runners else ""
        self.statuses.append(EngineStatus(item.spec.name, item.spec.kind, item.spec.provider, item.requested, True,
                                          detail=detail))

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stack.close()

    def requested(self) -> tuple[str, ...] | None:
        """What was asked for by name (a provider's full name, else the engine kind), or None."""
        names = tuple(p.spec.provider or p.spec.kind.value for p in self.planned if p.requested)
        return names or None

    def notes(self) -> list[Note]:
        """Why the run stopped before its first case; the engines tried unasked that did not start."""
        found = []
        if self.stopped:
            missing = [s.name for s in self.statuses if s.requested and not s.available]
            found.append(Note("stopped", {"engines": ", ".join(missing)}))
        unasked = [s.name for s in self.statuses if not s.requested and not s.available]
        if unasked:
            found.append(Note("not_started", {"engines": ", ".join(unasked)}))
        return found

    def final_statuses(self) -> tuple[EngineStatus, ...]:
        """Every planned engine's status, with the seconds each started one spent running."""
        seconds = {e.name: e.seconds for e in self.engines}
        return tuple(dataclasses.replace(s, seconds=seconds.get(s.name, 0.0)) for s in self.statuses)
