"""Each graph pass on its own, on tiny hand-built graphs.

For every pass: what it must change (and leave alone) in the graph, that it reports
``modified`` truly, and that onnxruntime computes the same outputs before and after it
on random inputs (bit for bit where the pass only re-arranges work; within a float32
ulp or two where it re-associates sums or runs a matmul on stacked rows). The passes
as the scan lowering runs them on traced steps: tests/test_scan_hoist.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rnnexport.core.contract import Form, IOSpec, Layout, StateSpec
from rnnexport.core.graphs import attribute
from rnnexport.export.onnxutil import GraphBuilder, finish_model
from rnnexport.export.passes.algebra import fuse_matmuls, lift_biases
from rnnexport.export.passes.base import Pass, PassResult, fixpoint, run_passes
from rnnexport.export.passes.carry import carry_states
from rnnexport.export.passes.graph import (
    prefix_names,
    readers,
    remove_dead_nodes,
    replace_uses,
    toposort,
)
from rnnexport.export.passes.head import hoist_head
from rnnexport.export.passes.hoist import hoist_inputs
from rnnexport.export.passes.loop import Loop
from rnnexport.export.passes.nan import CarryNan
from rnnexport.export.passes.splits import fuse_split_gates
from rnnexport.export.passes.views import drop_identity_views, drop_one_view_chain
from rnnexport.export.passes.weights import weights_into_bodies
from rnnexport.export.scan import SCAN_PASSES, ScanPasses, wrap_in_scan

F32 = TensorProto.FLOAT
#: Passes that re-associate float sums or run a matmul on other row counts: an ulp or two.
ULP = 1e-6


# --- building and running tiny graphs --------------------------------------------------------------

def _value(name: str, *dims: int | str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, F32, list(dims))


def _weight(name: str, *shape: int, seed: int = 0) -> onnx.TensorProto:
    rng = np.random.default_rng(seed + len(name) + sum(shape))
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: Sequence[onnx.TensorProto] = ()) -> onnx.ModelProto:
    model = finish_model(helper.make_graph(nodes, "tiny", inputs, outputs, initializer=list(initializers)))
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(model: onnx.ModelProto, rng: np.random.Generator, batch: int = 3, time: int = 5) -> dict[str, np.ndarray]:
    sizes = {"B": batch, "T": time}
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else sizes[d.dim_param]
                for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _apply(pass_: Pass[onnx.ModelProto], model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """The rewritten model (checked by onnx) and the pass's ``modified``; ``model`` is left as it was."""
    result = pass_(_copy(model))
    onnx.checker.check_model(result.model, full_check=True)
    return result.model, result.modified


def _assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, atol: float = 0.0, **sizes: int) -> None:
    """onnxruntime's outputs of both graphs on the same random inputs, for two input sizes."""
    for seed in (0, 1):
        feeds = _feeds(before, np.random.default_rng(seed), **({"batch": 1 + 2 * seed} | sizes))
        for got, want in zip(_run(after, feeds), _run(before, feeds), strict=True):
            if atol:
                np.testing.assert_allclose(got, want, atol=atol, rtol=ULP)
            else:
                np.testing.assert_array_equal(got, want)


def _ops(graph: onnx.GraphProto) -> list[str]:
    return [n.op_type for n in graph.node]


def _count(graph: onnx.GraphProto, op: str) -> int:
    return _ops(graph).count(op)


# --- the protocol ----------------------------------------------------------------------------------

def _two_view_chains() -> onnx.ModelProto:
    """``relu(squeeze(unsqueeze(x))) + squeeze(unsqueeze(x))``: two chains that end where they start."""
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axis0"], ["u1"]), helper.make_node("Squeeze", ["u1", "axis0"], ["s1"]),
        helper.make_node("Unsqueeze", ["x", "axis0"], ["u2"]), helper.make_node("Squeeze", ["u2", "axis0"], ["s2"]),
        helper.make_node("Relu", ["s1"], ["r"]), helper.make_node("Add", ["r", "s2"], ["y"]),
    ]
    return _model(nodes, [_value("x", "B", 4)], [_value("y", "B", 4)], [_ints("axis0", [0])])


def test_run_passes_reports_modified_when_any_pass_changed_the_model() -> None:
    model = _two_view_chains()
    result = run_passes([remove_dead_nodes, drop_identity_views, remove_dead_nodes], model)
    assert result.model is model and result.modified
    assert not run_passes([drop_identity_views, remove_dead_nodes], model).modified


def test_fixpoint_reruns_a_pass_until_it_changes_nothing() -> None:
    model = _two_view_chains()
    once, again = drop_one_view_chain(_copy(model)), fixpoint(drop_one_view_chain)(_copy(model))
    assert once.modified and again.modified
    assert _ops(once.model.graph).count("Squeeze") == 1 and "Squeeze" not in _ops(again.model.graph)
    assert not fixpoint(drop_one_view_chain)(again.model).modified


# --- the primitives --------------------------------------------------------------------------------

def _if_reading(outer: str, output: str) -> onnx.NodeProto:
    """An If node whose branches both return the outer value ``outer`` through an Identity."""
    def branch(name: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Identity", [outer], [f"{name}_out"])], name, [],
                                 [_value(f"{name}_out", "B", 4)])
    return helper.make_node("If", ["cond"], [output], then_branch=branch("then"), else_branch=branch("else"))


def test_readers_count_a_subgraph_reading_a_value_from_outside() -> None:
    node = _if_reading("r", "y")
    relu = helper.make_node("Relu", ["x"], ["r"])
    found = readers([relu, node])
    assert found["r"] == [node, node] and found["x"] == [relu] and found["cond"] == [node]  # one per branch


def test_replace_uses_renames_readers_inside_subgraphs_and_keeps_graph_outputs() -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["x"], ["n"]),
                               _if_reading("r", "y"), helper.make_node("Abs", ["r"], ["r2"])],
                              "g", [_value("x", "B", 4)], [_value("y", "B", 4), _value("r", "B", 4)])
    replace_uses(graph, "r", "n")
    branches = [attribute(graph.node[2], "then_branch"), attribute(graph.node[2], "else_branch")]
    assert [list(b.node[0].input) for b in branches] == [["n"], ["n"]]
    assert list(graph.node[3].input) == ["n"] and [o.name for o in graph.output] == ["y", "r"]


def test_prefix_names_renames_every_value_and_node_including_bodies() -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="relu"), _if_reading("r", "y")],
                              "g", [_value("x", "B", 4)], [_value("y", "B", 4)], initializer=[_ints("k", [1])])
    prefix_names(graph, "p/")
    then = attribute(graph.node[1], "then_branch")
    assert [graph.node[0].name, *graph.node[0].input, *graph.node[0].output] == ["p/relu", "p/x", "p/r"]
    assert list(then.node[0].input) == ["p/r"] and then.output[0].name == "p/then_out"
    assert graph.initializer[0].name == "p/k" and graph.output[0].name == "p/y"


def test_toposort_puts_producers_first_and_keeps_independent_nodes_in_order() -> None:
    graph = helper.make_graph([helper.make_node("Neg", ["r"], ["y"]), helper.make_node("Abs", ["x"], ["a"]),
                               helper.make_node("Relu", ["x"], ["r"])],
                              "g", [_value("x", "B", 4)], [_value("y", "B", 4), _value("a", "B", 4)])
    toposort(graph)
    assert _ops(graph) == ["Relu", "Neg", "Abs"]


def test_fresh_names_avoid_every_name_of_the_graph_they_join() -> None:
    model = _two_view_chains()
    model.graph.node[0].name = "Relu_1"
    g = GraphBuilder.beside(model.graph)
    made = [g.fresh("u"), g.fresh("u"), g.one("Relu", ["x"])]
    assert made[0] not in {"u1", "u2"} and len(set(made)) == 3
    assert g.nodes[0].name != "Relu_1" and not {n.name for n in g.nodes} & {"u1", "u2", "Relu_1"}


def test_remove_dead_nodes_drops_what_no_output_needs() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["unused"]),
             helper.make_node("Abs", ["unused"], ["unused2"])]
    model = _model(nodes, [_value("x", "B", 4)], [_value("y", "B", 4)])
    after, modified = _apply(remove_dead_nodes, model)
    assert modified and _ops(after.graph) == ["Relu"]
    assert not remove_dead_nodes(after).modified
    _assert_same_outputs(model, after)


# --- passes on a traced step -----------------------------------------------------------------------

def test_drop_identity_views_bypasses_chains_that_end_in_their_starting_shape() -> None:
    model = _two_view_chains()
    after, modified = _apply(drop_identity_views, model)
    assert modified and _ops(after.graph) == ["Relu", "Add"]
    assert list(after.graph.node[1].input) == ["r", "x"]
    _assert_same_outputs(model, after)


def test_drop_identity_views_lets_the_chain_start_write_a_graph_output() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Unsqueeze", ["r", "axis0"], ["u"]),
             helper.make_node("Squeeze", ["u", "axis0"], ["y"])]
    model = _model(nodes, [_value("x", "B", 4)], [_value("y", "B", 4)], [_ints("axis0", [0])])
    after, modified = _apply(drop_identity_views, model)
    assert modified and _ops(after.graph) == ["Relu"] and list(after.graph.node[0].output) == ["y"]
    _assert_same_outputs(model, after)


def test_drop_identity_views_keeps_a_reshape_that_changes_the_shape() -> None:
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["v"]), helper.make_node("Relu", ["v"], ["y"])]
    model = _model(nodes, [_value("x", "B", 4)], [_value("y", "B", 2, 2)], [_ints("shape", [0, 2, 2])])
    after, modified = _apply(drop_identity_views, model)
    assert not modified and after.SerializeToString() == model.SerializeToString()


def _gate_step() -> onnx.ModelProto:
    """A gated step as torch traces it: per-gate matmuls of ``x`` and ``h``, biases added last."""
    nodes = [
        helper.make_node("MatMul", ["x", "W_i"], ["xi"]), helper.make_node("MatMul", ["x", "W_f"], ["xf"]),
        helper.make_node("MatMul", ["h", "U_i"], ["hi"]), helper.make_node("MatMul", ["h", "U_f"], ["hf"]),
        helper.make_node("Add", ["xi", "hi"], ["si"]), helper.make_node("Add", ["si", "b_i"], ["gi"]),
        helper.make_node("Add", ["xf", "hf"], ["sf"]), helper.make_node("Add", ["sf", "b_f"], ["gf"]),
        helper.make_node("Sigmoid", ["gi"], ["i"]), helper.make_node("Sigmoid", ["gf"], ["f"]),
        helper.make_node("Mul", ["f", "h"], ["kept"]), helper.make_node("Add", ["kept", "i"], ["h_out"]),
    ]
    weights = [_weight(n, 4, 3) for n in ("W_i", "W_f")] + [_weight(n, 3, 3) for n in ("U_i", "U_f")]
    weights += [_weight(n, 3) for n in ("b_i", "b_f")]
    return _model(nodes, [_value("x", "B", 4), _value("h", "B", 3)], [_value("h_out", "B", 3)], weights)


def test_lift_biases_moves_each_bias_to_the_input_side() -> None:
    model = _gate_step()
    after, modified = _apply(lift_biases, model)
    assert modified
    made = {o: n for n in after.graph.node for o in n.output}
    for gate, bias in (("gi", "b_i"), ("gf", "b_f")):
        inner = made[made[gate].input[0]]
        assert set(inner.input) == {f"x{gate[1]}", bias}  # (x @ W + b) + h @ U
    assert not lift_biases(after).modified
    _assert_same_outputs(model, after, atol=ULP)


def test_fuse_matmuls_makes_one_matmul_per_left_input() -> None:
    model = _gate_step()
    after, modified = _apply(fuse_matmuls, model)
    assert modified and _count(after.graph, "MatMul") == 2 and _count(after.graph, "Split") == 2
    fused = {t.name: t.dims for t in after.graph.initializer}
    assert sorted(tuple(fused[n.input[1]]) for n in after.graph.node if n.op_type == "MatMul") == [(3, 6), (4, 6)]
    assert not fuse_matmuls(after).modified
    _assert_same_outputs(model, after, atol=ULP)


def _split(source: str, outputs: list[str]) -> onnx.NodeProto:
    return helper.make_node("Split", [source, "sizes"], outputs, axis=-1)


def _split_model(nodes: list[onnx.NodeProto], outputs: list[str], extra: Sequence[onnx.TensorProto] = ()
                 ) -> onnx.ModelProto:
    return _model(nodes, [_value("x", "B", 6), _value("h", "B", 6)], [_value(o, "B", 2) for o in outputs],
                  [_ints("sizes", [2, 2, 2]), *extra])


def test_fuse_split_gates_runs_one_activation_for_every_gate() -> None:
    nodes = [_split("x", ["p0", "p1", "p2"])] + [helper.make_node("Sigmoid", [f"p{i}"], [f"y{i}"]) for i in range(3)]
    model = _split_model(nodes, ["y0", "y1", "y2"])
    after, modified = _apply(fuse_split_gates, model)
    assert modified and _ops(after.graph) == ["Sigmoid", "Split"]
    assert list(after.graph.node[1].output) == ["y0", "y1", "y2"]
    _assert_same_outputs(model, after)


def test_fuse_split_gates_joins_per_gate_constants() -> None:
    nodes = [_split("x", ["p0", "p1", "p2"])] + [helper.make_node("Add", [f"p{i}", f"c{i}"], [f"y{i}"])
                                                 for i in range(3)]
    model = _split_model(nodes, ["y0", "y1", "y2"], [_weight(f"c{i}", 2, seed=i) for i in range(3)])
    after, modified = _apply(fuse_split_gates, model)
    assert modified and _ops(after.graph) == ["Add", "Split"]
    _assert_same_outputs(model, after)


def test_fuse_split_gates_adds_two_splits_cut_alike_before_splitting() -> None:
    nodes = [_split("x", ["p0", "p1", "p2"]), _split("h", ["q0", "q1", "q2"])]
    nodes += [helper.make_node("Mul", [f"p{i}", f"q{i}"], [f"y{i}"]) for i in range(3)]
    model = _split_model(nodes, ["y0", "y1", "y2"])
    after, modified = _apply(fuse_split_gates, model)
    assert modified and _ops(after.graph) == ["Mul", "Split"] and set(after.graph.node[0].input) == {"x", "h"}
    _assert_same_outputs(model, after)


def test_fuse_split_gates_leaves_a_split_output_read_twice() -> None:
    nodes = [_split("x", ["p0", "p1", "p2"]), helper.make_node("Sigmoid", ["p0"], ["y0"]),
             helper.make_node("Sigmoid", ["p1"], ["y1"]), helper.make_node("Add", ["p2", "p2"], ["y2"])]
    model = _split_model(nodes, ["y0", "y1", "y2"])
    after, modified = _apply(fuse_split_gates, model)
    assert not modified and after.SerializeToString() == model.SerializeToString()


def test_step_passes_compose_and_stop_changing() -> None:
    model = _gate_step()
    after = _copy(model)
    assert run_passes(SCAN_PASSES.step, after).modified
    assert not run_passes(SCAN_PASSES.step, after).modified
    onnx.checker.check_model(after, full_check=True)
    assert _count(after.graph, "MatMul") == 2 and _count(after.graph, "Sigmoid") == 1
    _assert_same_outputs(model, after, atol=ULP)


# --- passes on the loop around a step --------------------------------------------------------------

def _io(layout: Layout = Layout.TIME_MAJOR) -> IOSpec:
    """x of 4 features, y of 2, one torch.nn-style state ``h`` of shape (1, B, 3)."""
    return IOSpec((4,), "float32", (2,), StateSpec(("h",), ((1, 3),), batch_axis=1), layout=layout)


def _rnn_step() -> onnx.ModelProto:
    """One step of a torch.nn-style RNN with a head: ``h1 = tanh(x @ W + h[0] @ U)``, ``y = h1 @ V``."""
    nodes = [
        helper.make_node("Squeeze", ["h", "axis0"], ["h0"]), helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("MatMul", ["h0", "U"], ["hu"]), helper.make_node("Add", ["xw", "hu"], ["s"]),
        helper.make_node("Tanh", ["s"], ["h1"]), helper.make_node("Unsqueeze", ["h1", "axis0"], ["h_out"]),
        helper.make_node("MatMul", ["h1", "V"], ["y"]),
    ]
    return _model(nodes, [_value("x", "B", 4), _value("h", 1, "B", 3)], [_value("y", "B", 2), _value("h_out", 1, "B", 3)],
                  [_weight("W", 4, 3), _weight("U", 3, 3), _weight("V", 3, 2), _ints("axis0", [0])])


def _body(model: onnx.ModelProto) -> onnx.GraphProto:
    scan = next(n for n in model.graph.node if n.op_type == "Scan")
    body: onnx.GraphProto = attribute(scan, "body")
    return body


def _scan_inputs(model: onnx.ModelProto) -> list[str]:
    scan = next(n for n in model.graph.node if n.op_type == "Scan")
    return list(scan.input)


def _loop_pass_applied(pass_: Pass[Loop], io: IOSpec) -> tuple[onnx.ModelProto, onnx.ModelProto, bool]:
    """The plain Scan graph of :func:`_rnn_step`, the one ``pass_`` ran on, and its ``modified``."""
    step = _rnn_step()
    plain = wrap_in_scan(io, step, ScanPasses())
    seen: list[bool] = []

    def recorded(loop: Loop, /) -> PassResult[Loop]:
        result = pass_(loop)
        seen.append(result.modified)
        return result

    rewritten = wrap_in_scan(io, step, ScanPasses(loop=(recorded,)))
    onnx.checker.check_model(rewritten, full_check=True)
    return plain, rewritten, seen == [True]


@pytest.mark.parametrize("layout", [Layout.TIME_MAJOR, Layout.BATCH_MAJOR])
def test_hoist_inputs_runs_the_input_matmul_once_on_all_steps(layout: Layout) -> None:
    plain, after, modified = _loop_pass_applied(hoist_inputs, _io(layout))
    assert modified and "x" not in _scan_inputs(after)
    assert _count(_body(after), "MatMul") == _count(_body(plain), "MatMul") - 1
    assert _count(after.graph, "MatMul") == 1  # x @ W, outside the loop
    _assert_same_outputs(plain, after, atol=ULP, time=5)


def test_hoist_inputs_leaves_work_that_mixes_batch_rows() -> None:
    step = _rnn_step()
    centred = [helper.make_node("ReduceMean", ["x", "axis0"], ["mean"]), helper.make_node("Sub", ["x", "mean"], ["xc"])]
    nodes = list(step.graph.node)
    nodes[1] = helper.make_node("MatMul", ["xc", "W"], ["xw"])
    del step.graph.node[:]
    step.graph.node.extend([*centred, *nodes])
    loop = Loop.around(step, _io())
    before = step.SerializeToString()
    assert not hoist_inputs(loop).modified
    assert step.SerializeToString() == before and [v.outer for v in loop.scan_inputs] == ["x"]


def test_carry_states_runs_the_state_views_once_outside_the_loop() -> None:
    plain, after, modified = _loop_pass_applied(carry_states, _io())
    assert modified and "h" not in _scan_inputs(after)
    assert {"Squeeze", "Unsqueeze"} <= set(_ops(after.graph)) and not {"Squeeze", "Unsqueeze"} & set(_ops(_body(after)))
    _assert_same_outputs(plain, after, time=5)


def test_hoist_head_runs_the_output_layer_once_after_the_loop() -> None:
    plain, after, modified = _loop_pass_applied(hoist_head, _io())
    scan = next(n for n in after.graph.node if n.op_type == "Scan")
    assert modified and "y" not in scan.output
    assert _count(_body(after), "MatMul") == _count(_body(plain), "MatMul") - 1
    assert _count(after.graph, "MatMul") == 1  # h @ V, after the loop
    _assert_same_outputs(plain, after, atol=ULP, time=5)


def test_loop_passes_leave_a_step_they_cannot_improve() -> None:
    nodes = [helper.make_node("Add", ["x", "h"], ["s"]), helper.make_node("Tanh", ["s"], ["y"]),
             helper.make_node("Neg", ["y"], ["h_out"])]
    io = IOSpec((3,), "float32", (3,), StateSpec(("h",), ((3,),), batch_axis=0))
    step = _model(nodes, [_value("x", "B", 3), _value("h", "B", 3)], [_value("y", "B", 3), _value("h_out", "B", 3)])
    loop = Loop.around(step, io)
    for pass_ in (carry_states, hoist_head):  # the state is read by an Add, the state needs all of y
        assert not pass_(loop).modified


# --- passes on a finished graph --------------------------------------------------------------------

def test_weights_into_bodies_moves_only_what_the_loop_alone_reads() -> None:
    step = _rnn_step()
    before = wrap_in_scan(_io(), step, ScanPasses(loop=(hoist_inputs,)))
    after, modified = _apply(weights_into_bodies, before)
    assert modified and not {t.name for t in _body(before).initializer}
    inner, outer = {t.name for t in _body(after).initializer}, {t.name for t in after.graph.initializer}
    assert "step/U" in inner and "step/W" in outer  # x @ W runs outside: W stays there
    assert not outer & {i for n in _body(after).node for i in n.input}
    assert not weights_into_bodies(after).modified
    _assert_same_outputs(before, after, time=4)


def test_weights_into_bodies_leaves_a_weight_the_outer_graph_reads_too() -> None:
    before = wrap_in_scan(_io(), _rnn_step(), ScanPasses())
    before.graph.node.append(helper.make_node("Neg", ["step/U"], ["u_neg"]))
    before.graph.output.append(_value("u_neg", 3, 3))
    after, modified = _apply(weights_into_bodies, before)
    inner, outer = {t.name for t in _body(after).initializer}, {t.name for t in after.graph.initializer}
    assert modified and "step/U" in outer and "step/U" not in inner and "step/W" in inner
    _assert_same_outputs(before, after, time=4)


def _step_cell() -> tuple[onnx.ModelProto, IOSpec]:
    """``h_out = tanh(nan_to_0(x @ W) + nan_to_0(h) @ U)``, ``y = h_out``: a cell whose engine swallows NaN.

    Some engines' activations turn NaN into finite values; this cell does it in the graph, so
    only the guard can put NaN into its outputs.
    """
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("IsNaN", ["xw"], ["x_nan"]),
             helper.make_node("Where", ["x_nan", "zero", "xw"], ["xs"]), helper.make_node("IsNaN", ["h"], ["h_nan"]),
             helper.make_node("Where", ["h_nan", "zero", "h"], ["hs"]), helper.make_node("MatMul", ["hs", "U"], ["hu"]),
             helper.make_node("Add", ["xs", "hu"], ["s"]), helper.make_node("Tanh", ["s"], ["h_out"]),
             helper.make_node("Identity", ["h_out"], ["y"])]
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    model = _model(nodes, [_value("x", "B", 4), _value("h", "B", 3)], [_value("y", "B", 3), _value("h_out", "B", 3)],
                   [_weight("W", 4, 3), _weight("U", 3, 3), zero])
    return model, IOSpec((4,), "float32", (3,), StateSpec(("h",), ((3,),), batch_axis=0))


def _nan_rows(array: np.ndarray, axis: int) -> list[bool]:
    return np.isnan(array).any(axis=tuple(a for a in range(array.ndim) if a != axis)).tolist()


def test_carry_nan_keeps_finite_outputs_and_marks_the_streams_that_saw_nan() -> None:
    model, io = _step_cell()
    after, modified = _apply(CarryNan(io, Form.STEP), model)
    assert modified and [next(n for n in after.graph.node if o.name in n.output).op_type for o in after.graph.output] \
        == ["Add", "Add"]
    _assert_same_outputs(model, after)
    feeds = _feeds(model, np.random.default_rng(2), batch=4)
    feeds["x"][1, 2] = np.nan
    feeds["h"][3, 0] = np.nan
    assert not any(np.isnan(out).any() for out in _run(model, feeds))
    for got, want in zip(_run(after, feeds), _run(model, feeds), strict=True):
        assert _nan_rows(got, 0) == [False, True, False, True]
        np.testing.assert_array_equal(got[[0, 2]], want[[0, 2]])


def test_carry_nan_on_a_sequence_marks_the_steps_from_the_nan_on_or_before_it_in_reverse() -> None:
    step, io = _step_cell()
    feeds = _feeds(wrap_in_scan(io, step, ScanPasses()), np.random.default_rng(3), batch=3, time=6)
    feeds["x"][2, 1, 0] = np.nan  # time-major: step 2 of stream 1
    feeds["h"][2, 1] = np.nan  # the initial state of stream 2
    for reverse, steps in ((False, [2, 3, 4, 5]), (True, [0, 1, 2])):
        scan = wrap_in_scan(io, step, ScanPasses(), reverse=reverse)
        after, modified = _apply(CarryNan(io, Form.SEQUENCE, reverse), scan)
        (y, h_out), (y_plain, _) = _run(after, feeds), _run(scan, feeds)
        assert modified and np.flatnonzero(np.isnan(y[:, 1]).any(axis=-1)).tolist() == steps
        assert np.isnan(y[:, 2]).all() and _nan_rows(h_out, 0) == [False, True, True]
        np.testing.assert_array_equal(y[:, 0], y_plain[:, 0])


def test_carry_nan_leaves_a_graph_where_nothing_can_hold_nan() -> None:
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=F32)]
    x = helper.make_tensor_value_info("x", TensorProto.INT64, ["B"])
    model = _model(nodes, [x], [_value("y", "B")])
    io = IOSpec((), "int64", (), StateSpec((), (), batch_axis=0), x_encoding="token-ids")
    after, modified = _apply(CarryNan(io, Form.STEP), model)
    assert not modified and after.SerializeToString() == model.SerializeToString()


#: Every pass the exporter has, and the test above that drives it: a new pass needs a test here.
COVERED: dict[str, Callable[..., object]] = {
    "drop_identity_views": test_drop_identity_views_bypasses_chains_that_end_in_their_starting_shape,
    "lift_biases": test_lift_biases_moves_each_bias_to_the_input_side,
    "fuse_matmuls": test_fuse_matmuls_makes_one_matmul_per_left_input,
    "fuse_split_gates": test_fuse_split_gates_runs_one_activation_for_every_gate,
    "remove_dead_nodes": test_remove_dead_nodes_drops_what_no_output_needs,
    "hoist_inputs": test_hoist_inputs_runs_the_input_matmul_once_on_all_steps,
    "carry_states": test_carry_states_runs_the_state_views_once_outside_the_loop,
    "hoist_head": test_hoist_head_runs_the_output_layer_once_after_the_loop,
    "weights_into_bodies": test_weights_into_bodies_moves_only_what_the_loop_alone_reads,
}


def test_every_scan_pass_has_a_unit_test() -> None:
    names = {getattr(p, "__name__", "") for p in (*SCAN_PASSES.step, *SCAN_PASSES.loop, *SCAN_PASSES.graph)}
    assert names == set(COVERED)
