"""Dropping chains of view ops that end where they started.

Traced steps are full of pure re-shapes: ``x.unsqueeze(0)`` then ``for X in
inputs`` (Unsqueeze -> Slice -> Squeeze, or Unsqueeze -> Gather(0)), or a
``view(1, B, Q)`` that a ``squeeze(0)`` undoes. Each is a node ONNX Runtime runs
per step. A chain of ops that only re-shape (they keep every element, in
order) and whose last shape equals its first is the identity, so its readers
can read the chain's start directly.

Shapes come from ONNX shape inference; a chain is dropped only when both ends'
shapes are certain (every dim static or the batch) and equal.
"""

from __future__ import annotations

import numpy as np
import onnx

from rnnexport.core.graphs import attribute
from rnnexport.core.onnxfile import value_dims
from rnnexport.export.passes.base import PassResult, fixpoint
from rnnexport.export.passes.graph import (
    Types,
    constant_value,
    infer_types,
    producers,
    remove_dead,
    rename_output,
    replace_uses,
    same_shape,
)

__all__ = ["VIEW_OPS", "drop_identity_views", "drop_one_view_chain", "is_view"]

#: Default-domain ops that only re-shape their first input, whatever the shapes:
#: they keep every element, in order. The one definition of a view op; ``Slice``
#: and ``Gather`` are views only in the cases :func:`is_view` checks.
VIEW_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})


def _whole_slice(graph: onnx.GraphProto, node: onnx.NodeProto, types: Types) -> bool:
    """A Slice that keeps every element in order: positive steps and an unchanged shape."""
    steps = constant_value(graph, node.input[4]) if len(node.input) > 4 and node.input[4] else np.ones(1)
    return steps is not None and bool((steps > 0).all()) and same_shape(types.get(node.input[0]),
                                                                          types.get(node.output[0]))


def _unit_gather(graph: onnx.GraphProto, node: onnx.NodeProto, types: Types) -> bool:
    """``Gather`` of a constant scalar index 0 or -1 along an axis of size 1: a squeeze."""
    index = constant_value(graph, node.input[1])
    shape = value_dims(types.get(node.input[0]))
    axis = attribute(node, "axis", 0)
    if index is None or index.shape != () or int(index) not in (0, -1) or shape is None:
        return False
    return -len(shape) <= axis < len(shape) and shape[axis] == 1


def is_view(graph: onnx.GraphProto, node: onnx.NodeProto, types: Types) -> bool:
    """Whether ``node`` only re-shapes its first input: it keeps every element, in order."""
    if node.domain or not node.input or len(node.output) != 1:
        return False
    if node.op_type in VIEW_OPS:
        return True
    if node.op_type == "Slice":
        return _whole_slice(graph, node, types)
    return node.op_type == "Gather" and _unit_gather(graph, node, types)


def _chain_start(name: str, views: dict[str, onnx.NodeProto], types: Types) -> str | None:
    """The furthest value up a chain of views that has ``name``'s shape, if any."""
    start, current = None, name
    while current in views:
        current = views[current].input[0]
        if same_shape(types.get(current), types.get(name)):
            start = current
    return start


def drop_one_view_chain(model: onnx.ModelProto) -> PassResult[onnx.ModelProto]:
    """Bypass one view chain that ends in its starting shape, in place, and drop what it leaves dead."""
    graph = model.graph
    types = infer_types(model)
    views = {n.output[0]: n for n in graph.node if is_view(graph, n, types)}
    boundary = {v.name for v in [*graph.input, *graph.output]}
    made = producers(graph)
    for name in views:
        start = _chain_start(name, views, types)
        if start is None:
            continue
        if name not in boundary:
            replace_uses(graph, name, start)
        elif start not in boundary and start in made:
            _take_name(graph, made[start], start, name)  # the chain ends in a graph output
        else:
            continue
        remove_dead(graph)
        return PassResult(model, True)
    return PassResult(model, False)


def drop_identity_views(model: onnx.ModelProto) -> PassResult[onnx.ModelProto]:
    """Bypass every view chain that ends in its starting shape, in place."""
    return fixpoint(drop_one_view_chain)(model)


def _take_name(graph: onnx.GraphProto, producer: onnx.NodeProto, start: str, output: str) -> None:
    """Let ``producer`` write the graph output ``output`` in place of its value ``start``."""
    rename_output(producers(graph)[output], output, f"{output}__dropped")
    rename_output(producer, start, output)
    replace_uses(graph, start, output)
