"""The verification report: plain frozen data, rendered elsewhere (``render.py``)."""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

import numpy as np

from rnnexport.core.compare import Figures, Tolerance
from rnnexport.engines.base import EngineKind, Unavailable
from rnnexport.verification.cases import Case
from rnnexport.verification.environment import Environment
from rnnexport.verification.findings import Diagnosis
from rnnexport.verification.options import Grid

__all__ = ["CONTRACT_TITLES", "FORMAT", "NOTES", "Check", "Contract", "EngineStatus", "Note", "Report", "ReportKind",
           "json_float"]

FORMAT = "rnnexport.verify-report/1"
#: The most points of an error-vs-time curve written to JSON (steps are binned, max per bin).
CURVE_POINTS = 64


class ReportKind(str, enum.Enum):
    """What was verified."""

    GRAPH = "graph"  # a graph against its PyTorch source, over a case grid
    BUNDLE = "bundle"  # a bundle's (or an ONNX test folder's) test vectors against their stored outputs


class Contract(str, enum.Enum):
    """The six checks, each reported on its own."""

    PYTORCH = "graph_vs_pytorch"
    CHUNKED = "chunked_vs_whole"
    STEP = "step_vs_sequence"
    SHAPES = "declared_shapes"
    FINITE = "finite"
    PROVIDERS = "ep_vs_cpu"
    VECTORS = "test_vectors"  # a bundle's stored expected outputs (bundle verification)


CONTRACT_TITLES = {
    Contract.PYTORCH: "1 graph == PyTorch",
    Contract.CHUNKED: "2 chunked == whole",
    Contract.STEP: "3 step streamed == sequence",
    Contract.SHAPES: "4 declared == actual shapes",
    Contract.FINITE: "5 no NaN/Inf",
    Contract.PROVIDERS: "6 EP == CPU EP",
    Contract.VECTORS: "test vectors == stored outputs",
}


#: Every kind of note a report can carry, and its sentence (``Note.values`` fill the fields).
NOTES = {
    "cpu_baseline": "onnxruntime:cpu runs too, as the baseline of contract 6 (EP == CPU EP)",
    "unrolled": "unrolled graph: every case runs at its fixed T={seq_len}; contract 2 does not apply",
    "bidirectional": "bidirectional model: contract 2 does not apply (the backward direction needs the whole "
                     "sequence, so chunks cannot carry its state)",
    "step_graph": "step graph: contract 1 checks the first step of each case against PyTorch's step, "
                  "contract 3 the whole case streamed against PyTorch's sequence; contract 2 does not apply",
    "no_step_graph": "contract 3 did not run: give the step graph with --step STEP.onnx",
    "nan_refused": "converted with --nan refuse ({graphs}): no NaN guards, so the NaN cases check that "
                   "rnnexport.runtime refuses their input (contract 5 on runtime); the other contracts judge "
                   "finite cases",
    "no_other_provider": "contract 6 did not run: no execution provider besides the CPU one started",
    "ill_conditioned": "contract 1 not judged on {cases} case(s) where PyTorch's own float32 result is off its "
                       "float64 run by over {share:.0%} of the output range: the model is chaotic there and "
                       "rounding alone decides the result (worst {worst:.2g}, {worst_case})",
    "rounding_allowance": "contract 1 allows atol + 3 x PyTorch's own float32 rounding error (vs a float64 run); "
                          "that error was at most {worst:.2g} ({worst_case})",
    "reference_skipped": "{engine} skipped {skipped} of {cases} cases with T > {max_steps} or T*B > {max_elements} "
                         "(slow)",
    "ragged": "the graph takes lengths: {cases} ragged case(s) of {batch} streams (lengths T, 1, 0 and drawn ones, "
              "unsorted) check contract 1 against PyTorch run on each stream's own length, and that y is "
              "exactly zero past each end; contracts 2 and 3 run on the full-length cases",
    "no_manifest": "an ONNX test folder has no manifest: there were no checksums to check",
    "stopped": "verify stopped before the first case: requested {engines} did not start (the reason is above; "
               "--allow-missing lets a requested engine that cannot start pass)",
    "not_started": "{engines} did not start here and were not asked for (name one in --engines to see why)",
    "variant_cpu": "variant {variant} was re-checked here on its test sets, not trusted: {difference}",
    "nothing_to_diagnose": "--diagnose: contract 1 (graph == PyTorch) passed on every case; there is no "
                           "divergence to localize",
}


@dataclasses.dataclass(frozen=True)
class Note:
    """Something the reader of a report should know: a kind from :data:`NOTES` and its figures."""

    kind: str
    values: dict[str, Any] = dataclasses.field(default_factory=dict)

    def text(self) -> str:
        return NOTES[self.kind].format(**self.values)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "values": dict(self.values), "text": self.text()}


def json_float(value: float | None) -> float | str | None:
    """A float for strict JSON: non-finite values become ``"inf"``, ``"-inf"`` or ``"nan"``."""
    if value is None or math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _curve_json(curve: np.ndarray | None) -> dict[str, Any] | None:
    if curve is None:
        return None
    stride = max(1, math.ceil(len(curve) / CURVE_POINTS))
    bins = [float(curve[i:i + stride].max()) for i in range(0, len(curve), stride)]
    return {"stride": stride, "steps": len(curve), "max_abs": [json_float(v) for v in bins]}


@dataclasses.dataclass(frozen=True)
class Check:
    """One contract on one engine, case and output, with its figures."""

    contract: Contract
    engine: str
    case: str
    output: str
    passed: bool
    variant: str = ""
    max_abs: float | None = None
    max_rel: float | None = None
    ratio: float | None = None
    first_step: float | None = None
    last_step: float | None = None
    detail: str = ""
    curve: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    #: Bundle reports: the variant (``int8``, ``fp16``, ...) whose file ran, None for a graph's own file.
    bundle_variant: str | None = None

    @classmethod
    def of(cls, contract: Contract, engine: str, case: str, output: str, figures: Figures,
           variant: str = "") -> Check:
        return cls(contract, engine, case, output, figures.passed, variant, figures.max_abs, figures.max_rel,
                   figures.ratio, figures.first_step, figures.last_step, figures.detail, figures.curve)

    @property
    def severity(self) -> float:
        """How bad it is, for picking the worst: failures first, then the tolerance ratio, then max abs."""
        ratio = self.ratio if self.ratio is not None else (math.inf if not self.passed else 0.0)
        return ratio if not math.isnan(ratio) else math.inf

    def to_json(self) -> dict[str, Any]:
        return {
            "contract": self.contract.value,
            "engine": self.engine,
            "case": self.case,
            "variant": self.variant,
            "output": self.output,
            "passed": self.passed,
            "max_abs": json_float(self.max_abs),
            "max_rel": json_float(self.max_rel),
            "ratio": json_float(self.ratio),
            "first_step": json_float(self.first_step),
            "last_step": json_float(self.last_step),
            "detail": self.detail,
            "curve": _curve_json(self.curve),
        }


@dataclasses.dataclass(frozen=True)
class EngineStatus:
    """An engine the run asked for or found: whether it ran, and why not."""

    name: str
    kind: EngineKind
    provider: str | None
    requested: bool
    available: bool
    reason: str = ""
    seconds: float = 0.0
    detail: str = ""  # how it ran, e.g. OpenVINO's inference precision

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind.value, "provider": self.provider, "requested": self.requested,
                "available": self.available, "reason": self.reason, "seconds": round(self.seconds, 4),
                "detail": self.detail}


@dataclasses.dataclass(frozen=True)
class Report:
    """Everything one verification found.

    ``passed`` is true when no check failed and at least one graph engine ran.
    """

    model: str
    step_model: str | None
    source: str
    form: str
    lowering: str
    seq_len: int | None
    seed: int
    tolerance: Tolerance
    providers_requested: tuple[str, ...] | None
    providers_available: tuple[str, ...]
    engines: tuple[EngineStatus, ...]
    cases: tuple[Case, ...]
    checks: tuple[Check, ...]
    unavailable: tuple[Unavailable, ...]
    notes: tuple[Note, ...]
    seconds: float
    #: A graph against its PyTorch source, or a bundle's test vectors.
    kind: ReportKind = ReportKind.GRAPH
    #: The test sets run, for bundle reports.
    test_sets: tuple[str, ...] = ()
    #: Whether a requested engine that could not start may pass (``--allow-missing``).
    allow_missing: bool = False
    #: The case grid of a graph report (None for a bundle).
    grid: Grid | None = None
    #: Where the first failing contract-1 case parts from PyTorch (``--diagnose``, or by itself on a failure).
    diagnosis: Diagnosis | None = None
    #: The machine and software the report was made on.
    environment: Environment | None = None

    @property
    def ran(self) -> bool:
        """Whether any graph engine ran at least one case."""
        return any(c.engine != "pytorch" for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    @property
    def missing(self) -> tuple[EngineStatus, ...]:
        """Engines that were asked for by name and did not start (a failure unless ``allow_missing``)."""
        return tuple(e for e in self.engines if e.requested and not e.available)

    @property
    def passed(self) -> bool:
        return self.ran and not self.failures and (self.allow_missing or not self.missing)

    def contracts(self) -> list[Contract]:
        """The contracts with at least one check, in their order."""
        present = {c.contract for c in self.checks}
        return [c for c in Contract if c in present]

    def worst(self) -> dict[tuple[Contract, str], tuple[Check, int, int]]:
        """Per (contract, engine): the worst check, the number of checks and of failures."""
        table: dict[tuple[Contract, str], tuple[Check, int, int]] = {}
        for check in self.checks:
            key = (check.contract, check.engine)
            if key not in table:
                table[key] = (check, 1, int(not check.passed))
                continue
            worst, count, failed = table[key]
            if check.severity > worst.severity or (
                    check.severity == worst.severity and (check.max_abs or 0) > (worst.max_abs or 0)):
                worst = check
            table[key] = (worst, count + 1, failed + int(not check.passed))
        order = {c: i for i, c in enumerate(Contract)}
        return dict(sorted(table.items(), key=lambda kv: order[kv[0][0]]))

    def to_json(self) -> dict[str, Any]:
        """The full report as JSON-able data (strict JSON: no NaN or Infinity literals)."""
        summary = []
        for contract in self.contracts():
            mine = [c for c in self.checks if c.contract is contract]
            summary.append({"id": contract.value, "title": CONTRACT_TITLES[contract],
                            "passed": all(c.passed for c in mine), "checks": len(mine),
                            "failed": sum(not c.passed for c in mine)})
        return {
            "format": FORMAT,
            "kind": self.kind.value,
            "grid": None if self.grid is None else self.grid.value,
            "allow_missing": self.allow_missing,
            "passed": self.passed,
            "model": self.model,
            "step_model": self.step_model,
            "source": self.source,
            "form": self.form,
            "lowering": self.lowering,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "tolerance": self.tolerance.to_json(),
            "providers": {"requested": None if self.providers_requested is None else list(self.providers_requested),
                          "available": list(self.providers_available)},
            "engines": [e.to_json() for e in self.engines],
            "unavailable": [u.to_json() for u in self.unavailable],
            "cases": [c.to_json() for c in self.cases],
            "test_sets": list(self.test_sets),
            "contracts": summary,
            "checks": [c.to_json() for c in self.checks],
            "notes": [n.to_json() for n in self.notes],
            "seconds": round(self.seconds, 3),
            "diagnosis": None if self.diagnosis is None else self.diagnosis.to_json(),
            "environment": None if self.environment is None else self.environment.to_json(),
        }
