"""Re-associating bias additions and fusing matmuls that share a left input.

Both prepare a traced step for hoisting: a gate's bias joins ``x @ W_x`` on the
input side, and one wide matmul replaces one matmul per gate.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rnnexport.export.onnxutil import GraphBuilder
from rnnexport.export.rewrites.graph import consumers, producers

__all__ = ["fuse_matmuls", "lift_biases"]


def _regroup(terms: list[str], derived: set[str], constant: set[str]) -> tuple[str, str, str] | None:
    """``(d, b, s)``: the one input-only term, the one constant and the one other, if so."""
    d = [t for t in terms if t in derived]
    b = [t for t in terms if t in constant]
    s = [t for t in terms if t not in derived and t not in constant]
    return (d[0], b[0], s[0]) if len(d) == len(b) == len(s) == 1 else None


def lift_biases(graph: onnx.GraphProto, derived: set[str], constant: set[str]) -> None:
    """``(d + s) + b`` and ``d + (s + b)`` -> ``(d + b) + s``, in place.

    ``d`` comes from ``x`` alone, ``b`` is constant and ``s`` is neither. Moves a
    gate's bias to the input side, so it is hoisted with ``x @ W_x``. Re-associating
    float additions changes results by at most an ulp or two.
    """
    made, users = producers(graph), consumers(graph)
    outputs = {o.name for o in graph.output}
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
                break


def fuse_matmuls(graph: onnx.GraphProto, weights: dict[str, onnx.TensorProto], g: GraphBuilder) -> None:
    """MatMuls of one left input by several constant ``(K, N_i)`` weights -> one MatMul and a Split."""
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and len(weights[node.input[1]].dims) == 2:
            groups.setdefault(node.input[0], []).append(node)
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
        split = helper.make_node("Split", [product, g.ints("rw/split", [a.shape[1] for a in arrays])],
                                 split_outputs, name=g.fresh("rw/fused_split"), axis=-1)
        index = list(graph.node).index(first)
        for node in nodes[1:]:
            graph.node.remove(node)
        graph.node.insert(index + 1, split)
