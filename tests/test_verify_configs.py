"""``verify`` passes for every graph convert can make, on the CPU provider and the ReferenceEvaluator.

The ReferenceEvaluator's gaps are an explicit table: a configuration it cannot run
must be reported unavailable with the reason (never as a failure), and every other
configuration must have run on it, so the table cannot drift.
"""

from __future__ import annotations

import pytest

from rnnexport.verification import Contract, verify
from tests.configs import BIDIRECTIONAL, CONFIGS, LOWERINGS, fast_lane

#: The ReferenceEvaluator is asked for but may be missing: its gaps are checked below.
GRID = {"batch_sizes": (1, 3), "seq_lens": (1, 5), "engines": ("cpu", "reference"), "allow_missing": True}

#: (configuration, lowering, form) the ReferenceEvaluator cannot run, and a word of the reason.
#: Relu RNNs are never the RNN op with a Relu activation, and batch-first graphs scan along axis 0
#: between Transposes; what is left: the backward half of a bidirectional scan runs its Scan in
#: reverse, which onnx's ReferenceEvaluator does not implement.
REFERENCE_GAPS: dict[tuple[str, str, str], str] = {
    (name, "scan", "sequence"): "scan_input_directions" for name in BIDIRECTIONAL}

SEQUENCE = [(name, lw) for name, lws in LOWERINGS.items() for lw in (*lws, "unrolled")]
STEP = [(name, lw) for name in CONFIGS if name not in BIDIRECTIONAL
        for lw in (("native", "unrolled") if "native" in LOWERINGS[name] else ("unrolled",))]


def _step_lowering(name: str) -> str:
    return "native" if "native" in LOWERINGS[name] else "unrolled"


def _check_reference(report, key) -> None:
    ran = any(c.engine == "onnx-reference" for c in report.checks)
    if key in REFERENCE_GAPS:
        assert not ran
        reasons = [u.reason for u in report.unavailable if u.engine == "onnx-reference"]
        assert reasons and REFERENCE_GAPS[key] in reasons[0], reasons
    else:
        assert ran, [u.reason for u in report.unavailable]


@pytest.mark.parametrize(("name", "lowering"), fast_lane(SEQUENCE))
def test_sequence_graph_verifies(exports, name, lowering):
    seq_len = 7 if lowering == "unrolled" else None
    result = exports.export(name, lowering=lowering, seq_len=seq_len)
    step = None if name in BIDIRECTIONAL else exports.export(name, form="step", lowering=_step_lowering(name))
    report = verify(result.path, exports.model(name), step_model=step and str(step.path), **GRID)
    assert report.passed, [(c.contract.value, c.engine, c.case, c.output, c.detail) for c in report.failures[:3]]
    ran = {c.contract for c in report.checks}
    assert {Contract.PYTORCH, Contract.SHAPES, Contract.FINITE} <= ran
    assert (Contract.STEP in ran) == (step is not None)
    chunkable = seq_len is None and name not in BIDIRECTIONAL
    assert (Contract.CHUNKED in ran) == chunkable
    if seq_len:
        assert {c.time for c in report.cases} == {7}
    _check_reference(report, (name, lowering, "sequence"))


@pytest.mark.parametrize(("name", "lowering"), STEP)
def test_step_graph_verifies(exports, name, lowering):
    result = exports.export(name, form="step", lowering=lowering)
    report = verify(result.path, exports.model(name), **GRID)
    assert report.passed, [(c.contract.value, c.engine, c.case, c.output, c.detail) for c in report.failures[:3]]
    assert report.form == "step"
    assert {Contract.PYTORCH, Contract.STEP, Contract.SHAPES, Contract.FINITE} <= {c.contract for c in report.checks}
    _check_reference(report, (name, lowering, "step"))
