"""The lowerings as strategies: each returns a graph or the reason it does not apply.

``auto`` tries them in order (sequence: native, then scan; step: native, then a
traced step) and records every attempt, so a user sees why a lowering was chosen.
Plain-RNN sequences try scan first: onnxruntime's RNN kernel is the slow one.

A model with a bidirectional layer has no step form. Its sequence is scanned: a bare
torch.nn layer as a forward and a reverse Scan per layer (:mod:`rnnexport.export.bidirectional`),
a module around one traced whole over any T with its recurrent layers as torch scans.

Every graph but a native one (which carries NaN per layer) then gets the NaN guard on the
outputs where PyTorch turns a whole stream NaN (:mod:`rnnexport.export.nanprobe`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import onnx

from rnnexport.core.contract import Form, Lowering, NanPolicy
from rnnexport.core.errors import ConvertError
from rnnexport.export.bidirectional import (
    NO_STEP_FORM,
    bidirectional_rnn,
    bidirectional_scan,
    scanned_sequence,
)
from rnnexport.export.nanprobe import nan_sources
from rnnexport.export.native import build_native
from rnnexport.export.passes.lengths import mask_scan_states
from rnnexport.export.passes.nan import carry_nan
from rnnexport.export.scan import wrap_in_scan
from rnnexport.export.trace import RaggedUnroll, export_failure, trace
from rnnexport.source.model import RecurrentModel

__all__ = ["Attempt", "NotApplicable", "lower", "trace_step"]

DEFAULT_UNROLLED_SEQ_LEN = 35


@dataclasses.dataclass(frozen=True)
class NotApplicable:
    """Why a lowering cannot express a model in a form."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One lowering tried for a conversion: chosen, or skipped with its reason."""

    lowering: Lowering
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason


def _silent(line: str) -> None:
    pass


def trace_step(model: RecurrentModel, progress: Callable[[str], None] = _silent) -> onnx.ModelProto | NotApplicable:
    """The step graph traced from the model's step function."""
    io = model.io
    progress(f"tracing one step of {model.description} with torch.onnx")
    try:
        return trace(model.trace_step_module(), io, io.inputs(Form.STEP), io.outputs(Form.STEP))
    except Exception as e:  # noqa: BLE001 - torch's tracer fails in many ways; all mean "cannot trace"
        return NotApplicable(f"torch.onnx could not trace one step: {export_failure(e)}")


def _native(model: RecurrentModel, form: Form, seq_len: int | None,
            progress: Callable[[str], None], nan: NanPolicy) -> onnx.ModelProto | NotApplicable:
    if model.native is None:
        return NotApplicable(model.native_reason or "not a recognised RNN/LSTM/GRU cell")
    if form is Form.STEP and model.native.layers[0].directions == 2:
        return NotApplicable(NO_STEP_FORM)
    return build_native(model, form, nan)


def _scan(model: RecurrentModel, form: Form, seq_len: int | None,
          progress: Callable[[str], None], nan: NanPolicy) -> onnx.ModelProto | NotApplicable:
    if form is Form.STEP:
        return NotApplicable("scan lowers sequences; for a step graph use native or unrolled (one traced step)")
    rnn = bidirectional_rnn(model)
    if rnn is not None:  # a forward and a reverse Scan per layer
        def half_step(half: RecurrentModel) -> onnx.ModelProto | str:
            step = trace_step(half, progress)
            return step.reason if isinstance(step, NotApplicable) else step

        result = bidirectional_scan(model, rnn, half_step, guard_nan=nan is NanPolicy.CARRY)
        return NotApplicable(result) if isinstance(result, str) else _masked(model, result)
    if model.bidirectional():  # a bidirectional layer inside a module: the whole sequence, traced
        progress(f"tracing {model.description} over any T with torch.onnx")
        sequence = scanned_sequence(model)
        return NotApplicable(sequence) if isinstance(sequence, str) else _masked(model, sequence)
    if model.scan_reason:
        return NotApplicable(model.scan_reason)
    step = trace_step(model, progress)
    return step if isinstance(step, NotApplicable) else _masked(model, wrap_in_scan(model, step))


def _masked(model: RecurrentModel, graph: onnx.ModelProto) -> onnx.ModelProto | NotApplicable:
    """A scan graph whose Scans stop each stream at its own length, when ``model`` takes lengths."""
    if model.io.lengths is None:
        return graph
    reason = mask_scan_states(graph, model.io.lengths.name)
    return graph if reason is None else NotApplicable(f"lengths: {reason}")


def _unrolled(model: RecurrentModel, form: Form, seq_len: int | None,
              progress: Callable[[str], None], nan: NanPolicy) -> onnx.ModelProto | NotApplicable:
    if form is Form.STEP:
        if model.bidirectional():
            return NotApplicable(NO_STEP_FORM)
        if model.scan_reason:
            return NotApplicable(model.scan_reason)
        return trace_step(model, progress)
    io = model.io
    seq_len = seq_len or DEFAULT_UNROLLED_SEQ_LEN
    module = model.trace_module
    if io.lengths is not None:  # T steps of the traced step, each stream stopping at its own length
        if model.bidirectional():
            return NotApplicable("lengths: an unrolled bidirectional trace reads each stream backwards from the "
                                 "padded end, not from its own; use native or scan")
        module = RaggedUnroll(model.trace_step_module(), io, seq_len)
    progress(f"tracing {model.description} over T={seq_len} steps with torch.onnx")
    assert module is not None  # trace_module is set in RecurrentModel.__post_init__
    try:
        return trace(module, io, io.inputs(form, seq_len), io.outputs(form, seq_len), seq_len)
    except Exception as e:  # noqa: BLE001
        return NotApplicable(f"torch.onnx could not trace the sequence: {export_failure(e)}")


STRATEGIES = {Lowering.NATIVE: _native, Lowering.SCAN: _scan, Lowering.UNROLLED: _unrolled}
AUTO_ORDER = {Form.SEQUENCE: (Lowering.NATIVE, Lowering.SCAN), Form.STEP: (Lowering.NATIVE, Lowering.UNROLLED)}

#: Why auto passes over the native RNN operator for plain-RNN sequences (docs/performance.md):
#: onnxruntime's CPU kernel applies tanh one element at a time, while a scanned step runs as
#: one fused, vectorised Gemm + Tanh; and its unpacked weights make a batch of one sum in
#: another order than a larger batch (docs/embedding.md), which the scanned Gemm does not.
RNN_PREFERS_SCAN = ("onnxruntime's RNN operator runs 1.3-4x slower than the scanned "
                    "Gemm+Tanh step for T>1 (it applies tanh element by element), and a stream's "
                    "result depends on the batch it runs in")


def _auto_order(model: RecurrentModel, form: Form) -> tuple[tuple[Lowering, ...], list[Attempt]]:
    if form is Form.SEQUENCE and model.family == "rnn" and not model.scan_reason:
        return (Lowering.SCAN, Lowering.NATIVE), [Attempt(Lowering.NATIVE, RNN_PREFERS_SCAN)]
    return AUTO_ORDER[form], []


def _guard_nan(model: RecurrentModel, form: Form, lowering: Lowering, graph: onnx.ModelProto) -> None:
    """Add the NaN guard where PyTorch spreads NaN over a stream (native graphs and bidirectional halves have theirs).

    The guard keeps engines whose fast activations turn NaN into numbers (tract's) as PyTorch
    is; elsewhere the graph's own operators carry NaN as PyTorch's do.
    """
    if lowering is Lowering.NATIVE or (form is Form.SEQUENCE and bidirectional_rnn(model) is not None):
        return
    carry_nan(graph, model.io, form, sources=nan_sources(model, form))


def lower(
    model: RecurrentModel, form: Form, lowering: Lowering, seq_len: int | None = None,
    progress: Callable[[str], None] | None = None, nan: NanPolicy = NanPolicy.CARRY,
) -> tuple[onnx.ModelProto, Lowering, list[Attempt]]:
    """Lower ``model`` to ONNX in ``form``; ``progress`` hears of each lowering tried.

    ``nan``: ``carry`` guards NaN as PyTorch spreads it (each lowering's own guards, then
    :func:`_guard_nan`); ``refuse`` writes no guard anywhere (the runtime refuses NaN input).

    Returns:
        The graph (contract inputs/outputs, NaN carried as PyTorch carries it, no metadata
        yet), the lowering used, and every attempt in order.

    Raises:
        ConvertError: when the requested lowering (or, for auto, every lowering) does not apply.
    """
    order, attempts = _auto_order(model, form) if lowering is Lowering.AUTO else ((lowering,), [])
    for candidate in order:
        result = STRATEGIES[candidate](model, form, seq_len, progress or _silent, NanPolicy(nan))
        if isinstance(result, NotApplicable):
            attempts.append(Attempt(candidate, result.reason))
            continue
        attempts.append(Attempt(candidate))
        if NanPolicy(nan) is NanPolicy.CARRY:
            _guard_nan(model, form, candidate, result)
        return result, candidate, attempts
    reasons = "; ".join(f"{a.lowering.value}: {a.reason}" for a in attempts)
    hint = "" if lowering is Lowering.AUTO else " (try --lowering auto)"
    raise ConvertError(f"cannot export {model.description} as a {form.value} graph: {reasons}{hint}")
