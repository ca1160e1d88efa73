"""The scan lowering: one traced step wrapped in an ONNX ``Scan`` over the time axis.

Works for any cell whose step torch can trace. The step graph becomes the Scan
body (state inputs first, then the time slices); its weights move to the outer
graph, where the body reads them by name. Whatever the step computes from ``x_t``
alone is hoisted out of the loop (see :mod:`rnnexport.export.hoist`).
"""

from __future__ import annotations

import onnx
from onnx import helper

from rnnexport.export.hoist import hoist_inputs
from rnnexport.export.onnxutil import finish_model, value_info
from rnnexport.model import Form, RecurrentModel

__all__ = ["wrap_in_scan"]

_PREFIX = "step/"


def _rename_graph(graph: onnx.GraphProto, prefix: str) -> None:
    """Prefix every value and node name in ``graph`` and its subgraphs, in place."""
    def rename(name: str) -> str:
        return prefix + name if name else name

    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = rename(value.name)
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for node in graph.node:
        node.name = rename(node.name)
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_graph(sub, prefix)


def _copy(value: onnx.ValueInfoProto, name: str | None = None) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(value)
    if name is not None:
        copy.name = name
    return copy


def _used_names(graph: onnx.GraphProto) -> set[str]:
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                used |= _used_names(sub)
    return used


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = _used_names(graph)
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def wrap_in_scan(model: RecurrentModel, step: onnx.ModelProto, hoist: bool = True) -> onnx.ModelProto:
    """A sequence graph that runs ``step`` (a step-form graph of ``model``) along time."""
    io = model.io
    inputs, outputs = io.inputs(Form.SEQUENCE), io.outputs(Form.SEQUENCE)
    x_name, time_axis = inputs[0].name, io.time_axis
    work = onnx.ModelProto()
    work.CopyFrom(step)
    hoisted = hoist_inputs(work, x_name, len(inputs[0].shape), time_axis) if hoist else None
    weights = {t.name for t in work.graph.initializer}
    body = work.graph
    _rename_graph(body, _PREFIX)
    by_name = {v.name: v for v in [*body.input, *body.output]}
    body_inputs = [_copy(by_name[_PREFIX + s.name]) for s in inputs[1:]]
    scan_inputs, scan_axes, outer_nodes = [], [], []
    if hoisted is None or hoisted.keep_x:
        body_inputs.append(_copy(by_name[_PREFIX + x_name]))
        scan_inputs.append(x_name)
        scan_axes.append(time_axis)
    if hoisted is not None:
        for value, outer_name, axis in hoisted.scan_inputs:
            body_inputs.append(_copy(value, _PREFIX + value.name))
            scan_inputs.append(outer_name)
            scan_axes.append(axis)
        for node in hoisted.outer_nodes:
            node.input[:] = [_PREFIX + i if i in weights else i for i in node.input]
            outer_nodes.append(node)
    body_outputs = [_copy(by_name[_PREFIX + s.name]) for s in outputs[1:]]
    body_outputs.append(_copy(by_name[_PREFIX + outputs[0].name]))
    weight_tensors = list(body.initializer)
    if hoisted is not None:
        weight_tensors += hoisted.outer_initializers
    del body.initializer[:]
    body_graph = helper.make_graph(list(body.node), "step", body_inputs, body_outputs,
                                   value_info=list(body.value_info))
    scan = helper.make_node(
        "Scan",
        [s.name for s in inputs[1:]] + scan_inputs,
        [s.name for s in outputs[1:]] + [outputs[0].name],
        name="scan",
        body=body_graph,
        num_scan_inputs=len(scan_inputs),
        scan_input_axes=scan_axes,
        scan_output_axes=[time_axis],
    )
    graph = helper.make_graph(
        [*outer_nodes, scan],
        "rnnexport_scan",
        [value_info(s) for s in inputs],
        [value_info(s) for s in outputs],
        initializer=weight_tensors,
    )
    _drop_unused_initializers(graph)
    opsets = {o.domain: o.version for o in step.opset_import}
    result = finish_model(graph, opset=opsets.pop("", 20), extra_opsets=opsets)
    result.functions.extend(step.functions)
    return result
