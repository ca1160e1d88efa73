"""The native lowering: ONNX RNN/LSTM/GRU operators built straight from the parameters.

No tracing: the graph is written node by node from a :class:`~rnnexport.export.plan.NativePlan`,
which makes it exact about the contract (any T, any B) and fast to export.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper

from rnnexport.contract import Form, Layout
from rnnexport.export.onnxutil import GraphBuilder, finish_model, value_info
from rnnexport.export.plan import NativeLayer
from rnnexport.model import RecurrentModel

__all__ = ["build_native"]


def _layer_node(g: GraphBuilder, layer: NativeLayer, index: int, x: str, h: str, c: str | None):
    """One ONNX recurrent node; returns ``(Y (T, D, B, H), Y_h, Y_c or None)``."""
    inputs = [
        x,
        g.const(f"W{index}", layer.W),
        g.const(f"R{index}", layer.R),
        g.const(f"B{index}", layer.B) if layer.B is not None else "",
        "",  # sequence_lens: every sequence in the batch runs the full length
        h,
    ]
    if layer.op == "LSTM":
        assert c is not None  # an LSTM's state is always (h, c)
        inputs.append(c)
    attrs: dict[str, Any] = {
        "hidden_size": layer.hidden_size,
        "direction": "bidirectional" if layer.directions == 2 else "forward",
    }
    if layer.activations is not None:
        attrs["activations"] = list(layer.activations)
    if layer.linear_before_reset is not None:
        attrs["linear_before_reset"] = layer.linear_before_reset
    outputs = g.op(layer.op, inputs, 3 if layer.op == "LSTM" else 2, **attrs)
    return outputs[0], outputs[1], outputs[2] if layer.op == "LSTM" else None


def _merge_directions(g: GraphBuilder, y: str, directions: int) -> str:
    """``(T, D, B, H)`` -> ``(T, B, D*H)``, forward and backward side by side as torch has them."""
    if directions == 1:
        return g.one("Squeeze", [y, g.ints("axis1", [1])])
    y = g.one("Transpose", [y], perm=[0, 2, 1, 3])
    return g.one("Reshape", [y, g.ints("shape", [0, 0, -1])])


def _state_slices(g: GraphBuilder, model: RecurrentModel, name: str, layers: int, directions: int):
    """Per-layer ``(D, B, H)`` views of a state input."""
    if model.io.state.batch_axis == 0:  # seed cells: (B, H)
        return [g.one("Unsqueeze", [name, g.ints("axis0", [0])])]
    if layers == 1:
        return [name]
    return [
        g.one("Slice", [name, g.ints("start", [i * directions]), g.ints("end", [(i + 1) * directions]),
                        g.ints("axis0", [0])])
        for i in range(layers)
    ]


def _state_output(g: GraphBuilder, model: RecurrentModel, parts: list[str], output: str) -> str:
    if model.io.state.batch_axis == 0:
        return g.one("Squeeze", [parts[0], g.ints("axis0", [0])], output)
    if len(parts) == 1:
        return g.one("Identity", parts, output)
    return g.one("Concat", parts, output, axis=0)


#: Operators whose onnxruntime CPU kernels can turn a NaN input or state into finite output
#: (LSTM and GRU clamp in their fast activations, RNN's Relu is max(0, NaN) = 0): the graph
#: carries NaN past them itself.
_MASKS_NAN = frozenset({"LSTM", "GRU", "RNN"})


def _nan_only(g: GraphBuilder, name: str) -> str:
    """``name`` where it is NaN, 0 elsewhere (Inf stays out: PyTorch can map Inf to finite values)."""
    return g.one("Where", [g.one("IsNaN", [name]), name, g.scalar("zero", np.zeros((), np.float32))])


def _nan_guard(g: GraphBuilder, x: str, h: str, c: str | None, directions: int) -> tuple[str, str]:
    """NaN guards of one layer: ``(for Y (T, D, B, 1), for Y_h and Y_c (D, B, 1))``, NaN or 0.

    As in PyTorch, a NaN in a stream's ``x`` at step t reaches that direction's output from
    step t on (forward) or up to t (backward), and its final state; a NaN in a direction's
    initial state reaches all its steps.
    """
    steps = g.one("ReduceSum", [_nan_only(g, x), g.ints("axes", [2])], keepdims=1)  # (T, B, 1)
    axis = g.scalar("axis", np.array(0, np.int64))
    spread = [g.one("CumSum", [steps, axis]), g.one("CumSum", [steps, axis], reverse=1)][:directions]
    per_step = (g.one("Unsqueeze", [spread[0], g.ints("axes", [1])]) if directions == 1 else
                g.one("Concat", [g.one("Unsqueeze", [d, g.ints("axes", [1])]) for d in spread], axis=1))
    state = g.one("ReduceSum", [_nan_only(g, h), g.ints("axes", [2])], keepdims=1)  # (D, B, 1)
    if c is not None:
        state = g.one("Add", [state, g.one("ReduceSum", [_nan_only(g, c), g.ints("axes", [2])], keepdims=1)])
    final = g.one("Add", [state, g.one("ReduceSum", [steps, g.ints("axes", [0])], keepdims=1)])
    return g.one("Add", [per_step, state]), final


def build_native(model: RecurrentModel, form: Form) -> onnx.ModelProto:
    """The whole graph for ``model`` (which must have a native plan) in ``form``."""
    plan = model.native
    assert plan is not None  # callers check model.native first
    io = model.io
    inputs, outputs = io.inputs(form), io.outputs(form)
    state_names = io.state.names
    g = GraphBuilder()
    directions = plan.layers[0].directions
    x = inputs[0].name
    if form is Form.STEP:
        x = g.one("Unsqueeze", [x, g.ints("axis0", [0])])
    elif io.layout is Layout.BATCH_MAJOR:
        x = g.one("Transpose", [x], perm=[1, 0, 2])
    h_parts = _state_slices(g, model, state_names[0], len(plan.layers), directions)
    c_parts = (_state_slices(g, model, state_names[1], len(plan.layers), directions)
               if len(state_names) == 2 else [None] * len(plan.layers))
    h_out, c_out = [], []
    for index, layer in enumerate(plan.layers):
        y, y_h, y_c = _layer_node(g, layer, index, x, h_parts[index], c_parts[index])
        if layer.op in _MASKS_NAN and io.x_dtype == "float32":
            per_step, final = _nan_guard(g, x, h_parts[index], c_parts[index], layer.directions)
            y, y_h = g.one("Add", [y, per_step]), g.one("Add", [y_h, final])
            y_c = g.one("Add", [y_c, final]) if y_c is not None else None
        x = _merge_directions(g, y, layer.directions)
        h_out.append(y_h)
        c_out.append(y_c)
    if plan.head is not None:
        W_hq, b_q = plan.head
        x = g.one("Add", [g.one("MatMul", [x, g.const("W_hq", W_hq)]), g.const("b_q", b_q)])
    y_name = outputs[0].name
    if form is Form.STEP:
        g.one("Squeeze", [x, g.ints("axis0", [0])], y_name)
    elif io.layout is Layout.BATCH_MAJOR:
        g.one("Transpose", [x], y_name, perm=[1, 0, 2])
    else:
        g.one("Identity", [x], y_name)
    for parts, output in zip((h_out, c_out), outputs[1:]):
        _state_output(g, model, parts, output.name)
    graph = helper.make_graph(
        g.nodes,
        "rnnexport_native",
        [value_info(s) for s in inputs],
        [value_info(s) for s in outputs],
        initializer=g.initializers,
    )
    return finish_model(graph)
