"""A module's own initial state (``initial_state(batch)`` giving a learned ``h0``, say) is what a stream starts from.

The contract records one stream's values (``state.initial``); the runtime's sessions and
StreamBatcher, ``rnnexport run``, test vectors and the openvino-stateful variant start there.
Every expected value comes from running the PyTorch module from its own ``initial_state``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import rnnexport
from rnnexport.bundle import STATEFUL_VARIANT, open_bundle
from rnnexport.core.contract import MAX_INITIAL_VALUES, StateSpec
from rnnexport.core.errors import ContractError, SourceError, VerifyError
from rnnexport.engines.openvino import installed
from rnnexport.packaging import package
from rnnexport.runtime import StatefulSession, StreamBatcher
from tests.cli import invoke
from tests.modules import LearnedStart
from tests.schemas import validate


def _pytorch(module: nn.Module, xs: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """``y`` of ``xs`` (T, B, 3) from the module's own initial state, and the state after, flat."""
    with torch.no_grad():
        y, ((h, c), g) = module(torch.from_numpy(xs), module.initial_state(xs.shape[1]))
    return y.numpy(), [h.numpy(), c.numpy(), g.numpy()]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    module = LearnedStart().eval()
    root = tmp_path_factory.mktemp("initial")
    step = rnnexport.convert(module, root / "m.step.onnx", form="step").path
    sequence = rnnexport.convert(module, root / "m.onnx").path
    return module, sequence, step


def test_the_contract_records_one_streams_initial_values(graphs):
    module, sequence, _ = graphs
    spec = StatefulSession.load(sequence).contract.state
    assert spec.initial is not None
    want = [module.h0, module.c0, module.g0]
    for got, value in zip(spec.initial, want, strict=True):
        np.testing.assert_array_equal(got, value.detach().numpy())
    assert spec == StateSpec.from_json(json.loads(json.dumps(spec.to_json())))  # survives the metadata's JSON


@pytest.mark.parametrize("form", ["sequence", "step"])
def test_a_session_starts_and_restarts_from_the_modules_initial_state(graphs, form):
    module, sequence, step = graphs
    xs = np.random.default_rng(0).standard_normal((6, 3, 3)).astype(np.float32)
    want_y, want_state = _pytorch(module, xs)
    session = StatefulSession.load(sequence if form == "sequence" else step, batch=3)
    for _ in range(2):  # a new session, then one reset
        y = session.run(xs) if form == "sequence" else np.stack([session.step(x) for x in xs])
        np.testing.assert_allclose(y, want_y, atol=1e-5, rtol=1e-5)
        for got, want in zip(session.state.values(), want_state, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        session.reset()
    session.run(xs[:2]) if form == "sequence" else session.step(xs[0])
    session.reset(1)  # one stream again from the start: the others keep theirs
    start = session.contract.state.start(1)
    after = list(session.state.values())
    for got, one in zip(after, start, strict=True):
        np.testing.assert_array_equal(got[1], one[0])
        assert not np.array_equal(got[0], one[0])


def test_streams_joining_a_batcher_start_from_the_initial_state(graphs):
    module, _, step = graphs
    xs = np.random.default_rng(1).standard_normal((4, 2, 3)).astype(np.float32)
    want_y, _ = _pytorch(module, xs)
    with StreamBatcher.load(step, max_batch=1) as batcher:  # one slot: the second stream takes the first's, grown
        first, second = batcher.join(), batcher.join()
        for t in range(len(xs)):
            out = batcher.step({first: xs[t, :1], second: xs[t, 1:]})
            np.testing.assert_allclose(out[first], want_y[t, :1], atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(out[second], want_y[t, 1:], atol=1e-5, rtol=1e-5)
        batcher.leave(first)
        again = batcher.join()  # the freed slot holds the stream's last state: a new one starts over
        np.testing.assert_allclose(batcher.step({again: xs[0, :1]})[again], want_y[0, :1], atol=1e-5, rtol=1e-5)


def test_run_starts_from_the_initial_state(graphs, tmp_path):
    module, sequence, _ = graphs
    xs = np.random.default_rng(2).standard_normal((5, 1, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", xs)
    result = invoke("run", sequence, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert result.code == 0, result.err
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), _pytorch(module, xs)[0], atol=1e-5, rtol=1e-5)


def test_inspect_says_where_a_stream_starts(graphs):
    result = invoke("inspect", graphs[1])
    assert result.code == 0, result.err
    assert "initial the module's (10 values per stream)" in result.out
    doc = validate(json.loads(invoke("inspect", graphs[1], "--json", "-").out), "inspect-result")
    assert [len(v) for v in doc["state"]["initial"]["values"]] == [4, 4, 2]


def test_a_zero_initial_state_is_recorded_as_zeros():
    spec = StateSpec(("h",), ((3,),), 0, initial=(np.zeros(3, np.float32),))
    assert spec.initial is None and spec.to_json()["initial"] == "zeros"
    np.testing.assert_array_equal(spec.start(2), spec.zeros(2))


@pytest.mark.parametrize(("initial", "message"), [
    (lambda b: torch.randn(b, 4), r"Random.initial_state\(batch\) gives streams different values of state"),
    (lambda b: torch.full((b, 4), float("-inf")), r"Random.initial_state\(batch\): .*initial h holds NaN or Inf"),
    (lambda b: torch.ones(b, MAX_INITIAL_VALUES + 1), f"over the {MAX_INITIAL_VALUES} rnnexport records"),
])
def test_an_initial_state_rnnexport_cannot_record_is_one_line(initial, message):
    class Random(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.width = 4 if "4" in message or "different" in message or "NaN" in message else MAX_INITIAL_VALUES + 1
            self.cell = nn.Linear(3 + self.width, self.width)

        def initial_state(self, batch):
            return initial(batch)

        def forward(self, x, h):
            ys = []
            for t in range(x.shape[0]):
                h = torch.tanh(self.cell(torch.cat([x[t], h], -1)))
                ys.append(h)
            return torch.stack(ys), h

    with pytest.raises(SourceError, match=message) as info:
        rnnexport.from_module(Random())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("initial", "message"), [
    ({"values": [[1.0, 2.0]]}, "each initial list must hold 3 numbers"),
    ({"values": [[1.0, "2", 3.0]]}, "each initial list must hold 3 numbers"),
    ({"values": [[1.0, 2.0, 3.0]], "more": 1}, 'initial must be "zeros" or'),
    ("ones", 'initial must be "zeros" or'),
    ({"values": [[float("nan"), 0.0, 0.0]]}, "initial h holds NaN or Inf"),
])
def test_a_malformed_initial_state_in_a_contract_is_refused(initial, message):
    data = {**StateSpec(("h",), ((3,),), 0).to_json(), "initial": initial}
    with pytest.raises(ContractError, match=message):
        StateSpec.from_json(data)


@pytest.mark.skipif(not installed("openvino"), reason="openvino is not installed (pip install 'rnnexport[engines]')")
def test_a_bundle_proves_its_vectors_and_stateful_variant_from_the_initial_state(graphs, tmp_path):
    """The test vectors' streams start from the initial state, and so does the stateful IR after reset_state()."""
    module, sequence, step = graphs
    folder = tmp_path / "bundle"
    package(sequence, folder, source=rnnexport.from_module(module), step_path=step, variants=[STATEFUL_VARIANT],
            engines=["cpu"])
    bundle = open_bundle(folder)
    stateful = next(v for v in bundle.manifest.variants if v.name == STATEFUL_VARIANT)
    assert stateful.ok, stateful
    report = rnnexport.verify(folder, engines=("cpu",))
    assert report.passed, [c for c in report.checks if not c.passed][:3]


def test_verify_refuses_a_source_whose_initial_state_is_not_the_recorded_one(graphs):
    module, sequence, _ = graphs
    report = rnnexport.verify(sequence, module, batch_sizes=(2,), seq_lens=(3,), engines=("cpu",))
    assert report.passed
    other = LearnedStart().eval()
    with torch.no_grad():
        other.h0.add_(1.0)
    with pytest.raises(VerifyError, match="records other initial-state values than SOURCE's"):
        rnnexport.verify(sequence, other, batch_sizes=(2,), seq_lens=(3,), engines=("cpu",))


class WrappedLstm(nn.Module):
    """Linear -> a 2-layer nn.LSTM -> Linear, torch's ``forward(x, (h, c))``, learned ``(h0, c0)`` from ``init_hidden``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.inp, self.lstm, self.out = nn.Linear(3, 4), nn.LSTM(4, 5, num_layers=2), nn.Linear(5, 2)
        self.h0, self.c0 = nn.Parameter(torch.randn(2, 1, 5)), nn.Parameter(torch.randn(2, 1, 5))

    def init_hidden(self, batch_size):
        return self.h0.expand(-1, batch_size, -1), self.c0.expand(-1, batch_size, -1)

    def forward(self, x, state):
        y, state = self.lstm(self.inp(x), state)
        return self.out(y), state


def test_a_module_around_one_torch_layer_starts_from_its_own_initial_state(tmp_path):
    module = WrappedLstm().eval()
    path = rnnexport.convert(module, tmp_path / "w.onnx").path
    xs = np.random.default_rng(3).standard_normal((5, 2, 3)).astype(np.float32)
    with torch.no_grad():
        want, _ = module(torch.from_numpy(xs), module.init_hidden(2))
    session = StatefulSession.load(path, batch=2)
    assert [list(a.shape) for a in session.contract.state.initial] == [[2, 5], [2, 5]]
    np.testing.assert_allclose(session.run(xs), want.numpy(), atol=1e-5, rtol=1e-5)


def test_a_wrappers_initial_state_of_another_shape_is_one_line():
    class Flat(WrappedLstm):
        def init_hidden(self, batch_size):
            return torch.ones(batch_size, 5), torch.ones(batch_size, 5)

    with pytest.raises(SourceError, match=r"Flat.init_hidden\(3\) returned .*the state of its torch.nn layer is h, c"):
        rnnexport.from_module(Flat())
