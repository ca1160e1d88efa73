"""User modules with their own loops and nested state: read, convert, verify, stream nested.

Each module is converted once per form (module-scoped cache); every reference value comes
from running the torch module itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import rnnexport
from rnnexport.core.contract import MAX_STATE_DEPTH, GraphInfo, StateSpec
from rnnexport.core.errors import ContractError, ConvertError, SourceError
from rnnexport.runtime import StatefulSession

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- the modules


class LSTMCellLoop(nn.Module):
    """An nn.LSTMCell loop with a head; ``initial_state`` gives ``(h, c)``."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(3, 5)
        self.head = nn.Linear(5, 2)

    def initial_state(self, batch: int):
        return torch.zeros(batch, 5), torch.zeros(batch, 5)

    def forward(self, x, state):
        h, c = state
        ys = []
        for t in range(x.shape[0]):
            h, c = self.cell(x[t], (h, c))
            ys.append(self.head(h))
        return torch.stack(ys), (h, c)


class StackedCells(nn.Module):
    """Two LSTMCells, a list of ``(h, c)`` tuples as state, found from ``forward(x, None)``."""

    def __init__(self) -> None:
        super().__init__()
        self.cells = nn.ModuleList([nn.LSTMCell(3, 4), nn.LSTMCell(4, 4)])

    def forward(self, x, state=None):
        if state is None:
            state = [(x.new_zeros(x.shape[1], 4), x.new_zeros(x.shape[1], 4)) for _ in self.cells]
        state, ys = list(state), []
        for t in range(x.shape[0]):
            inp = x[t]
            for k, cell in enumerate(self.cells):
                state[k] = cell(inp, state[k])
                inp = state[k][0]
            ys.append(inp)
        return torch.stack(ys), state


class LstmThenGru(nn.Module):
    """An nn.LSTM then a 2-layer nn.GRU: state ``((h1, c1), h2)``, found from ``forward(x)``."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 6)
        self.gru = nn.GRU(6, 4, num_layers=2)

    def forward(self, x, state=None):
        first, second = state if state is not None else (None, None)
        y, first = self.lstm(x, first)
        y, second = self.gru(y, second)
        return y, (first, second)


class ResidualNormCell(nn.Module):
    """A GRUCell with a residual connection and LayerNorm in its step; batch-first, dict state."""

    batch_first = True

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(4, 4)
        self.norm = nn.LayerNorm(4)

    def initial_state(self, batch: int):
        return {"h": torch.zeros(batch, 4)}

    def forward(self, x, state):
        h, ys = state["h"], []
        for t in range(x.shape[1]):
            h = self.norm(self.cell(x[:, t], h) + x[:, t])
            ys.append(h)
        return torch.stack(ys, dim=1), {"h": h}


class PlainGRU(nn.Module):
    """A minimal GRU in plain torch ops; the state is one tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.x_gates = nn.Linear(3, 15)
        self.h_gates = nn.Linear(5, 15, bias=False)

    def initial_state(self, batch: int):
        return torch.zeros(batch, 5)

    def forward(self, x, h):
        ys = []
        for t in range(x.shape[0]):
            xr, xz, xn = self.x_gates(x[t]).chunk(3, -1)
            hr, hz, hn = self.h_gates(h).chunk(3, -1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            h = (1 - z) * torch.tanh(xn + r * hn) + z * h
            ys.append(h)
        return torch.stack(ys), h


class LstmThenCell(nn.Module):
    """An nn.LSTM (state ``(1, B, H)``) then a residual GRUCell loop (``(B, H)``): batch axes differ."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4)
        self.cell = nn.GRUCell(4, 4)

    def initial_state(self, batch: int):
        return {"lstm": (torch.zeros(1, batch, 4), torch.zeros(1, batch, 4)), "cell": torch.zeros(batch, 4)}

    def forward(self, x, state):
        y, lstm = self.lstm(x, state["lstm"])
        h, ys = state["cell"], []
        for t in range(y.shape[0]):
            h = self.cell(y[t], h) + y[t]
            ys.append(h)
        return torch.stack(ys), {"lstm": lstm, "cell": h}


#: name -> (module class, expected state names, expected structure)
MODULES = {
    "lstm_cell_loop": (LSTMCellLoop, ("s0", "s1"), ("s0", "s1")),
    "stacked_cells": (StackedCells, ("s0_0", "s0_1", "s1_0", "s1_1"), (("s0_0", "s0_1"), ("s1_0", "s1_1"))),
    "lstm_then_gru": (LstmThenGru, ("s0_0", "s0_1", "s1"), (("s0_0", "s0_1"), "s1")),
    "residual_norm_cell": (ResidualNormCell, ("h",), {"h": "h"}),
    "plain_gru": (PlainGRU, ("h",), None),
    "lstm_then_cell": (LstmThenCell, ("lstm_0", "lstm_1", "cell"), {"lstm": ("lstm_0", "lstm_1"), "cell": "cell"}),
}


def _module(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODULES[name][0]().eval()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """``converted(name, form)``: the graph of module ``name`` in ``form``, converted once."""
    folder = tmp_path_factory.mktemp("user_modules")
    cache: dict[tuple[str, str], rnnexport.ConvertResult] = {}

    def get(name: str, form: str):
        if (name, form) not in cache:
            cache[name, form] = rnnexport.convert(_module(name), folder / f"{name}.{form}.onnx", form=form)
        return cache[name, form]

    return get


# --------------------------------------------------------------------------- nested values


def _numpy(value):
    """A torch state as the runtime gives it back: arrays, tuples for lists, dicts."""
    if isinstance(value, torch.Tensor):
        return value.detach().numpy()
    if isinstance(value, dict):
        return {k: _numpy(v) for k, v in value.items()}
    return tuple(_numpy(v) for v in value)


def _torch(value):
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, dict):
        return {k: _torch(v) for k, v in value.items()}
    return tuple(_torch(v) for v in value)


def _assert_same(got, want, path="state"):
    assert type(got) is type(want), f"{path}: {type(got).__name__} vs {type(want).__name__}"
    if isinstance(want, np.ndarray):
        assert got.shape == want.shape, f"{path}: {got.shape} vs {want.shape}"
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=path)
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), path
        for key in want:
            _assert_same(got[key], want[key], f"{path}[{key!r}]")
    else:
        assert len(got) == len(want), path
        for index, (a, b) in enumerate(zip(got, want)):
            _assert_same(a, b, f"{path}[{index}]")


# --------------------------------------------------------------------------- reading, converting, streaming


@pytest.mark.parametrize("name", MODULES)
def test_the_state_structure_is_read_from_the_module(name):
    _, names, structure = MODULES[name]
    model = rnnexport.from_module(_module(name))
    assert model.io.state.names == names and model.io.state.structure == structure
    assert model.native is None and model.native_reason and model.scan_reason is None


def test_state_tensors_on_different_batch_axes_come_batch_first():
    state = rnnexport.from_module(_module("lstm_then_cell")).io.state
    assert state.batch_axis == 0 and state.nested_axes == (1, 1, 0)
    assert state.shapes == (("B", 1, 4), ("B", 1, 4), ("B", 4))
    shared = rnnexport.from_module(_module("lstm_then_gru")).io.state
    assert shared.batch_axis == 1 and shared.nested_axes is None and shared.dims == ((1, 6), (1, 6), (2, 4))


@pytest.mark.parametrize("form", ["sequence", "step"])
@pytest.mark.parametrize("name", MODULES)
def test_converts_verifies_and_records_the_structure(converted, name, form):
    result = converted(name, form)
    assert result.lowering.value == ("scan" if form == "sequence" else "unrolled")
    report = rnnexport.verify(result.path, _module(name), batch_sizes=(2,), seq_lens=(1, 7), engines=("cpu", "reference"))
    assert report.passed, report.failures[:3]
    assert any(c.contract.value == "graph_vs_pytorch" for c in report.checks)
    props = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    info = GraphInfo.from_props(props)
    assert info is not None and info.io.state == rnnexport.from_module(_module(name)).io.state
    recorded = json.loads(props["rnnexport.state"])
    assert ("structure" in recorded) == (MODULES[name][2] is not None)


def _random_state(name: str, batch: int):
    spec = rnnexport.from_module(_module(name)).io.state
    rng = np.random.default_rng(7)
    flat = [rng.standard_normal(spec.shape(i, batch)).astype(np.float32) * 0.5 for i in range(len(spec.names))]
    return spec.nest(flat)


@pytest.mark.parametrize("name", MODULES)
def test_streams_step_by_step_with_the_nested_state(converted, name):
    module, batch = _module(name), 2
    session = StatefulSession.load(converted(name, "step").path, batch=batch)
    start = _random_state(name, batch)
    session.set_nested_state(start)
    state = _torch(start)
    xs = np.random.default_rng(3).standard_normal((5, batch, 3 if name != "residual_norm_cell" else 4))
    xs = xs.astype(np.float32)
    time_axis = session.contract.time_axis
    for x_t in xs:
        y_t = session.step(x_t)
        with torch.no_grad():
            y, state = module(torch.from_numpy(x_t).unsqueeze(time_axis), state)
        np.testing.assert_allclose(y_t, y.squeeze(time_axis).numpy(), atol=1e-5, rtol=1e-5)
        _assert_same(session.nested_state(), _numpy(state))


@pytest.mark.parametrize("name", ["stacked_cells", "lstm_then_gru", "lstm_then_cell"])
def test_a_sequence_graph_run_in_chunks_leaves_the_nested_state(converted, name):
    module, batch = _module(name), 3
    session = StatefulSession.load(converted(name, "sequence").path, batch=batch)
    xs = np.random.default_rng(4).standard_normal((6, batch, 3)).astype(np.float32)
    session.run(xs[:2])
    session.run(xs[2:])
    with torch.no_grad():
        _, state = module(torch.from_numpy(xs), None if name != "lstm_then_cell" else module.initial_state(batch))
    _assert_same(session.nested_state(), _numpy(state))


def test_a_nested_state_of_the_wrong_shape_is_one_line(converted):
    session = StatefulSession.load(converted("lstm_then_cell", "step").path, batch=2)
    zeros = np.zeros((1, 2, 4), np.float32)
    bad = [({"lstm": zeros, "cell": zeros}, r"state\['lstm'\]: expected a tuple of 2"),
           ({"lstm": (zeros, zeros)}, "expected a dict with keys lstm, cell"),
           ({"lstm": (zeros, zeros), "cell": zeros}, "state cell: expected float32 array")]
    for value, message in bad:
        with pytest.raises(ContractError, match=message) as info:
            session.set_nested_state(value)
        assert "\n" not in str(info.value)


def test_a_flat_state_nests_as_torch_holds_it():
    spec = StateSpec(("h", "c"), ((2, 4), (2, 4)), 1)
    h, c = np.zeros((2, 3, 4), np.float32), np.ones((2, 3, 4), np.float32)
    assert spec.tree == ("h", "c") and spec.nest([h, c])[1] is c
    assert [v is w for v, w in zip(spec.flatten([h, c]), (h, c))] == [True, True]
    alone = StateSpec(("h",), ((4,),), 0)
    assert alone.nest([h]) is h and alone.flatten(h)[0] is h
    assert "structure" not in spec.to_json() and "nested_axes" not in spec.to_json()


def test_a_bidirectional_layer_inside_has_no_scan():
    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.GRU(3, 4, bidirectional=True)
            self.second = nn.GRU(8, 4)

        def forward(self, x, state=None):
            a, b = state if state is not None else (None, None)
            y, a = self.first(x, a)
            y, b = self.second(y, b)
            return y, (a, b)

    model = rnnexport.from_module(Both())
    assert model.scan_reason and "bidirectional" in model.scan_reason


# --------------------------------------------------------------------------- refusals


class FutureCell(nn.Module):
    """Own loop that adds the last input to every step: not causal."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(3, 4)

    def forward(self, x, h=None):
        h = x.new_zeros(x.shape[1], 4) if h is None else h
        ys = []
        for t in range(x.shape[0]):
            h = self.cell(x[t] + x[-1], h)
            ys.append(h)
        return torch.stack(ys), h


class TimeNormCells(nn.Module):
    """Stacked cells that normalise the input over time before the loop: not causal."""

    def __init__(self) -> None:
        super().__init__()
        self.cells = nn.ModuleList([nn.LSTMCell(3, 4), nn.GRUCell(4, 4)])

    def initial_state(self, batch: int):
        return {"lstm": (torch.zeros(batch, 4), torch.zeros(batch, 4)), "gru": torch.zeros(batch, 4)}

    def forward(self, x, state):
        x = (x - x.mean(dim=0)) / (x.std(dim=0) + 1e-3)
        (h, c), g = state["lstm"], state["gru"]
        ys = []
        for t in range(x.shape[0]):
            h, c = self.cells[0](x[t], (h, c))
            g = self.cells[1](h, g)
            ys.append(g)
        return torch.stack(ys), {"lstm": (h, c), "gru": g}


@pytest.mark.parametrize("module", [FutureCell, TimeNormCells])
@pytest.mark.parametrize("form", ["sequence", "step"])
def test_a_non_causal_own_loop_is_refused(tmp_path, module, form):
    torch.manual_seed(0)
    with pytest.raises(ConvertError, match="is not causal: .* depends on later steps") as info:
        rnnexport.convert(module(), tmp_path / "m.onnx", form=form)
    assert "\n" not in str(info.value) and not (tmp_path / "m.onnx").exists()


class _Stateful(nn.Module):
    """A GRUCell loop whose ``initial_state`` is given: to test what a state may hold."""

    def __init__(self, initial) -> None:
        super().__init__()
        self.cell = nn.GRUCell(3, 4)
        self.make = initial

    def initial_state(self, batch: int):
        return self.make(batch)

    def forward(self, x, state):
        return x, state


@pytest.mark.parametrize(("initial", "message"), [
    (lambda b: (torch.zeros(b, 4), 3), r"the state\[1\] is of type int; a state is a tensor"),
    (lambda b: (), "the state is an empty tuple"),
    (lambda b: {1: torch.zeros(b, 4)}, "has key 1"),
    (lambda b: {"a b": torch.zeros(b, 4)}, "has key 'a b'"),
    (lambda b: {"x": torch.zeros(b, 4)}, "'x' would share its name with the data input"),
    (lambda b: {"h": torch.zeros(b, 4), "h_out": torch.zeros(b, 4)}, "'h_out' would share its name"),
    (lambda b: {"a_0": torch.zeros(b, 4), "a": [torch.zeros(b, 4)]}, "gives two tensors the name 'a_0'"),
    (lambda b: {"k" * 64: {"k" * 63: torch.zeros(b)}}, "over 124; use shorter dict keys"),
    (lambda b: torch.zeros(4, 4), "has shape .* every state tensor needs exactly one batch axis"),
    (lambda b: torch.zeros(b, b), "exactly one batch axis"),
    (lambda b: torch.zeros(b, 4, dtype=torch.float64), "is float64; rnnexport carries float32"),
    (lambda b: [torch.zeros(b)] * 65, "more than 64 tensors"),
    (lambda b: (((((((((torch.zeros(b),),),),),),),),),), f"nests deeper than {MAX_STATE_DEPTH}"),
    (lambda b: (torch.zeros(b, 4),) if b == 3 else [torch.zeros(b, 4)], "different structures"),
])
def test_a_state_rnnexport_cannot_carry_is_one_line(initial, message):
    with pytest.raises(SourceError, match=message) as info:
        rnnexport.from_module(_Stateful(initial))
    assert "\n" not in str(info.value)


def test_a_module_without_a_way_to_its_state_is_told_to_add_initial_state():
    class NeedsState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.GRUCell(3, 4)

        def forward(self, x, h):
            return x, self.cell(x[0], h) + h

    with pytest.raises(SourceError, match="holds 0 torch.nn RNN/LSTM/GRU layers.*initial_state") as info:
        rnnexport.from_module(NeedsState())
    assert "\n" not in str(info.value)


def test_a_broken_module_around_one_layer_keeps_its_message():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(3, 4)

        def forward(self, x, h):
            raise ValueError("broken on purpose")

    with pytest.raises(SourceError, match=r"forward\(x, state\) failed .*broken on purpose"):
        rnnexport.from_module(Broken())


# --------------------------------------------------------------------------- the contract's structure


def _spec_json(**extra) -> dict:
    spec = StateSpec(("a", "b", "c"), ((4,), (4,), (2,)), 0)
    return {**spec.to_json(), **extra}


def test_the_structure_round_trips_through_json():
    spec = StateSpec(("a", "b", "c"), ((4,), (4,), (2,)), 0, structure={"enc": ["a", "b"], "dec": "c"},
                     nested_axes=(1, 1, 0))
    data = spec.to_json()
    assert data["structure"] == {"enc": ["a", "b"], "dec": "c"} and data["nested_axes"] == [1, 1, 0]
    assert StateSpec.from_json(json.dumps(data)) == spec
    assert spec.structure == {"enc": ("a", "b"), "dec": "c"}


def _deep(levels: int):
    node: object = "a"
    for _ in range(levels):
        node = [node]
    return [node, "b", "c"]


@pytest.mark.parametrize(("extra", "message"), [
    ({"structure": "a"}, "structure must be a list or an object"),
    ({"structure": 7}, "structure must be a list or an object"),
    ({"structure": []}, "expected non-empty lists and objects"),
    ({"structure": [["a", "b"], "c", []]}, "expected non-empty lists and objects"),
    ({"structure": ["a", "b", 3]}, "holds 3"),
    ({"structure": ["a", "b", None]}, "holds None"),
    ({"structure": ["a", "b", "d"]}, "names 'd', which is not a state name"),
    ({"structure": ["a", "b", "b"]}, "names 'b' twice"),
    ({"structure": ["a", "b"]}, "leaves out state 'c'"),
    ({"structure": {"": ["a", "b", "c"]}}, "has key ''"),
    ({"structure": {"k" * 200: ["a", "b", "c"]}}, "has key"),
    ({"structure": _deep(MAX_STATE_DEPTH)}, f"nests deeper than {MAX_STATE_DEPTH} levels"),
    ({"nested_axes": [0, 0]}, "nested_axes must be one axis per state tensor"),
    ({"nested_axes": [0, 0, 2]}, "nested_axes must be one axis per state tensor"),
    ({"nested_axes": [0, True, 0]}, "nested_axes must be one axis per state tensor"),
    ({"nested_axes": "0"}, "nested_axes must be a list"),
    ({"names": ["a", "a", "c"]}, "names must differ"),
    ({"names": [f"n{i}" for i in range(65)]}, "names must be a list of 1 to 64 names"),
])
def test_a_malformed_structure_is_one_contract_error(extra, message):
    with pytest.raises(ContractError, match=re.escape(message) if "'" in message else message) as info:
        StateSpec.from_json(json.dumps(_spec_json(**extra)))
    assert "\n" not in str(info.value)


def test_the_deepest_structure_allowed_parses():
    spec = StateSpec.from_json(_spec_json(structure=_deep(MAX_STATE_DEPTH - 1)))
    assert spec.flatten(spec.nest([1, 2, 3])) == [1, 2, 3]


# --------------------------------------------------------------------------- the docs


def test_the_docs_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "modules.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "docs/modules.md", "exec"), {"__name__": "docs_example"})
    assert (tmp_path / "two_cells.step.onnx").is_file()
