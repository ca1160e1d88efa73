"""What a diagnosis found: plain frozen data, made by ``diagnose.py``, rendered by ``render.py``.

A :class:`Diagnosis` says, for one failing case, where the graph first parts from PyTorch:
per output the first time step out of tolerance (:class:`OutputDivergence`), the first graph
value that diverges with its operator, its inputs' error and where it sits (:class:`Finding`,
:class:`Location`), and the known mistakes it matches (:class:`Hint`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

__all__ = ["HINT_TITLES", "Diagnosis", "Finding", "Hint", "HintKind", "InputError", "InputStatus", "Location",
           "OutputDivergence"]


def _float(value: float | None) -> float | str | None:
    """A float for strict JSON (as ``report.json_float``; kept here so this module imports nothing of the report)."""
    if value is None or math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


class HintKind(str, enum.Enum):
    """The known mistakes a diagnosis recognises."""

    GRU_LINEAR_BEFORE_RESET = "gru_linear_before_reset"
    GATE_ORDER = "gate_order"
    BIAS = "bias"
    FIXED_TIME_AXIS = "fixed_time_axis"
    STATE_LAYOUT = "state_layout"
    BATCH_FIRST = "batch_first"


HINT_TITLES = {
    HintKind.GRU_LINEAR_BEFORE_RESET: "GRU linear_before_reset flipped",
    HintKind.GATE_ORDER: "gates stacked in the wrong order",
    HintKind.BIAS: "a bias half missing or wrong",
    HintKind.FIXED_TIME_AXIS: "a fixed time axis",
    HintKind.STATE_LAYOUT: "state layout (layers, batch) swapped",
    HintKind.BATCH_FIRST: "batch and time axes of x swapped",
}


@dataclasses.dataclass(frozen=True)
class Location:
    """Where a graph value sits: the top graph, a Scan body at a step, or a native operator's layer and direction."""

    op: str
    node: str
    value: str
    #: ``graph`` (the top graph), ``scan`` (a Scan body) or ``native`` (an RNN/LSTM/GRU operator's output).
    scope: str = "graph"
    #: The Scan node whose body holds the value (scope ``scan``).
    scan: str | None = None
    #: The time step (0-based, in the sequence's order), for values inside the recurrence.
    step: int | None = None
    #: The recurrent operator's index among the graph's RNN/LSTM/GRU nodes (scope ``native``).
    layer: int | None = None
    layers: int | None = None
    direction: int | None = None
    reverse: bool = False

    def describe(self) -> str:
        """``LSTM node 'lstm_10' (layer 0 of 1, direction 1, reverse) at step 6``, and so on."""
        node = f"{self.op} node {self.node!r}"
        if self.scope == "native":
            where = f"{node} (layer {self.layer} of {self.layers}, direction {self.direction}" + \
                    (", reverse)" if self.reverse else ")")
        elif self.scope == "scan":
            where = f"{node} in the body of Scan {self.scan!r}" + (" (reverse)" if self.reverse else "")
        else:
            where = f"{node} in the top graph"
        step = f" at step {self.step}" if self.step is not None else ""
        return f"{where}{step}, value {self.value!r}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class InputStatus(str, enum.Enum):
    """What is known of one input of the first diverging value."""

    GIVEN = "graph input"  # a graph input: what verify fed
    MATCHED = "matches PyTorch"  # equals a value PyTorch computed on the case, within the error given
    CONSTANT = "constant"  # an initializer or Constant
    NOT_COMPARED = "not compared"  # integers, shapes, conditions; or a value with no PyTorch counterpart


@dataclasses.dataclass(frozen=True)
class InputError:
    """One input of the first diverging value, and how far it is from PyTorch."""

    name: str
    producer: str
    status: InputStatus
    error: float | None = None
    shape: tuple[int, ...] | None = None

    def describe(self) -> str:
        shape = "" if self.shape is None else f" [{', '.join(map(str, self.shape))}]"
        if self.status is InputStatus.CONSTANT:
            return f"{self.name}{shape}: {self.producer}"
        error = f" within {self.error:.1e}" if self.error is not None else ""
        return f"{self.name}{shape} ({self.producer}): {self.status.value}{error}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "producer": self.producer, "status": self.status.value,
                "error": _float(self.error), "shape": None if self.shape is None else list(self.shape)}


@dataclasses.dataclass(frozen=True)
class Finding:
    """The first graph value that diverges from PyTorch, its inputs, and what is known about why."""

    location: Location
    #: How far the value is from the nearest value of its size PyTorch computed (None: none of its size).
    error: float | None
    inputs: tuple[InputError, ...] = ()
    #: Further lines: the gates that differ inside a native operator, the error onnxruntime raised, ...
    details: tuple[str, ...] = ()
    shape: tuple[int, ...] | None = None
    #: True when onnxruntime could not run the case and stopped at this value's node.
    failed: bool = False

    @property
    def title(self) -> str:
        return "onnxruntime stops at" if self.failed else "first diverging value"

    def to_json(self) -> dict[str, Any]:
        return {"location": self.location.to_json(), "text": self.location.describe(), "failed": self.failed,
                "error": _float(self.error),
                "shape": None if self.shape is None else list(self.shape),
                "inputs": [i.to_json() for i in self.inputs], "details": list(self.details)}


@dataclasses.dataclass(frozen=True)
class Hint:
    """A known mistake the divergence matches, with the evidence (a fix tried on a copy of the graph, or a pattern)."""

    kind: HintKind
    text: str
    evidence: str

    @property
    def title(self) -> str:
        return HINT_TITLES[self.kind]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "title": self.title, "text": self.text, "evidence": self.evidence}


@dataclasses.dataclass(frozen=True)
class OutputDivergence:
    """One output on the diagnosed case: its error, and the first time step (and streams) out of tolerance."""

    output: str
    max_abs: float | None
    first_step: int | None = None
    streams: tuple[int, ...] = ()
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"output": self.output, "max_abs": _float(self.max_abs), "first_step": self.first_step,
                "streams": list(self.streams), "detail": self.detail}


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """Where one failing case first parts from PyTorch, and why, when the cause is a known mistake."""

    case: str
    engine: str
    #: The engine the graph's values were read on (onnxruntime's CPU provider).
    ran_on: str
    outputs: tuple[OutputDivergence, ...] = ()
    first: Finding | None = None
    hints: tuple[Hint, ...] = ()
    #: How the first diverging value was found, in one sentence.
    method: str = ""
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    #: False when the time bound stopped the diagnosis before every stage ran.
    complete: bool = True

    def summary(self) -> str:
        """One line: the first diverging value and the first hint."""
        where = f"{self.first.title}: {self.first.location.describe()}" if self.first else \
            "no single graph value found"
        hint = f"; likely {self.hints[0].title}" if self.hints else ""
        return f"{where}{hint}"

    def to_json(self) -> dict[str, Any]:
        return {"case": self.case, "engine": self.engine, "ran_on": self.ran_on,
                "outputs": [o.to_json() for o in self.outputs],
                "first": None if self.first is None else self.first.to_json(),
                "hints": [h.to_json() for h in self.hints], "method": self.method, "notes": list(self.notes),
                "seconds": round(self.seconds, 3), "complete": self.complete, "summary": self.summary()}
