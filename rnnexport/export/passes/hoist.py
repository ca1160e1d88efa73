"""Hoisting the input-only part of a Scan body out of the loop.

In a traced step, everything computed from ``x_t`` alone (embeddings, input
layers, ``x_t @ W_x`` for every gate) does not depend on the state, so it can run
once over the whole sequence as a few large matmuls instead of once per step.
The step graph was exported with a dynamic batch, so it runs unchanged on a batch
of ``T * B`` rows (see :mod:`rnnexport.export.passes.stacking`): flatten ``x`` to that,
run the input-only nodes, and fold the two axes back out at each result's batch
axis, where Scan slices it.

The rewrite needs to know where the batch axis of every hoisted value is, and
that no hoisted node mixes rows (:func:`~rnnexport.export.passes.rowwise.rowwise`);
when either cannot be established, the body is left as it was. Gate biases lifted
and matmuls fused first (:mod:`~rnnexport.export.passes.algebra`) leave more to hoist.
"""

from __future__ import annotations

import onnx

from rnnexport.core.graphs import subgraphs
from rnnexport.export.onnxutil import GraphBuilder
from rnnexport.export.passes.base import PassResult
from rnnexport.export.passes.graph import batch_axis, constants, readers
from rnnexport.export.passes.loop import Loop, ScanValue
from rnnexport.export.passes.rowwise import rowwise

__all__ = ["copy_outside", "hoist_inputs", "input_only"]

_PRE = "pre/"


def input_only(graph: onnx.GraphProto, x: str, constant: set[str]) -> tuple[list[onnx.NodeProto], set[str]]:
    """Nodes whose every input is ``x``, a constant, or another such node's output; and those values."""
    derived = {x}
    nodes = []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if subgraphs(node) or not inputs or not all(i in derived or i in constant for i in inputs):
            continue
        if any(i in derived for i in inputs):
            nodes.append(node)
            derived.update(node.output)
    return nodes, derived


def hoist_inputs(loop: Loop) -> PassResult[Loop]:
    """Move the input-only nodes of the body to the outer graph, where they run on all steps' rows.

    Their results the body still reads become scan inputs; ``x`` stays one only if the
    body still reads it. Nothing changes when a result's batch axis is unknown, a
    result is a step output, or a node could mix batch rows.
    """
    graph, types, stack = loop.step.graph, loop.types, loop.stack
    constant = constants(graph)
    nodes, _ = input_only(graph, loop.x, constant)
    moved = {id(n) for n in nodes}
    rest = [n for n in graph.node if id(n) not in moved]
    outputs = {o.name for o in graph.output}
    later = set(readers(rest))
    frontier = [o for n in nodes for o in n.output if o in later | outputs]
    found = {f: batch_axis(types.get(f)) for f in frontier}
    axes = {f: a for f, a in found.items() if a is not None}
    if (not frontier or outputs & set(frontier) or len(axes) != len(found)
            or not rowwise(graph, nodes, types, constant)):
        return PassResult(loop, False)
    rows = copy_outside(graph, nodes, {loop.x: stack.flat_x}, stack.g, _PRE)
    del graph.node[:]
    graph.node.extend(rest)
    kept = [v for v in loop.scan_inputs if v.outer != loop.x or loop.x in readers(graph.node)]
    loop.scan_inputs = kept + [ScanValue(types[f], stack.scan_input(rows[f], types[f], axes[f]), stack.scan_axis(axes[f]))
                               for f in frontier]
    loop.rows.update({f: rows[f] for f in frontier})
    return PassResult(loop, True)


def copy_outside(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], rename: dict[str, str],
                 g: GraphBuilder, prefix: str) -> dict[str, str]:
    """Copy ``nodes`` (and the Constant nodes they read) into ``g``, outputs prefixed.

    Returns:
        Step-graph name -> outer name, for ``rename`` and every copied output.
    """
    reads = {i for n in nodes for i in n.input}
    needed = [n for n in graph.node if n.op_type == "Constant" and not n.domain and set(n.output) & reads]
    rename = dict(rename)
    for node in [*needed, *nodes]:
        rename.update({out: prefix + out for out in node.output if out})
        g.copy(node, prefix, rename)
    return rename
