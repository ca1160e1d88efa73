"""The scan lowering: one traced step wrapped in an ONNX ``Scan`` over the time axis.

Works for any cell whose step torch can trace. The step graph becomes the Scan
body (state inputs first, then the time slices); its weights move to the outer
graph where the hoisted work needs them; the rest stay in the body, where
ONNX Runtime treats them as constants. ONNX Runtime pays for every node of
the body once per step, so before wrapping, the step is rewritten (each rewrite
is an exact or ulp-level identity and is skipped where it cannot be proven):

- identity view chains are dropped (:mod:`rnnexport.export.rewrites.views`);
- whatever the step computes from ``x_t`` alone is hoisted out of the loop
  (:mod:`rnnexport.export.hoist`), with gate biases and matmuls fused first;
- per-gate elementwise work is fused across Splits, so the gates stay one wide
  value (:mod:`rnnexport.export.rewrites.splits`);
- a state the step only re-shapes on its way in and out is carried in its
  inner shape (:mod:`rnnexport.export.carry`);
- the output head runs once after the loop (:mod:`rnnexport.export.head`).
"""

from __future__ import annotations

import dataclasses

import onnx
from onnx import helper

from rnnexport.core.contract import Form
from rnnexport.core.graphs import attribute, walk, walk_graphs
from rnnexport.core.onnxfile import value_dims, value_info
from rnnexport.export.carry import State, carry_state
from rnnexport.export.head import hoist_head
from rnnexport.export.hoist import hoist_inputs, prepare_hoist
from rnnexport.export.onnxutil import GraphBuilder, finish_model
from rnnexport.export.rewrites.graph import infer_types, producers, remove_dead, toposort
from rnnexport.export.rewrites.splits import fuse_split_gates
from rnnexport.export.rewrites.views import drop_identity_views
from rnnexport.export.stacking import Stacking
from rnnexport.source.model import RecurrentModel

__all__ = ["ScanOptions", "prefix_names", "wrap_in_scan"]

_PREFIX = "step/"


@dataclasses.dataclass(frozen=True)
class ScanOptions:
    """Which rewrites :func:`wrap_in_scan` applies to the step (all by default)."""

    #: drop chains of re-shapes that end in their starting shape
    simplify: bool = True
    #: run the input-only work once, outside the loop
    hoist: bool = True
    #: fuse per-gate elementwise work across Splits
    fuse_gates: bool = True
    #: run the output head once, after the loop
    head: bool = True
    #: carry a state in the shape the step computes it in (no per-step re-shape)
    carry: bool = True

    @classmethod
    def plain(cls) -> ScanOptions:
        """No rewrite: the traced step as the body."""
        return cls(simplify=False, hoist=False, fuse_gates=False, head=False, carry=False)


def prefix_names(graph: onnx.GraphProto, prefix: str) -> None:
    """Prefix every value and node name in ``graph`` and its subgraphs, in place."""
    def rename(name: str) -> str:
        return prefix + name if name else name

    for sub in list(walk_graphs(graph)):
        for value in [*sub.input, *sub.output, *sub.value_info]:
            value.name = rename(value.name)
        for tensor in sub.initializer:
            tensor.name = rename(tensor.name)
        for node in sub.node:
            node.name = rename(node.name)
            node.input[:] = [rename(n) for n in node.input]
            node.output[:] = [rename(n) for n in node.output]


def _copy(value: onnx.ValueInfoProto, name: str | None = None) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(value)
    if name is not None:
        copy.name = name
    return copy


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """The outputs of ``graph`` and its subgraphs, and every node's inputs."""
    return {o.name for sub in walk_graphs(graph) for o in sub.output} | {i for n in walk(graph) for i in n.input}


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = _used_names(graph)
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _rewrite_step(work: onnx.ModelProto, x_name: str, options: ScanOptions, g: GraphBuilder) -> None:
    """The in-body rewrites, in place; new constants go to ``work``'s initializers."""
    if options.simplify:
        drop_identity_views(work)
    if options.hoist:
        prepare_hoist(work, x_name, g)
    if options.fuse_gates:
        fuse_split_gates(work, g)
    remove_dead(work.graph)


@dataclasses.dataclass(frozen=True)
class _Parts:
    """The pieces of the Scan graph as the rewrites leave them (body edited in place)."""

    work: onnx.ModelProto
    g: GraphBuilder
    states: list[State]
    scan_inputs: list[tuple[onnx.ValueInfoProto, str, int]]  # body value, outer name, axis
    scan_outputs: list[tuple[onnx.ValueInfoProto, str, int]]


def _plan(model: RecurrentModel, step: onnx.ModelProto, options: ScanOptions) -> _Parts:
    io = model.io
    inputs, outputs = io.inputs(Form.SEQUENCE), io.outputs(Form.SEQUENCE)
    x_name, y_name = inputs[0].name, outputs[0].name
    work = onnx.ModelProto()
    work.CopyFrom(step)
    g = GraphBuilder()
    _rewrite_step(work, x_name, options, g)
    stack = Stacking(g, x_name, io.x_features, io.time_axis)
    types = infer_types(work)
    hoisted = hoist_inputs(work, x_name, types, stack) if options.hoist else None
    by_name = {v.name: _copy(v) for v in [*work.graph.input, *work.graph.output]}  # before renaming
    keep_x = hoisted is None or hoisted.keep_x
    scan_inputs = [(by_name[x_name], x_name, io.time_axis)] if keep_x else []
    scan_inputs += hoisted.scan_inputs if hoisted is not None else []
    rows = {**(hoisted.rows if hoisted is not None else {}), **({x_name: stack.flat_x} if keep_x else {})}
    states = [carry_state(work, s.name, o.name, types, g) if options.carry else State.plain(s.name, o.name)
              for s, o in zip(inputs[1:], outputs[1:])]
    tail = hoist_head(work, y_name, [s.body_out for s in states], types, stack, rows) if options.head else None
    scan_outputs = tail.scan_outputs if tail is not None else [(by_name[y_name], y_name, io.time_axis)]
    remove_dead(work.graph)
    return _Parts(work, g, states, scan_inputs, scan_outputs)


def _prefixed(values: list[tuple[onnx.ValueInfoProto, str, int]]) -> list[onnx.ValueInfoProto]:
    return [_copy(value, _PREFIX + value.name) for value, _, _ in values]


def _scan_node(parts: _Parts, reverse: bool) -> onnx.NodeProto:
    """The Scan node over the (renamed) step graph; its weights stay in ``parts.work``.

    ``reverse`` runs it from the last step to the first: every scan input is read and every
    scan output written backwards, so the outputs keep the inputs' time order. (Scan's own
    directions, not a reversing Slice around it: tract cannot infer the shape of a Slice with
    step -1 over a dynamic axis; onnx's ReferenceEvaluator runs Scan forwards only.)
    """
    body = parts.work.graph
    by_name = {v.name: v for v in [*body.input, *body.output]}
    made = producers(body)
    outputs, nodes = _own_outputs(
        list(body.node), [_copy(by_name[_PREFIX + s.body_out]) for s in parts.states] + _prefixed(parts.scan_outputs))
    body_graph = helper.make_graph(
        nodes, "step",
        [_copy(by_name[_PREFIX + s.body_in]) for s in parts.states] + _prefixed(parts.scan_inputs),
        outputs,
        value_info=[v for v in body.value_info if v.name in made])
    directions: dict[str, list[int]] = {}
    if reverse:
        directions = {"scan_input_directions": [1] * len(parts.scan_inputs),
                      "scan_output_directions": [1] * len(parts.scan_outputs)}
    node = helper.make_node(
        "Scan",
        [s.outer_in for s in parts.states] + [name for _, name, _ in parts.scan_inputs],
        [s.outer_out for s in parts.states] + [name for _, name, _ in parts.scan_outputs],
        name="scan",
        body=body_graph,
        num_scan_inputs=len(parts.scan_inputs),
        scan_input_axes=[axis for _, _, axis in parts.scan_inputs],
        scan_output_axes=[axis for _, _, axis in parts.scan_outputs],
    )
    node.attribute.extend(helper.make_attribute(key, value) for key, value in directions.items())
    return node


def _own_outputs(nodes: list[onnx.NodeProto], outputs: list[onnx.ValueInfoProto]
                 ) -> tuple[list[onnx.ValueInfoProto], list[onnx.NodeProto]]:
    """Give every body output that the body also reads (or that is output twice) its own Identity.

    tract cannot unify the shape of a Scan output that is read inside the body too; an
    Identity in between costs onnxruntime nothing measurable.
    """
    read = {i for n in nodes for i in n.input}
    seen: set[str] = set()
    fixed: list[onnx.ValueInfoProto] = []
    extra: list[onnx.NodeProto] = []
    for value in outputs:
        if value.name in read or value.name in seen or value.name in {v.name for v in fixed}:
            own = _copy(value, f"{value.name}__out{len(extra)}")
            extra.append(helper.make_node("Identity", [value.name], [own.name], name=f"{own.name}_identity"))
            value = own
        seen.add(value.name)
        fixed.append(value)
    return fixed, nodes + extra


def _rank(value: onnx.ValueInfoProto) -> int | None:
    dims = value_dims(value)
    return None if dims is None else len(dims)


def _time_first(parts: _Parts) -> tuple[_Parts, list[onnx.NodeProto], list[onnx.NodeProto]]:
    """Scan along axis 0 only: Transpose batch-major scan inputs before the Scan and outputs after.

    onnx's ReferenceEvaluator (and other engines) run Scan only over axis 0; a Transpose of
    the whole sequence is cheap next to the loop.
    """
    before: list[onnx.NodeProto] = []
    after: list[onnx.NodeProto] = []
    inputs: list[tuple[onnx.ValueInfoProto, str, int]] = []
    outputs: list[tuple[onnx.ValueInfoProto, str, int]] = []
    for value, outer, axis in parts.scan_inputs:
        rank = _rank(value)
        if axis == 0 or rank is None:
            inputs.append((value, outer, axis))
            continue
        perm = [axis] + [i for i in range(rank + 1) if i != axis]
        moved = f"{outer}__time_first"
        before.append(helper.make_node("Transpose", [outer], [moved], name=f"{moved}_transpose", perm=perm))
        inputs.append((value, moved, 0))
    for value, outer, axis in parts.scan_outputs:
        rank = _rank(value)
        if axis == 0 or rank is None:
            outputs.append((value, outer, axis))
            continue
        perm = [axis] + [i for i in range(rank + 1) if i != axis]
        inverse = [perm.index(i) for i in range(rank + 1)]
        made = f"{outer}__time_first"
        after.append(helper.make_node("Transpose", [made], [outer], name=f"{outer}_transpose", perm=inverse))
        outputs.append((value, made, 0))
    return dataclasses.replace(parts, scan_inputs=inputs, scan_outputs=outputs), before, after


def _weights_into_body(graph: onnx.GraphProto) -> None:
    """Move the initializers only the Scan body reads into the body, in place.

    ONNX Runtime treats a body's own initializers as constants (it can pre-pack
    matmul weights, and feeds no outer-scope values per call): 5-15% faster at B=1.
    """
    scan = next(n for n in graph.node if n.op_type == "Scan")
    body: onnx.GraphProto = attribute(scan, "body")
    outer_reads = {i for n in graph.node for i in n.input}
    inner = [t for t in graph.initializer if t.name not in outer_reads]
    outer = [t for t in graph.initializer if t.name in outer_reads]
    body.initializer.extend(inner)
    del graph.initializer[:]
    graph.initializer.extend(outer)
    _drop_unused_initializers(body)


def wrap_in_scan(model: RecurrentModel, step: onnx.ModelProto, options: ScanOptions | None = None,
                 reverse: bool = False) -> onnx.ModelProto:
    """A sequence graph that runs ``step`` (a step-form graph of ``model``) along time.

    Args:
        model: the model ``step`` was traced from (for its I/O contract).
        step: its traced step graph (left unchanged).
        options: which rewrites to apply; all by default.
        reverse: run from the last step to the first (a bidirectional layer's backward half).
    """
    io = model.io
    parts, before, after = _time_first(_plan(model, step, options or ScanOptions()))
    body = parts.work.graph
    weights = {t.name for t in body.initializer}
    prefix_names(body, _PREFIX)
    for node in parts.g.nodes:
        node.input[:] = [_PREFIX + i if i in weights else i for i in node.input]
    graph = helper.make_graph(
        [*parts.g.nodes, *before, _scan_node(parts, reverse), *after],
        "rnnexport_scan",
        [value_info(s) for s in io.inputs(Form.SEQUENCE)],
        [value_info(s) for s in io.outputs(Form.SEQUENCE)],
        initializer=[*body.initializer, *parts.g.initializers],
    )
    remove_dead(graph)
    toposort(graph)
    _drop_unused_initializers(graph)
    _weights_into_body(graph)
    opsets = {o.domain: o.version for o in step.opset_import}
    result = finish_model(graph, opset=opsets.pop("", 20), extra_opsets=opsets)
    result.functions.extend(step.functions)
    return result
