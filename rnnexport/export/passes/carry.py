"""Carrying a state through the loop in the shape the step computes it in.

A torch.nn layer's state is ``(layers * directions, B, H)``: a traced one-layer
step reads it as ``h[0]`` (a Gather) and writes it back as ``h.unsqueeze(0)``,
two nodes per state per step that only re-shape. When the state input is read
by one such view alone, and the state output is a view of a value with the
same shape as what that view reads, the loop can carry the inner value instead:
the first view runs once before the Scan, the last once after it. Every step
then reads exactly the elements the old body computed, in the same order, so
results are equal bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from rnnexport.export.onnxutil import GraphBuilder
from rnnexport.export.passes.base import PassResult
from rnnexport.export.passes.graph import Types, producers, readers, same_shape
from rnnexport.export.passes.loop import Loop, State
from rnnexport.export.passes.views import is_view

__all__ = ["carry_states"]


def carry_states(loop: Loop) -> PassResult[Loop]:
    """Carry each state still carried as the contract has it in its inner shape, where that is sound."""
    states = [carry_state(loop.step, s, loop.types, loop.outer) if s.plain_now else s for s in loop.states]
    modified = states != loop.states
    loop.states = states
    return PassResult(loop, modified)


def _outer_view(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    """A view whose inputs besides the data are initializers, so it can run outside the body."""
    weights = {t.name for t in graph.initializer}
    return not node.domain and all(i in weights for i in node.input[1:] if i)


def carry_state(step: onnx.ModelProto, state: State, types: Types, g: GraphBuilder) -> State:
    """Carry ``state`` (carried as the contract has it) in its inner shape where that is sound.

    Edits ``step`` (its nodes, inputs and outputs) and adds the outer views to ``g``.

    Returns:
        How the loop carries the state (``state`` when nothing changed).
    """
    graph = step.graph
    name, output = state.body_in, state.body_out
    found, made = readers(graph.node).get(name, []), producers(graph)
    last = made.get(output)
    if len(found) != 1 or last is None:
        return state
    first = found[0]
    inner_in, inner_out = first.output[0], last.input[0]
    boundary = {v.name for v in [*graph.input, *graph.output]}
    if (not is_view(graph, first, types) or not is_view(graph, last, types) or first.input[0] != name
            or not _outer_view(graph, first) or not _outer_view(graph, last)
            or inner_out in boundary or inner_in in boundary
            or not same_shape(types.get(inner_in), types.get(inner_out))):
        return state
    outer_in, outer_out = g.fresh("scan/carried"), g.fresh("scan/final")
    g.copy(first, "carry/", {inner_in: outer_in})
    g.copy(last, "carry/", {inner_out: outer_out})
    _retype(graph.input, name, types[inner_in])
    _retype(graph.output, output, types[inner_out])
    graph.node.remove(first)
    if not readers(graph.node).get(output):
        graph.node.remove(last)
    return State(inner_in, outer_in, inner_out, outer_out)


def _retype(values: Iterable[onnx.ValueInfoProto], name: str, value: onnx.ValueInfoProto) -> None:
    """Replace the graph input/output ``name`` by ``value`` (same position)."""
    target = next(v for v in values if v.name == name)
    target.CopyFrom(value)
