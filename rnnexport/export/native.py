"""The native lowering: ONNX RNN/LSTM/GRU operators built straight from the parameters.

No tracing: the graph is written node by node from a :class:`~rnnexport.source.plan.NativePlan`,
which makes it exact about the contract (any T, any B) and fast to export.

A step graph is built lean (:func:`_build_step`): at B=1 each small node costs
onnxruntime 1-2 us, as much as the recurrent matmul itself. A plain-RNN step graph
is a Gemm per layer instead of the RNN operator (:func:`_build_rnn_step`), so that a
row's result does not depend on the batch it runs in.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx
from onnx import helper

from rnnexport.core.contract import X_NAME, Y_NAME, Form, Layout, NanPolicy, TensorSpec
from rnnexport.core.onnxfile import value_info
from rnnexport.export.onnxutil import GraphBuilder, finish_model
from rnnexport.source.model import RecurrentModel
from rnnexport.source.plan import NativeLayer

__all__ = ["build_native"]


def _op_node(g: GraphBuilder, layer: NativeLayer, index: int, x: str, h: str, c: str | None,
             outputs: int | list[str], lengths: str = "") -> list[str]:
    """One ONNX recurrent node on ``x`` from state ``h`` (and ``c``); its outputs as ``g.op`` names them.

    ``lengths``: the operator's int32 ``sequence_lens``; empty, every stream runs the full length.
    """
    inputs = [
        x,
        g.const(f"W{index}", layer.W),
        g.const(f"R{index}", layer.R),
        g.const(f"B{index}", layer.B) if layer.B is not None else "",
        lengths,
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
    return g.op(layer.op, inputs, outputs, **attrs)


def _layer_node(g: GraphBuilder, layer: NativeLayer, index: int, x: str, h: str,
                c: str | None, lengths: _Lengths | None) -> tuple[str, str, str | None]:
    """One ONNX recurrent node; returns ``(Y (T, D, B, H), Y_h, Y_c or None)``.

    With ``lengths``, a stream of length 0 keeps its initial state: onnxruntime's CPU kernels
    write zeros to ``Y_h`` and ``Y_c`` for it (they stop each stream at its own length
    otherwise, and write zeros to ``Y`` after it).
    """
    outputs = _op_node(g, layer, index, x, h, c, 3 if layer.op == "LSTM" else 2,
                       lengths.int32 if lengths is not None else "")
    y, y_h, y_c = outputs[0], outputs[1], outputs[2] if layer.op == "LSTM" else None
    if lengths is not None:
        y_h = g.one("Where", [lengths.started, y_h, h])
        y_c = g.one("Where", [lengths.started, y_c, c]) if y_c is not None and c is not None else y_c
    return y, y_h, y_c


@dataclasses.dataclass(frozen=True)
class _Lengths:
    """A lengths input as the operators take it: int32 ``sequence_lens`` clamped to ``[0, T]``,
    and ``(1, B, 1)`` whether each stream runs at least one step."""

    int32: str
    started: str

    @classmethod
    def of(cls, g: GraphBuilder, lengths: str, x: str) -> _Lengths:
        """From the graph's int64 ``lengths`` and the operators' time-major ``x``."""
        steps = g.one("Shape", [x], start=0, end=1)
        clamped = g.one("Max", [g.one("Min", [lengths, steps]), g.ints("zero", [0])])
        started = g.one("Greater", [clamped, g.ints("zero", [0])])
        return cls(g.one("Cast", [clamped], to=onnx.TensorProto.INT32),
                   g.one("Unsqueeze", [started, g.ints("axes", [0, 2])]))


def _merge_directions(g: GraphBuilder, y: str, directions: int) -> str:
    """``(T, D, B, H)`` -> ``(T, B, D*H)``, forward and backward side by side as torch has them."""
    if directions == 1:
        return g.one("Squeeze", [y, g.ints("axis1", [1])])
    y = g.one("Transpose", [y], perm=[0, 2, 1, 3])
    return g.one("Reshape", [y, g.ints("shape", [0, 0, -1])])


def _state_slices(g: GraphBuilder, model: RecurrentModel, name: str, layers: int, directions: int) -> list[str]:
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


def _step_guard(g: GraphBuilder, parts: list[str], axis: int) -> str:
    """One step's NaN guard per stream: NaN where any of ``parts`` holds a NaN in that stream, else 0.

    ``parts`` (the layer's input and state) are concatenated along their feature ``axis``
    and reduced there: one IsNaN/Where/ReduceSum for all of them. With T=1 the sequence
    guard's CumSums are identities, and a layer's ``Y`` is its ``Y_h``, so this one
    value guards ``Y_h`` and ``Y_c`` (and through them ``y`` and the next layer).
    """
    joined = g.one("Concat", parts, axis=axis) if len(parts) > 1 else parts[0]
    return g.one("ReduceSum", [_nan_only(g, joined), g.ints("axes", [axis])], keepdims=1)


def _step_layer(g: GraphBuilder, layer: NativeLayer, index: int, x: str, h: str, c: str | None,
                guard: str | None, names: tuple[str | None, ...]) -> tuple[str, str | None]:
    """One layer of a step graph: ``(Y_h, Y_c or None)``, each ``(1, B, H)``, guarded when ``guard`` is set.

    Nothing reads ``Y`` (it equals ``Y_h`` at T=1); ``names`` are the graph outputs the
    layer's final ``Y_h``/``Y_c`` should be written to directly, if any.
    """
    wanted = names[:2 if c is not None else 1]
    states = [n if guard is None and n else g.fresh(f"{layer.op.lower()}_state") for n in wanted]
    # Y keeps a name: onnx's ReferenceEvaluator binds an omitted ("") output to later omitted inputs
    _op_node(g, layer, index, x, h, c, [g.fresh(f"{layer.op.lower()}_unused_y"), *states])
    if guard is not None:
        states = [g.one("Add", [s, guard], n) for s, n in zip(states, wanted, strict=True)]
    return states[0], states[1] if c is not None else None


def _step_inputs(g: GraphBuilder, model: RecurrentModel, layers: int, guarded: bool
                 ) -> tuple[list[str], list[str | None], str | None]:
    """Each layer's initial ``h`` and ``c`` as the op takes them, ``(1, B, H)``, and a seed's guard.

    A seed cell's ``(B, H)`` state is unsqueezed (and guarded before, in 2-D, with ``x``);
    a module's ``(layers, B, H)`` state is the op's layout already, sliced per layer.
    """
    names = model.io.state.names
    c_in: list[str | None] = [None] * layers
    if model.io.state.batch_axis != 0:
        if len(names) == 2:
            c_in = list(_state_slices(g, model, names[1], layers, 1))
        return _state_slices(g, model, names[0], layers, 1), c_in, None
    guard = _step_guard(g, [X_NAME, *names], 1) if guarded else None
    unsqueezed = [g.one("Unsqueeze", [n, g.ints("axis0", [0])]) for n in names]
    if len(names) == 2:
        c_in = [unsqueezed[1]]
    return unsqueezed[:1], c_in, guard


def _step_outputs(g: GraphBuilder, model: RecurrentModel, h_out: list[str], c_out: list[str | None],
                  y: str | None) -> str:
    """Write the state outputs in the contract's layout; the last layer's ``h`` as ``(B, H)``.

    ``y``: the name to give that ``(B, H)`` value when it is the graph's output itself.
    """
    out_names = model.io.state.output_names
    outputs: list[tuple[list[str], str]] = [(h_out, out_names[0])]
    if len(out_names) == 2:
        outputs.append(([c for c in c_out if c is not None], out_names[1]))
    if model.io.state.batch_axis == 0:  # seed cells: (1, B, H) -> (B, H)
        for values, name in outputs:
            g.one("Squeeze", [values[0], g.ints("axis0", [0])], name)
        return g.one("Identity", [out_names[0]], y) if y else out_names[0]
    for values, name in outputs:
        if len(values) > 1:  # a single layer wrote its state output itself
            g.one("Concat", values, name, axis=0)
    return g.one("Squeeze", [h_out[-1], g.ints("axis0", [0])], y)


def _rnn_step_layer(g: GraphBuilder, layer: NativeLayer, index: int, x: str, h: str, guarded: bool,
                    output: str | None) -> str:
    """One plain-RNN layer of a step graph on ``(B, features)`` values: ``tanh([x, h] [W, R]^T + b)``.

    Not the RNN operator: onnxruntime's RNN kernel hands MLAS its unpacked ``W`` and ``R``,
    and MLAS sends a batch of one row to its M=1 kernel, which sums in another order than
    the blocked kernel a larger batch gets, so a stream's result would depend on the batch
    it shares. Gemm pre-packs constant weights: one kernel, one summation order, any B.
    ``x`` and ``h`` are concatenated so one Gemm does both products, and the NaN guard
    (the activation can turn NaN into a finite value, as the operator's did) reads that
    same concatenation.
    """
    if layer.activations not in (None, ("Tanh",)):
        raise AssertionError(f"plain-RNN step layer with activations {layer.activations}")  # plans write Tanh only
    size = layer.hidden_size
    xh = g.one("Concat", [x, h], axis=1)
    inputs = [xh, g.const(f"WR{index}", np.concatenate([layer.W[0], layer.R[0]], axis=1))]
    if layer.B is not None:
        inputs.append(g.const(f"B{index}", layer.B[0, :size] + layer.B[0, size:]))
    pre = g.one("Gemm", inputs, transB=1)
    if not guarded:
        return g.one("Tanh", [pre], output)
    guard = g.one("ReduceSum", [_nan_only(g, xh), g.ints("axes", [1])], keepdims=1)  # (B, 1): NaN or 0
    return g.one("Add", [g.one("Tanh", [pre]), guard], output)


def _build_rnn_step(model: RecurrentModel, g: GraphBuilder, guarded: bool) -> None:
    """A plain-RNN step graph of Gemm and Tanh nodes (:func:`_rnn_step_layer`), batch-invariant on CPU.

    A seed cell's ``(B, H)`` state is read and written as it is; a module's
    ``(layers, B, H)`` state is read with a Gather per layer and written with an
    Unsqueeze per layer and a Concat.
    """
    plan, io = model.native, model.io
    assert plan is not None
    h_name, h_out_name = io.state.names[0], io.state.output_names[0]
    seed = io.state.batch_axis == 0
    x, outputs = X_NAME, []
    for index, layer in enumerate(plan.layers):
        h = h_name if seed else g.one("Gather", [h_name, g.scalar("layer", np.array(index, np.int64))], axis=0)
        x = _rnn_step_layer(g, layer, index, x, h, guarded, h_out_name if seed else None)
        outputs.append(x)
    if not seed and len(outputs) == 1:
        g.one("Unsqueeze", [outputs[0], g.ints("axis0", [0])], h_out_name)
    elif not seed:
        layers = [g.one("Unsqueeze", [o, g.ints("axis0", [0])]) for o in outputs]
        g.one("Concat", layers, h_out_name, axis=0)
    if plan.head is not None:
        W_hq, b_q = plan.head
        g.one("Gemm", [x, g.const("W_hq", W_hq), g.const("b_q", b_q)], Y_NAME)
    else:
        g.one("Identity", [x], Y_NAME)


def _build_step(model: RecurrentModel, g: GraphBuilder, guarded: bool) -> None:
    """The nodes of a step graph: a reshape only where the contract's layout is not the op's.

    Only the state outputs of each layer are computed (``Y`` equals ``Y_h`` at T=1), the next
    layer reads ``Y_h`` as its ``(T=1, B, H)`` input, and the head is one 2-D Gemm.
    """
    plan, io = model.native, model.io
    assert plan is not None and plan.layers[0].directions == 1  # callers check: no step form otherwise
    h_in, c_in, seed_guard = _step_inputs(g, model, len(plan.layers), guarded)
    direct = io.state.batch_axis != 0 and len(plan.layers) == 1  # the op writes the contract's state
    x = g.one("Unsqueeze", [X_NAME, g.ints("axis0", [0])])
    h_out: list[str] = []
    c_out: list[str | None] = []
    for index, layer in enumerate(plan.layers):
        guard = None
        if guarded and layer.op in _MASKS_NAN:
            parts = [p for p in (x, h_in[index], c_in[index]) if p is not None]
            guard = seed_guard or _step_guard(g, parts, 2)
        outputs = io.state.output_names if direct else (None, None)
        x, y_c = _step_layer(g, layer, index, x, h_in[index], c_in[index], guard, outputs)
        h_out.append(x)
        c_out.append(y_c)
    last = _step_outputs(g, model, h_out, c_out, None if plan.head else Y_NAME)
    if plan.head is not None:
        W_hq, b_q = plan.head
        g.one("Gemm", [last, g.const("W_hq", W_hq), g.const("b_q", b_q)], Y_NAME)


def build_native(model: RecurrentModel, form: Form, nan: NanPolicy = NanPolicy.CARRY) -> onnx.ModelProto:
    """The whole graph for ``model`` (which must have a native plan) in ``form``.

    ``nan``: ``carry`` guards each layer whose kernel can turn NaN into finite values
    (:data:`_MASKS_NAN`, float32 input), ``refuse`` writes no guard.
    """
    plan = model.native
    assert plan is not None  # callers check model.native first
    io = model.io
    inputs, outputs = io.inputs(form), io.outputs(form)
    g = GraphBuilder()
    guarded = io.x_dtype == "float32" and NanPolicy(nan) is NanPolicy.CARRY
    if form is Form.STEP:
        plain = all(layer.op == "RNN" for layer in plan.layers)
        (_build_rnn_step if plain else _build_step)(model, g, guarded)
        return _finish(g, inputs, outputs)
    state_names = io.state.names
    directions = plan.layers[0].directions
    x = inputs[0].name
    if io.layout is Layout.BATCH_MAJOR:
        x = g.one("Transpose", [x], perm=[1, 0, 2])
    h_parts = _state_slices(g, model, state_names[0], len(plan.layers), directions)
    c_parts: list[str | None] = (list(_state_slices(g, model, state_names[1], len(plan.layers), directions))
                                 if len(state_names) == 2 else [None] * len(plan.layers))
    lengths = _Lengths.of(g, io.lengths.name, x) if io.lengths is not None else None
    h_out: list[str] = []
    c_out: list[str] = []
    for index, layer in enumerate(plan.layers):
        y, y_h, y_c = _layer_node(g, layer, index, x, h_parts[index], c_parts[index], lengths)
        if layer.op in _MASKS_NAN and guarded:
            per_step, final = _nan_guard(g, x, h_parts[index], c_parts[index], layer.directions)
            y, y_h = g.one("Add", [y, per_step]), g.one("Add", [y_h, final])
            y_c = g.one("Add", [y_c, final]) if y_c is not None else None
        x = _merge_directions(g, y, layer.directions)
        h_out.append(y_h)
        if y_c is not None:
            c_out.append(y_c)
    if plan.head is not None:
        W_hq, b_q = plan.head
        x = g.one("Add", [g.one("MatMul", [x, g.const("W_hq", W_hq)]), g.const("b_q", b_q)])
    y_name = outputs[0].name
    if io.layout is Layout.BATCH_MAJOR:
        g.one("Transpose", [x], y_name, perm=[1, 0, 2])
    else:
        g.one("Identity", [x], y_name)
    for parts, output in zip((h_out, c_out)[:len(state_names)], outputs[1:], strict=True):  # no c: GRU, RNN
        _state_output(g, model, parts, output.name)
    return _finish(g, inputs, outputs)


def _finish(g: GraphBuilder, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> onnx.ModelProto:
    graph = helper.make_graph(
        g.nodes,
        "rnnexport_native",
        [value_info(s) for s in inputs],
        [value_info(s) for s in outputs],
        initializer=g.initializers,
    )
    return finish_model(graph)
