"""The scan lowering's model between the traced step and the Scan node: a :class:`Loop`.

The loop passes (:mod:`~rnnexport.export.passes.hoist`, :mod:`~rnnexport.export.passes.carry`,
:mod:`~rnnexport.export.passes.head`) move work out of the step into the outer graph;
a Loop records the body as they leave it and what runs outside it, and
:func:`rnnexport.export.scan.wrap_in_scan` wraps it into the Scan graph.
"""

from __future__ import annotations

import dataclasses

import onnx

from rnnexport.core.contract import Form, IOSpec
from rnnexport.export.onnxutil import GraphBuilder
from rnnexport.export.passes.graph import Types, copy_value, infer_types
from rnnexport.export.passes.stacking import Stacking

__all__ = ["Loop", "ScanValue", "State"]


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

    @property
    def plain_now(self) -> bool:
        """Whether the loop carries this state as the contract has it."""
        return (self.body_in, self.body_out) == (self.outer_in, self.outer_out)


@dataclasses.dataclass(frozen=True)
class ScanValue:
    """A scan input or output: its type in the body (and body name), its outer name, its scan axis."""

    body: onnx.ValueInfoProto
    outer: str
    axis: int


@dataclasses.dataclass
class Loop:
    """A traced step on its way into a Scan: the body so far and what runs outside it.

    Attributes:
        step: the body (the step graph, its names un-prefixed), edited in place by the passes.
        types: the step's inferred types, from before any loop pass (the passes leave the
            body half-built: a hoisted value has no producer until it is a scan input).
        stack: builds the outer nodes (in ``stack.g``, :attr:`outer`) that stack rows.
        x, y: the step's data input and output.
        states: how each state is carried, in contract order.
        scan_inputs, scan_outputs: the Scan's scanned values, in order.
        rows: step values whose ``T * B`` rows the outer graph already holds (step name -> outer name).
    """

    step: onnx.ModelProto
    types: Types
    stack: Stacking
    x: str
    y: str
    states: list[State]
    scan_inputs: list[ScanValue]
    scan_outputs: list[ScanValue]
    rows: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def around(cls, step: onnx.ModelProto, io: IOSpec) -> Loop:
        """The plain loop around ``step`` (a step graph of ``io``, taken as it is): x in, y out, states as they are."""
        inputs, outputs = io.inputs(Form.SEQUENCE), io.outputs(Form.SEQUENCE)
        x, y = inputs[0].name, outputs[0].name
        by_name = {v.name: v for v in [*step.graph.input, *step.graph.output]}
        return cls(
            step=step, types=infer_types(step),
            stack=Stacking(GraphBuilder(s.name for s in [*inputs, *outputs]), x, io.x_features, io.time_axis),
            x=x, y=y,
            states=[State.plain(s, o) for s, o in zip(io.state.names, io.state.output_names, strict=True)],
            scan_inputs=[ScanValue(copy_value(by_name[x]), x, io.time_axis)],
            scan_outputs=[ScanValue(copy_value(by_name[y]), y, io.time_axis)],
        )

    @property
    def outer(self) -> GraphBuilder:
        """The builder of everything that runs outside the loop."""
        return self.stack.g
