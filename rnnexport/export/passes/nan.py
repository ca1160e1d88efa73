"""NaN carried through a whole graph, whatever the engine's activations do with it.

Some engines' fast sigmoid/tanh (tract's; onnxruntime's LSTM and GRU kernels) turn NaN into
a finite value, so a NaN input would come out as plausible numbers. PyTorch gives NaN in a
stream from the step its input holds NaN on, and in every step of a stream whose initial
state holds NaN. This pass adds exactly that to a unidirectional graph's outputs: ``y`` gets
NaN (or 0) per stream and step, the state outputs per stream. A NaN only ever adds NaN; finite
outputs are unchanged (``y + 0``). The native lowering carries NaN per layer instead.

That is a classic cell's NaN behaviour, not every module's: a module that keeps NaN in one
element or removes it (gates with ``where``, ``nan_to_num``, a window that flushes it) gets
the guard only from the sources and to the outputs where PyTorch does the same
(``sources``; read from PyTorch by :func:`rnnexport.export.nanprobe.nan_sources`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx

from rnnexport.core.contract import Form, IOSpec
from rnnexport.export.onnxutil import GraphBuilder
from rnnexport.export.passes.base import PassResult
from rnnexport.export.passes.graph import (
    producers,
    rename_output,
    replace_uses,
)

__all__ = ["CarryNan", "Sources", "carry_nan"]

_PREFIX = "nan_guard"


def _nan_only(g: GraphBuilder, name: str) -> str:
    """``name`` where it is NaN, 0 elsewhere (Inf stays out: PyTorch can map Inf to finite values)."""
    return g.one("Where", [g.one("IsNaN", [name]), name, g.scalar(_PREFIX, np.zeros((), np.float32))])


def _reduce(g: GraphBuilder, name: str, axes: list[int]) -> str:
    return g.one("ReduceSum", [name, g.ints(_PREFIX, axes)], keepdims=0) if axes else name


def _unsqueeze(g: GraphBuilder, name: str, axes: list[int]) -> str:
    return g.one("Unsqueeze", [name, g.ints(_PREFIX, axes)]) if axes else name


#: Per output (``y``, then each state output), per source (``x``, then each state input): whether a NaN
#: in that source makes that output NaN for the whole stream (from the step it enters on, for ``x`` into ``y``).
Sources = tuple[tuple[bool, ...], ...]


@dataclasses.dataclass(frozen=True)
class CarryNan:
    """The pass that adds the NaN guard to the outputs of a unidirectional graph of ``io`` in ``form``.

    ``reverse``: the graph runs from the last step to the first (a bidirectional layer's
    backward half), so a NaN input reaches the steps before it. ``sources``: which source
    reaches which output (:data:`Sources`); None: every one reaches every output. Unmodified
    when nothing can hold NaN (an integer ``x`` and no state) or no source reaches an output.
    """

    io: IOSpec
    form: Form
    reverse: bool = False
    sources: Sources | None = None

    def __call__(self, model: onnx.ModelProto, /) -> PassResult[onnx.ModelProto]:
        graph, io = model.graph, self.io
        count = 1 + len(io.state.names)
        sources = self.sources if self.sources is not None else ((True,) * count,) * count
        if len(sources) != count or any(len(row) != count for row in sources):
            raise ValueError(f"sources must be {count} x {count} (y and the states, by x and the states)")
        g = GraphBuilder.beside(graph)
        found = _Indicators(self, g, graph.input[0].name)
        made = producers(graph)
        modified = False
        for index, (output, row) in enumerate(zip([graph.output[0].name, *io.state.output_names], sources, strict=True)):
            guard = found.guard(index, row)
            if guard is None:
                continue
            inner = g.fresh(f"{output}__{_PREFIX}")
            rename_output(made[output], output, inner)
            replace_uses(graph, output, inner)
            g.nodes.append(g.make("Add", [inner, guard], [output], name_hint=output))
            modified = True
        if modified:
            g.flush_into(graph)
        return PassResult(model, modified)


class _Indicators:
    """The guard's values, each built the first time an output needs it: per stream (and step), NaN or 0."""

    def __init__(self, carry: CarryNan, g: GraphBuilder, x: str) -> None:
        self.io, self.g, self.x, self.reverse = carry.io, g, x, carry.reverse
        self.sequence = Form(carry.form) is Form.SEQUENCE
        self.lead = [self.io.time_axis, self.io.batch_axis] if self.sequence else [0]
        self.made: dict[Any, str] = {}

    def _once(self, key: Any, build: Any) -> str:
        if key not in self.made:
            self.made[key] = build()
        return self.made[key]

    def x_steps(self) -> str:
        """``(T, B)``/``(B, T)`` (``(B,)`` for a step): NaN from the step ``x`` held NaN on (before it, in reverse)."""
        def build() -> str:
            g, io = self.g, self.io
            per_step = _reduce(g, _nan_only(g, self.x), list(range(len(self.lead), len(self.lead) + len(io.x_features))))
            if not self.sequence:
                return per_step
            backwards: dict[str, Any] = {"reverse": 1} if self.reverse else {}
            return g.one("CumSum", [per_step, g.scalar(_PREFIX, np.asarray(io.time_axis, np.int64))], **backwards)
        return self._once("x", build)

    def x_any(self) -> str:
        """``(B,)``: NaN where ``x`` held NaN at any step."""
        return self._once("x_any", lambda: _reduce(self.g, self.x_steps(), [self.io.time_axis] if self.sequence else []))

    def state(self, k: int) -> str:
        """``(B,)``: NaN where initial state ``k`` held NaN."""
        io = self.io
        rank = len(io.state.shape(k))
        return self._once(("state", k), lambda: _reduce(self.g, _nan_only(self.g, io.state.names[k]),
                                                         [a for a in range(rank) if a != io.state.batch_axis]))

    def _sum(self, terms: list[str]) -> str:
        total = terms[0]
        for term in terms[1:]:
            total = self.g.one("Add", [total, term])
        return total

    def guard(self, index: int, row: tuple[bool, ...]) -> str | None:
        """What to add to output ``index`` (0: ``y``) from the sources ``row`` selects; None: nothing."""
        io, g = self.io, self.g
        float_x = io.x_dtype.startswith("float")
        states = [k for k in range(len(io.state.names)) if row[1 + k]]
        if not (row[0] and float_x) and not states:
            return None
        if index == 0:
            terms = [self.x_steps()] if row[0] and float_x else []
            terms += [_unsqueeze(g, self.state(k), [io.time_axis] if self.sequence else []) for k in states]
            return _unsqueeze(g, self._sum(terms), list(range(len(self.lead), len(self.lead) + len(io.y_features))))
        terms = [self.x_any()] if row[0] and float_x else []
        terms += [self.state(k) for k in states]
        rank = len(io.state.shape(index - 1))
        return _unsqueeze(g, self._sum(terms), [a for a in range(rank) if a != io.state.batch_axis])


def carry_nan(model: onnx.ModelProto, io: IOSpec, form: Form, reverse: bool = False,
              sources: Sources | None = None) -> bool:
    """Add the NaN guard to ``model``'s outputs, in place (:class:`CarryNan`); whether it added one."""
    return CarryNan(io, Form(form), reverse, sources)(model).modified
