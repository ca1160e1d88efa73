"""Moving the output head of a Scan body after the loop.

The mirror image of :mod:`rnnexport.export.hoist`: the nodes that compute ``y_t``
and nothing the state needs (``h_t @ W_hq + b_q``, a Linear head, squeezes)
run once on every step's rows after the Scan instead of once per step. The body
emits the values that tail reads (``h_t`` for a seed cell) as extra scan outputs;
after the loop they are merged into ``T * B`` rows, the tail runs on them, and
``y`` is folded back to the sequence layout.

It applies when the tail keeps batch rows apart and every value it reads has a
known batch axis; otherwise the body keeps its head.
"""

from __future__ import annotations

import dataclasses

import onnx
from onnx import helper

from rnnexport.core.graphs import subgraphs
from rnnexport.export.hoist import copy_outside
from rnnexport.export.rewrites.graph import Types, batch_axis, constants, producers
from rnnexport.export.rewrites.rowwise import rowwise
from rnnexport.export.rewrites.views import VIEW_OPS
from rnnexport.export.stacking import Stacking

__all__ = ["Tail", "hoist_head"]

_POST = "post/"


@dataclasses.dataclass(frozen=True)
class Tail:
    """The body's new scan outputs: ``(type of the body value, outer name, scan output axis)``."""

    scan_outputs: list[tuple[onnx.ValueInfoProto, str, int]]


def _ancestors(made: dict[str, onnx.NodeProto], names: list[str]) -> set[int]:
    """The ``id`` of every node that ``names`` are computed from (``made``: the graph's producers)."""
    seen: set[int] = set()
    todo = [made[n] for n in names if n in made]
    while todo:
        node = todo.pop()
        if id(node) not in seen:
            seen.add(id(node))
            todo.extend(made[i] for i in node.input if i in made)
    return seen


def _tail(graph: onnx.GraphProto, y: str, state: list[str]) -> list[onnx.NodeProto] | None:
    """The nodes only ``y`` needs, in graph order; None when ``y`` is not made by such nodes."""
    made = producers(graph)
    core = _ancestors(made, state)
    if y not in made or id(made[y]) in core:
        return None
    only_y = _ancestors(made, [y]) - core
    tail = [n for n in graph.node if id(n) in only_y]
    if any(subgraphs(n) for n in tail):
        return None
    return [n for n in tail if n.op_type != "Constant"]


def hoist_head(step: onnx.ModelProto, y: str, state: list[str], types: Types, stack: Stacking,
               rows: dict[str, str]) -> Tail | None:
    """Move the nodes only ``y`` needs out of the (un-renamed) step graph ``step``, into ``stack.g``.

    Args:
        step: the step graph left after hoisting; edited in place when the head moves.
        y: the step graph's data output; the moved head writes ``y`` in sequence layout.
        state: the step graph's state outputs.
        types: inferred types of the step graph's values.
        stack: builds the outer reshapes.
        rows: step values whose rows the outer graph already has (hoisted values, ``x``).

    Returns:
        The new scan outputs, or None (``step`` untouched) when the head cannot move.
    """
    graph = step.graph
    tail = _tail(graph, y, state)
    if not tail or batch_axis(types.get(y)) != 0:
        return None
    constant = constants(graph)
    nodes = _with_views(graph, tail, constant, rows)
    made_here = {o for n in nodes for o in n.output}
    cuts = list(dict.fromkeys(i for n in nodes for i in n.input if i and i not in made_here | constant))
    emitted = [c for c in cuts if c not in rows]
    found = {c: batch_axis(types.get(c)) for c in emitted}
    axes = {c: a for c, a in found.items() if a is not None}
    if len(axes) != len(found) or not rowwise(graph, nodes, types, constant):
        return None
    rename, scan_outputs = dict(rows), []
    for cut in emitted:
        axis = axes[cut]
        stacked = stack.g.fresh("scan/stacked")
        scan_outputs.append((_typed(types[cut], _emittable(step, cut, stack)), stacked, stack.scan_axis(axis)))
        rename[cut] = stack.output_rows(stacked, types[cut], axis)
    moved = copy_outside(graph, nodes, rename, stack.g, _POST)
    stack.fold(moved[y], types[y], 0, output=y)
    for node in tail:
        graph.node.remove(node)
    graph.output.remove(next(o for o in graph.output if o.name == y))
    graph.output.extend(value for value, _, _ in scan_outputs)
    return Tail(scan_outputs)


def _with_views(graph: onnx.GraphProto, tail: list[onnx.NodeProto], constant: set[str],
                rows: dict[str, str]) -> list[onnx.NodeProto]:
    """``tail`` and the re-shapes in the rest of the body that lead to what it reads, in graph order.

    Re-running them after the loop lets the body emit a value it already has
    (``h`` before an ``unsqueeze(0)`` makes it the state output) instead of a copy.
    """
    made = producers(graph)
    nodes = list(tail)
    todo = [i for n in tail for i in n.input]
    while todo:
        name = todo.pop()
        node = made.get(name)
        if (name in rows or node is None or node.op_type not in VIEW_OPS or node.domain
                or any(node is n for n in nodes) or any(i not in constant for i in node.input[1:] if i)):
            continue
        nodes.append(node)
        todo.append(node.input[0])
    order = {id(n): i for i, n in enumerate(graph.node)}
    return sorted(nodes, key=lambda n: order[id(n)])


def _emittable(step: onnx.ModelProto, value: str, stack: Stacking) -> str:
    """A body value equal to ``value`` that may be a scan output (graph inputs/outputs may not)."""
    graph = step.graph
    if value not in {v.name for v in [*graph.input, *graph.output]}:
        return value
    copy = stack.g.fresh("rw/emitted")
    graph.node.append(helper.make_node("Identity", [value], [copy], name=copy))
    return copy


def _typed(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    typed = onnx.ValueInfoProto()
    typed.CopyFrom(value)
    typed.name = name
    return typed
