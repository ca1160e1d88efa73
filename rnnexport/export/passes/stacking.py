"""Outer-graph plumbing that runs step-graph nodes on all steps' rows at once.

The step graph has a dynamic batch, so its nodes run unchanged on a batch of
``T * B`` rows. Rows are kept in the order of the sequence input's first two
axes, ``(T, B)`` or ``(B, T)``: flattening ``x`` needs no transpose, and a value
whose step batch axis is ``a`` has, stacked over time, those two axes at
``a, a + 1`` when Scan stacks it along ``a + time_axis``. For time-major
sequences a value whose batch axis is not the first is transposed instead, so
that every Scan axis is 0 (which more runtimes implement).
"""

from __future__ import annotations

import functools

import numpy as np
import onnx

from rnnexport.core.onnxfile import value_dims
from rnnexport.export.onnxutil import GraphBuilder

__all__ = ["Stacking"]


def _shape(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """The dims of a step value; stacked values have a batch axis, so their rank is known."""
    shape = value_dims(value)
    if shape is None:
        raise ValueError(f"{value.name!r} has no known rank")
    return shape


class Stacking:
    """Builds, in ``g``, the reshapes between a step value and its stacked rows.

    Args:
        g: the outer graph's builder (nodes and constants go there).
        x: the sequence input's name.
        x_features: its static feature dims (after time and batch).
        time_axis: where T sits in ``x`` (0 time-major, 1 batch-major).
    """

    def __init__(self, g: GraphBuilder, x: str, x_features: tuple[int, ...], time_axis: int) -> None:
        self.g, self.x, self.x_features, self.time_axis = g, x, tuple(x_features), time_axis

    @functools.cached_property
    def pair(self) -> str:
        """``x``'s first two dims, ``[T, B]`` or ``[B, T]``."""
        return self.g.one("Shape", [self.x], output=self.g.fresh("scan/steps_batch"), start=0, end=2)

    @functools.cached_property
    def flat_x(self) -> str:
        """``x`` with its time and batch axes merged into rows."""
        shape = self.g.ints("scan/rows_shape", [-1, *self.x_features])
        return self.g.one("Reshape", [self.x, shape], output=self.g.fresh("scan/x_rows"))

    def scan_axis(self, axis: int) -> int:
        """The Scan axis of a stacked value whose step batch axis is ``axis``."""
        return 0 if self.time_axis == 0 else axis + 1

    def scan_input(self, rows: str, step_type: onnx.ValueInfoProto, axis: int) -> str:
        """Rows of a step value (batch at ``axis``) -> the Scan input (time at :meth:`scan_axis`)."""
        folded = self.fold(rows, step_type, axis)
        if self.time_axis or not axis:
            return folded
        rank = len(_shape(step_type)) + 1
        perm = [axis, *range(axis), *range(axis + 1, rank)]
        return self.g.one("Transpose", [folded], self.g.fresh("scan/time_first"), perm=perm)

    def output_rows(self, stacked: str, step_type: onnx.ValueInfoProto, axis: int) -> str:
        """A Scan output stacked at :meth:`scan_axis` (step batch at ``axis``) -> its rows."""
        if not self.time_axis and axis:
            rank = len(_shape(step_type)) + 1
            perm = [*range(1, axis + 1), 0, *range(axis + 1, rank)]
            stacked = self.g.one("Transpose", [stacked], self.g.fresh("scan/time_next_to_batch"), perm=perm)
        return self.merge(stacked, step_type, axis)

    def fold(self, rows: str, step_type: onnx.ValueInfoProto, axis: int, output: str | None = None) -> str:
        """Rows of a step value (batch at ``axis``) -> the value with ``x``'s two axes at ``axis``."""
        lead, trail = self._dims(rows, step_type, 0, axis), self._dims(rows, step_type, axis + 1, None)
        shape = self.g.one("Concat", [p for p in (lead, self.pair, trail) if p], self.g.fresh("scan/shape"), axis=0)
        return self.g.one("Reshape", [rows, shape], output=output or self.g.fresh("scan/folded"))

    def merge(self, stacked: str, step_type: onnx.ValueInfoProto, axis: int) -> str:
        """A step value stacked over time (two axes at ``axis``) -> its rows (one axis there)."""
        lead = self._dims(stacked, step_type, 0, axis)
        trail = self._dims(stacked, step_type, axis + 1, None, shift=1)
        parts = [p for p in (lead, self.g.ints("scan/minus1", [-1]), trail) if p]
        shape = self.g.one("Concat", parts, self.g.fresh("scan/shape"), axis=0)
        return self.g.one("Reshape", [stacked, shape], output=self.g.fresh("scan/rows"))

    def _dims(self, value: str, step_type: onnx.ValueInfoProto, start: int, end: int | None,
              shift: int = 0) -> str | None:
        """Dims ``start:end`` of the step value as a 1-D tensor (None if empty): static if known.

        ``shift`` is how many axes ``value`` has before them beyond the step value's.
        """
        known = _shape(step_type)[start:end]
        if not known:
            return None
        if all(isinstance(d, int) for d in known):
            return self.g.const("scan/dims", np.asarray(known, dtype=np.int64))
        stop = {} if end is None else {"end": end + shift}
        return self.g.one("Shape", [value], self.g.fresh("scan/dims"), start=start + shift, **stop)
