"""Hoisting the input-only part of a Scan body out of the loop.

In a traced step, everything computed from ``x_t`` alone (embeddings, input
layers, ``x_t @ W_x`` for every gate) does not depend on the state, so it can run
once over the whole sequence as a few large matmuls instead of once per step.
The step graph was exported with a dynamic batch, so it runs unchanged on a batch
of ``T * B`` rows (see :mod:`rnnexport.export.stacking`): flatten ``x`` to that,
run the input-only nodes, and fold the two axes back out at each result's batch
axis, where Scan slices it.

The rewrite needs to know where the batch axis of every hoisted value is, and
that no hoisted node mixes rows (:func:`~rnnexport.export.rewrites.rowwise.rowwise`);
when either cannot be established, the body is left as it was.
"""

from __future__ import annotations

import dataclasses

import onnx

from rnnexport.core.graphs import subgraphs, walk
from rnnexport.export.onnxutil import GraphBuilder
from rnnexport.export.rewrites.algebra import fuse_matmuls, lift_biases
from rnnexport.export.rewrites.graph import Types, batch_axis, constants, consumers
from rnnexport.export.rewrites.rowwise import rowwise
from rnnexport.export.stacking import Stacking

__all__ = ["Hoisted", "copy_outside", "hoist_inputs", "input_only", "prepare_hoist"]

_PRE = "pre/"


@dataclasses.dataclass(frozen=True)
class Hoisted:
    """What hoisting did: the new scan inputs and where each hoisted value's rows are.

    Attributes:
        scan_inputs: ``(type of the value in the body, outer name, scan axis)`` per hoisted value.
        rows: for each hoisted value (by its step-graph name), the outer value holding its rows.
        keep_x: whether the body still reads ``x_t``.
    """

    scan_inputs: list[tuple[onnx.ValueInfoProto, str, int]]
    rows: dict[str, str]
    keep_x: bool


def input_only(graph: onnx.GraphProto, x: str, constant: set[str]) -> tuple[list[onnx.NodeProto], set[str]]:
    """Nodes whose every input is ``x``, a constant, or another such node's output."""
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


def prepare_hoist(step: onnx.ModelProto, x_name: str, g: GraphBuilder) -> None:
    """Re-arrange ``step`` in place so more of it is input-only: biases lifted, matmuls fused."""
    graph = step.graph
    constant = constants(graph)
    _, derived = input_only(graph, x_name, constant)
    lift_biases(graph, derived, constant)
    fuse_matmuls(graph, {t.name: t for t in graph.initializer}, g)
    graph.initializer.extend(g.initializers)
    g.initializers.clear()


def hoist_inputs(step: onnx.ModelProto, x_name: str, types: Types, stack: Stacking) -> Hoisted | None:
    """Move the input-only nodes of ``step`` to the outer graph; None (``step`` untouched) if unsound.

    Args:
        step: the (un-renamed) step graph; its nodes are edited in place when hoisting.
        x_name: the step graph's data input.
        types: inferred types of the step graph's values.
        stack: builds the outer nodes (in its builder) that turn values into rows and back.
    """
    graph = step.graph
    constant = constants(graph)
    nodes, _ = input_only(graph, x_name, constant)
    moved = {id(n) for n in nodes}
    rest = [n for n in graph.node if id(n) not in moved]
    outputs = {o.name for o in graph.output}
    later = {i for n in rest for i in n.input} | {i for n in rest for s in subgraphs(n) for i in _reads(s)}
    frontier = [o for n in nodes for o in n.output if o in later | outputs]
    found = {f: batch_axis(types.get(f)) for f in frontier}
    axes = {f: a for f, a in found.items() if a is not None}
    if (not frontier or outputs & set(frontier) or len(axes) != len(found)
            or not rowwise(graph, nodes, types, constant)):
        return None
    rows = copy_outside(graph, nodes, {x_name: stack.flat_x}, stack.g, _PRE)
    scan_inputs = [(types[f], stack.scan_input(rows[f], types[f], axes[f]), stack.scan_axis(axes[f]))
                   for f in frontier]
    del graph.node[:]
    graph.node.extend(rest)
    return Hoisted(scan_inputs, {f: rows[f] for f in frontier}, x_name in consumers(graph))


def _reads(graph: onnx.GraphProto) -> set[str]:
    """Every input of a node of ``graph`` or of its subgraphs."""
    return {i for n in walk(graph) for i in n.input}


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
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + node.name
        copy.input[:] = [rename.get(i, i) for i in node.input]
        for i, out in enumerate(node.output):
            rename[out] = copy.output[i] = prefix + out if out else out
        g.nodes.append(copy)
    return rename
