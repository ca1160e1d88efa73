"""Ragged batches: what gives a sequence graph's ``lengths`` input PyTorch's packed semantics.

Unlike the scan lowering's passes, these change what a graph computes: they are the part of
each lowering that makes a lengths graph what :class:`~rnnexport.core.contract.LengthsSpec`
says. In stream ``b``, steps ``t >= lengths[b]`` are padding:

- :func:`mask_sequence` (every lowering): ``x`` is read through ``Where(t < lengths, x, 0)``,
  so what the padding holds (NaN, an out-of-range token id) never reaches the recurrence or
  the NaN guard, and ``y`` is written through ``Where(t < lengths, y, 0)``: zeros past each
  end, as ``pad_packed_sequence`` pads, on every engine whatever its operators write there;
- :func:`mask_scan_states` (the scan lowering): every state a ``Scan`` carries goes through
  ``Where(t < lengths, new, old)`` in the body, so a stream's state stops at its own last
  step. A reverse Scan (a bidirectional layer's backward half) reads the mask backwards too:
  its state stays initial through the padding and it starts at each stream's own end, as
  PyTorch's packed bidirectional layers do.

The native lowering passes the lengths to the ONNX operators' ``sequence_lens`` instead
(:mod:`rnnexport.export.native`); the unrolled lowering traces the same ``where`` in torch.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from rnnexport.core.contract import BATCH, IOSpec
from rnnexport.core.graphs import attribute
from rnnexport.core.onnxfile import value_dims
from rnnexport.export.onnxutil import GraphBuilder
from rnnexport.export.passes.graph import (
    batch_axis,
    producers,
    rename_output,
    replace_uses,
    toposort,
)

__all__ = ["mask_scan_states", "mask_sequence", "valid_steps"]

_PREFIX = "lengths"


def valid_steps(g: GraphBuilder, lengths: str, steps: str, time_axis: int) -> str:
    """``t < lengths[b]`` as a bool ``(T, B)`` (``time_axis`` 0) or ``(B, T)`` value.

    ``steps`` is T as a rank-0 int64 value. Lengths below 0 or above T need no clamping here:
    a negative length masks every step, one above T none.
    """
    zero, one = g.scalar(f"{_PREFIX}/zero", np.array(0, np.int64)), g.scalar(f"{_PREFIX}/one", np.array(1, np.int64))
    times = g.one("Range", [zero, steps, one], g.fresh(f"{_PREFIX}/t"))
    times = g.one("Unsqueeze", [times, g.ints(f"{_PREFIX}/axis", [1 - time_axis])])
    per_stream = g.one("Unsqueeze", [lengths, g.ints(f"{_PREFIX}/axis", [time_axis])])
    return g.one("Less", [times, per_stream], g.fresh(f"{_PREFIX}/valid"))


def time_steps(g: GraphBuilder, value: str, axis: int) -> str:
    """The size of ``value``'s ``axis`` as a rank-0 int64 value."""
    size = g.one("Shape", [value], g.fresh(f"{_PREFIX}/steps"), start=axis, end=axis + 1)
    return g.one("Squeeze", [size, g.ints(f"{_PREFIX}/axis", [0])])


def _zero(g: GraphBuilder, dtype: str) -> str:
    return g.scalar(f"{_PREFIX}/zero_{dtype}", np.zeros((), np.dtype(dtype)))


def _spread(g: GraphBuilder, valid: str, rank: int) -> str:
    """``valid`` (two leading axes) unsqueezed to ``rank`` axes, the rest of size 1."""
    if rank == 2:
        return valid
    return g.one("Unsqueeze", [valid, g.ints(f"{_PREFIX}/axes", list(range(2, rank)))])


def mask_sequence(model: onnx.ModelProto, io: IOSpec) -> None:
    """Read ``x`` and write ``y`` of ``model`` (a sequence graph with ``io``'s lengths input) masked, in place.

    Every reader of ``x`` reads ``Where(valid, x, 0)`` instead; the graph output ``y`` is
    ``Where(valid, y, 0)`` of what the graph computed.
    """
    assert io.lengths is not None  # callers convert with lengths
    graph = model.graph
    x, y = graph.input[0].name, graph.output[0].name
    g = GraphBuilder.beside(graph)
    steps = time_steps(g, x, io.time_axis)
    valid = valid_steps(g, io.lengths.name, steps, io.time_axis)
    masked_x = g.fresh(f"{_PREFIX}/x")
    replace_uses(graph, x, masked_x)  # before the mask's own nodes join: they read x itself
    g.one("Where", [_spread(g, valid, 2 + len(io.x_features)), x, _zero(g, io.x_dtype)], masked_x)
    raw_y = g.fresh(f"{_PREFIX}/y_unmasked")
    rename_output(producers(graph)[y], y, raw_y)
    replace_uses(graph, y, raw_y)
    g.one("Where", [_spread(g, valid, 2 + len(io.y_features)), raw_y, _zero(g, io.y_dtype)], y)
    g.flush_into(graph)
    toposort(graph)


def _state_mask(g: GraphBuilder, valid: str, rank: int, axis: int) -> tuple[str, onnx.ValueInfoProto]:
    """A scan input that masks a state of ``rank`` with its batch at ``axis``, and its body input.

    ``valid`` is ``(T, B)``; the scan input is ``(T, 1.., B, 1..)``, B where the state has it.
    """
    spread = [k + 1 for k in range(rank) if k != axis]
    outer = g.one("Unsqueeze", [valid, g.ints(f"{_PREFIX}/axes", spread)]) if spread else valid
    dims: list[int | str] = [1] * rank
    dims[axis] = BATCH
    return outer, helper.make_tensor_value_info(g.fresh(f"{_PREFIX}/valid_t"), onnx.TensorProto.BOOL, dims)


def mask_scan_states(model: onnx.ModelProto, lengths: str) -> str | None:
    """Carry every state of every top-level Scan of ``model`` through ``Where(t < lengths, new, old)``, in place.

    Returns:
        None when done; else why a state cannot be masked (``model`` is then unusable).
    """
    graph = model.graph
    g = GraphBuilder.beside(graph)
    for node in [n for n in graph.node if n.op_type == "Scan" and not n.domain]:
        scans = int(attribute(node, "num_scan_inputs"))
        body = attribute(node, "body")
        axes = list(attribute(node, "scan_input_axes") or [0] * scans)
        directions = list(attribute(node, "scan_input_directions") or [0] * scans)
        first = node.input[len(node.input) - scans]
        valid = valid_steps(g, lengths, time_steps(g, first, axes[0]), 0)
        masks: dict[tuple[int, int], tuple[str, onnx.ValueInfoProto]] = {}
        for index in range(len(node.input) - scans):
            state_in, state_out = body.input[index], body.output[index]
            axis, dims = batch_axis(state_in), value_dims(state_in)
            if axis is None or dims is None:
                return f"the scan body carries its state {state_in.name!r} without a known batch axis"
            key = (len(dims), axis)
            if key not in masks:
                masks[key] = _state_mask(g, valid, *key)
            masked = g.fresh(f"{_PREFIX}/{state_out.name}")
            body.node.append(helper.make_node("Where", [masks[key][1].name, state_out.name, state_in.name],
                                              [masked], name=g.fresh(f"{_PREFIX}/keep_state")))
            state_out.name = masked
        for outer, mask in masks.values():
            node.input.append(outer)
            body.input.append(mask)
        count = len(masks)
        _set_ints(node, "num_scan_inputs", scans + count)
        _set_ints(node, "scan_input_axes", axes + [0] * count)
        if attribute(node, "scan_input_directions") is not None:  # a reverse Scan reads its masks backwards too
            _set_ints(node, "scan_input_directions", directions + [directions[0]] * count)
    g.flush_into(graph)
    toposort(graph)
    return None


def _set_ints(node: onnx.NodeProto, name: str, value: int | list[int]) -> None:
    """Set (or add) the int or ints attribute ``name`` of ``node``."""
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])
