"""The primitives every pass edits graphs with: who makes and who reads a value, renaming, cleanup, types.

The passes edit protobuf graphs in place. Every query here is recomputed from the
graph when asked, so a pass never works from a stale index. Which subgraphs a node
holds is :func:`rnnexport.core.graphs.subgraphs`' business; fresh names and new
nodes come from :class:`rnnexport.export.onnxutil.GraphBuilder`.

- who makes a value: :func:`producers`; who reads it: :func:`readers` (a node whose
  subgraph reads a value from the enclosing scope reads it too), :func:`read_names`;
- renaming: :func:`replace_uses` (readers read another value), :func:`rename_output`
  (a node writes another name), :func:`rename_values` (a node's values by a table),
  :func:`prefix_names` (a whole graph), :func:`copy_value`; a renamed node copy is
  ``GraphBuilder.copy``;
- cleanup: :func:`remove_dead` (and its pass, :func:`remove_dead_nodes`),
  :func:`drop_unused_initializers`, :func:`toposort`;
- constants and inferred types: :func:`constants`, :func:`constant_value`,
  :func:`infer_types`, :func:`batch_axis`, :func:`same_shape`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from rnnexport.core.contract import (
    BATCH,  # the symbolic batch of traced step graphs (see export/trace.py)
)
from rnnexport.core.graphs import attribute, subgraphs, walk_graphs
from rnnexport.core.onnxfile import value_dims
from rnnexport.export.passes.base import PassResult

__all__ = [
    "BATCH",
    "Types",
    "batch_axis",
    "constant_value",
    "constants",
    "copy_value",
    "drop_unused_initializers",
    "free_names",
    "infer_types",
    "prefix_names",
    "producers",
    "read_names",
    "readers",
    "remove_dead",
    "remove_dead_nodes",
    "rename_output",
    "rename_values",
    "replace_uses",
    "same_shape",
    "toposort",
]

Types = dict[str, onnx.ValueInfoProto]


# --- who makes and who reads a value -------------------------------------------------------------

def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """The node that writes each value of ``graph``."""
    return {o: n for n in graph.node for o in n.output if o}


def readers(nodes: Iterable[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    """Who reads each value: an input, or a name a node's subgraph reads from outside; twice read, twice listed."""
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            found.setdefault(name, []).append(node)
        for sub in subgraphs(node):
            for name in free_names(sub):
                found.setdefault(name, []).append(node)
    return found


def read_names(graph: onnx.GraphProto) -> set[str]:
    """Every value something reads: a node of ``graph`` (its subgraphs included) or the graph's outputs."""
    return set(readers(graph.node)) | {o.name for o in graph.output}


def free_names(graph: onnx.GraphProto) -> set[str]:
    """Values a subgraph reads from its enclosing scope."""
    local = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    local |= {o for n in graph.node for o in n.output}
    return read_names(graph) - local - {""}


# --- renaming --------------------------------------------------------------------------------------

def replace_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Make every reader of ``old`` (subgraphs included) read ``new``; ``graph``'s own outputs keep their names."""
    _replace(graph, old, new, outputs=False)


def _replace(graph: onnx.GraphProto, old: str, new: str, outputs: bool) -> None:
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        for sub in subgraphs(node):
            if old in free_names(sub):
                _replace(sub, old, new, outputs=True)  # a body output may name an outer value
    for out in graph.output if outputs else []:
        if out.name == old:
            out.name = new


def copy_value(value: onnx.ValueInfoProto, name: str | None = None) -> onnx.ValueInfoProto:
    """A copy of a value's name and type, renamed ``name`` if given (the original stays where it is)."""
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(value)
    if name is not None:
        copy.name = name
    return copy


def rename_output(node: onnx.NodeProto, old: str, new: str) -> None:
    """Make ``node`` write ``new`` where it wrote ``old`` (its readers are :func:`replace_uses`' business)."""
    node.output[:] = [new if o == old else o for o in node.output]


def prefix_names(graph: onnx.GraphProto, prefix: str) -> None:
    """Prefix every value and node name in ``graph`` and its subgraphs, in place."""
    def rename(name: str) -> str:
        return prefix + name if name else name

    for sub in list(walk_graphs(graph)):
        for value in [*sub.input, *sub.output, *sub.value_info]:
            value.name = rename(value.name)
        for tensor in sub.initializer:
            tensor.name = rename(tensor.name)
        for node in sub.node:
            node.name = rename(node.name)
            _rename_io(node, rename)


def _rename_io(node: onnx.NodeProto, rename: Callable[[str], str]) -> None:
    node.input[:] = [rename(n) for n in node.input]
    node.output[:] = [rename(n) for n in node.output]


def rename_values(node: onnx.NodeProto, renamed: Mapping[str, str]) -> None:
    """Make ``node`` read and write ``renamed[v]`` for each of its values ``v`` listed there."""
    _rename_io(node, lambda value: renamed.get(value, value))


# --- cleanup ---------------------------------------------------------------------------------------

def remove_dead(graph: onnx.GraphProto) -> bool:
    """Drop nodes none of whose outputs is read (graph outputs count as read); whether any was."""
    removed = False
    while True:
        read = read_names(graph)
        dead = [n for n in graph.node if not any(o in read for o in n.output if o)]
        if not dead:
            return removed
        for node in dead:
            graph.node.remove(node)
        removed = True


def remove_dead_nodes(model: onnx.ModelProto) -> PassResult[onnx.ModelProto]:
    """The pass form of :func:`remove_dead`."""
    return PassResult(model, remove_dead(model.graph))


def drop_unused_initializers(graph: onnx.GraphProto) -> bool:
    """Drop the initializers of ``graph`` that nothing reads; whether any was."""
    read = read_names(graph)
    kept = [t for t in graph.initializer if t.name in read]
    if len(kept) == len(graph.initializer):
        return False
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return True


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
            needs = [*current.input, *(n for s in subgraphs(current) for n in free_names(s))]
            stack.extend((made[i], False) for i in reversed(needs) if i in made and id(made[i]) not in placed)

    for node in list(graph.node):
        place(node)
    del graph.node[:]
    graph.node.extend(order)


# --- constants and inferred types ------------------------------------------------------------------

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
