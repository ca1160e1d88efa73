"""NaN carried through a whole graph, whatever the engine's activations do with it.

Some engines' fast sigmoid/tanh (tract's; onnxruntime's LSTM and GRU kernels) turn NaN into
a finite value, so a NaN input would come out as plausible numbers. PyTorch gives NaN in a
stream from the step its input holds NaN on, and in every step of a stream whose initial
state holds NaN. This pass adds exactly that to a unidirectional graph's outputs: ``y`` gets
NaN (or 0) per stream and step, the state outputs per stream. A NaN only ever adds NaN; finite
outputs are unchanged (``y + 0``). The native lowering carries NaN per layer instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rnnexport.core.contract import Form, IOSpec

__all__ = ["carry_nan"]

_PREFIX = "nan_guard"


class _Nodes:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.count = 0

    def name(self) -> str:
        self.count += 1
        return f"{_PREFIX}_{self.count}"

    def const(self, array: np.ndarray) -> str:
        name = self.name()
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name()
        self.graph.node.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _nan_only(n: _Nodes, name: str) -> str:
    """``name`` where it is NaN, 0 elsewhere (Inf stays out: PyTorch can map Inf to finite values)."""
    return n.op("Where", [n.op("IsNaN", [name]), name, n.const(np.zeros((), np.float32))])


def _reduce(n: _Nodes, name: str, axes: list[int]) -> str:
    return n.op("ReduceSum", [name, n.const(np.asarray(axes, np.int64))], keepdims=0) if axes else name


def _unsqueeze(n: _Nodes, name: str, axes: list[int]) -> str:
    return n.op("Unsqueeze", [name, n.const(np.asarray(axes, np.int64))]) if axes else name


def _rewire(graph: onnx.GraphProto, output: str) -> str:
    """Rename what produces graph output ``output`` (and its readers) to a fresh name; return it."""
    inner = f"{output}__{_PREFIX}"
    for node in graph.node:
        node.output[:] = [inner if o == output else o for o in node.output]
        node.input[:] = [inner if i == output else i for i in node.input]
    return inner


def carry_nan(model: onnx.ModelProto, io: IOSpec, form: Form, reverse: bool = False) -> None:
    """Add the NaN guard to ``model``'s outputs, in place (a unidirectional graph of ``io`` in ``form``).

    ``reverse``: the graph runs from the last step to the first (a bidirectional layer's
    backward half), so a NaN input reaches the steps before it.
    """
    graph = model.graph
    n = _Nodes(graph)
    sequence = Form(form) is Form.SEQUENCE
    lead = [io.time_axis, io.batch_axis] if sequence else [0]
    x_rank = len(lead) + len(io.x_features)
    per_step = None  # (T, B) or (B, T) for a sequence, (B,) for a step: NaN where x held NaN, cumulated
    if io.x_dtype.startswith("float"):
        per_step = _reduce(n, _nan_only(n, graph.input[0].name), list(range(len(lead), x_rank)))
        if sequence:
            per_step = n.op("CumSum", [per_step, n.const(np.asarray(io.time_axis, np.int64))],
                            **({"reverse": 1} if reverse else {}))
    per_stream = None  # (B,): NaN where any initial state of the stream held NaN
    for index, name in enumerate(io.state.names):
        rank = len(io.state.shape(index))
        found = _reduce(n, _nan_only(n, name), [a for a in range(rank) if a != io.state.batch_axis])
        per_stream = found if per_stream is None else n.op("Add", [per_stream, found])
    final = per_stream
    if per_step is not None:
        last = _reduce(n, per_step, [io.time_axis] if sequence else [])
        final = last if final is None else n.op("Add", [final, last])
    if final is None:
        return
    y_guard = per_step
    if per_stream is not None:
        stream = _unsqueeze(n, per_stream, [io.time_axis] if sequence else [])
        y_guard = stream if y_guard is None else n.op("Add", [y_guard, stream])
    assert y_guard is not None
    y_guard = _unsqueeze(n, y_guard, list(range(len(lead), len(lead) + len(io.y_features))))
    outputs = [graph.output[0].name, *io.state.output_names]
    guards = [y_guard] + [_unsqueeze(n, final, [a for a in range(len(io.state.shape(i))) if a != io.state.batch_axis])
                          for i in range(len(io.state.names))]
    for output, guard in zip(outputs, guards):
        inner = _rewire(graph, output)
        graph.node.append(helper.make_node("Add", [inner, guard], [output], name=output))
