"""What one verification runs: :class:`VerifyOptions`, the case grids, and the progress it reports.

Torch-free, and light (no numpy, no onnx): the command line's help reads the grids from here.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import operator
from collections.abc import Callable
from typing import SupportsIndex

from rnnexport.core.errors import VerifyError

__all__ = ["DEFAULT_TIMEOUT", "GRIDS", "MAX_CASE_STEPS", "Grid", "GridSpec", "Progress", "Tick", "VerifyOptions",
           "describe"]

#: The most batch x time steps one case may have (the full grid's largest is 16 x 2048).
MAX_CASE_STEPS = 1 << 21
#: Seconds one engine call may take by default (``--timeout``): the full grid's largest case
#: (B 16 x T 2048) takes well under a second on onnxruntime's CPU provider, and the slow engines
#: take only small cases; a graph that loops without end is stopped after this.
DEFAULT_TIMEOUT = 60.0
#: The longest budget that may be given (a week).
_MAX_TIMEOUT = 7 * 86400.0


class Grid(str, enum.Enum):
    """Which case grid a graph is verified on (``--grid``)."""

    QUICK = "quick"  # the contracts proved in seconds: the default
    FULL = "full"  # every size the release checks cover: minutes per graph


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """The sizes of a grid: batch sizes x lengths (x every input kind x zero and random state), chunk lengths."""

    batch_sizes: tuple[int, ...]
    seq_lens: tuple[int, ...]
    chunk_sizes: tuple[int, ...]


#: One short and one long sequence at B 1 and 3 for ``quick``; ``full`` adds B 16 and T 1, 2 and 2048.
GRIDS = {
    Grid.QUICK: GridSpec(batch_sizes=(1, 3), seq_lens=(7, 256), chunk_sizes=(1, 3, 64)),
    Grid.FULL: GridSpec(batch_sizes=(1, 4, 16), seq_lens=(1, 2, 17, 256, 2048), chunk_sizes=(1, 3, 64)),
}

#: A field a bundle does not take (it carries its own test sets), and how the command line spells it.
_GRAPH_ONLY = {"step_model": "--step", "batch_sizes": "--batch-sizes", "seq_lens": "--seq-lens",
               "chunk_sizes": "chunk_sizes", "seed": "--case-seed", "grid": "--grid", "diagnose": "--diagnose"}


@dataclasses.dataclass(frozen=True)
class VerifyOptions:
    """What to verify, on which engines, over which grid: the one options type of :func:`~rnnexport.verify`.

    Attributes:
        engines: engines to run, by :data:`rnnexport.engines.registry.ENGINES` names (``cpu``,
            ``cuda``, ``tensorrt``, ``reference``, ``openvino``, ``tract``, ``node``, ``wasm``,
            ``browser``). Each one named must start, else verify stops before the first case
            (unless ``allow_missing``); onnxruntime's CPU provider runs too on a graph, as
            contract 6's baseline. None: ``cpu``, the ones of ``cuda`` and ``tensorrt`` that this
            onnxruntime lists, and ``reference``; those that do not start are only reported.
        allow_missing: let a requested engine that cannot start pass (reported, not failed).
        reference_evaluator: with ``engines`` None, whether ``reference`` is among the defaults.
        reference_max_elements: every slow engine (reference, node, wasm, browser) takes only
            the cases with ``T * B`` at most this.
        grid: ``quick`` (default) or ``full``, the sizes of :data:`GRIDS`; an unrolled graph runs
            only at its fixed T.
        batch_sizes, seq_lens, chunk_sizes: replace the grid's (chunk lengths are contract 2's,
            run on the random-state cases, each shorter than the case, the last chunk ragged).
        seed: seed of every generated input and state.
        atol, rtol: tolerances; None: the graph's dtype default (see ``DEFAULT_TOLERANCES``); for
            a bundle, the tolerance each test set records.
        step_model: a step graph to stream against the sequence graph (contract 3).
        threads: threads of PyTorch's reference and onnxruntime's sessions (default 1: the cases
            are small, and more threads mostly wait for each other on a shared machine).
        variants: bundles: also re-check every variant the manifest lists as made.
        diagnose: where contract 1 fails, find the first diverging graph value and the known
            mistake it matches (``report.diagnosis``). None: on a contract-1 failure, within 30 s;
            True: within 120 s (a note says when nothing failed); False: never.
        timeout: seconds one engine call may take (a whole case, one chunk, one streamed step,
            a test set); loading a graph may take a minute more. A call over it is stopped,
            its check fails with the engine and the budget named, and that engine runs no
            further case. None: no bound.
    """

    engines: tuple[str, ...] | None = None
    allow_missing: bool = False
    reference_evaluator: bool = True
    reference_max_elements: int = 512
    grid: Grid = Grid.QUICK
    batch_sizes: tuple[int, ...] | None = None
    seq_lens: tuple[int, ...] | None = None
    chunk_sizes: tuple[int, ...] | None = None
    seed: int = 0
    atol: float | None = None
    rtol: float | None = None
    step_model: str | None = None
    threads: int = 1
    variants: bool = True
    diagnose: bool | None = None
    timeout: float | None = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        for field in ("engines", "batch_sizes", "seq_lens", "chunk_sizes"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, field, tuple(value))
        try:
            object.__setattr__(self, "grid", Grid(self.grid))
        except ValueError as e:
            raise VerifyError(f"--grid is quick or full, got {self.grid!r}") from e
        self._check_sizes()
        if self.engines is not None and not self.engines:
            raise VerifyError("give at least one engine, e.g. --engines cpu,reference")
        if self.engines is not None and not self.reference_evaluator:
            raise VerifyError("--no-reference-evaluator changes the default engines; with --engines, leave "
                              "reference out of the list instead")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise VerifyError(f"--threads must be a positive integer, got {self.threads!r}")
        timeout = self.timeout
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not 0 < timeout <= _MAX_TIMEOUT):
            raise VerifyError(f"--timeout must be seconds above 0 (at most a week), got {timeout!r:.40}")
        for field in ("atol", "rtol"):
            value = getattr(self, field)
            if value is not None and not value >= 0:
                raise VerifyError(f"--{field} must be a number >= 0, got {value}")

    def _check_sizes(self) -> None:
        for field in ("batch_sizes", "seq_lens", "chunk_sizes"):
            values = getattr(self, field)
            if values is not None and (not values or not all(_positive(v) for v in values)):
                raise VerifyError(f"{field.replace('_', '-')} must be positive integers, got {list(values)}")
        sizes = self.sizes
        largest = max(sizes.batch_sizes) * max(sizes.seq_lens)
        if largest > MAX_CASE_STEPS:
            raise VerifyError(f"the grid's largest case is batch {max(sizes.batch_sizes)} x T {max(sizes.seq_lens)} = "
                              f"{largest:,} steps, over the limit of {MAX_CASE_STEPS:,}; choose smaller "
                              "--batch-sizes or --seq-lens")

    @property
    def sizes(self) -> GridSpec:
        """The grid's sizes, with the ones given here in place of the grid's."""
        grid = GRIDS[self.grid]
        return GridSpec(self.batch_sizes or grid.batch_sizes, self.seq_lens or grid.seq_lens,
                        self.chunk_sizes or grid.chunk_sizes)

    def graph_only(self) -> list[str]:
        """The options given here that only a graph takes (a bundle carries its own test sets)."""
        default = VerifyOptions()
        return [flag for field, flag in _GRAPH_ONLY.items() if getattr(self, field) != getattr(default, field)]


def _positive(value: object) -> bool:
    """Whether ``value`` is an integer (Python's or numpy's) of at least 1."""
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        return False
    return operator.index(value) >= 1


def describe(grid: Grid) -> str:
    """``batch 1, 3 x T 7, 256``: a grid's sizes in words."""
    sizes = GRIDS[grid]
    return f"batch {', '.join(map(str, sizes.batch_sizes))} x T {', '.join(map(str, sizes.seq_lens))}"


@dataclasses.dataclass(frozen=True)
class Tick:
    """How far a run is, after each case (graph) or engine (bundle).

    ``cost`` weighs each case by its batch x time steps, so that ``fraction`` and ``eta`` do not
    treat a B=16, T=2048 case like a T=1 one.
    """

    done: int
    total: int
    cost_done: int
    cost_total: int
    label: str
    seconds: float

    @property
    def fraction(self) -> float:
        return self.cost_done / self.cost_total if self.cost_total else 1.0

    @property
    def eta(self) -> float:
        """Seconds left, if the rest runs as fast per unit of cost as what is done (inf before any)."""
        if self.cost_done >= self.cost_total:
            return 0.0
        if not self.cost_done:
            return math.inf
        return self.seconds * (self.cost_total - self.cost_done) / self.cost_done


#: Called with a :class:`Tick` after each case (graph) or each engine (bundle).
Progress = Callable[[Tick], None]
