"""Graph queries the scan rewrites share: producers, consumers, constants, inferred shapes.

The rewrites edit a traced step graph in place. Every query here is recomputed
from the graph when asked, so a rewrite never works from a stale index. Which
subgraphs a node holds is :func:`rnnexport.core.graphs.subgraphs`' business.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from rnnexport.core.contract import (
    BATCH,  # the symbolic batch of traced step graphs (see export/trace.py)
)
from rnnexport.core.graphs import attribute, subgraphs
from rnnexport.core.onnxfile import value_dims

__all__ = [
    "BATCH",
    "Types",
    "batch_axis",
    "constant_value",
    "constants",
    "consumers",
    "infer_types",
    "producers",
    "remove_dead",
    "rename_value",
    "same_shape",
    "toposort",
]

Types = dict[str, onnx.ValueInfoProto]


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output if o}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Who reads each value; a node reading a value twice is listed twice."""
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
        for sub in subgraphs(node):
            for name in _free_names(sub):
                users.setdefault(name, []).append(node)
    return users


def _free_names(graph: onnx.GraphProto) -> set[str]:
    """Values a subgraph reads from its enclosing scope."""
    local = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    local |= {o for n in graph.node for o in n.output}
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for node in graph.node:
        for sub in subgraphs(node):
            read |= _free_names(sub)
    return read - local - {""}


def constants(graph: onnx.GraphProto) -> set[str]:
    """Initializers and outputs of ``Constant`` nodes."""
    names = {t.name for t in graph.initializer}
    return names | {o for n in graph.node if n.op_type == "Constant" and not n.domain for o in n.output}


def constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of an initializer or ``Constant`` node output, else None."""
    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in graph.node:
        if node.op_type == "Constant" and name in node.output:
            value = attribute(node, "value")
            return numpy_helper.to_array(value) if value is not None else None
    return None


def infer_types(model: onnx.ModelProto) -> Types:
    """Shape inference (with data propagation) of ``model``: every known value's type."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = inferred.graph
    return {v.name: v for v in [*graph.value_info, *graph.input, *graph.output]}


def batch_axis(value: onnx.ValueInfoProto | None) -> int | None:
    """The one axis of ``value`` whose size is the batch, when exactly one is and the rest are known."""
    shape = value_dims(value)
    if shape is None or any(d is None or (isinstance(d, str) and d != BATCH) for d in shape):
        return None
    axes = [i for i, d in enumerate(shape) if d == BATCH]
    return axes[0] if len(axes) == 1 else None


def same_shape(a: onnx.ValueInfoProto | None, b: onnx.ValueInfoProto | None) -> bool:
    """Whether two values certainly have one shape: every dim static or the batch, and equal."""
    if a is None or b is None:
        return False
    da, db = value_dims(a), value_dims(b)
    certain = da is not None and all(isinstance(d, int) or d == BATCH for d in da)
    return certain and da == db and a.type.tensor_type.elem_type == b.type.tensor_type.elem_type


def rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Make every reader of ``old`` (subgraphs included) read ``new`` instead."""
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        for sub in subgraphs(node):
            if old in _free_names(sub):
                rename_value(sub, old, new)
    for out in graph.output:
        if out.name == old:
            out.name = new


def remove_dead(graph: onnx.GraphProto) -> None:
    """Drop nodes none of whose outputs is read (graph outputs count as read)."""
    while True:
        read = set(consumers(graph)) | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in read for o in n.output if o)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def toposort(graph: onnx.GraphProto) -> None:
    """Order ``graph.node`` so every node follows the producers of its inputs (stable)."""
    made = producers(graph)
    placed: set[int] = set()
    order: list[onnx.NodeProto] = []

    def place(node: onnx.NodeProto) -> None:
        stack = [(node, False)]
        while stack:
            current, ready = stack.pop()
            if id(current) in placed:
                continue
            if ready:
                placed.add(id(current))
                order.append(current)
                continue
            stack.append((current, True))
            needs = [*current.input, *(n for s in subgraphs(current) for n in _free_names(s))]
            stack.extend((made[i], False) for i in reversed(needs) if i in made and id(made[i]) not in placed)

    for node in list(graph.node):
        place(node)
    del graph.node[:]
    graph.node.extend(order)
