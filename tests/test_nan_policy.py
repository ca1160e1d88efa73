"""``convert --nan carry|refuse``: both graphs verify; the lean one leans on the runtime to refuse NaN.

A carrying graph gives NaN exactly where PyTorch does on every engine (verify's NaN cases
compare the patterns); a lean (``refuse``) graph has no guards, computes the same finite
values, records its policy, and ``rnnexport.runtime`` refuses non-finite input to it even
with ``check_finite`` off. The reference is always PyTorch (or the carrying graph, itself
verified against PyTorch).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import rnnexport
from rnnexport.core.contract import META_PREFIX, Form, GraphInfo, NanPolicy
from rnnexport.core.errors import ContractError, RuntimeContractError
from rnnexport.core.inputs import random_inputs, random_state
from rnnexport.core.onnxfile import load_with_info
from rnnexport.runtime import StatefulSession, StreamBatcher
from rnnexport.verification.cases import Case, InputKind, StateKind, materialize
from rnnexport.verification.contracts import RUNTIME, refused
from rnnexport.verification.report import Contract
from tests.cli import assert_one_line_error, invoke
from tests.configs import build

#: (config, form, lowering): each way a guard is written (native per layer and per step, the traced
#: step's outer guard, the scan's outer guard, a bidirectional scan's guard per half).
GRAPHS = [
    ("seed_lstm", "sequence", "native"),
    ("seed_gru", "step", "native"),
    ("seed_rnn", "step", "native"),
    ("nn_rnn_tanh_2layer", "sequence", "native"),
    ("nn_gru_2layer_nobias", "step", "native"),
    ("user_leaky_cell", "sequence", "scan"),
    ("bi_gru", "sequence", "scan"),
    ("seed_lstm", "step", "unrolled"),
]
GUARD_OPS = {"IsNaN", "CumSum"}
def model_of(name: str) -> rnnexport.RecurrentModel:
    """A test configuration, or ``bi_gru``: one bidirectional GRU layer (scanned as a forward and a reverse half)."""
    if name != "bi_gru":
        return build(name)
    import torch

    torch.manual_seed(7)
    return rnnexport.from_module(torch.nn.GRU(10, 16, bidirectional=True).eval())


GRID = {"engines": ("cpu", "reference"), "batch_sizes": (1, 3), "seq_lens": (7,), "allow_missing": True}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[tuple[str, str, str, str], Path]:
    root = tmp_path_factory.mktemp("nan_policy")
    models: dict[str, rnnexport.RecurrentModel] = {}
    paths = {}
    for name, form, lowering in GRAPHS:
        model = models.setdefault(name, model_of(name))
        for nan in ("carry", "refuse"):
            path = root / f"{name}.{form}.{lowering}.{nan}.onnx"
            rnnexport.convert(model, path, form=form, lowering=lowering, nan=nan)
            paths[(name, form, lowering, nan)] = path
    return paths


def ops(path: Path) -> list[str]:
    from rnnexport.core.graphs import walk

    return [node.op_type for node in walk(onnx.load(path).graph)]


def info_of(path: Path) -> GraphInfo:
    info = load_with_info(path, str(path), ContractError, None)[1]
    assert info is not None
    return info


@pytest.mark.parametrize(("name", "form", "lowering"), GRAPHS)
def test_refuse_drops_every_guard_and_records_the_policy(graphs, name, form, lowering):
    carry, lean = graphs[(name, form, lowering, "carry")], graphs[(name, form, lowering, "refuse")]
    assert info_of(carry).nan is NanPolicy.CARRY and info_of(lean).nan is NanPolicy.REFUSE
    assert {"IsNaN"} <= set(ops(carry))
    assert not GUARD_OPS & set(ops(lean)), ops(lean)
    assert len(ops(lean)) < len(ops(carry))


def test_two_layer_lstm_sequence_graph_is_lean(tmp_path):
    """The issue's example, a 2-layer nn.LSTM: with guards, every layer's IsNaN/Where/ReduceSum/CumSum; without,
    the two LSTM operators and the state's slicing and joining, nothing per element beyond them."""
    import torch

    module = torch.nn.LSTM(8, 32, num_layers=2)
    carry = ops(rnnexport.convert(module, tmp_path / "c.onnx", nan="carry").path)
    lean = ops(rnnexport.convert(module, tmp_path / "l.onnx", nan="refuse").path)
    assert all(carry.count(op) >= 2 for op in ("IsNaN", "Where", "ReduceSum", "CumSum"))
    assert lean.count("LSTM") == 2 and set(lean) <= {"LSTM", "Slice", "Squeeze", "Concat", "Identity"}, lean
    assert len(lean) < len(carry) / 3


@pytest.mark.parametrize(("name", "form", "lowering"), GRAPHS)
@pytest.mark.parametrize("nan", ["carry", "refuse"])
def test_both_policies_verify(graphs, name, form, lowering, nan):
    """Carrying: NaN patterns equal PyTorch's (contract 1 on the NaN cases). Lean: finite parity, and the
    runtime refuses the NaN cases (contract 5 on the runtime)."""
    report = rnnexport.verify(graphs[(name, form, lowering, nan)], model_of(name), **GRID)
    assert report.passed, report.failures[:3]
    nan_cases = {c.id for c in report.cases if c.nonfinite}
    assert len(nan_cases) == 2
    on_nan = [c for c in report.checks if c.case in nan_cases]
    if nan == "carry":
        assert {c.contract for c in on_nan} >= {Contract.PYTORCH} and all(c.engine != RUNTIME for c in on_nan)
    else:
        assert on_nan and all(c.contract is Contract.FINITE and c.engine == RUNTIME and c.passed for c in on_nan)
        assert {c.case for c in on_nan} == nan_cases
        assert any(n.kind == "nan_refused" for n in report.notes)


@pytest.mark.parametrize(("name", "form", "lowering"), [g for g in GRAPHS if g[1] == "sequence"])
def test_lean_equals_carrying_on_finite_input(graphs, name, form, lowering):
    """The guards only ever add NaN: on finite input both graphs give the same values, bit for bit."""
    model = model_of(name)
    rng = np.random.default_rng(5)
    feeds = model.io.feeds(random_inputs(model.io, Form.SEQUENCE, 3, 9, rng), random_state(model.io, 3, rng))
    got = [ort.InferenceSession(str(graphs[(name, form, lowering, nan)]), providers=["CPUExecutionProvider"])
           .run(None, feeds) for nan in ("carry", "refuse")]
    for carrying, lean in zip(*got, strict=True):
        assert np.array_equal(carrying, lean)


def test_a_lean_graph_claiming_to_carry_fails_verify(graphs, tmp_path):
    """Why the runtime must refuse: onnxruntime's LSTM kernel turns NaN into finite values. A lean graph whose
    metadata claims to carry NaN fails contract 1 on the NaN cases (the pattern check can fail)."""
    lean = onnx.load(graphs[("seed_lstm", "sequence", "native", "refuse")])
    for prop in lean.metadata_props:
        if prop.key == META_PREFIX + "nan":
            prop.value = "carry"
    disguised = tmp_path / "disguised.onnx"
    onnx.save(lean, disguised)
    model = build("seed_lstm")
    x, state = materialize(Case(2, 7, InputKind.NAN, StateKind.ZERO, 0), model.io)
    y = ort.InferenceSession(str(disguised), providers=["CPUExecutionProvider"]).run(None, model.io.feeds(x, state))[0]
    want = model.run_sequence(x, state)[0]
    assert np.isnan(want).any() and not np.isnan(y).any()  # PyTorch gives NaN; the lean graph hides it
    report = rnnexport.verify(disguised, model, **GRID)
    assert not report.passed
    assert {c.case for c in report.failures} <= {c.id for c in report.cases if c.nonfinite}


def test_refused_check_fails_when_the_runtime_runs_nan(graphs):
    """Contract 5's runtime check on a graph the runtime does not refuse (a carrying one): a failed check."""
    model = build("seed_lstm")
    case = Case(2, 7, InputKind.NAN, StateKind.ZERO, 0)
    x, state = materialize(case, model.io)
    got = refused(graphs[("seed_lstm", "sequence", "native", "carry")], model.io, Form.SEQUENCE, case, x, state)
    assert len(got) == 1 and not got[0].passed and got[0].engine == RUNTIME
    got = refused(graphs[("seed_lstm", "sequence", "native", "refuse")], model.io, Form.SEQUENCE, case, x, state)
    assert got[0].passed and "refused x" in got[0].detail


def test_step_graph_is_refused_at_the_step_that_holds_nan(graphs):
    model = build("seed_gru")
    case = Case(1, 7, InputKind.NAN, StateKind.ZERO, 0)
    x, state = materialize(case, model.io)
    (check,) = refused(graphs[("seed_gru", "step", "native", "refuse")], model.io, Form.STEP, case, x, state)
    assert check.passed and f"at step {7 // 2}" in check.detail
    case = Case(1, 7, InputKind.NORMAL, StateKind.NAN, 0)
    x, state = materialize(case, model.io)
    (check,) = refused(graphs[("seed_gru", "step", "native", "refuse")], model.io, Form.STEP, case, x, state)
    assert check.passed and check.output == "state"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_runtime_refuses_nonfinite_input_to_a_lean_graph(graphs, bad):
    path = graphs[("seed_lstm", "step", "unrolled", "refuse")]
    session = StatefulSession.load(path, threads=1, check_finite=False)
    assert session.checks_finite
    x = np.random.default_rng(0).standard_normal((1, 10)).astype(np.float32)
    first = session.step(x)
    before = session.state
    poisoned = x.copy()
    poisoned[0, 3] = bad
    with pytest.raises(RuntimeContractError, match="non-finite"):
        session.step(poisoned)
    with pytest.raises(RuntimeContractError, match="non-finite"):
        session.state = {**before, "h": np.full_like(before["h"], bad)}
    assert all(np.array_equal(before[k], v) for k, v in session.state.items())  # nothing ran, nothing changed
    again = session.new_stream()
    assert np.array_equal(again.step(x), first)
    carrying = StatefulSession.load(graphs[("seed_lstm", "step", "unrolled", "carry")], threads=1)
    assert not carrying.checks_finite
    carrying.step(poisoned)  # check_finite off: a carrying graph runs it (and gives NaN, as PyTorch)


def test_runtime_refuses_nan_sequences_to_a_lean_graph(graphs):
    session = StatefulSession.load(graphs[("seed_lstm", "sequence", "native", "refuse")], threads=1)
    xs = np.zeros((4, 1, 10), np.float32)
    xs[2, 0, 1] = np.nan
    with pytest.raises(RuntimeContractError, match="non-finite"):
        session.run(xs)


def test_batcher_refuses_nonfinite_input_to_a_lean_graph(graphs):
    path = graphs[("nn_gru_2layer_nobias", "step", "native", "refuse")]
    with StreamBatcher.load(path, threads=1) as batcher:
        a, b = batcher.join(), batcher.join()
        x = np.ones((1, 10), np.float32)
        bad = x.copy()
        bad[0, 0] = np.nan
        batcher.step({a: x, b: x})
        state = batcher.get_state(a)
        with pytest.raises(RuntimeContractError, match="non-finite"):
            batcher.step({a: x, b: bad})
        with pytest.raises(RuntimeContractError, match="non-finite"):
            batcher.tick(np.concatenate([x, bad]))
        with pytest.raises(RuntimeContractError, match="non-finite"):
            batcher.submit(a, bad)
        with pytest.raises(RuntimeContractError, match="non-finite"):
            batcher.join(state={"h": np.full_like(state["h"], np.inf)})
        assert np.array_equal(batcher.get_state(a)["h"], state["h"])  # a refused tick changed no stream


def test_graph_metadata_policy_is_validated():
    base = {META_PREFIX + "io": json.dumps(build("seed_gru").io.to_json()), META_PREFIX + "form": "step",
            META_PREFIX + "lowering": "native"}
    assert GraphInfo.from_props(base).nan is NanPolicy.CARRY  # graphs written before the policy carry NaN
    assert GraphInfo.from_props({**base, META_PREFIX + "nan": "refuse"}).nan is NanPolicy.REFUSE
    with pytest.raises(ContractError, match="nan"):
        GraphInfo.from_props({**base, META_PREFIX + "nan": "ignore"})
    info = GraphInfo.from_props({**base, META_PREFIX + "nan": "refuse"})
    assert info is not None and GraphInfo.from_props(info.to_props()) == info


def test_cli_convert_nan_option(tmp_path):
    out = tmp_path / "g.onnx"
    code, stdout, stderr = invoke("convert", "gru", "--input-size", "5", "--hidden-size", "8", "--form", "step",
                                  "--nan", "refuse", "-o", out, "--json", "-")
    assert code == 0, stderr
    assert json.loads(stdout)["nan"] == "refuse" and "nan       refuse" in stderr
    assert info_of(out).nan is NanPolicy.REFUSE
    assert_one_line_error(invoke("convert", "gru", "--nan", "drop", "-o", tmp_path / "h.onnx"), "--nan")
    assert not (tmp_path / "h.onnx").exists()
    with pytest.raises(rnnexport.RnnexportError, match="nan must be one of carry, refuse"):
        rnnexport.convert("gru", tmp_path / "i.onnx", nan="drop")
