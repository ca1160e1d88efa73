"""The scan lowering: one traced step wrapped in an ONNX ``Scan`` over the time axis.

Works for any cell whose step torch can trace. The step graph becomes the Scan
body (state inputs first, then the time slices); its weights move to the outer
graph where the hoisted work needs them; the rest stay in the body, where
ONNX Runtime treats them as constants. ONNX Runtime pays for every node of
the body once per step, so the lowering runs its passes (:data:`SCAN_PASSES`,
each in :mod:`rnnexport.export.passes`, each an exact or ulp-level identity that
does nothing where it cannot be proven), in three stages:

- on the traced step: identity view chains dropped (``views``), gate biases lifted
  to the input side and matmuls sharing an input fused (``algebra``), per-gate
  elementwise work fused across Splits so the gates stay one wide value (``splits``),
  dead nodes removed;
- on the :class:`~rnnexport.export.passes.loop.Loop` around it: whatever the step computes
  from ``x_t`` alone hoisted out of the loop (``hoist``), a state the step only re-shapes
  on its way in and out carried in its inner shape (``carry``), the output head run
  once after the loop (``head``);
- on the finished graph: weights only the loop reads moved into its body (``weights``).
"""

from __future__ import annotations

import dataclasses

import onnx
from onnx import helper

from rnnexport.core.contract import Form, IOSpec
from rnnexport.core.onnxfile import value_dims, value_info
from rnnexport.export.onnxutil import finish_model
from rnnexport.export.passes.algebra import fuse_matmuls, lift_biases
from rnnexport.export.passes.base import Pass, run_passes
from rnnexport.export.passes.carry import carry_states
from rnnexport.export.passes.graph import (
    copy_value,
    drop_unused_initializers,
    prefix_names,
    producers,
    readers,
    remove_dead,
    remove_dead_nodes,
    rename_values,
    toposort,
)
from rnnexport.export.passes.head import hoist_head
from rnnexport.export.passes.hoist import hoist_inputs
from rnnexport.export.passes.loop import Loop, ScanValue
from rnnexport.export.passes.splits import fuse_split_gates
from rnnexport.export.passes.views import drop_identity_views
from rnnexport.export.passes.weights import weights_into_bodies
from rnnexport.source.model import RecurrentModel

__all__ = ["SCAN_PASSES", "ScanPasses", "wrap_in_scan"]

_PREFIX = "step/"


@dataclasses.dataclass(frozen=True)
class ScanPasses:
    """The scan lowering's passes, in the order they run: on the step, on the loop, on the graph."""

    step: tuple[Pass[onnx.ModelProto], ...] = ()
    loop: tuple[Pass[Loop], ...] = ()
    graph: tuple[Pass[onnx.ModelProto], ...] = ()

    def without(self, *passes: object) -> ScanPasses:
        """These passes with ``passes`` left out."""
        return ScanPasses(tuple(p for p in self.step if p not in passes),
                          tuple(p for p in self.loop if p not in passes),
                          tuple(p for p in self.graph if p not in passes))


#: What the scan lowering runs (``ScanPasses()`` runs none: the traced step as the body).
SCAN_PASSES = ScanPasses(
    step=(drop_identity_views, lift_biases, fuse_matmuls, fuse_split_gates, remove_dead_nodes),
    loop=(hoist_inputs, carry_states, hoist_head),
    graph=(weights_into_bodies,),
)


def _plan(io: IOSpec, step: onnx.ModelProto, passes: ScanPasses) -> Loop:
    """The loop around a copy of ``step`` once every step and loop pass has run."""
    work = onnx.ModelProto()
    work.CopyFrom(step)
    run_passes(passes.step, work)
    loop = run_passes(passes.loop, Loop.around(work, io)).model
    remove_dead(work.graph)
    return loop


def _prefixed(values: list[ScanValue]) -> list[onnx.ValueInfoProto]:
    return [copy_value(value.body, _PREFIX + value.body.name) for value in values]


def _scan_node(loop: Loop, reverse: bool) -> onnx.NodeProto:
    """The Scan node over the (renamed) step graph; its weights stay in ``loop.step``.

    ``reverse`` runs it from the last step to the first: every scan input is read and every
    scan output written backwards, so the outputs keep the inputs' time order. (Scan's own
    directions, not a reversing Slice around it: tract cannot infer the shape of a Slice with
    step -1 over a dynamic axis; onnx's ReferenceEvaluator runs Scan forwards only.)
    """
    body = loop.step.graph
    by_name = {v.name: v for v in [*body.input, *body.output]}
    made = producers(body)
    outputs, nodes = _own_outputs(
        list(body.node), [copy_value(by_name[_PREFIX + s.body_out]) for s in loop.states] + _prefixed(loop.scan_outputs))
    body_graph = helper.make_graph(
        nodes, "step",
        [copy_value(by_name[_PREFIX + s.body_in]) for s in loop.states] + _prefixed(loop.scan_inputs),
        outputs,
        value_info=[v for v in body.value_info if v.name in made])
    directions: dict[str, list[int]] = {}
    if reverse:
        directions = {"scan_input_directions": [1] * len(loop.scan_inputs),
                      "scan_output_directions": [1] * len(loop.scan_outputs)}
    node = helper.make_node(
        "Scan",
        [s.outer_in for s in loop.states] + [v.outer for v in loop.scan_inputs],
        [s.outer_out for s in loop.states] + [v.outer for v in loop.scan_outputs],
        name="scan",
        body=body_graph,
        num_scan_inputs=len(loop.scan_inputs),
        scan_input_axes=[v.axis for v in loop.scan_inputs],
        scan_output_axes=[v.axis for v in loop.scan_outputs],
    )
    node.attribute.extend(helper.make_attribute(key, value) for key, value in directions.items())
    return node


def _own_outputs(nodes: list[onnx.NodeProto], outputs: list[onnx.ValueInfoProto]
                 ) -> tuple[list[onnx.ValueInfoProto], list[onnx.NodeProto]]:
    """Give every body output that the body also reads (or that is output twice) its own Identity.

    tract cannot unify the shape of a Scan output that is read inside the body too; an
    Identity in between costs onnxruntime nothing measurable.
    """
    read = set(readers(nodes))
    fixed: list[onnx.ValueInfoProto] = []
    extra: list[onnx.NodeProto] = []
    for value in outputs:
        if value.name in read or value.name in {v.name for v in fixed}:
            own = copy_value(value, f"{value.name}__out{len(extra)}")
            extra.append(helper.make_node("Identity", [value.name], [own.name], name=f"{own.name}_identity"))
            value = own
        fixed.append(value)
    return fixed, nodes + extra


def _time_first(loop: Loop) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """Scan along axis 0 only: Transpose batch-major scan inputs before the Scan and outputs after.

    onnx's ReferenceEvaluator (and other engines) run Scan only over axis 0; a Transpose of
    the whole sequence is cheap next to the loop. Returns the nodes before and after the Scan.
    """
    g = loop.outer
    before: list[onnx.NodeProto] = []
    after: list[onnx.NodeProto] = []
    for index, value in enumerate(loop.scan_inputs):
        rank = _rank(value.body)
        if value.axis == 0 or rank is None:
            continue
        perm = [value.axis] + [i for i in range(rank + 1) if i != value.axis]
        moved = g.fresh(f"{value.outer}__time_first")
        before.append(g.make("Transpose", [value.outer], [moved], perm=perm))
        loop.scan_inputs[index] = ScanValue(value.body, moved, 0)
    for index, value in enumerate(loop.scan_outputs):
        rank = _rank(value.body)
        if value.axis == 0 or rank is None:
            continue
        perm = [value.axis] + [i for i in range(rank + 1) if i != value.axis]
        inverse = [perm.index(i) for i in range(rank + 1)]
        made = g.fresh(f"{value.outer}__time_first")
        after.append(g.make("Transpose", [made], [value.outer], perm=inverse))
        loop.scan_outputs[index] = ScanValue(value.body, made, 0)
    return before, after


def _rank(value: onnx.ValueInfoProto) -> int | None:
    dims = value_dims(value)
    return None if dims is None else len(dims)


def wrap_in_scan(model: RecurrentModel | IOSpec, step: onnx.ModelProto, passes: ScanPasses = SCAN_PASSES,
                 reverse: bool = False) -> onnx.ModelProto:
    """A sequence graph that runs ``step`` (a step-form graph of ``model``) along time.

    Args:
        model: the model ``step`` was traced from, or its I/O contract.
        step: its traced step graph (left unchanged; its first input is ``x``, then the state).
        passes: the passes to run (:data:`SCAN_PASSES` by default; ``ScanPasses()`` for none).
        reverse: run from the last step to the first (a bidirectional layer's backward half).
    """
    io = model if isinstance(model, IOSpec) else model.io
    loop = _plan(io, step, passes)
    before, after = _time_first(loop)
    body = loop.step.graph
    weights = {t.name: _PREFIX + t.name for t in body.initializer}
    prefix_names(body, _PREFIX)
    for node in loop.outer.nodes:
        rename_values(node, weights)
    graph = helper.make_graph(
        [*loop.outer.nodes, *before, _scan_node(loop, reverse), *after],
        "rnnexport_scan",
        [value_info(s) for s in io.inputs(Form.SEQUENCE)],
        [value_info(s) for s in io.outputs(Form.SEQUENCE)],
        initializer=[*body.initializer, *loop.outer.initializers],
    )
    remove_dead(graph)
    toposort(graph)
    drop_unused_initializers(graph)
    opsets = {o.domain: o.version for o in step.opset_import}
    result = finish_model(graph, opset=opsets.pop("", 20), extra_opsets=opsets)
    result.functions.extend(step.functions)
    run_passes(passes.graph, result)
    return result
