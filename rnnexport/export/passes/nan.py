"""NaN carried through a whole graph, whatever the engine's activations do with it.

Some engines' fast sigmoid/tanh (tract's; onnxruntime's LSTM and GRU kernels) turn NaN into
a finite value, so a NaN input would come out as plausible numbers. PyTorch gives NaN in a
stream from the step its input holds NaN on, and in every step of a stream whose initial
state holds NaN. This pass adds exactly that to a unidirectional graph's outputs: ``y`` gets
NaN (or 0) per stream and step, the state outputs per stream. A NaN only ever adds NaN; finite
outputs are unchanged (``y + 0``). The native lowering carries NaN per layer instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx

from rnnexport.core.contract import Form, IOSpec
from rnnexport.export.onnxutil import GraphBuilder
from rnnexport.export.passes.base import PassResult
from rnnexport.export.passes.graph import producers, rename_output, replace_uses

__all__ = ["CarryNan", "carry_nan"]

_PREFIX = "nan_guard"


def _nan_only(g: GraphBuilder, name: str) -> str:
    """``name`` where it is NaN, 0 elsewhere (Inf stays out: PyTorch can map Inf to finite values)."""
    return g.one("Where", [g.one("IsNaN", [name]), name, g.scalar(_PREFIX, np.zeros((), np.float32))])


def _reduce(g: GraphBuilder, name: str, axes: list[int]) -> str:
    return g.one("ReduceSum", [name, g.ints(_PREFIX, axes)], keepdims=0) if axes else name


def _unsqueeze(g: GraphBuilder, name: str, axes: list[int]) -> str:
    return g.one("Unsqueeze", [name, g.ints(_PREFIX, axes)]) if axes else name


@dataclasses.dataclass(frozen=True)
class CarryNan:
    """The pass that adds the NaN guard to the outputs of a unidirectional graph of ``io`` in ``form``.

    ``reverse``: the graph runs from the last step to the first (a bidirectional layer's
    backward half), so a NaN input reaches the steps before it. Unmodified only when
    nothing can hold NaN (an integer ``x`` and no state).
    """

    io: IOSpec
    form: Form
    reverse: bool = False

    def __call__(self, model: onnx.ModelProto, /) -> PassResult[onnx.ModelProto]:
        graph, io = model.graph, self.io
        g = GraphBuilder.beside(graph)
        per_output = self._guards(g, graph.input[0].name)
        if per_output is None:
            return PassResult(model, False)
        made = producers(graph)
        for output, guard in zip([graph.output[0].name, *io.state.output_names], per_output, strict=True):
            inner = g.fresh(f"{output}__{_PREFIX}")
            rename_output(made[output], output, inner)
            replace_uses(graph, output, inner)
            g.nodes.append(g.make("Add", [inner, guard], [output], name_hint=output))
        g.flush_into(graph)
        return PassResult(model, True)

    def _guards(self, g: GraphBuilder, x: str) -> list[str] | None:
        """Per output (``y``, then the states), what to add to it: NaN where it must be NaN, else 0."""
        io = self.io
        sequence = Form(self.form) is Form.SEQUENCE
        lead = [io.time_axis, io.batch_axis] if sequence else [0]
        x_rank = len(lead) + len(io.x_features)
        per_step = None  # (T, B) or (B, T) for a sequence, (B,) for a step: NaN where x held NaN, cumulated
        if io.x_dtype.startswith("float"):
            per_step = _reduce(g, _nan_only(g, x), list(range(len(lead), x_rank)))
            if sequence:
                backwards: dict[str, Any] = {"reverse": 1} if self.reverse else {}
                per_step = g.one("CumSum", [per_step, g.scalar(_PREFIX, np.asarray(io.time_axis, np.int64))],
                                 **backwards)
        per_stream = None  # (B,): NaN where any initial state of the stream held NaN
        for index, name in enumerate(io.state.names):
            rank = len(io.state.shape(index))
            found = _reduce(g, _nan_only(g, name), [a for a in range(rank) if a != io.state.batch_axis])
            per_stream = found if per_stream is None else g.one("Add", [per_stream, found])
        final = per_stream
        if per_step is not None:
            last = _reduce(g, per_step, [io.time_axis] if sequence else [])
            final = last if final is None else g.one("Add", [final, last])
        if final is None:
            return None
        y_guard = per_step
        if per_stream is not None:
            stream = _unsqueeze(g, per_stream, [io.time_axis] if sequence else [])
            y_guard = stream if y_guard is None else g.one("Add", [y_guard, stream])
        assert y_guard is not None
        y_guard = _unsqueeze(g, y_guard, list(range(len(lead), len(lead) + len(io.y_features))))
        states = [_unsqueeze(g, final, [a for a in range(len(io.state.shape(i))) if a != io.state.batch_axis])
                  for i in range(len(io.state.names))]
        return [y_guard, *states]


def carry_nan(model: onnx.ModelProto, io: IOSpec, form: Form, reverse: bool = False) -> bool:
    """Add the NaN guard to ``model``'s outputs, in place (:class:`CarryNan`); whether it added one."""
    return CarryNan(io, Form(form), reverse)(model).modified
