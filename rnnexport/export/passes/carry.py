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

import dataclasses
from collections.abc import Iterable

import onnx

from rnnexport.export.onnxutil import GraphBuilder
from rnnexport.export.rewrites.graph import Types, consumers, producers, same_shape
from rnnexport.export.rewrites.views import is_view

__all__ = ["State", "carry_state"]


@dataclasses.dataclass(frozen=True)
class State:
    """One loop-carried state: its names in the body and outside (un-renamed step names)."""

    body_in: str
    outer_in: str
    body_out: str
    outer_out: str

    @classmethod
    def plain(cls, name: str, output: str) -> State:
        """A state carried as the contract has it."""
        return cls(name, name, output, output)


def _outer_view(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    """A view whose inputs besides the data are initializers, so it can run outside the body."""
    weights = {t.name for t in graph.initializer}
    return not node.domain and all(i in weights for i in node.input[1:] if i)


def carry_state(step: onnx.ModelProto, name: str, output: str, types: Types, g: GraphBuilder) -> State:
    """Carry the state ``name`` (step output ``output``) in its inner shape where that is sound.

    Edits ``step`` (its nodes, inputs and outputs) and adds the outer views to ``g``.

    Returns:
        How the loop carries the state (plain when nothing changed).
    """
    graph = step.graph
    readers, made = consumers(graph).get(name, []), producers(graph)
    last = made.get(output)
    if len(readers) != 1 or last is None:
        return State.plain(name, output)
    first = readers[0]
    inner_in, inner_out = first.output[0], last.input[0]
    boundary = {v.name for v in [*graph.input, *graph.output]}
    if (not is_view(graph, first, types) or not is_view(graph, last, types) or first.input[0] != name
            or not _outer_view(graph, first) or not _outer_view(graph, last)
            or inner_out in boundary or inner_in in boundary
            or not same_shape(types.get(inner_in), types.get(inner_out))):
        return State.plain(name, output)
    outer_in, outer_out = g.fresh("scan/carried"), g.fresh("scan/final")
    g.nodes.append(_moved(first, name, outer_in, "carry/"))
    g.nodes.append(_moved(last, outer_out, output, "carry/"))
    _retype(graph.input, name, types[inner_in])
    _retype(graph.output, output, types[inner_out])
    graph.node.remove(first)
    if not consumers(graph).get(output):
        graph.node.remove(last)
    return State(inner_in, outer_in, inner_out, outer_out)


def _moved(node: onnx.NodeProto, source: str, result: str, prefix: str) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = prefix + node.name
    copy.input[0] = source
    copy.output[0] = result
    return copy


def _retype(values: Iterable[onnx.ValueInfoProto], name: str, value: onnx.ValueInfoProto) -> None:
    """Replace the graph input/output ``name`` by ``value`` (same position)."""
    target = next(v for v in values if v.name == name)
    target.CopyFrom(value)
