"""Hoisting the input-only part of a Scan body out of the loop.

In a traced step, everything computed from ``x_t`` alone (embeddings, input
layers, ``x_t @ W_x`` for every gate) does not depend on the state, so it can run
once over the whole sequence as a few large matmuls instead of once per step.
The step graph was exported with a dynamic batch, so it runs unchanged on a batch
of ``T * B`` rows: flatten ``x`` to that, run the input-only nodes, and fold the
``T`` axis back out next to each result's batch axis, where Scan slices it.

The rewrite needs to know where the batch axis of every hoisted value is; when
shape inference cannot tell, the body is left as it was.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rnnexport.export.onnxutil import GraphBuilder

__all__ = ["Hoisted", "hoist_inputs"]

_PRE = "pre/"


@dataclasses.dataclass(frozen=True)
class Hoisted:
    """The outer nodes to add and the new scan inputs (name in the body, outer name, axis)."""

    outer_nodes: list[onnx.NodeProto]
    outer_initializers: list[onnx.TensorProto]
    scan_inputs: list[tuple[onnx.ValueInfoProto, str, int]]
    keep_x: bool


def _input_only(body: onnx.GraphProto, x: str, outer: set[str]) -> tuple[list[onnx.NodeProto], set[str]]:
    """Nodes whose every input is ``x``, a constant, or another such node's output."""
    derived, constant = {x}, set(outer)
    nodes = []
    for node in body.node:
        inputs = [i for i in node.input if i]
        if not inputs and not any(a.HasField("g") or a.graphs for a in node.attribute):
            constant.update(node.output)  # Constant nodes
            continue
        if inputs and all(i in derived or i in constant for i in inputs) and any(i in derived for i in inputs):
            nodes.append(node)
            derived.update(node.output)
    return nodes, derived


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _lift_biases(graph: onnx.GraphProto, derived: set[str], constant: set[str]) -> None:
    """``(p + q) + b`` -> ``(p + b) + q`` when ``p`` comes from ``x`` alone and ``b`` is constant.

    Moves a gate's bias to the input side, so it is hoisted with ``x @ W_x``.
    Reassociating float additions changes results by at most an ulp or two.
    """
    producers = {o: n for n in graph.node for o in n.output}
    users = _consumers(graph)
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        inner_name, bias = node.input
        if bias not in constant:
            inner_name, bias = bias, inner_name
        inner = producers.get(inner_name)
        if (bias not in constant or inner is None or inner.op_type != "Add" or inner_name in outputs
                or len(users.get(inner_name, [])) != 1):
            continue
        p, q = inner.input
        if q in derived and p not in derived:
            p, q = q, p
        if p in derived and q not in derived:
            inner.input[:] = [p, bias]
            node.input[:] = [inner_name, q]
            derived.add(inner_name)


def _fuse_matmuls(graph: onnx.GraphProto, weights: dict[str, onnx.TensorProto], g: GraphBuilder) -> None:
    """MatMuls of one left input by several constant ``(K, N_i)`` weights -> one MatMul and a Split."""
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and len(weights[node.input[1]].dims) == 2:
            groups.setdefault(node.input[0], []).append(node)
    for left, nodes in groups.items():
        if len(nodes) < 2 or len({weights[n.input[1]].dims[0] for n in nodes}) != 1:
            continue
        arrays = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        fused = g.const("fused_w", np.concatenate(arrays, axis=1))
        product = g.fresh("fused_matmul")
        first = nodes[0]
        first.input[:] = [left, fused]
        split_outputs = [n.output[0] for n in nodes]
        first.output[:] = [product]
        split = helper.make_node("Split", [product, g.ints("split", [a.shape[1] for a in arrays])],
                                 split_outputs, name=g.fresh("fused_split"), axis=-1)
        index = list(graph.node).index(first)
        for node in nodes[1:]:
            graph.node.remove(node)
        graph.node.insert(index + 1, split)


def _batch_axis(value: onnx.ValueInfoProto) -> int | None:
    dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
    axes = [i for i, d in enumerate(dims) if d.dim_param == "B"]
    return axes[0] if len(axes) == 1 else None


def hoist_inputs(step: onnx.ModelProto, x_name: str, x_rank: int, time_axis: int) -> Hoisted | None:
    """Plan the hoist for the (un-renamed) step graph ``step``; None when it does not apply.

    Args:
        step: the traced step graph; its body nodes are edited in place when hoisting.
        x_name: the step graph's data input.
        x_rank: rank of the sequence input ``x`` (time and batch axes included).
        time_axis: where T sits in the sequence ``x``.
    """
    graph = step.graph
    g = GraphBuilder()
    outer = {t.name for t in graph.initializer}
    _, derived = _input_only(graph, x_name, outer)
    constants_out = outer | {o for n in graph.node if not [i for i in n.input if i] for o in n.output}
    _lift_biases(graph, derived, constants_out)
    _fuse_matmuls(graph, {t.name: t for t in graph.initializer}, g)
    graph.initializer.extend(g.initializers)
    outer |= {t.name for t in g.initializers}
    g.initializers.clear()
    inferred = onnx.shape_inference.infer_shapes(step, data_prop=True)
    types = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    nodes, derived = _input_only(graph, x_name, outer)
    if not nodes:
        return None
    moved = {id(n) for n in nodes}
    rest = [n for n in graph.node if id(n) not in moved]
    used_later = {i for n in rest for i in n.input} | {o.name for o in graph.output}
    frontier = [o for n in nodes for o in n.output if o in used_later]
    if any(f in {o.name for o in graph.output} for f in frontier):
        return None  # an output computed from x alone: keep the plain body
    axes = {f: _batch_axis(types[f]) if f in types else None for f in frontier}
    if not frontier or any(a is None for a in axes.values()):
        return None
    constants = [n for n in graph.node if not [i for i in n.input if i] and
                 any(o in {i for m in nodes for i in m.input} for o in n.output)]
    batch_axis = 1 - time_axis
    shape = g.one("Shape", ["x"])
    t_dim = g.one("Slice", [shape, g.ints("s", [time_axis]), g.ints("e", [time_axis + 1])])
    b_dim = g.one("Slice", [shape, g.ints("s", [batch_axis]), g.ints("e", [batch_axis + 1])])
    flat = "x" if time_axis == 0 else g.one("Transpose", ["x"], perm=[1, 0, *range(2, x_rank)])
    rename = {x_name: _merge_time_batch(g, flat, shape, x_rank)}
    for node in [*constants, *nodes]:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = _PRE + node.name
        copy.input[:] = [rename.get(i, i) for i in node.input]
        for i, out in enumerate(node.output):
            rename[out] = _PRE + out
            copy.output[i] = _PRE + out
        g.nodes.append(copy)
    scan_inputs = []
    for f in frontier:
        axis = axes[f]
        dims = g.one("Shape", [rename[f]])
        parts = [g.one("Slice", [dims, g.ints("s", [0]), g.ints("e", [axis])])] if axis else []
        parts += [t_dim, b_dim]
        parts += [g.one("Slice", [dims, g.ints("s", [axis + 1]), g.ints("e", [2**62])])]
        folded = g.one("Reshape", [rename[f], g.one("Concat", parts, axis=0)])
        scan_inputs.append((types[f], folded, axis))
    keep_x = any(x_name in n.input for n in rest)
    del graph.node[:]
    graph.node.extend(rest)
    return Hoisted(g.nodes, g.initializers, scan_inputs, keep_x)


def _merge_time_batch(g: GraphBuilder, x: str, shape: str, rank: int) -> str:
    """``(T, B, ...)`` -> ``(T*B, ...)``; ``shape`` is the shape of the sequence input."""
    if rank == 2:
        return g.one("Reshape", [x, g.ints("flat", [-1])])
    features = g.one("Slice", [shape, g.ints("s", [2]), g.ints("e", [2**62])])
    return g.one("Reshape", [x, g.one("Concat", [g.ints("minus1", [-1]), features], axis=0)])
