"""Figures of one comparison: max abs and relative error, drift along time, pass or fail.

The one comparator: verify, the variant checks, the bundle re-check and the test
helpers all compare through :func:`compare` with a :class:`Tolerance`.

Pass rule (numpy's ``allclose`` without its symmetry tricks): every element
satisfies ``|got - want| <= atol + range_atol * max|want| + rtol * |want|``
(``range_atol`` scales with the output's largest magnitude, for quantized
variants; it is 0 elsewhere). ``ratio`` is the largest ``|got - want|`` over that
bound, so a comparison passes exactly when ``ratio <= 1``. NaN matches NaN and an infinity matches the same infinity; any
other non-finite difference fails.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from rnnexport.core.graphs import walk

__all__ = [
    "DEFAULT_TOLERANCES",
    "QUANTIZED_OPS",
    "REL_FLOOR",
    "ROUNDING_FACTOR",
    "VARIANT_TOLERANCES",
    "Figures",
    "Tolerance",
    "compare",
    "count_nonfinite",
    "graph_precision",
    "max_errors",
    "rounding_error",
    "tolerance_for",
    "with_rounding",
]

#: Relative errors are taken against ``max(|want|, REL_FLOOR)``.
REL_FLOOR = 1e-6

#: ``dtype -> (atol, rtol)``; ``int8`` is any graph with quantized operators.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-5, 1e-4),
    "float16": (1e-2, 1e-2),
    "int8": (5e-2, 1e-1),
}

#: How many times the reference's own float32 rounding error (against a float64 run of it) a check
#: against PyTorch allows on top of ``atol``: two float32 implementations of a recurrence drift
#: apart along time by rounding alone, and a long sequence would otherwise fail on that drift.
ROUNDING_FACTOR = 3

QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul",
    "ConvInteger", "QLinearConv", "DynamicQuantizeLSTM", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
})


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """The precision class of a graph and the tolerances its checks use.

    An element passes when ``|got - want| <= atol + range_atol * max|want| + rtol * |want|``.
    """

    dtype: str
    atol: float
    rtol: float
    range_atol: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"dtype": self.dtype, "atol": self.atol, "rtol": self.rtol}
        if self.range_atol:
            data["range_atol"] = self.range_atol
        return data

    def describe(self) -> str:
        """``|got - want| <= 1e-05 + 0.0001 * |want|``."""
        scale = f" + {self.range_atol:g} * max|want|" if self.range_atol else ""
        return f"|got - want| <= {self.atol:g}{scale} + {self.rtol:g} * |want|"


#: What each bundle variant must meet against the float32 graph it was made from: its precision's
#: defaults, and for the quantized and float16 variants an allowance that scales with the output's
#: largest magnitude (quantization error does).
VARIANT_TOLERANCES = {
    "ort": Tolerance("float32", *DEFAULT_TOLERANCES["float32"]),
    "int8": Tolerance("int8", *DEFAULT_TOLERANCES["int8"], range_atol=5e-2),
    "int8-qdq": Tolerance("int8", 0.25, 1e-1, range_atol=5e-2),
    "fp16": Tolerance("float16", *DEFAULT_TOLERANCES["float16"], range_atol=1e-2),
    "openvino-stateful": Tolerance("float32", *DEFAULT_TOLERANCES["float32"]),
}


def with_rounding(tol: Tolerance, error: float | None) -> Tolerance:
    """``tol`` with ``ROUNDING_FACTOR`` times the reference's own rounding ``error`` added to ``atol``."""
    return tol if error is None else dataclasses.replace(tol, atol=tol.atol + ROUNDING_FACTOR * error)


def rounding_error(outputs: Sequence[np.ndarray], exact: Sequence[np.ndarray]) -> float:
    """The largest ``|output - exact|`` over the float32 ``outputs`` and their float64 ``exact`` run."""
    return max((float(np.abs(o.astype(np.float64) - e).max(initial=0.0)) for o, e in zip(outputs, exact,
                                                                                       strict=True)), default=0.0)


def graph_precision(model: onnx.ModelProto) -> str:
    """``"int8"`` for graphs with quantized operators, ``"float16"`` for float16 I/O or weights, else ``"float32"``."""
    if any(node.op_type in QUANTIZED_OPS for node in walk(model.graph)):
        return "int8"
    fp16 = onnx.TensorProto.FLOAT16
    values = [*model.graph.input, *model.graph.output]
    if any(v.type.tensor_type.elem_type == fp16 for v in values) or \
            any(t.data_type == fp16 for t in model.graph.initializer):
        return "float16"
    return "float32"


def tolerance_for(dtype: str, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The default tolerances of ``dtype``, with the given ones taking precedence."""
    default_atol, default_rtol = DEFAULT_TOLERANCES[dtype]
    return Tolerance(dtype, default_atol if atol is None else atol, default_rtol if rtol is None else rtol)


@dataclasses.dataclass(frozen=True)
class Figures:
    """What one comparison of two arrays found.

    ``first_step`` / ``last_step`` are the max abs error at the first and last time
    step, and ``curve`` the max abs error at every step, for outputs with a time axis.
    """

    passed: bool
    max_abs: float | None = None
    max_rel: float | None = None
    ratio: float | None = None
    first_step: float | None = None
    last_step: float | None = None
    curve: np.ndarray | None = None
    detail: str = ""


def _shape(array: np.ndarray) -> str:
    return f"{array.dtype.name}[{', '.join(str(d) for d in array.shape)}]"


def compare(got: np.ndarray, want: np.ndarray, tol: Tolerance, time_axis: int | None = None) -> Figures:
    """Compare ``got`` with the reference ``want`` elementwise (in float64)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return Figures(False, detail=f"shape {_shape(got)} != reference {_shape(want)}")
    if got.size == 0:
        return Figures(True, 0.0, 0.0, 0.0)
    if np.array_equal(got, want):  # the same values (chunked and streamed runs often are): every error is 0
        return _equal(got, time_axis)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        a, b = got.astype(np.float64), want.astype(np.float64)
        diff = np.abs(np.subtract(a, b, out=a), out=a)
        # max propagates NaN and inf: a finite one means every value is finite, the common case, which
        # takes a third of the general case's passes over the arrays
        finite = np.isfinite(diff.max())
        diff, ratio, rel = _finite(diff, b, tol) if finite else _nonfinite(got, want, tol)
    worst = float(ratio.max())
    figures: dict[str, Any] = {"max_abs": float(diff.max()), "max_rel": float(rel.max()), "ratio": worst}
    if time_axis is not None and got.ndim > time_axis:
        axes = tuple(i for i in range(got.ndim) if i != time_axis)
        curve = (diff.max(axis=axes) if axes else diff).astype(np.float32)
        curve.setflags(write=False)
        figures.update(first_step=float(curve[0]), last_step=float(curve[-1]), curve=curve)
    detail = ""
    if worst > 1.0:
        index = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        detail = (f"worst at index {tuple(int(i) for i in index)}: got {float(got[index]):.6g}, "
                  f"reference {float(want[index]):.6g}; {int((ratio > 1).sum())} of {ratio.size} elements out of "
                  "tolerance")
    return Figures(worst <= 1.0, detail=detail, **figures)


def _equal(got: np.ndarray, time_axis: int | None) -> Figures:
    """The figures of a comparison of equal arrays: no error anywhere."""
    if time_axis is None or got.ndim <= time_axis:
        return Figures(True, 0.0, 0.0, 0.0)
    curve = np.zeros(got.shape[time_axis], np.float32)
    curve.setflags(write=False)
    return Figures(True, 0.0, 0.0, 0.0, 0.0, 0.0, curve)


Errors = tuple[np.ndarray, np.ndarray, np.ndarray]


def _finite(diff: np.ndarray, b: np.ndarray, tol: Tolerance) -> Errors:
    """``|got - want|``, its ratio to the bound and the relative error, where every value is finite."""
    size = np.abs(b, out=b)
    bound = size * tol.rtol
    floor = tol.atol + (tol.range_atol * float(size.max()) if tol.range_atol else 0.0)
    bound += floor
    ratio = np.divide(diff, bound, out=bound)
    if floor <= 0:  # 0 / 0 where an element matches exactly and its bound is 0
        ratio[diff == 0] = 0.0
    rel = np.divide(diff, np.maximum(size, REL_FLOOR, out=size), out=size)
    return diff, ratio, rel


def _nonfinite(got: np.ndarray, want: np.ndarray, tol: Tolerance) -> Errors:
    """As :func:`_finite`, where NaN matches NaN, an infinity the same infinity, and other non-finite errors are inf."""
    a, b = got.astype(np.float64), want.astype(np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    diff = np.where(same, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)
    scale = tol.range_atol * float(np.nanmax(np.abs(np.where(np.isinf(b), np.nan, b)), initial=0.0))
    ratio = np.where(same, 0.0, diff / (tol.atol + scale + tol.rtol * np.abs(b)))
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    rel = np.where(same, 0.0, diff / np.maximum(np.abs(b), REL_FLOOR))
    rel = np.where(np.isnan(rel), np.inf, rel)
    return diff, ratio, rel


def max_errors(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """Max absolute and max relative error (relative to ``max(|want|, REL_FLOOR)``), as :func:`compare` counts them."""
    figures = compare(got, want, Tolerance("float32", 0.0, 0.0))
    if figures.max_abs is None:
        return float("inf"), float("inf")  # shapes differ
    return figures.max_abs, figures.max_rel or 0.0


def count_nonfinite(array: np.ndarray) -> tuple[int, int]:
    """``(NaN count, Inf count)`` of a float array (zeros for integer arrays)."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating) or np.isfinite(array.sum(dtype=np.float64)):
        return 0, 0  # a finite sum: every value is finite (one pass, the common case)
    return int(np.isnan(array).sum()), int(np.isinf(array).sum())
