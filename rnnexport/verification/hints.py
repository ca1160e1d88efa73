"""Known mistakes, each confirmed by undoing it: a hint is given only when the undone graph passes.

Each :class:`Trial` undoes one known mistake on a copy of the graph (a GRU node's
``linear_before_reset`` flipped back; its gate blocks put back in the source's order; a
direction's bias put back) or in how it is fed (x's batch and time axes swapped; the
state's layer and batch axes swapped). :func:`confirm` runs each on the failing case on
onnxruntime's CPU provider: when every output then matches PyTorch, the mistake is named.
A fixed time axis is recognised from the pattern of the checks instead (:func:`fixed_time`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from rnnexport.core.compare import Tolerance, compare
from rnnexport.core.contract import Form, IOSpec, Layout
from rnnexport.core.graphs import attribute
from rnnexport.export.passes.graph import constant_value
from rnnexport.source.gates import GATES, ONNX_GATES, TORCH_GATES
from rnnexport.source.plan import NativeLayer, NativePlan
from rnnexport.verification.exposed import RunFailure, run_graph
from rnnexport.verification.findings import Hint, HintKind
from rnnexport.verification.onnxcells import KINDS, CellWeights, run_direction, supported

__all__ = ["Trial", "confirm", "fixed_time", "gate_details", "trials"]

Outputs = dict[str, np.ndarray]


def _same(outputs: Outputs) -> Outputs:
    return outputs


@dataclasses.dataclass(frozen=True)
class Trial:
    """One known mistake undone: the graph (or a copy) and feeds to run, and how to read its outputs back."""

    kind: HintKind
    text: str
    model: onnx.ModelProto
    feeds: Mapping[str, np.ndarray]
    restore: Callable[[Outputs], Outputs] = _same


def confirm(trials: Sequence[Trial], want: Mapping[str, np.ndarray], tol: Tolerance, case: str,
            deadline: float) -> tuple[list[Hint], bool]:
    """The hints whose trial passes on the case; and whether every trial ran before ``deadline``."""
    hints: list[Hint] = []
    for trial in trials:
        if time.perf_counter() > deadline:
            return hints, False
        got = run_graph(trial.model, trial.feeds)
        if isinstance(got, RunFailure):
            continue
        got = trial.restore(got)
        figures = [compare(got[name], reference, tol) if name in got else None for name, reference in want.items()]
        if all(f is not None and f.passed for f in figures):
            worst = max((f.max_abs or 0.0) for f in figures if f is not None)
            evidence = f"undone on a copy, case {case} passes on onnxruntime:cpu (max abs {worst:.1e})"
            if not any(h.kind is trial.kind for h in hints):
                hints.append(Hint(trial.kind, trial.text, evidence))
    return hints, True


# --- undoing a native operator's mistakes -----------------------------------------------------------

def _edited(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray],
            attributes: Mapping[tuple[int, str], int] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` with the initializers in ``arrays`` replaced and node attributes set."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if tensor.name in arrays:
            tensor.CopyFrom(numpy_helper.from_array(arrays[tensor.name].astype(numpy_helper.to_array(tensor).dtype),
                                                    tensor.name))
    for (index, name), value in (attributes or {}).items():
        for attr in copy.graph.node[index].attribute:
            if attr.name == name:
                attr.i = value
    return copy


def _initializers(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer}


def _blocks(array: np.ndarray, gates: int) -> list[np.ndarray]:
    """The gate blocks of one direction's ``W``, ``R`` (axis 0) or one bias half."""
    return np.split(array, gates, axis=0)


def _permutation(graph_w: np.ndarray, plan_w: np.ndarray, gates: int) -> tuple[int, ...] | None:
    """``p`` with graph block ``j`` == plan block ``p[j]`` in every direction, or None when the blocks differ."""
    found = None
    for d in range(graph_w.shape[0]):
        mine, theirs = _blocks(graph_w[d], gates), _blocks(plan_w[d], gates)
        perm = []
        for block in mine:
            match = [k for k, other in enumerate(theirs) if np.allclose(block, other, rtol=1e-5, atol=1e-7)]
            if not match:
                return None
            perm.append(match[0])
        if len(set(perm)) != gates or (found is not None and tuple(perm) != found):
            return None
        found = tuple(perm)
    return found


def _reorder(array: np.ndarray, order: Sequence[int], gates: int, halves: int = 1) -> np.ndarray:
    """Each direction's blocks of ``array`` (``(D, G*H, ...)`` or a bias ``(D, 2*G*H)``) put in ``order``."""
    out = []
    for d in range(array.shape[0]):
        parts = np.split(array[d], halves, axis=0)
        out.append(np.concatenate([np.concatenate([_blocks(p, gates)[k] for k in order], axis=0) for p in parts]))
    return np.stack(out)


def _gate_order(model: onnx.ModelProto, node: onnx.NodeProto, layer: NativeLayer | None, label: str,
                feeds: Mapping[str, np.ndarray]) -> list[Trial]:
    kind = KINDS[node.op_type]
    gates, names = GATES[kind], ONNX_GATES[kind]
    if gates == 1 or not {node.input[1], node.input[2]} <= _initializers(model):
        return []
    w, r = (constant_value(model.graph, node.input[i]) for i in (1, 2))
    b = constant_value(model.graph, node.input[3]) if len(node.input) > 3 and node.input[3] else None
    assert w is not None and r is not None  # initializers
    if layer is not None and layer.W.shape == w.shape:
        perm = _permutation(w, layer.W, gates)
        if perm is None or perm == tuple(range(gates)):
            return []
        # graph slot j holds gate perm[j]: to put gate k back in slot k, take the slot that holds it
        restore = [perm.index(k) for k in range(gates)]
        held = tuple(names[k] for k in perm)
    else:  # no source plan to compare with: try torch.nn's order, the usual mistake
        held = TORCH_GATES[kind]
        restore = [held.index(g) for g in names]
    arrays = {node.input[1]: _reorder(w, restore, gates), node.input[2]: _reorder(r, restore, gates)}
    if b is not None and node.input[3] in _initializers(model):
        arrays[node.input[3]] = _reorder(b, restore, gates, halves=2)
    whose = " (torch.nn's order)" if held == TORCH_GATES[kind] else ""
    text = (f"{label} stacks its gate blocks as {', '.join(held)}{whose}; ONNX's {node.op_type} reads them as "
            f"{', '.join(names)} (torch.nn packs LSTM i, f, g, o and GRU r, z, n; rnnexport.source.gates maps them)")
    return [Trial(HintKind.GATE_ORDER, text, _edited(model, arrays), feeds)]


def _bias_halves(graph_b: np.ndarray, plan_b: np.ndarray, half: int) -> list[str]:
    words = []
    for j, name in enumerate(("input bias Wb", "recurrence bias Rb")):
        mine, theirs = graph_b[j * half:(j + 1) * half], plan_b[j * half:(j + 1) * half]
        if not np.allclose(mine, theirs, rtol=1e-5, atol=1e-7):
            words.append(f"its {name} is not the source's" if np.any(mine) else
                         f"its {name} is zero where the source's is not (a missing bias half)")
    return words


def _bias(model: onnx.ModelProto, node: onnx.NodeProto, layer: NativeLayer, label: str,
          feeds: Mapping[str, np.ndarray]) -> list[Trial]:
    kind = KINDS[node.op_type]
    width = GATES[kind] * layer.hidden_size
    plan_b = layer.B if layer.B is not None else np.zeros((layer.directions, 2 * width), np.float32)
    name = node.input[3] if len(node.input) > 3 else ""
    if not name or name not in _initializers(model):
        return []
    graph_b = constant_value(model.graph, name)
    assert graph_b is not None  # an initializer
    if graph_b.shape != plan_b.shape:
        return []
    lbr = attribute(node, "linear_before_reset", 0)
    wrong = []
    for d in range(plan_b.shape[0]):
        if np.allclose(graph_b[d], plan_b[d], rtol=1e-5, atol=1e-7):
            continue
        merged = np.allclose(graph_b[d][:width] + graph_b[d][width:], plan_b[d][:width] + plan_b[d][width:],
                             rtol=1e-5, atol=1e-6)
        if merged and not (kind.value == "gru" and lbr):  # the halves summed: the same operator
            continue
        wrong.append((d, _bias_halves(graph_b[d], plan_b[d], width)))
    if not wrong:
        return []
    fixed = graph_b.copy()
    for d, _ in wrong:
        fixed[d] = plan_b[d]
    parts = "; ".join(f"direction {d}{' (reverse)' if d == 1 else ''}: {' and '.join(w)}" for d, w in wrong)
    text = f"{label}'s bias differs from the source's in {parts}"
    return [Trial(HintKind.BIAS, text, _edited(model, {name: fixed}), feeds)]


def _native_trials(model: onnx.ModelProto, plan: NativePlan | None, feeds: Mapping[str, np.ndarray]) -> list[Trial]:
    nodes = [(i, n) for i, n in enumerate(model.graph.node) if n.op_type in KINDS and n.domain in ("", "ai.onnx")]
    layers = list(plan.layers) if plan is not None and len(plan.layers) == len(nodes) else [None] * len(nodes)
    found: list[Trial] = []
    for k, ((index, node), layer) in enumerate(zip(nodes, layers, strict=True)):
        label = f"{node.op_type} node {node.name or node.output[0]!r} (layer {k})"
        if layer is not None and layer.op != node.op_type:
            layer = None
        if node.op_type == "GRU":
            flipped = 1 - int(attribute(node, "linear_before_reset", 0))
            text = (f"{label} has linear_before_reset={1 - flipped}; the source computes "
                    f"{'r * (W_hn h + b_hn) (torch.nn.GRU)' if flipped else '(r * h) @ W_hh (the seed cell)'}, "
                    f"which is linear_before_reset={flipped}")
            found.append(Trial(HintKind.GRU_LINEAR_BEFORE_RESET, text,
                               _edited(model, {}, {(index, "linear_before_reset"): flipped}), feeds))
        found += _gate_order(model, node, layer, label, feeds)
        if layer is not None:
            found += _bias(model, node, layer, label, feeds)
    return found


# --- undoing a layout mistake in how the graph reads its inputs --------------------------------------

def _swapped(array: np.ndarray, a: int, b: int) -> np.ndarray:
    return np.ascontiguousarray(np.swapaxes(array, a, b))


def _layout_trials(model: onnx.ModelProto, io: IOSpec, feeds: Mapping[str, np.ndarray]) -> list[Trial]:
    found = []
    x_name = io.inputs(Form.SEQUENCE)[0].name
    y_name = io.outputs(Form.SEQUENCE)[0].name
    ta, ba = io.time_axis, io.batch_axis
    if x_name in feeds and feeds[x_name].ndim >= 3:
        swapped = {**feeds, x_name: _swapped(feeds[x_name], ta, ba)}

        def restore_y(out: Outputs) -> Outputs:
            return {**out, y_name: _swapped(out[y_name], ta, ba)} if y_name in out and out[y_name].ndim >= 3 else out

        mine = "batch-first (B, T, ...)" if io.layout is Layout.BATCH_MAJOR else "time-first (T, B, ...)"
        other = "time-first (T, B, ...)" if io.layout is Layout.BATCH_MAJOR else "batch-first (B, T, ...)"
        text = (f"the graph reads x as {other}, but the source (and the contract) give it {mine}: a batch_first "
                "module exported without its transposes, or the reverse")
        found.append(Trial(HintKind.BATCH_FIRST, text, model, swapped, restore_y))
    axis = io.state.batch_axis
    names = [n for n in io.state.names if n in feeds and feeds[n].ndim >= 3]
    if names and axis != 0:
        state_feeds = {**feeds, **{n: _swapped(feeds[n], 0, axis) for n in names}}
        outs = [o for n, o in zip(io.state.names, io.state.output_names, strict=True) if n in names]

        def restore_state(out: Outputs) -> Outputs:
            return {**out, **{o: _swapped(out[o], 0, axis) for o in outs if o in out and out[o].ndim >= 3}}

        text = ("the graph reads its state as (batch, layers, hidden) but the source carries (layers, batch, hidden) "
                f"(axis {axis} is the batch): streams and layers are mixed")
        found.append(Trial(HintKind.STATE_LAYOUT, text, model, state_feeds, restore_state))
    return found


def trials(model: onnx.ModelProto, io: IOSpec, plan: NativePlan | None, feeds: Mapping[str, np.ndarray]) -> list[Trial]:
    """Every known mistake that could apply to ``model``, each undone."""
    return [*_native_trials(model, plan, feeds), *_layout_trials(model, io, feeds)]


# --- a fixed time axis --------------------------------------------------------------------------------

def fixed_time(lengths: Mapping[int, bool], declared_y: Sequence[object] | None, time_axis: int,
               got_time: int | None, case_time: int, constants: Sequence[str]) -> Hint | None:
    """A fixed time axis: the graph works at one length only, and its shapes show why.

    Passing at one length and failing at the others is not enough (a mistake at step 100
    fails only the long cases); the graph must also return ``y`` with another length, stop
    on the case (``got_time`` None), or declare ``y``'s time axis as a number.

    Args:
        lengths: per sequence length of the grid, whether every contract-1 check at it passed.
        declared_y: the graph's declared ``y`` dims.
        got_time: the length of the ``y`` the graph returned on the diagnosed case (None: it raised).
        constants: the constant inputs of the node where the run failed, in words (e.g. ``[5, -1, 8]``).
    """
    passing = sorted(t for t, ok in lengths.items() if ok)
    failing = sorted(t for t, ok in lengths.items() if not ok)
    declared = declared_y[time_axis] if declared_y is not None and len(declared_y) > time_axis else None
    shapes = []
    if got_time is None:
        shapes.append(f"onnxruntime cannot run the graph at T={case_time}")
    elif got_time != case_time:
        shapes.append(f"y comes back with T={got_time} for x of T={case_time}")
    if isinstance(declared, int) and declared != case_time:
        shapes.append(f"the graph declares y's time axis as {declared}")
    fixed = got_time if got_time is not None and got_time != case_time else \
        (passing[0] if len(passing) == 1 else declared if isinstance(declared, int) else None)
    if not shapes or fixed is None or (len(passing) != 1 and got_time in (None, case_time)):
        return None
    pattern = ([f"every case with T={passing[0]} passes and every case with T {', '.join(map(str, failing))} fails"]
               if len(passing) == 1 and failing else [])
    hits = [c for c in constants if str(fixed) in c.replace("[", " ").replace("]", " ").replace(",", " ").split()]
    where = f"; the constant {', '.join(hits)} holds it" if hits else ""
    text = (f"the graph's time axis is fixed at T={fixed} although x declares it free: the exporter traced one "
            f"length and baked it into a shape{where}. Export with a dynamic time axis, or with rnnexport "
            "(native or scan lowering)")
    return Hint(HintKind.FIXED_TIME_AXIS, text, "; ".join(pattern + shapes))


# --- the gates inside a native operator -----------------------------------------------------------------

def _cell(model: onnx.ModelProto, node: onnx.NodeProto, values: Mapping[str, np.ndarray],
          d: int) -> CellWeights | None:
    arrays = []
    for i in (1, 2, 3):
        name = node.input[i] if len(node.input) > i else ""
        array = constant_value(model.graph, name) if name else None
        arrays.append(values.get(name) if array is None and name else array)
    w, r, b = arrays
    if w is None or r is None:
        return None
    return CellWeights(node.op_type, w[d], r[d], None if b is None else b[d],
                       int(attribute(node, "linear_before_reset", 0)))


def gate_details(model: onnx.ModelProto, node: onnx.NodeProto, layer: NativeLayer | None,
                 values: Mapping[str, np.ndarray], direction: int, reverse: bool, tol: Tolerance) -> list[str]:
    """Which gates of ``node``'s ``direction`` first differ from the source's own layer, and at which step."""
    if layer is None or layer.op != node.op_type or not supported(node) or attribute(node, "layout", 0):
        return []
    mine = _cell(model, node, values, direction)
    x = values.get(node.input[0])
    if mine is None or x is None or layer.W.shape[0] <= direction:
        return []
    theirs = CellWeights(layer.op, layer.W[direction], layer.R[direction],
                         None if layer.B is None else layer.B[direction], int(layer.linear_before_reset or 0))
    initial = [values.get(n) if n else None for n in [*node.input[5:7], "", ""][:2]]
    shape = (x.shape[1], mine.hidden)
    h0 = initial[0][direction] if initial[0] is not None else np.zeros(shape)
    c0 = initial[1][direction] if initial[1] is not None else None
    got, want = run_direction(mine, x, h0, c0, reverse), run_direction(theirs, x, h0, c0, reverse)
    steps = range(len(got) - 1, -1, -1) if reverse else range(len(got))
    for t in steps:
        differ = {g: float(np.abs(got[t][g] - want[t][g]).max()) for g in ONNX_GATES[KINDS[node.op_type]]}
        bad = {g: e for g, e in differ.items() if e > tol.atol + tol.rtol}
        if bad:
            agree = [g for g in differ if g not in bad]
            line = (f"gates at step {t}, direction {direction}, against the source's weights: "
                    + ", ".join(f"{g} off by {e:.2g}" for g, e in bad.items())
                    + (f"; {', '.join(agree)} agree" if agree else ""))
            return [line]
    return []
