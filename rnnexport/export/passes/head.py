"""Moving the output head of a Scan body after the loop.

The mirror image of :mod:`rnnexport.export.passes.hoist`: the nodes that compute ``y_t``
and nothing the state needs (``h_t @ W_hq + b_q``, a Linear head, squeezes)
run once on every step's rows after the Scan instead of once per step. The body
emits the values that tail reads (``h_t`` for a seed cell) as extra scan outputs;
after the loop they are merged into ``T * B`` rows, the tail runs on them, and
``y`` is folded back to the sequence layout.

It applies when the tail keeps batch rows apart and every value it reads has a
known batch axis; otherwise the body keeps its head.
"""

from __future__ import annotations

import onnx

from rnnexport.core.graphs import subgraphs
from rnnexport.export.passes.base import PassResult
from rnnexport.export.passes.graph import batch_axis, constants, copy_value, producers
from rnnexport.export.passes.hoist import copy_outside
from rnnexport.export.passes.loop import Loop, ScanValue
from rnnexport.export.passes.rowwise import rowwise
from rnnexport.export.passes.stacking import Stacking
from rnnexport.export.passes.views import VIEW_OPS

__all__ = ["hoist_head"]

_POST = "post/"


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


def hoist_head(loop: Loop) -> PassResult[Loop]:
    """Move the nodes only ``y`` needs out of the body, to run once on every step's rows after the loop.

    The values the moved head reads become scan outputs in place of ``y`` (unless the
    outer graph already has their rows: hoisted values, ``x``); the moved head writes
    ``y`` in sequence layout. Nothing changes when the head could mix batch rows or a
    value it reads has no known batch axis.
    """
    graph, types, stack = loop.step.graph, loop.types, loop.stack
    tail = _tail(graph, loop.y, [s.body_out for s in loop.states])
    if not tail or batch_axis(types.get(loop.y)) != 0:
        return PassResult(loop, False)
    rows = {**loop.rows, loop.x: stack.flat_x}
    constant = constants(graph)
    nodes = _with_views(graph, tail, constant, rows)
    made_here = {o for n in nodes for o in n.output}
    cuts = list(dict.fromkeys(i for n in nodes for i in n.input if i and i not in made_here | constant))
    emitted = [c for c in cuts if c not in rows]
    found = {c: batch_axis(types.get(c)) for c in emitted}
    axes = {c: a for c, a in found.items() if a is not None}
    if len(axes) != len(found) or not rowwise(graph, nodes, types, constant):
        return PassResult(loop, False)
    rename, scan_outputs = dict(rows), []
    for cut in emitted:
        axis = axes[cut]
        stacked = stack.g.fresh("scan/stacked")
        scan_outputs.append(ScanValue(copy_value(types[cut], _emittable(loop.step, cut, stack)), stacked,
                                      stack.scan_axis(axis)))
        rename[cut] = stack.output_rows(stacked, types[cut], axis)
    moved = copy_outside(graph, nodes, rename, stack.g, _POST)
    stack.fold(moved[loop.y], types[loop.y], 0, output=loop.y)
    for node in tail:
        graph.node.remove(node)
    graph.output.remove(next(o for o in graph.output if o.name == loop.y))
    graph.output.extend(value.body for value in scan_outputs)
    loop.scan_outputs = scan_outputs
    return PassResult(loop, True)


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
    graph.node.append(stack.g.make("Identity", [value], [copy], name_hint=copy))
    return copy
