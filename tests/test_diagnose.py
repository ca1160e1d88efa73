"""``verify --diagnose``: planted defects are located to the value that first diverges, and named.

Each defective graph is a correct graph rnnexport (or torch.onnx) wrote, edited the way the
known mistakes look: a GRU's ``linear_before_reset`` flipped, LSTM gate blocks left in
torch.nn's order, one direction's bias half zeroed, a Scan body that negates one value at one
step (an ``If`` on a counter), an unrolled step with the wrong activation, torch.onnx's dynamo
export with its time axis fixed, a graph that reads its state batch-first, a time-major graph
given a batch-first source. The diagnosis must name the value and, for the known mistakes,
the hint; a correct graph must have no value blamed.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import warnings
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import rnnexport
from rnnexport.core.compare import tolerance_for
from rnnexport.source.gates import TORCH_GATES
from rnnexport.verification.cases import grid, materialize
from rnnexport.verification.diagnose import diagnose
from rnnexport.verification.exposed import run_exposed
from rnnexport.verification.findings import HintKind, InputStatus
from rnnexport.verification.localize import Graph, Status, record_pool
from rnnexport.verification.onnxcells import KINDS, CellWeights, run_direction
from rnnexport.verification.target import load_target
from tests.cli import invoke

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "verify-report.schema.json").read_text())
#: A small grid: one stream, one length (and the two NaN cases): each verify takes about a second.
SMALL = {"engines": ("cpu",), "batch_sizes": (1,), "seq_lens": (7,)}


# --------------------------------------------------------------------------- planting defects


def _load(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path))


def _initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _set(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    tensor = _initializer(model, name)
    tensor.CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))


def _node(model: onnx.ModelProto, op: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == op)


def flip_linear_before_reset(src: Path, dst: Path) -> None:
    model = _load(src)
    for attr in _node(model, "GRU").attribute:
        if attr.name == "linear_before_reset":
            attr.i = 1 - attr.i
    onnx.save(model, str(dst))


def gates_in_torch_order(src: Path, dst: Path) -> None:
    """The LSTM node's W, R and both bias halves with their ONNX blocks (i, o, f, c) put in torch.nn's order."""
    model = _load(src)
    node = _node(model, "LSTM")
    onnx_order, torch_order = ("i", "o", "f", "c"), TORCH_GATES[KINDS["LSTM"]]
    pick = [onnx_order.index(g) for g in torch_order]
    for index, halves in ((1, 1), (2, 1), (3, 2)):
        array = numpy_helper.to_array(_initializer(model, node.input[index]))
        out = []
        for d in range(array.shape[0]):
            parts = np.split(array[d], halves, axis=0)
            out.append(np.concatenate([np.concatenate([np.split(p, 4, axis=0)[k] for k in pick]) for p in parts]))
        _set(model, node.input[index], np.stack(out))
    onnx.save(model, str(dst))


def zero_bias_half(src: Path, dst: Path, direction: int, half: int) -> None:
    model = _load(src)
    node = next(n for n in model.graph.node if n.op_type in ("LSTM", "GRU"))
    bias = numpy_helper.to_array(_initializer(model, node.input[3])).copy()
    width = bias.shape[1] // 2
    bias[direction, half * width:(half + 1) * width] = 0
    _set(model, node.input[3], bias)
    onnx.save(model, str(dst))


def negate_at_step(src: Path, dst: Path, step: int) -> None:
    """The Scan body negates its first Tanh's output at iteration ``step``: an If on a counter carried as a state."""
    model = _load(src)
    scan = _node(model, "Scan")
    body = next(a.g for a in scan.attribute if a.name == "body")
    target = next(n.output[0] for n in body.node if n.op_type == "Tanh")
    model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), "planted_counter0"))
    scan.input.insert(0, "planted_counter0")
    scan.output.insert(0, "planted_counter_final")
    body.input.insert(0, helper.make_tensor_value_info("counter", onnx.TensorProto.INT64, []))
    body.output.insert(0, helper.make_tensor_value_info("counter_next", onnx.TensorProto.INT64, []))
    body.initializer.extend([numpy_helper.from_array(np.array(1, np.int64), "one"),
                             numpy_helper.from_array(np.array(step, np.int64), "planted_step")])
    negated = helper.make_graph([helper.make_node("Neg", [target], ["negated"])], "then", [],
                                [helper.make_empty_tensor_value_info("negated")])
    kept = helper.make_graph([helper.make_node("Identity", [target], ["kept"])], "else", [],
                             [helper.make_empty_tensor_value_info("kept")])
    for node in body.node:
        node.input[:] = ["planted" if i == target else i for i in node.input]
    added = [helper.make_node("Add", ["counter", "one"], ["counter_next"]),
             helper.make_node("Equal", ["counter", "planted_step"], ["is_step"]),
             helper.make_node("If", ["is_step"], ["planted"], name="planted_if", then_branch=negated,
                              else_branch=kept)]
    nodes = list(body.node)
    at = next(i for i, n in enumerate(nodes) if target in n.output) + 1
    del body.node[:]
    body.node.extend(nodes[:at] + added + nodes[at:])
    onnx.save(model, str(dst))


def retype(src: Path, dst: Path, output: str, op: str) -> None:
    model = _load(src)
    next(n for n in model.graph.node if output in n.output).op_type = op
    onnx.save(model, str(dst))


def _foreign(model: onnx.ModelProto, names: set[str]) -> None:
    """No rnnexport metadata, and the named inputs and outputs with every dim symbolic."""
    del model.metadata_props[:]
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in names:
            for i, dim in enumerate(value.type.tensor_type.shape.dim):
                dim.ClearField("dim_value")
                dim.dim_param = f"{value.name}_{i}"


def state_batch_first(src: Path, dst: Path) -> None:
    """The graph reads and writes h and c as (B, L, H): a Transpose after each state input, before each output."""
    model = _load(src)
    graph = model.graph
    renamed = {"h": "h_lbh", "c": "c_lbh"}
    for node in graph.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [f"{o}_lbh" if o in ("h_out", "c_out") else o for o in node.output]
    nodes = [helper.make_node("Transpose", [s], [t], perm=[1, 0, 2]) for s, t in renamed.items()]
    nodes += list(graph.node)
    nodes += [helper.make_node("Transpose", [f"{o}_lbh"], [o], perm=[1, 0, 2]) for o in ("h_out", "c_out")]
    del graph.node[:]
    graph.node.extend(nodes)
    _foreign(model, {"h", "c", "h_out", "c_out"})
    onnx.save(model, str(dst))


# --------------------------------------------------------------------------- models and graphs


def _seeded(module: torch.nn.Module) -> torch.nn.Module:
    return module.eval()


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """Correct graphs and their sources, built once."""
    root = tmp_path_factory.mktemp("diagnose")
    torch.manual_seed(0)
    sources = {
        "gru": rnnexport.builtin("gru", 5, 8, 5),
        "lstm": rnnexport.builtin("lstm", 5, 8, 5),
        "nn_gru": _seeded(torch.nn.GRU(5, 8)),
        "nn_bilstm": _seeded(torch.nn.LSTM(5, 8, bidirectional=True)),
        "nn_lstm2": _seeded(torch.nn.LSTM(5, 8, num_layers=2)),
        "nn_lstm": _seeded(torch.nn.LSTM(5, 8)),
    }
    batch_first = torch.nn.LSTM(5, 8, batch_first=True)
    batch_first.load_state_dict(sources["nn_lstm"].state_dict())
    sources["nn_lstm_batch_first"] = batch_first.eval()
    graphs = {}
    for name, lowering, seq_len in [("gru", "native", None), ("gru", "scan", None), ("gru", "unrolled", 7),
                                    ("lstm", "native", None), ("lstm", "scan", None), ("lstm", "unrolled", 7),
                                    ("nn_gru", "native", None), ("nn_bilstm", "native", None),
                                    ("nn_bilstm", "scan", None), ("nn_lstm2", "native", None),
                                    ("nn_lstm", "native", None)]:
        path = root / f"{name}.{lowering}.onnx"
        rnnexport.convert(sources[name], path, lowering=lowering, seq_len=seq_len)
        graphs[name, lowering] = path
    return {"root": root, "sources": sources, "graphs": graphs}


def diagnosed(path: Path, source, **options) -> rnnexport.verification.Report:
    report = rnnexport.verify(path, source, **{**SMALL, **options})
    jsonschema.Draft202012Validator(SCHEMA).validate(report.to_json())
    return report


# --------------------------------------------------------------------------- no false blame


@pytest.mark.parametrize("name, lowering", [("gru", "native"), ("gru", "scan"), ("gru", "unrolled"),
                                            ("lstm", "native"), ("lstm", "scan"), ("lstm", "unrolled"),
                                            ("nn_bilstm", "native"), ("nn_bilstm", "scan"), ("nn_lstm2", "native")])
def test_a_correct_graph_has_no_diverging_value(made, name, lowering):
    """Every value of a correct graph matches a PyTorch value or feeds one: nothing to blame."""
    target = load_target(made["graphs"][name, lowering], made["sources"][name])
    case = next(c for c in grid(target.io, (3,), (target.seq_len or 7,), 0) if c.state.value == "random")
    x, state = materialize(case, target.io)
    feeds = target.io.feeds(x, state)
    run = run_exposed(target.proto, feeds)
    model = target.model
    graph = Graph(target.proto, run.values, feeds)
    graph.judge(record_pool([model.sequence_module, model.trace_module], x, state, tolerance_for("float32")))
    diverged = [k for k, i in graph.instances.items() if i.status is Status.DIVERGED]
    assert not diverged, diverged[:5]
    assert sum(i.status is Status.MATCHED for i in graph.instances.values()) >= 5  # the check has teeth


def test_diagnose_on_a_passing_graph_says_there_is_nothing(made):
    report = diagnosed(made["graphs"]["lstm", "scan"], made["sources"]["lstm"], diagnose=True)
    assert report.passed and report.diagnosis is None
    assert any(n.kind == "nothing_to_diagnose" for n in report.notes)


# --------------------------------------------------------------------------- planted defects, native


def test_gru_linear_before_reset_flipped(made, tmp_path):
    bad = tmp_path / "gru_lbr.onnx"
    flip_linear_before_reset(made["graphs"]["nn_gru", "native"], bad)
    report = diagnosed(bad, made["sources"]["nn_gru"])  # no --diagnose: it runs by itself on a contract-1 failure
    d = report.diagnosis
    assert not report.passed and d is not None and d.first is not None
    where = d.first.location
    assert (where.op, where.scope, where.layer, where.direction, where.step) == ("GRU", "native", 0, 0, 0)
    assert d.first.inputs and all(i.status is InputStatus.GIVEN for i in d.first.inputs)
    gates = " ".join(d.first.details)
    assert "h off by" in gates and "z, r agree" in gates  # only the candidate gate differs
    assert [h.kind for h in d.hints] == [HintKind.GRU_LINEAR_BEFORE_RESET]
    assert "linear_before_reset=0" in d.hints[0].text and "passes" in d.hints[0].evidence
    assert {o.output: o.first_step for o in d.outputs}["y"] == 0


@pytest.mark.parametrize("name", ["lstm", "nn_lstm"])
def test_lstm_gates_left_in_torch_order(made, tmp_path, name):
    bad = tmp_path / "lstm_gates.onnx"
    gates_in_torch_order(made["graphs"][name, "native"], bad)
    d = diagnosed(bad, made["sources"][name], diagnose=True).diagnosis
    assert d is not None and d.first is not None
    assert (d.first.location.op, d.first.location.scope, d.first.location.step) == ("LSTM", "native", 0)
    assert "i agree" in d.first.details[0]  # i keeps its slot; o, f, c do not
    hint = next(h for h in d.hints if h.kind is HintKind.GATE_ORDER)
    assert "i, f, c, o (torch.nn's order)" in hint.text and "i, o, f, c" in hint.text


def test_bias_half_missing_in_the_reverse_direction(made, tmp_path):
    bad = tmp_path / "bias.onnx"
    zero_bias_half(made["graphs"]["nn_bilstm", "native"], bad, direction=1, half=1)
    d = diagnosed(bad, made["sources"]["nn_bilstm"], diagnose=True).diagnosis
    assert d is not None and d.first is not None
    where = d.first.location
    # the reverse direction starts at the last step: that is where it first parts from PyTorch
    assert (where.op, where.direction, where.reverse, where.step) == ("LSTM", 1, True, 6)
    assert [h.kind for h in d.hints] == [HintKind.BIAS]
    assert "direction 1 (reverse)" in d.hints[0].text and "recurrence bias Rb is zero" in d.hints[0].text


def test_state_read_batch_first(made, tmp_path):
    bad = tmp_path / "state.onnx"
    state_batch_first(made["graphs"]["nn_lstm2", "native"], bad)
    d = diagnosed(bad, made["sources"]["nn_lstm2"], diagnose=True).diagnosis
    assert d is not None and d.first is not None and d.first.failed  # onnxruntime stops: shapes disagree
    assert d.first.location.op == "LSTM" and "initial_h" in d.first.details[0]
    assert [h.kind for h in d.hints] == [HintKind.STATE_LAYOUT]


def test_time_major_graph_given_a_batch_first_source(made, tmp_path):
    bad = tmp_path / "time_major.onnx"
    model = _load(made["graphs"]["nn_lstm", "native"])
    _foreign(model, {"x", "y"})
    onnx.save(model, str(bad))
    d = diagnosed(bad, made["sources"]["nn_lstm_batch_first"], diagnose=True).diagnosis
    assert d is not None and [h.kind for h in d.hints] == [HintKind.BATCH_FIRST]
    assert "batch-first (B, T, ...)" in d.hints[0].text


# --------------------------------------------------------------------------- planted defects, scan and unrolled


@pytest.mark.parametrize("name, step", [("lstm", 3), ("gru", 0), ("gru", 6)])
def test_scan_body_with_a_sign_error_at_one_step(made, tmp_path, name, step):
    bad = tmp_path / "sign.onnx"
    negate_at_step(made["graphs"][name, "scan"], bad, step)
    d = diagnosed(bad, made["sources"][name], diagnose=True).diagnosis
    assert d is not None and d.first is not None
    where = d.first.location
    assert (where.op, where.node, where.scope, where.step) == ("If", "planted_if", "scan", step)
    tanh = next(i for i in d.first.inputs if i.producer.startswith("Tanh"))
    assert tanh.status is InputStatus.MATCHED and tanh.error < 1e-6
    assert {o.output: o.first_step for o in d.outputs}["y"] == step
    assert not d.hints  # no known mistake looks like this one


def test_unrolled_step_with_the_wrong_activation(made, tmp_path):
    bad = tmp_path / "unrolled.onnx"
    retype(made["graphs"]["gru", "unrolled"], bad, "tanh_2", "Sigmoid")  # the third step's candidate
    d = diagnosed(bad, made["sources"]["gru"], diagnose=True).diagnosis
    assert d is not None and d.first is not None
    assert (d.first.location.op, d.first.location.value, d.first.location.scope) == ("Sigmoid", "tanh_2", "graph")
    assert [i.status for i in d.first.inputs] == [InputStatus.MATCHED]
    assert {o.output: o.first_step for o in d.outputs}["y"] == 2


# --------------------------------------------------------------------------- foreign graphs: torch.onnx's dynamo export


@pytest.fixture(scope="module")
def dynamo_graph(made) -> Path:
    """torch.onnx's dynamo export of an nn.LSTM, traced at T=5 with T and B declared dynamic."""
    module = made["sources"]["nn_lstm"]

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = module

        def forward(self, x, h, c):
            y, (h_out, c_out) = self.lstm(x, (h, c))
            return y, h_out, c_out

    path = made["root"] / "dynamo.onnx"
    steps, batch = torch.export.Dim("T"), torch.export.Dim("B")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapped(), (torch.randn(5, 2, 5), torch.zeros(1, 2, 8), torch.zeros(1, 2, 8)), str(path),
                          dynamo=True, input_names=["x", "h", "c"], output_names=["y", "h_out", "c_out"],
                          dynamic_shapes={"x": {0: steps, 1: batch}, "h": {1: batch}, "c": {1: batch}})
    return path


def test_dynamo_graph_with_its_time_axis_fixed(made, dynamo_graph):
    report = diagnosed(dynamo_graph, made["sources"]["nn_lstm"], batch_sizes=(2,), seq_lens=(5, 7))
    d = report.diagnosis
    assert not report.passed and d is not None and d.case.startswith("B2-T7")
    assert d.first is not None and d.first.failed and d.first.location.op == "Reshape"
    hint = d.hints[0]
    assert hint.kind is HintKind.FIXED_TIME_AXIS and "fixed at T=5" in hint.text and "[5, -1, 8]" in hint.text
    assert "every case with T=5 passes" in hint.evidence


def test_dynamo_graph_with_its_gates_reordered(made, dynamo_graph, tmp_path):
    """A foreign graph's values are located too: at the length it was traced at, the LSTM node is blamed."""
    bad = tmp_path / "dynamo_gates.onnx"
    gates_in_torch_order(dynamo_graph, bad)
    d = diagnosed(bad, made["sources"]["nn_lstm"], batch_sizes=(2,), seq_lens=(5,), diagnose=True).diagnosis
    assert d is not None and d.first is not None
    assert (d.first.location.op, d.first.location.scope, d.first.location.step) == ("LSTM", "native", 0)
    assert HintKind.GATE_ORDER in [h.kind for h in d.hints]


# --------------------------------------------------------------------------- the time bound, the oracle, the command


def test_the_time_bound_stops_the_diagnosis(made, tmp_path):
    bad = tmp_path / "gru_lbr.onnx"
    flip_linear_before_reset(made["graphs"]["nn_gru", "native"], bad)
    report = diagnosed(bad, made["sources"]["nn_gru"], diagnose=False)
    assert report.diagnosis is None  # --no-diagnose
    target = load_target(bad, made["sources"]["nn_gru"])
    started = time.perf_counter()
    d = diagnose(target, report.cases, report.checks, report.tolerance, {}, seconds=0.0)
    assert time.perf_counter() - started < 10
    assert d is not None and not d.complete and any("time bound" in n for n in d.notes)


@pytest.mark.parametrize("op, direction, reset", [("LSTM", "forward", 0), ("LSTM", "bidirectional", 0),
                                                  ("GRU", "forward", 0), ("GRU", "reverse", 1), ("RNN", "forward", 0)])
def test_numpy_operators_match_the_reference_evaluator(op, direction, reset):
    """The gates the diagnosis reports come from a NumPy operator that computes ONNX's Y exactly."""
    rng = np.random.default_rng(1)
    gates, hidden, inputs, steps, batch = {"LSTM": 4, "GRU": 3, "RNN": 1}[op], 6, 4, 5, 2
    dirs = 2 if direction == "bidirectional" else 1
    w = rng.standard_normal((dirs, gates * hidden, inputs)).astype(np.float32) * 0.5
    r = rng.standard_normal((dirs, gates * hidden, hidden)).astype(np.float32) * 0.5
    b = rng.standard_normal((dirs, 2 * gates * hidden)).astype(np.float32) * 0.5
    x = rng.standard_normal((steps, batch, inputs)).astype(np.float32)
    h0 = rng.standard_normal((dirs, batch, hidden)).astype(np.float32)
    extra = {"linear_before_reset": reset} if op == "GRU" else {}
    node = helper.make_node(op, ["x", "w", "r", "b", "", "h0"], ["y"], hidden_size=hidden, direction=direction,
                            **extra)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                                            for n in ("x", "w", "r", "b", "h0")],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    want = ReferenceEvaluator(helper.make_model(graph)).run(None, {"x": x, "w": w, "r": r, "b": b, "h0": h0})[0]
    for d in range(dirs):
        cell = CellWeights(op, w[d], r[d], b[d], reset)
        steps_out = run_direction(cell, x, h0[d], None, reverse=direction == "reverse" or d == 1)
        got = np.stack([s["Y"] for s in steps_out])
        np.testing.assert_allclose(got, want[:, d], rtol=1e-5, atol=1e-6)


def test_command_line_prints_and_writes_the_diagnosis(made, tmp_path):
    bad = tmp_path / "lstm_gates.onnx"
    gates_in_torch_order(made["graphs"]["lstm", "native"], bad)  # metadata kept: SOURCE rebuilt from it
    report = tmp_path / "report.json"
    code, out, err = invoke("verify", bad, "--engines", "cpu", "--batch-sizes", "1", "--seq-lens", "7", "--diagnose",
                            "--json", report)
    assert code == 1, out + err
    assert "first diverging value: LSTM node" in out + err and "gates stacked in the wrong order" in out + err
    data = json.loads(report.read_text())
    jsonschema.Draft202012Validator(SCHEMA).validate(data)
    assert data["diagnosis"]["first"]["location"]["op"] == "LSTM"
    assert data["diagnosis"]["hints"][0]["kind"] == "gate_order" and data["environment"]["cpu"]
    code, out, err = invoke("verify", bad, "--engines", "cpu", "--batch-sizes", "1", "--seq-lens", "7", "--no-diagnose")
    assert code == 1 and "diagnosis" not in out + err


def test_a_large_case_is_cut_to_its_first_failing_stream_and_step(made, tmp_path, monkeypatch):
    """Past MAX_EXPOSED_STEPS, values are read on one failing stream, up to the step it first fails at."""
    import rnnexport.verification.diagnose as module

    monkeypatch.setattr(module, "MAX_EXPOSED_STEPS", 8)
    bad = tmp_path / "sign.onnx"
    negate_at_step(made["graphs"]["lstm", "scan"], bad, 3)
    d = diagnosed(bad, made["sources"]["lstm"], batch_sizes=(3,), diagnose=True).diagnosis
    assert d is not None and d.case.startswith("B3-T7") and d.first is not None
    assert (d.first.location.op, d.first.location.step) == ("If", 3)
    assert "values were read on stream 0 alone, over its first 4 steps" in d.notes
