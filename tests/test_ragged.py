"""Ragged batches: sequence graphs with a lengths input, against PyTorch's packed sequences.

Every expected value comes from PyTorch: ``pack_padded_sequence``/``pad_packed_sequence`` on
the torch.nn modules themselves, the seed's cell functions run on each sequence alone, or a
module run on each sequence alone. Lengths mix T, 1, 0 and T-1, unsorted.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnexport
from rnnexport.core.contract import GraphInfo, IOSpec, LengthsSpec, StateSpec
from rnnexport.core.errors import ContractError, ConvertError
from rnnexport.engines.base import EngineUnavailable
from rnnexport.engines.registry import engine_spec, make_runner
from rnnexport.export.convert import to_onnx
from rnnexport.runtime import StatefulSession, StreamBatcher
from rnnexport.source import cells
from rnnexport.source.model import RecurrentModel
from rnnexport.source.sources import load_source
from rnnexport.testing import assert_close
from tests.cli import assert_one_line_error, invoke
from tests.configs import CONFIGS, fast_lane, seed_params
from tests.modules import LstmThenCell
from tests.schemas import validate

T, LENGTHS = 6, np.array([6, 1, 0, 5, 3], np.int64)  # T, 1, 0, T-1 and one between: unsorted
B = len(LENGTHS)


def _torch(factory):
    def build():
        torch.manual_seed(0)
        return factory().eval()
    return build


#: name -> (source factory, lowerings that take lengths)
SOURCES = {
    "seed_lstm": (CONFIGS["seed_lstm"], ("native", "scan", "unrolled")),
    "seed_gru": (CONFIGS["seed_gru"], ("native", "scan")),
    "seed_rnn": (CONFIGS["seed_rnn"], ("native", "scan")),
    "nn_lstm": (_torch(lambda: nn.LSTM(10, 16)), ("native", "scan")),
    "nn_lstm_2layer_bi_batch_first": (_torch(lambda: nn.LSTM(10, 8, num_layers=2, bidirectional=True,
                                                             batch_first=True)), ("native", "scan")),
    "nn_gru_bi": (_torch(lambda: nn.GRU(10, 8, bidirectional=True)), ("native", "scan")),
    "nn_gru_2layer": (_torch(lambda: nn.GRU(10, 16, num_layers=2)), ("native", "scan")),
    "nn_rnn_2layer": (_torch(lambda: nn.RNN(10, 16, num_layers=2)), ("native", "scan")),
    "nn_rnn_relu": (_torch(lambda: nn.RNN(10, 16, nonlinearity="relu")), ("scan",)),
    "nn_lstm_proj": (_torch(lambda: nn.LSTM(10, 16, proj_size=5)), ("scan",)),
    "user_leaky_cell": (CONFIGS["user_leaky_cell"], ("scan",)),
    "nested_state_module": (_torch(lambda: LstmThenCell(input_size=10)), ("scan",)),
    "wrapped_token_lm": (CONFIGS["wrapped_token_lm"], ("scan",)),
    "wrapped_batch_first_gru": (CONFIGS["wrapped_batch_first_gru"], ("scan", "unrolled")),
}
GRID = [(name, lowering) for name, (_, lowerings) in SOURCES.items() for lowering in lowerings]


@dataclasses.dataclass
class Exported:
    model: RecurrentModel  # the source, without lengths: what convert was given
    module: nn.Module | None  # the torch.nn module, for pack_padded_sequence
    proto: onnx.ModelProto
    info: GraphInfo
    session: ort.InferenceSession


class _Cache:
    def __init__(self) -> None:
        self.found: dict[tuple[str, str], Exported] = {}

    def get(self, name: str, lowering: str) -> Exported:
        key = (name, lowering)
        if key not in self.found:
            source = SOURCES[name][0]()
            module = source if isinstance(source, nn.Module) else None
            model = load_source(source)
            proto, used, _, info = to_onnx(model, "sequence", lowering, seq_len=T if lowering == "unrolled" else None,
                                           lengths=True)
            assert used.value == lowering
            session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
            self.found[key] = Exported(model, module, proto, info, session)
        return self.found[key]


@pytest.fixture(scope="module")
def ragged():
    return _Cache()


def _inputs(io: IOSpec, seed: int = 0, batch: int = B, time: int = T) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    shape = io.inputs("sequence")[0].concrete(batch, time)
    if io.x_dtype == "int64":
        x = rng.integers(0, 20, shape)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    return x, [rng.standard_normal(s.concrete(batch)).astype(np.float32) for s in io.state.inputs()]


def _run(exported: Exported, x: np.ndarray, state: list[np.ndarray], lengths: np.ndarray) -> list[np.ndarray]:
    return exported.session.run(None, exported.info.io.feeds(x, state, lengths))


def _names(io: IOSpec) -> list[str]:
    return [s.name for s in io.outputs("sequence")]


def _packed(module: nn.Module, io: IOSpec, x: np.ndarray, state: list[np.ndarray],
            lengths: np.ndarray) -> list[np.ndarray]:
    """torch's own packed run of a bare torch.nn module; streams of length 0 keep their state, y zero."""
    batch_first = io.time_axis == 1
    keep = np.flatnonzero(lengths > 0)
    xs = torch.from_numpy(np.take(x, keep, axis=io.batch_axis))
    packed = pack_padded_sequence(xs, torch.from_numpy(lengths[keep]), batch_first=batch_first, enforce_sorted=False)
    hx = [torch.from_numpy(s[:, keep]) for s in state]
    with torch.no_grad():
        out, final = module(packed, tuple(hx) if len(hx) == 2 else hx[0])
    y_kept, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=x.shape[io.time_axis])
    finals = list(final) if isinstance(final, tuple) else [final]
    y = np.zeros((*x.shape[:2], y_kept.shape[-1]), np.float32)
    index: list[slice | np.ndarray] = [slice(None)] * 3
    index[io.batch_axis] = keep
    y[tuple(index)] = y_kept.numpy()
    states = [s.copy() for s in state]
    for s, f in zip(states, finals, strict=True):
        s[:, keep] = f.numpy()
    return [y, *states]


def _seed_per_sequence(model: RecurrentModel, x: np.ndarray, state: list[np.ndarray],
                       lengths: np.ndarray) -> list[np.ndarray]:
    """The seed's cell function (rnnexport.cells) on each sequence alone: ``(T*1, Q)`` outputs reshaped."""
    kind = model.family
    fn = {"lstm": cells.lstm, "gru": cells.gru, "rnn": cells.rnn}[kind]
    params = [p for _, p in model.params]
    y = np.zeros((x.shape[0], x.shape[1], params[-1].shape[0]), np.float32)
    finals = [s.copy() for s in state]
    for b, length in enumerate(lengths):
        if length == 0:
            continue
        with torch.no_grad():
            out, final = fn(torch.from_numpy(x[:length, b:b + 1]), tuple(torch.from_numpy(s[b:b + 1]) for s in state),
                            params)
        y[:length, b] = out.numpy()
        for k, f in enumerate(final):
            finals[k][b] = f.numpy()[0]
    return [y, *finals]


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize(("name", "lowering"), fast_lane(GRID))
def test_a_ragged_batch_equals_each_sequence_run_alone(ragged, name, lowering):
    exported = ragged.get(name, lowering)
    io = exported.info.io
    x, state = _inputs(io)
    got = _run(exported, x, state, LENGTHS)
    alone = exported.model.run_sequence(x, state, LENGTHS)  # each stream alone on its own length
    assert_close(got, alone, _names(io), context=f"{name} {lowering} vs each sequence alone")
    y = np.moveaxis(got[0], (io.time_axis, io.batch_axis), (0, 1))
    past = np.arange(T)[:, None] >= LENGTHS[None, :]
    assert np.all(y[past] == 0), "y must be exactly zero past each stream's end"
    for k, value in enumerate(got[1:]):  # a length of 0 returns the initial state unchanged
        assert np.array_equal(np.take(value, [2], io.state.batch_axis), np.take(state[k], [2], io.state.batch_axis))


TORCH_NN = [(n, lw) for n, lw in GRID if n.startswith("nn_")]


@pytest.mark.parametrize(("name", "lowering"), TORCH_NN)
def test_torch_nn_modules_equal_pytorchs_packed_run(ragged, name, lowering):
    exported = ragged.get(name, lowering)
    io = exported.info.io
    x, state = _inputs(io, seed=1)
    got = _run(exported, x, state, LENGTHS)
    assert_close(got, _packed(exported.module, io, x, state, LENGTHS), _names(io),
                 context=f"{name} {lowering} vs pack_padded_sequence")


@pytest.mark.parametrize(("name", "lowering"), [(n, lw) for n, lw in GRID if n.startswith("seed_")])
def test_seed_cells_equal_the_cell_run_per_sequence(ragged, name, lowering):
    exported = ragged.get(name, lowering)
    io = exported.info.io
    x, state = _inputs(io, seed=2)
    got = _run(exported, x, state, LENGTHS)
    assert_close(got, _seed_per_sequence(exported.model, x, state, LENGTHS), _names(io),
                 context=f"{name} {lowering} vs the seed's cell per sequence")


@pytest.mark.parametrize(("name", "lowering"), [("seed_lstm", "native"), ("seed_gru", "scan"),
                                                ("seed_lstm", "unrolled"), ("wrapped_token_lm", "scan")])
def test_what_the_padding_holds_never_reaches_the_outputs(ragged, name, lowering):
    """NaN (or, for token ids, ids out of the vocabulary) past each end: the same outputs, bit for bit."""
    exported = ragged.get(name, lowering)
    io = exported.info.io
    x, state = _inputs(io, seed=3)
    clean = _run(exported, x, state, LENGTHS)
    dirty = np.moveaxis(x.copy(), (io.time_axis, io.batch_axis), (0, 1))
    past = np.arange(T)[:, None] >= LENGTHS[None, :]
    dirty[past] = 10 ** 6 if io.x_dtype == "int64" else np.nan
    got = _run(exported, np.ascontiguousarray(np.moveaxis(dirty, (0, 1), (io.time_axis, io.batch_axis))), state,
               LENGTHS)
    for a, b in zip(got, clean, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("lowering", ["native", "scan"])
def test_a_nan_in_a_stream_reaches_only_that_stream(ragged, lowering):
    exported = ragged.get("seed_gru", lowering)
    io = exported.info.io
    x, state = _inputs(io, seed=4)
    x[0, 3] = np.nan  # stream 3 (length 5), step 0
    got = _run(exported, x, state, LENGTHS)
    want = exported.model.run_sequence(x, state, LENGTHS)
    assert_close(got, want, _names(io), context="NaN inside a stream's own steps")
    assert np.isnan(got[1][3]).all() and np.isfinite(np.delete(got[1], 3, axis=0)).all()


@pytest.mark.parametrize("lowering", ["native", "scan"])
def test_lengths_off_range_are_clamped_by_the_graph(ragged, lowering):
    exported = ragged.get("seed_lstm", lowering)
    x, state = _inputs(exported.info.io, seed=5)
    wild = np.array([T + 40, -3, 0, 5, 3], np.int64)
    got = _run(exported, x, state, wild)
    for a, b in zip(got, _run(exported, x, state, np.clip(wild, 0, T)), strict=True):
        assert np.array_equal(a, b)


def test_full_lengths_equal_the_graph_without_lengths(ragged, tmp_path):
    exported = ragged.get("nn_lstm_2layer_bi_batch_first", "native")
    plain, _, _, info = to_onnx(exported.model, "sequence", "native")
    session = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"])
    x, state = _inputs(exported.info.io, seed=6)
    for a, b in zip(_run(exported, x, state, np.full(B, T)), session.run(None, info.io.feeds(x, state)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


# --------------------------------------------------------------------------- engines


def _engine_outputs(engine: str, exported: Exported, x, state, lengths) -> list[np.ndarray]:
    runner = make_runner(engine_spec(engine), exported.proto)
    with runner:
        out = runner.infer(exported.info.io.feeds(x, state, lengths))
    return [out[n] for n in _names(exported.info.io)]


@pytest.mark.parametrize("engine", ["reference", "openvino", "tract"])
@pytest.mark.parametrize(("name", "lowering"), [("seed_lstm", "scan"), ("seed_lstm", "unrolled"),
                                                ("nested_state_module", "scan")])
def test_scan_and_unrolled_lengths_graphs_run_on_other_engines(ragged, engine, name, lowering):
    pytest.importorskip({"reference": "onnx", "openvino": "openvino", "tract": "tract"}[engine])
    exported = ragged.get(name, lowering)
    x, state = _inputs(exported.info.io, seed=7)
    got = _engine_outputs(engine, exported, x, state, LENGTHS)
    assert_close(got, exported.model.run_sequence(x, state, LENGTHS), _names(exported.info.io),
                 context=f"{engine} {name} {lowering}")


@pytest.mark.parametrize(("engine", "reason"), [("reference", "ignores sequence_lens"),
                                                ("openvino", "ignores the sequence_lens"),
                                                ("tract", "seq_len")])
def test_engines_that_ignore_sequence_lens_refuse_native_lengths_graphs(ragged, engine, reason):
    """The ReferenceEvaluator and OpenVINO run every stream to the padded end; tract refuses to load."""
    pytest.importorskip({"reference": "onnx", "openvino": "openvino", "tract": "tract"}[engine])
    exported = ragged.get("seed_gru", "native")
    x, state = _inputs(exported.info.io)
    with pytest.raises(EngineUnavailable, match=reason):
        _engine_outputs(engine, exported, x, state, LENGTHS)


# --------------------------------------------------------------------------- the contract


def test_the_contract_records_the_lengths_input(ragged):
    exported = ragged.get("seed_lstm", "scan")
    info = GraphInfo.from_props({p.key: p.value for p in exported.proto.metadata_props})
    assert info is not None and info.io == exported.info.io
    assert info.io.lengths == LengthsSpec("lengths", "int64", "packed")
    assert [s.name for s in info.io.inputs("sequence")] == ["x", "h", "c", "lengths"]
    assert [s.name for s in info.io.inputs("step")] == ["x", "h", "c"]
    assert [v.name for v in exported.proto.graph.input] == ["x", "h", "c", "lengths"]
    lengths = exported.proto.graph.input[3].type.tensor_type
    assert lengths.elem_type == onnx.TensorProto.INT64 and [d.dim_param for d in lengths.shape.dim] == ["B"]
    assert json.loads(info.to_props()["rnnexport.io"])["lengths"] == {
        "name": "lengths", "dtype": "int64", "shape": ["B"], "semantics": "packed"}


def test_metadata_without_lengths_still_loads():
    io = IOSpec((4,), "float32", (4,), StateSpec(("h",), ((8,),), 0))
    data = io.to_json()
    assert "lengths" not in data and IOSpec.from_json(data).lengths is None
    assert IOSpec.from_json({**data, "lengths": io.with_lengths().lengths.to_json()}) == io.with_lengths()


@pytest.mark.parametrize(("lengths", "message"), [
    ({"name": "lengths", "dtype": "float32"}, "dtype"),
    ({"name": "lengths", "dtype": "int32"}, "dtype"),
    ({"name": "lengths", "dtype": "int64", "shape": ["B", "T"]}, "shape"),
    ({"name": "lengths", "dtype": "int64", "semantics": "mask"}, "semantics"),
    ({"name": "", "dtype": "int64"}, "name"),
    ({"name": "x" * 300, "dtype": "int64"}, "name"),
    ({"name": "h", "dtype": "int64"}, "name of another input"),
    ("not an object", "lengths"),
])
def test_a_malformed_lengths_entry_is_one_contract_error(lengths, message):
    data = IOSpec((4,), "float32", (4,), StateSpec(("h",), ((8,),), 0)).to_json()
    with pytest.raises(ContractError, match=message):
        IOSpec.from_json({**data, "lengths": lengths})


def test_a_step_graph_takes_no_lengths(tmp_path):
    with pytest.raises(ConvertError, match="step graph advances every stream one step"):
        rnnexport.convert("gru", tmp_path / "g.onnx", form="step", lengths=True)
    assert not (tmp_path / "g.onnx").exists()


def test_an_unrolled_bidirectional_lengths_graph_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ConvertError, match="unrolled bidirectional trace reads each stream backwards"):
        rnnexport.convert(nn.GRU(4, 4, bidirectional=True), tmp_path / "g.onnx", lowering="unrolled", lengths=True)


def test_a_state_named_lengths_is_refused_at_conversion(tmp_path):
    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(3, 3)

        def initial_state(self, batch: int):
            return {"lengths": torch.zeros(batch, 3)}

        def forward(self, x, state):
            h = state["lengths"]
            ys = []
            for t in range(x.shape[0]):
                h = torch.tanh(self.inp(x[t]) + h)
                ys.append(h)
            return torch.stack(ys), {"lengths": h}

    with pytest.raises(ConvertError, match="--lengths: .*name of another input"):
        rnnexport.convert(Named(), tmp_path / "g.onnx", lengths=True)


# --------------------------------------------------------------------------- runtime


@pytest.fixture(scope="module")
def lengths_graph(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ragged") / "gru.onnx"
    rnnexport.convert(rnnexport.builtin("gru", params=seed_params("gru", seed=3)), path, lengths=True)
    return path


def test_a_session_runs_a_ragged_chunk_and_carries_each_stream_on(lengths_graph):
    model = rnnexport.builtin("gru", params=seed_params("gru", seed=3))
    session = StatefulSession.load(lengths_graph, batch=B)
    x, _ = _inputs(session.contract, seed=8)
    more, _ = _inputs(session.contract, seed=9, time=3)
    y = session.run(x, lengths=LENGTHS)
    y2 = session.run(more)  # no lengths: every stream runs all steps
    for b, length in enumerate(LENGTHS):  # stream b: its own steps, then the next chunk
        whole = np.concatenate([x[:length, b:b + 1], more[:, b:b + 1]])
        want = model.run_sequence(whole, model.io.state.zeros(1))
        assert_close([np.concatenate([y[:length, b:b + 1], y2[:, b:b + 1]]), session.state["h"][b:b + 1]],
                     want, ["y", "h_out"], context=f"stream {b}")
        assert np.all(y[length:, b] == 0)


def test_a_session_refuses_lengths_off_the_contract_in_one_line(lengths_graph, tmp_path):
    session = StatefulSession.load(lengths_graph, batch=2)
    x = np.zeros((4, 2, 10), np.float32)
    for bad, message in [(np.array([5, 1]), "each from 0 to 4"), (np.array([1.0, 2.0]), "dtype float64"),
                         (np.array([1, 2, 3]), r"shape \(3,\)"), ([1, 2], "got list")]:
        with pytest.raises(ContractError, match=message):
            session.run(x, lengths=bad)
    plain = tmp_path / "plain.onnx"
    rnnexport.convert("gru", plain)
    with pytest.raises(ContractError, match="without a lengths input; convert the sequence graph with --lengths"):
        StatefulSession.load(plain).run(np.zeros((3, 1, 28), np.float32), lengths=np.array([2]))


def test_int32_lengths_are_taken(lengths_graph):
    session = StatefulSession.load(lengths_graph, batch=2)
    x = np.ones((4, 2, 10), np.float32)
    a = session.run(x, lengths=np.array([4, 2], np.int32))
    b = session.new_stream().run(x, lengths=np.array([4, 2], np.int64))
    assert np.array_equal(a, b)


def test_an_unrolled_lengths_graph_runs_ragged_chunks_of_its_t(ragged, tmp_path):
    exported = ragged.get("seed_lstm", "unrolled")
    path = tmp_path / "u.onnx"
    path.write_bytes(exported.proto.SerializeToString())
    session = StatefulSession.load(path, batch=B)
    x, _ = _inputs(exported.info.io, seed=10, time=2 * T)
    lengths = np.array([2 * T, 1, 0, T + 2, T], np.int64)  # across the two calls of T steps
    got = [session.run(x, lengths=lengths), *session.state.values()]
    want = exported.model.run_sequence(x, exported.model.io.state.zeros(B), lengths)
    assert_close(got, want, ["y", "h_out", "c_out"], context="unrolled, in chunks of its T")


def test_step_and_the_batcher_run_a_lengths_sequence_graph(lengths_graph):
    session = StatefulSession.load(lengths_graph, batch=2)
    x, _ = _inputs(session.contract, seed=11, batch=2, time=3)
    want = session.new_stream().run(x)
    got = np.stack([session.step(x[t]) for t in range(3)])
    np.testing.assert_allclose(got, want, atol=1e-6)
    with StreamBatcher.load(lengths_graph) as batcher:
        stream = batcher.join()
        steps = [batcher.step({stream: x[t, :1]})[stream] for t in range(3)]
    np.testing.assert_allclose(np.concatenate(steps), want[:, 0], atol=1e-6)


# --------------------------------------------------------------------------- the command line


def test_convert_and_run_with_lengths_on_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = invoke("convert", "gru", "--lengths", "-o", "g.onnx")
    assert code == 0, err
    assert "lengths int64[B]" in out
    x = np.random.default_rng(0).standard_normal((5, 3, 28)).astype(np.float32)
    np.save("x.npy", x)
    np.save("lengths.npy", np.array([5, 0, 2]))
    code, _, err = invoke("run", "g.onnx", "-i", "x.npy", "--lengths", "lengths.npy", "-o", "y.npy", "--state-out",
                          "s.npz")
    assert code == 0, err
    alone = StatefulSession.load("g.onnx")
    y_alone = alone.run(x[:2, 2:3])
    assert np.array_equal(np.load("y.npy")[:2, 2:3], y_alone) and np.all(np.load("y.npy")[2:, 2] == 0)
    assert np.array_equal(np.load("s.npz")["h"][2], alone.state["h"][0])
    np.save("bad.npy", np.array([9, 0, 2]))
    assert assert_one_line_error(invoke("run", "g.onnx", "-i", "x.npy", "--lengths", "bad.npy")).startswith(
        "error: lengths:")


def test_several_inputs_of_different_lengths_run_in_one_call(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("convert", "gru", "--lengths", "-o", "g.onnx", "-q").code == 0
    rng = np.random.default_rng(1)
    chunks = [rng.standard_normal((t, 1, 28)).astype(np.float32) for t in (4, 7, 1)]
    for i, chunk in enumerate(chunks):
        np.save(f"x{i}.npy", chunk)
    args = ["run", "g.onnx", *sum((["-i", f"x{i}.npy"] for i in range(3)), []),
            *sum((["-o", f"y{i}.npy"] for i in range(3)), []), "--json", "run.json"]
    code, out, err = invoke(*args)
    assert code == 0, err
    assert "in 1 call of the sequence graph" in out
    doc = validate(json.loads(Path("run.json").read_text()), "run-result")
    assert doc["calls"] == 1 and [s["steps"] for s in doc["streams"]] == [4, 7, 1]
    for i, chunk in enumerate(chunks):
        np.testing.assert_allclose(np.load(f"y{i}.npy"), StatefulSession.load("g.onnx").run(chunk), atol=1e-6)


# --------------------------------------------------------------------------- bundles and verify


def test_a_bundle_of_a_lengths_graph_carries_a_ragged_test_set(lengths_graph, tmp_path):
    from rnnexport.packaging import package

    model = rnnexport.builtin("gru", params=seed_params("gru", seed=3))
    result = package(lengths_graph, tmp_path / "bundle", source=model, variants=[])
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["io"]["lengths"]["dtype"] == "int64"
    assert [i["name"] for i in manifest["graphs"]["sequence"]["inputs"]] == ["x", "h", "lengths"]
    ragged_set = tmp_path / "bundle" / result.manifest.test_vectors[-1].dir
    inputs = [onnx.numpy_helper.to_array(onnx.load_tensor(str(ragged_set / f"input_{k}.pb"))) for k in range(3)]
    assert inputs[2].tolist() == [1, inputs[0].shape[0], 0]
    report = rnnexport.verify(tmp_path / "bundle")
    assert report.passed, [c for c in report.checks if not c.passed]
    assert any(c.case == result.manifest.test_vectors[-1].dir for c in report.checks)


def test_verify_runs_ragged_cases_on_a_lengths_graph(lengths_graph):
    report = rnnexport.verify(lengths_graph, rnnexport.builtin("gru", params=seed_params("gru", seed=3)),
                              engines=("cpu",), seq_lens=(7,))
    assert report.passed
    ragged_cases = [c for c in report.cases if c.lengths is not None]
    assert len(ragged_cases) == 1 and {0, 1, 7} <= set(ragged_cases[0].lengths)
    assert list(ragged_cases[0].lengths) != sorted(ragged_cases[0].lengths)
    checks = [c for c in report.checks if c.case == ragged_cases[0].id]
    assert {c.variant for c in checks if c.contract.value == "graph_vs_pytorch"} == {"", "zero past each end"}
    assert validate(report.to_json(), "verify-report")["cases"][-1]["lengths"] == list(ragged_cases[0].lengths)


def _unmask_scan_states(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with each Scan's state masks dropped: a state that moves on past each stream's end."""
    broken = onnx.ModelProto()
    broken.CopyFrom(proto)
    for node in broken.graph.node:
        if node.op_type != "Scan":
            continue
        body = onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == "body"))
        made = {o: n for n in body.node for o in n.output}
        for output in body.output:
            keep = made.get(output.name)
            if keep is not None and keep.op_type == "Where" and keep.name.startswith("lengths/keep_state"):
                output.name = keep.input[1]  # the new state, unmasked
    return broken


def test_a_wrong_mask_fails_the_ragged_contract_with_figures(ragged, tmp_path):
    exported = ragged.get("seed_gru", "scan")
    path = tmp_path / "broken.onnx"
    path.write_bytes(_unmask_scan_states(exported.proto).SerializeToString())
    report = rnnexport.verify(path, exported.model, engines=("cpu",), seq_lens=(7,))
    failed = [c for c in report.checks if not c.passed]
    assert not report.passed and failed
    assert all(c.case.endswith("-ragged") and c.output == "h_out" for c in failed)
    assert all(c.max_abs is not None and c.max_abs > 1e-3 for c in failed)
