"""The bidirectional scan: each layer a forward Scan and a reverse Scan over the same input.

A bidirectional layer needs the whole sequence before its first output, so it has no step
form; as a sequence it is two one-direction layers over the same input, the second run
from the last step to the first (ONNX ``Scan``'s ``scan_input_directions`` and
``scan_output_directions``), their outputs concatenated along the features. A stack of
layers is a chain of them.

For a bare torch.nn module (:func:`bidirectional_scan`), each half is the scan lowering of a
one-layer unidirectional torch.nn module holding that half's weights, so it gets every
rewrite the scan lowering has; the native operators cannot carry ``proj_size`` or a Relu RNN
everywhere, this can. A module with a bidirectional layer inside (Embedding -> biLSTM ->
Linear) is traced whole at a dynamic T (:func:`scanned_sequence`), each direction of its
recurrent layers written as a torch scan, which torch's exporter writes as a Scan (reverse for
the backward direction); the layers around it are traced as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
import torch
from onnx import helper

from rnnexport.core.contract import BATCH, Form, Layout
from rnnexport.core.graphs import attribute
from rnnexport.core.onnxfile import value_info
from rnnexport.export.nanprobe import nan_sources
from rnnexport.export.onnxutil import GraphBuilder, finish_model
from rnnexport.export.passes.graph import (
    batch_axis,
    constant_value,
    prefix_names,
    producers,
    readers,
    remove_dead,
    toposort,
)
from rnnexport.export.passes.nan import carry_nan
from rnnexport.export.scan import wrap_in_scan
from rnnexport.export.trace import export_failure, trace
from rnnexport.source.explicit import scanned_copy
from rnnexport.source.model import RecurrentModel
from rnnexport.source.torchnn import MODULES, weight_suffix

__all__ = ["NO_STEP_FORM", "bidirectional_rnn", "bidirectional_scan", "direction_halves", "scanned_sequence"]

#: Why a model with a bidirectional layer cannot be converted to a step graph.
NO_STEP_FORM = ("a bidirectional model has no step form: its backward direction needs the whole sequence "
                "before its first output; convert the sequence form")


def bidirectional_rnn(model: RecurrentModel) -> torch.nn.RNNBase | None:
    """The bare bidirectional torch.nn RNN/LSTM/GRU ``model`` was made from, else None."""
    inner = getattr(model.sequence_module, "module", None)  # sources.TorchSequence
    if isinstance(inner, torch.nn.RNNBase) and inner.bidirectional:
        return inner
    return None


def _half(rnn: torch.nn.RNNBase, layer: int, direction: int) -> torch.nn.RNNBase:
    """One direction of one layer of ``rnn`` as a one-layer, unidirectional, time-major module."""
    proj = getattr(rnn, "proj_size", 0)
    width = (proj or rnn.hidden_size) * 2
    extra: dict[str, object] = {}
    if rnn.mode.startswith("RNN_"):
        extra["nonlinearity"] = "relu" if rnn.mode == "RNN_RELU" else "tanh"
    if proj:
        extra["proj_size"] = proj
    half = MODULES[rnn.mode](rnn.input_size if layer == 0 else width, rnn.hidden_size, num_layers=1,
                              bias=rnn.bias, batch_first=False, **extra)
    suffix = weight_suffix(layer, direction)
    with torch.no_grad():
        for name in half._flat_weights_names:  # weight_ih_l0, ..., weight_hr_l0
            getattr(half, name).copy_(getattr(rnn, name[: -len("_l0")] + suffix))
    return half.eval()


def direction_halves(rnn: torch.nn.RNNBase) -> list[tuple[RecurrentModel, RecurrentModel]]:
    """Per layer of ``rnn``, its forward and backward halves as models of their own."""
    from rnnexport.source.sources import from_module

    return [(from_module(_half(rnn, layer, 0)), from_module(_half(rnn, layer, 1)))
            for layer in range(rnn.num_layers)]


def _merge(graph: onnx.GraphProto, part: onnx.ModelProto, prefix: str) -> None:
    """Add ``part``'s nodes, weights and value types to ``graph``, every name under ``prefix``."""
    prefix_names(part.graph, prefix)
    graph.node.extend(part.graph.node)
    graph.initializer.extend(part.graph.initializer)
    graph.value_info.extend(part.graph.value_info)


def bidirectional_scan(
    model: RecurrentModel, rnn: torch.nn.RNNBase,
    trace_step: Callable[[RecurrentModel], onnx.ModelProto | str], guard_nan: bool = True,
) -> onnx.ModelProto | str:
    """The sequence graph of ``model`` (a bare bidirectional ``rnn``), or why it cannot be made.

    Args:
        trace_step: traces one step of a half (its step graph), or says why it cannot.
        guard_nan: carry NaN through each half as PyTorch does (:func:`carry_nan`); False for
            a graph whose runtime refuses non-finite input.
    """
    io = model.io
    inputs, outputs = io.inputs(Form.SEQUENCE), io.outputs(Form.SEQUENCE)
    g = GraphBuilder()
    x = inputs[0].name
    if io.layout is Layout.BATCH_MAJOR:
        x = g.one("Transpose", [x], "bidi/x_time_major", perm=[1, 0, 2])
    finals: list[list[str]] = [[] for _ in io.state.names]  # per state name, per layer and direction
    parts: list[tuple[onnx.ModelProto, str]] = []
    opsets: dict[str, int] = {}
    functions: dict[tuple[str, str], onnx.FunctionProto] = {}
    for layer, halves in enumerate(direction_halves(rnn)):
        ys = []
        for direction, half in enumerate(halves):
            step = trace_step(half)
            if isinstance(step, str):
                return f"layer {layer}'s {'backward' if direction else 'forward'} half: {step}"
            graph = wrap_in_scan(half, step, reverse=bool(direction))
            if guard_nan:
                carry_nan(graph, half.io, Form.SEQUENCE, reverse=bool(direction),
                          sources=nan_sources(half, Form.SEQUENCE))
            prefix = f"l{layer}{'b' if direction else 'f'}/"
            index = g.ints("bidi/index", [layer * 2 + direction])
            g.one("Identity", [x], prefix + half.io.inputs(Form.SEQUENCE)[0].name)
            for k, name in enumerate(io.state.names):
                end = g.ints("bidi/end", [layer * 2 + direction + 1])
                g.one("Slice", [name, index, end], prefix + name)
                finals[k].append(prefix + half.io.state.output_names[k])
            ys.append(prefix + half.io.outputs(Form.SEQUENCE)[0].name)
            parts.append((graph, prefix))
            opsets.update({o.domain: o.version for o in graph.opset_import})
            functions.update({(f.domain, f.name): f for f in graph.functions})
        x = g.one("Concat", ys, f"bidi/l{layer}_y", axis=-1)
    y = outputs[0].name
    if io.layout is Layout.BATCH_MAJOR:
        g.one("Transpose", [x], y, perm=[1, 0, 2])
    else:
        g.one("Identity", [x], y)
    for k, out in enumerate(io.state.output_names):
        g.one("Concat", finals[k], out, axis=0)
    graph = helper.make_graph(g.nodes, "rnnexport_bidirectional_scan",
                              [value_info(s) for s in inputs], [value_info(s) for s in outputs],
                              initializer=g.initializers)
    for part, prefix in parts:
        _merge(graph, part, prefix)
    toposort(graph)
    result = finish_model(graph, opset=opsets.pop("", 20), extra_opsets=opsets)
    result.functions.extend(functions.values())
    return result


def scanned_sequence(model: RecurrentModel) -> onnx.ModelProto | str:
    """The sequence graph of a module with a bidirectional layer inside, traced at any T, or why not."""
    assert model.trace_module is not None  # set in RecurrentModel.__post_init__
    io = model.io.without_lengths()  # the module never sees lengths: the lowering masks the Scans after
    try:
        graph = trace(scanned_copy(model.trace_module), io, io.inputs(Form.SEQUENCE), io.outputs(Form.SEQUENCE),
                      dynamic_time=True)
    except Exception as e:  # noqa: BLE001 - torch's tracer fails in many ways; all mean "cannot trace"
        return f"torch.onnx could not trace the sequence at any T: {export_failure(e)}"
    _reverse_scans(graph.graph)
    _carried_shapes(graph.graph)
    if model.io.lengths is not None:
        graph.graph.input.append(value_info(model.io.lengths.tensor))
    return graph


def _flipped(graph: onnx.GraphProto, node: onnx.NodeProto | None) -> str | None:
    """What ``node`` reverses along axis 0 (a ``Slice`` from the last step with step -1), else None."""
    if node is None or node.op_type != "Slice" or node.domain or len(node.input) != 5:
        return None
    starts, ends, axes, steps = (constant_value(graph, name) for name in node.input[1:])
    if starts is None or ends is None or axes is None or steps is None:
        return None
    if [list(v.ravel()) for v in (starts, axes, steps)] == [[-1], [0], [-1]] and ends.size == 1 and ends.item() <= -(2**31):
        return node.input[0]
    return None


def _set_ints(node: onnx.NodeProto, name: str, value: list[int]) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])


def _reverse_scans(graph: onnx.GraphProto) -> None:
    """Make each flipped-input, flipped-output forward ``Scan`` (how torch writes a reverse scan) a reverse Scan.

    The same computation, written as the bare bidirectional lowering writes it: tract cannot infer
    a step -1 ``Slice`` over a dynamic axis, and a lengths mask must read a reverse Scan backwards.
    """
    made, read = producers(graph), readers(graph.node)
    outputs = {v.name for v in graph.output}
    for scan in [n for n in graph.node if n.op_type == "Scan" and not n.domain]:
        scans = int(attribute(scan, "num_scan_inputs"))
        states = len(scan.input) - scans
        sources = [_flipped(graph, made.get(name)) for name in scan.input[states:]]
        flips = [read.get(name, []) for name in scan.output[states:]]
        if any(s is None for s in sources) or any(
                len(users) != 1 or _flipped(graph, users[0]) is None or name in outputs
                for name, users in zip(scan.output[states:], flips, strict=True)):
            continue
        for index, source in enumerate(sources):
            scan.input[states + index] = str(source)
        for index, (flip,) in enumerate(flips):
            scan.output[states + index] = flip.output[0]
            graph.node.remove(flip)
        _set_ints(scan, "scan_input_directions", [1] * scans)
        _set_ints(scan, "scan_output_directions", [1] * (len(scan.output) - states))
    remove_dead(graph)


def _carried_shapes(graph: onnx.GraphProto) -> None:
    """Name the batch ``B`` throughout each Scan body (torch gives the body its own symbol for it).

    The symbol is read where a carried state comes in with it and goes out with ``B``.
    """
    for scan in [n for n in graph.node if n.op_type == "Scan" and not n.domain]:
        body = attribute(scan, "body")
        states = len(scan.input) - int(attribute(scan, "num_scan_inputs"))
        renamed: dict[str, str] = {}
        for state_in, state_out in zip(body.input[:states], body.output[:states], strict=True):
            axis, dims = batch_axis(state_out), state_in.type.tensor_type.shape.dim
            if axis is not None and axis < len(dims) and dims[axis].dim_param:
                renamed[dims[axis].dim_param] = BATCH
        for value in [*body.input, *body.output, *body.value_info]:
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param in renamed:
                    dim.dim_param = renamed[dim.dim_param]
