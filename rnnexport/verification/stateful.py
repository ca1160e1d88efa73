"""Re-checking a bundle's ``openvino-stateful`` variant: its graph's test sets streamed through the IR, with resets.

The variant keeps the state inside the model, so its test sets run as an app runs it, on one
infer request (:func:`rnnexport.engines.stateful.stream`, in a child process):

1. every stream set, call by call, with only ``x`` fed (a stream's first call after
   ``reset_state()``, the later ones on the state the model kept);
2. every single set, its state inputs given to the variables first (``set_state``);
3. ``reset_state()``, and the streams again: they must match from the zero state once more,
   though the model held the last single set's (random) state before the reset.

Each step's ``y`` and each state variable after it (``h`` for the expected ``h_out``, ...) are
compared to the set's expected outputs by the one comparator, with the variant's tolerance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rnnexport.bundle import STATEFUL_VARIANT, Bundle, VariantEntry, VectorEntry
from rnnexport.bundle.vectors import read_set
from rnnexport.core.compare import Tolerance, compare
from rnnexport.core.contract import IOSpec
from rnnexport.engines.base import EngineFailure, EngineUnavailable, Unavailable
from rnnexport.engines.stateful import ENGINE, RESET, StatefulCall, StepResult, stream
from rnnexport.verification.contracts import finite
from rnnexport.verification.report import Check, Contract

__all__ = ["AFTER_RESET", "check_stateful", "stateful_variants"]

#: The label of the checks of the streams run again after ``reset_state()``.
AFTER_RESET = "after reset_state()"

Tensors = list[tuple[str, np.ndarray]]
#: One step to check: its test set, the label of its checks, and the set's expected outputs.
_Step = tuple[VectorEntry, str, Tensors]


def _plan(bundle: Bundle, io: IOSpec, graph: str, label: str) -> tuple[list[StatefulCall], list[_Step]]:
    """The calls of steps 1 to 3 (see the module) and, per step, what it is checked against."""
    entries = [e for e in bundle.test_vectors if e.graph == graph]
    streams: dict[int, list[VectorEntry]] = {}
    for entry in entries:
        if entry.kind == "stream":
            streams.setdefault(entry.stream or 0, []).append(entry)
    ordered = [sorted(calls, key=lambda e: e.call or 0) for _, calls in sorted(streams.items())]
    calls: list[StatefulCall] = []
    steps: list[_Step] = []

    def add(entry: VectorEntry, tag: str, given: bool) -> None:
        inputs, outputs = read_set(bundle, entry.dir)
        arrays = dict(inputs)
        state = {name: arrays[name] for name in io.state.names if name in arrays} if given else None
        calls.append(StatefulCall(inputs[0][1], state))
        steps.append((entry, tag, outputs))

    for tag in (label, f"{label}, {AFTER_RESET}"):
        for stream_calls in ordered:
            calls.append(RESET)
            for entry in stream_calls:
                add(entry, tag, False)
        if tag == label:
            for entry in (e for e in entries if e.kind != "stream"):
                add(entry, tag, True)
    return calls, steps


def _compare(io: IOSpec, step: _Step, got: StepResult, tol: Tolerance, variant: str) -> list[Check]:
    entry, label, outputs = step
    by_output = {**got.outputs, **{out: got.state[name]
                                   for name, out in zip(io.state.names, io.state.output_names, strict=True)
                                   if name in got.state}}
    checks = finite(ENGINE, entry.dir, by_output, label)
    for name, want in outputs:
        value = by_output.get(name)
        if value is None:
            what = "state variable " + io.state.names[io.state.output_names.index(name)] \
                if name in io.state.output_names else "output"
            checks.append(Check(Contract.VECTORS, ENGINE, entry.dir, name, False, label,
                                detail=f"the stateful model has no {what} {name!r}"))
        else:
            checks.append(Check.of(Contract.VECTORS, ENGINE, entry.dir, name, compare(value, want, tol), label))
    return [dataclasses.replace(c, bundle_variant=variant) for c in checks]


def check_stateful(bundle: Bundle, variant: VariantEntry, tol: Tolerance,
                   timeout: float | None) -> tuple[list[Check], list[Unavailable]]:
    """The checks of the stateful ``variant`` of ``bundle`` on its graph's test sets (see the module), or why
    it could not run (openvino not installed, say); the whole run within ``timeout`` seconds per step."""
    assert bundle.manifest is not None and len(variant.files) == 2  # the manifest's parser checks both
    label = f"variant {variant.name}"
    calls, steps = _plan(bundle, bundle.manifest.io, variant.of, label)
    if not steps:  # no test set of its graph (or no such graph): nothing to run
        return [], []
    try:
        results = stream(bundle.checked(variant.files[0]), bundle.checked(variant.files[1]), calls, timeout)
    except EngineUnavailable as e:
        return [], [Unavailable(e.engine, e.reason, label, variant.name)]
    except EngineFailure as e:
        failed = [Check(Contract.VECTORS, ENGINE, entry.dir, "*", False, tag, detail=str(e), bundle_variant=variant.name)
                  for entry, tag, _ in steps[:1]]
        return failed, []
    return [c for step, got in zip(steps, results, strict=True)
            for c in _compare(bundle.manifest.io, step, got, tol, variant.name)], []


def stateful_variants(variants: Sequence[VariantEntry]) -> list[VariantEntry]:
    """The made variants whose file is stateful IR (re-checked here, not by the graph engines)."""
    return [v for v in variants if v.ok and v.name == STATEFUL_VARIANT]
