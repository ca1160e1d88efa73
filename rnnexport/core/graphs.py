"""Walking ONNX graphs: the one place that knows how subgraphs hang off nodes.

Every pass, check and summary that looks into Scan/Loop/If bodies goes through
:func:`subgraphs` and :func:`walk`, so no module re-implements the recursion.
Torch-free (onnx only).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import onnx
from onnx import helper

__all__ = ["attribute", "attributes", "operators", "subgraphs", "tensors", "walk", "walk_graphs"]


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held by ``node``'s attributes (If/Loop/Scan bodies), in attribute order."""
    found: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.HasField("g"):
            found.append(attr.g)
        found.extend(attr.graphs)
    return found


def walk_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph nested in it, outermost first."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from walk_graphs(sub)


def _attribute_tensors(attrs: Iterable[onnx.AttributeProto]) -> Iterator[onnx.TensorProto]:
    for attr in attrs:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        sparse = [*([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []), *attr.sparse_tensors]
        for found in sparse:
            yield from (found.values, found.indices)
        for sub in [*([attr.g] if attr.HasField("g") else []), *attr.graphs]:
            yield from _graph_tensors(sub)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _attribute_tensors(node.attribute)


def tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor the model holds: initializers (sparse ones too) and attribute tensors of every graph,
    subgraph, function and training graph (the places ONNX external data can be)."""
    yield from _graph_tensors(model.graph)
    for info in model.training_info:
        yield from (*_graph_tensors(info.initialization), *_graph_tensors(info.algorithm))
    for function in model.functions:
        yield from _attribute_tensors(function.attribute_proto)
        for node in function.node:
            yield from _attribute_tensors(node.attribute)


def walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs, depth first (a node before its bodies)."""
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from walk(sub)


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """``node``'s attributes as Python values (bytes strings decoded)."""
    values = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        values[attr.name] = value
    return values


def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """One attribute of ``node`` as a Python value, or ``default`` when it is not set."""
    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def operators(graph: onnx.GraphProto) -> set[str]:
    """Operator types in ``graph`` and its subgraphs, as ``domain::Op`` for non-default domains."""
    return {f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in walk(graph)}
