"""The scan lowering: one traced step wrapped in an ONNX ``Scan`` over the time axis.

Works for any cell whose step torch can trace. The step graph becomes the Scan
body (state inputs first, then the time slice of ``x``); its weights move to the
outer graph, where the body reads them by name.
"""

from __future__ import annotations

import onnx
from onnx import helper

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


def wrap_in_scan(model: RecurrentModel, step: onnx.ModelProto) -> onnx.ModelProto:
    """A sequence graph that runs ``step`` (a step-form graph of ``model``) along time."""
    io = model.io
    inputs, outputs = io.inputs(Form.SEQUENCE), io.outputs(Form.SEQUENCE)
    body = onnx.GraphProto()
    body.CopyFrom(step.graph)
    _rename_graph(body, _PREFIX)
    by_name = {v.name: v for v in [*body.input, *body.output]}
    body_inputs = [by_name[_PREFIX + s.name] for s in inputs[1:]] + [by_name[_PREFIX + inputs[0].name]]
    body_outputs = [by_name[_PREFIX + s.name] for s in outputs[1:]] + [by_name[_PREFIX + outputs[0].name]]
    weights = list(body.initializer)
    del body.initializer[:]
    body_copy = helper.make_graph(
        list(body.node), "step", [_copy(v) for v in body_inputs], [_copy(v) for v in body_outputs],
        value_info=list(body.value_info),
    )
    time_axis = io.time_axis
    scan = helper.make_node(
        "Scan",
        [s.name for s in inputs[1:]] + [inputs[0].name],
        [s.name for s in outputs[1:]] + [outputs[0].name],
        name="scan",
        body=body_copy,
        num_scan_inputs=1,
        scan_input_axes=[time_axis],
        scan_output_axes=[time_axis],
    )
    graph = helper.make_graph(
        [scan],
        "rnnexport_scan",
        [value_info(s) for s in inputs],
        [value_info(s) for s in outputs],
        initializer=weights,
    )
    opsets = {o.domain: o.version for o in step.opset_import}
    result = finish_model(graph, opset=opsets.pop("", 20), extra_opsets=opsets)
    result.functions.extend(step.functions)
    return result


def _copy(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(value)
    return copy
