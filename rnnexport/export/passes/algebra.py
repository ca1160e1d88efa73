"""Re-associating bias additions and fusing matmuls that share a left input.

Both prepare a traced step for hoisting (:mod:`rnnexport.export.passes.hoist`): a
gate's bias joins ``x @ W_x`` on the input side, and one wide matmul replaces one
matmul per gate. The step's data input ``x`` is its first graph input.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from rnnexport.export.onnxutil import GraphBuilder
from rnnexport.export.passes.base import PassResult
from rnnexport.export.passes.graph import constants, producers, readers
from rnnexport.export.passes.hoist import input_only

__all__ = ["fuse_matmuls", "lift_biases"]


def _regroup(terms: list[str], derived: set[str], constant: set[str]) -> tuple[str, str, str] | None:
    """``(d, b, s)``: the one input-only term, the one constant and the one other, if so."""
    d = [t for t in terms if t in derived]
    b = [t for t in terms if t in constant]
    s = [t for t in terms if t not in derived and t not in constant]
    return (d[0], b[0], s[0]) if len(d) == len(b) == len(s) == 1 else None


def lift_biases(model: onnx.ModelProto) -> PassResult[onnx.ModelProto]:
    """``(d + s) + b`` and ``d + (s + b)`` -> ``(d + b) + s``, in place.

    ``d`` comes from ``x`` alone, ``b`` is constant and ``s`` is neither. Moves a
    gate's bias to the input side, so it is hoisted with ``x @ W_x``. Re-associating
    float additions changes results by at most an ulp or two.
    """
    graph = model.graph
    constant = constants(graph)
    _, derived = input_only(graph, graph.input[0].name, constant)
    made, users = producers(graph), readers(graph.node)
    outputs = {o.name for o in graph.output}
    modified = False
    for node in graph.node:
        if node.op_type != "Add" or node.domain or len(node.input) != 2:
            continue
        for side in (0, 1):
            inner_name, other = node.input[side], node.input[1 - side]
            inner = made.get(inner_name)
            if (inner is None or inner.op_type != "Add" or inner.domain or len(inner.input) != 2
                    or inner_name in outputs or len(users.get(inner_name, [])) != 1):
                continue
            terms = _regroup([other, *inner.input], derived, constant)
            if terms is not None and terms[2] != other:  # else ``d + b`` is already grouped
                inner.input[:] = terms[:2]
                node.input[:] = [inner_name, terms[2]]
                derived.add(inner_name)
                modified = True
                break
    return PassResult(model, modified)


def fuse_matmuls(model: onnx.ModelProto) -> PassResult[onnx.ModelProto]:
    """MatMuls of one left input by several constant ``(K, N_i)`` weights -> one MatMul and a Split."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and len(weights[node.input[1]].dims) == 2:
            groups.setdefault(node.input[0], []).append(node)
    g = GraphBuilder.beside(graph)
    modified = False
    for left, nodes in groups.items():
        if len(nodes) < 2 or len({weights[n.input[1]].dims[0] for n in nodes}) != 1:
            continue
        arrays = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        fused = g.const("rw/fused_w", np.concatenate(arrays, axis=1))
        product = g.fresh("rw/fused_matmul")
        first = nodes[0]
        first.input[:] = [left, fused]
        split_outputs = [n.output[0] for n in nodes]
        first.output[:] = [product]
        split = g.make("Split", [product, g.ints("rw/split", [a.shape[1] for a in arrays])], split_outputs,
                       name_hint="rw/fused_split", axis=-1)
        index = list(graph.node).index(first)
        for node in nodes[1:]:
            graph.node.remove(node)
        graph.node.insert(index + 1, split)
        modified = True
    g.flush_into(graph)
    return PassResult(model, modified)
