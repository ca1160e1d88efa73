"""User modules with their own loops and nested state: read, convert, verify, stream nested.

Each module is converted once per form (module-scoped cache); every reference value comes
from running the torch module itself.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import rnnexport
from rnnexport.core.contract import MAX_STATE_DEPTH, Form, GraphInfo, StateSpec
from rnnexport.core.errors import ContractError, ConvertError, SourceError
from rnnexport.runtime import StatefulSession, StreamBatcher
from rnnexport.source.sources import load_source
from rnnexport.testing import assert_close, random_inputs, random_state
from tests.cli import assert_one_line_error, invoke
from tests.modules import MODULES, GruCellLoop, user_module

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """``converted(name, form)``: the graph of module ``name`` in ``form``, converted once."""
    folder = tmp_path_factory.mktemp("user_modules")
    cache: dict[tuple[str, str], rnnexport.ConvertResult] = {}

    def get(name: str, form: str):
        if (name, form) not in cache:
            cache[name, form] = rnnexport.convert(user_module(name), folder / f"{name}.{form}.onnx", form=form)
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
        for index, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_same(a, b, f"{path}[{index}]")


# --------------------------------------------------------------------------- reading, converting, streaming


@pytest.mark.parametrize("name", MODULES)
def test_the_state_structure_is_read_from_the_module(name):
    _, names, structure = MODULES[name]
    model = rnnexport.from_module(user_module(name))
    assert model.io.state.names == names and model.io.state.structure == structure
    assert model.native is None and model.native_reason and model.scan_reason is None


def test_state_tensors_on_different_batch_axes_come_batch_first():
    state = rnnexport.from_module(user_module("lstm_then_cell")).io.state
    assert state.batch_axis == 0 and state.nested_axes == (1, 1, 0)
    assert state.shapes == (("B", 1, 4), ("B", 1, 4), ("B", 4))
    shared = rnnexport.from_module(user_module("lstm_then_gru")).io.state
    assert shared.batch_axis == 1 and shared.nested_axes is None and shared.dims == ((1, 6), (1, 6), (2, 4))


@pytest.mark.parametrize("form", ["sequence", "step"])
@pytest.mark.parametrize("name", MODULES)
def test_converts_verifies_and_records_the_structure(converted, name, form):
    result = converted(name, form)
    assert result.lowering.value == ("scan" if form == "sequence" else "unrolled")
    report = rnnexport.verify(result.path, user_module(name), batch_sizes=(2,), seq_lens=(1, 7), engines=("cpu", "reference"))
    assert report.passed, report.failures[:3]
    assert any(c.contract.value == "graph_vs_pytorch" for c in report.checks)
    props = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    info = GraphInfo.from_props(props)
    assert info is not None and info.io.state == rnnexport.from_module(user_module(name)).io.state
    recorded = json.loads(props["rnnexport.state"])
    assert ("structure" in recorded) == (MODULES[name][2] is not None)


def _random_state(name: str, batch: int):
    spec = rnnexport.from_module(user_module(name)).io.state
    rng = np.random.default_rng(7)
    flat = [rng.standard_normal(spec.shape(i, batch)).astype(np.float32) * 0.5 for i in range(len(spec.names))]
    return spec.nest(flat)


@pytest.mark.parametrize("name", MODULES)
def test_streams_step_by_step_with_the_nested_state(converted, name):
    module, batch = user_module(name), 2
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
    module, batch = user_module(name), 3
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
    assert [v is w for v, w in zip(spec.flatten([h, c]), (h, c), strict=True)] == [True, True]
    alone = StateSpec(("h",), ((4,),), 0)
    assert alone.nest([h]) is h and alone.flatten(h)[0] is h
    assert "structure" not in spec.to_json() and "nested_axes" not in spec.to_json()


class _BidiThenGru(nn.Module):
    """A bidirectional GRU then a GRU, nested state ``(a, b)``: a sequence graph at any T, no step form."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.GRU(3, 4, bidirectional=True)
        self.second = nn.GRU(8, 4)

    def forward(self, x, state=None):
        a, b = state if state is not None else (None, None)
        y, a = self.first(x, a)
        y, b = self.second(y, b)
        return y, (a, b)


def test_a_bidirectional_layer_inside_scans_at_any_length_and_has_no_step_form(tmp_path):
    torch.manual_seed(0)
    module = _BidiThenGru().eval()
    result = rnnexport.convert(module, tmp_path / "m.onnx")
    assert result.lowering.value == "scan"
    assert [n.op_type for n in onnx.load(str(result.path)).graph.node].count("Scan") == 3
    model = rnnexport.from_module(module)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for time in (1, 7, 300):
        rng = np.random.default_rng(time)
        x = random_inputs(model.io, Form.SEQUENCE, 2, time, rng)
        state = random_state(model.io, 2, rng)
        assert_close(session.run(None, model.io.feeds(x, state)), model.run_sequence(x, state),
                     ["y", *model.io.state.output_names], context=f"T={time}")
    with pytest.raises(ConvertError, match="has no step form") as info:
        rnnexport.convert(module, tmp_path / "s.onnx", form="step")
    assert "not causal" not in str(info.value)


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
    assert "initial_state, init_state, init_hidden, begin_state, zero_state" in str(info.value)


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


@pytest.mark.slow
def test_the_docs_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "modules.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "docs/modules.md", "exec"), {"__name__": "docs_example"})
    for written in ("conv_gru.step.onnx", "delta_gru.onnx", "two_cells.step.onnx"):
        assert (tmp_path / written).is_file(), written


# --------------------------------------------------------------------------- state in buffers


class ConvCacheGRU(nn.Module):
    """forward(x) -> y; a causal-conv cache reassigned and a GRU state updated in place, both buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, kernel_size=2)
        self.gru = nn.GRUCell(4, 5)
        self.register_buffer("cache", torch.zeros(1, 3, 1))
        self.register_buffer("h", torch.zeros(1, 5))
        self.register_buffer("window", torch.hann_window(4))  # read only: a constant, not state

    def forward(self, x):  # (T, B, 3)
        frames = torch.cat([self.cache.expand(x.shape[1], -1, -1), x.permute(1, 2, 0)], -1)
        self.cache = frames[..., -1:]
        c = self.conv(frames).permute(2, 0, 1)
        h, ys = self.h.expand(x.shape[1], -1), []
        for t in range(x.shape[0]):
            h = self.gru(c[t], h)
            ys.append(h * self.window.sum())
        self.h.copy_(h)
        return torch.stack(ys)


def _buffer_module() -> ConvCacheGRU:
    torch.manual_seed(0)
    return ConvCacheGRU().eval()


def test_updated_buffers_are_the_state_named_after_them():
    module = _buffer_module()
    before = {n: b.clone() for n, b in module.named_buffers()}
    model = rnnexport.from_module(module)
    state = model.io.state
    assert state.names == ("cache", "h") and state.structure == {"cache": "cache", "h": "h"}
    assert state.shapes == (("B", 3, 1), ("B", 5))
    assert all(torch.equal(b, before[n]) for n, b in module.named_buffers()), "reading the module changed it"


def test_a_buffer_module_streams_as_it_runs_in_pytorch(tmp_path):
    result = rnnexport.convert(_buffer_module(), tmp_path / "m.step.onnx", form="step")
    session = StatefulSession.load(result.path)
    module = _buffer_module()
    xs = np.random.default_rng(0).standard_normal((9, 1, 3)).astype(np.float32)
    for x_t in xs:
        y_t = session.step(x_t)
        with torch.no_grad():
            want = module(torch.from_numpy(x_t)[None])[0]  # the module keeps its own state in its buffers
        np.testing.assert_allclose(y_t, want.numpy(), atol=1e-5, rtol=1e-5)
    nested = session.nested_state()
    assert set(nested) == {"cache", "h"}
    np.testing.assert_allclose(nested["h"], module.h.numpy(), atol=1e-5)
    np.testing.assert_allclose(nested["cache"], module.cache.numpy(), atol=1e-6)


class _CountsSteps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        self.steps += x.shape[0]
        return self.lin(x)


class _RunningMean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("mean", torch.zeros(3))

    def forward(self, x):
        self.mean = 0.9 * self.mean + 0.1 * x.mean(dim=(0, 1))
        return self.lin(x - self.mean)


class _GrowingCache(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("seen", torch.zeros(0, 1, 3))

    def forward(self, x):
        self.seen = torch.cat([self.seen.expand(-1, x.shape[1], -1), x])
        return self.lin(x) + self.seen.mean(0)


class _NoState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x)


@pytest.mark.parametrize(("module", "message"), [
    (_CountsSteps, "updates buffer 'steps', which is int64; rnnexport carries float32 state"),
    (_RunningMean, "updates buffer 'mean', of shape .* exactly one axis that follows the streams"),
    (_GrowingCache, "changes the shape of buffer 'seen' from call to call"),
    (_NoState, "returned a tensor alone and updated no buffer.*looked for initial_state, init_state"),
])
def test_a_buffer_that_cannot_be_state_is_refused_by_name(module, message):
    torch.manual_seed(0)
    with pytest.raises(SourceError, match=message) as info:
        rnnexport.from_module(module())
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- cache objects


class Cache(NamedTuple):
    conv: torch.Tensor
    rnn: torch.Tensor


class PytreeCache:
    """A plain class registered as a pytree node, as torch.export wants caches to be."""

    def __init__(self, conv: torch.Tensor, rnn: torch.Tensor) -> None:
        self.conv, self.rnn = conv, rnn


torch.utils._pytree.register_pytree_node(
    PytreeCache, lambda c: ([c.conv, c.rnn], None), lambda leaves, _: PytreeCache(*leaves),
    flatten_with_keys_fn=lambda c: ([(torch.utils._pytree.GetAttrKey("conv"), c.conv),
                                     (torch.utils._pytree.GetAttrKey("rnn"), c.rnn)], None))


@dataclasses.dataclass
class StepCache:
    conv: torch.Tensor
    rnn: torch.Tensor
    offset: int = 0


class CachedCell(nn.Module):
    """``forward(x, cache) -> (y, cache)`` with a cache object of type ``kind``."""

    def __init__(self, kind: type, bump: bool = False) -> None:
        super().__init__()
        self.kind, self.bump = kind, bump
        self.cell = nn.GRUCell(3, 4)

    def initial_state(self, batch: int):
        return self.kind(torch.zeros(batch, 3), torch.zeros(batch, 4))

    def forward(self, x, cache):
        prev, h, ys = cache.conv, cache.rnn, []
        for t in range(x.shape[0]):
            h = self.cell(x[t] - prev, h)
            prev = x[t]
            ys.append(h)
        out = self.kind(prev, h)
        if self.bump:
            out.offset = cache.offset + x.shape[0]
        return torch.stack(ys), out


@pytest.mark.parametrize("kind", [Cache, PytreeCache, StepCache])
def test_a_cache_object_converts_and_comes_back_as_a_dict(tmp_path, kind):
    torch.manual_seed(0)
    module = CachedCell(kind).eval()
    model = rnnexport.from_module(module)
    assert model.io.state.names == ("conv", "rnn") and model.io.state.structure == {"conv": "conv", "rnn": "rnn"}
    result = rnnexport.convert(module, tmp_path / "m.onnx", form="step")
    session = StatefulSession.load(result.path, batch=2)
    cache = module.initial_state(2)
    for x_t in np.random.default_rng(1).standard_normal((4, 2, 3)).astype(np.float32):
        y_t = session.step(x_t)
        with torch.no_grad():
            y, cache = module(torch.from_numpy(x_t)[None], cache)
        np.testing.assert_allclose(y_t, y[0].numpy(), atol=1e-5)
    nested = session.nested_state()
    np.testing.assert_allclose(nested["rnn"], cache.rnn.numpy(), atol=1e-5)
    np.testing.assert_allclose(nested["conv"], cache.conv.numpy(), atol=1e-6)


def test_a_cache_field_forward_changes_but_is_no_tensor_is_refused():
    with pytest.raises(SourceError, match="forward changed field 'offset' .* from 0 to 2; rnnexport carries tensors"):
        rnnexport.from_module(CachedCell(StepCache, bump=True))


def test_a_plain_class_as_state_is_refused_with_what_a_state_may_be():
    class Plain:
        def __init__(self, h: torch.Tensor) -> None:
            self.h = h

    class UsesPlain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.GRUCell(3, 4)

        def initial_state(self, batch: int):
            return Plain(torch.zeros(batch, 4))

        def forward(self, x, state):
            return x, state

    with pytest.raises(SourceError, match="is of type Plain; .* a dataclass, NamedTuple or registered pytree class"):
        rnnexport.from_module(UsesPlain())


# --------------------------------------------------------------------------- finding the state and the input


class _TutorialLSTM(nn.Module):
    """PyTorch's word-language-model convention: ``init_hidden(bsz)``; the head is defined first."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Linear(6, 2)  # not the input: forward rejects 6 features
        self.encoder = nn.Linear(4, 5)
        self.rnn = nn.LSTMCell(5, 6)

    def init_hidden(self, bsz):
        return torch.zeros(bsz, 6), torch.zeros(bsz, 6)

    def forward(self, x, hidden):
        h, c = hidden
        ys = []
        for t in range(x.shape[0]):
            h, c = self.rnn(self.encoder(x[t]), (h, c))
            ys.append(self.decoder(h))
        return torch.stack(ys), (h, c)


class _D2lRNN(nn.Module):
    """d2l's convention: ``begin_state(device, batch_size=1)``; weights as parameters, no layer."""

    def __init__(self) -> None:
        super().__init__()
        self.W_xh = nn.Parameter(torch.randn(7, 4) * 0.1)
        self.W_hh = nn.Parameter(torch.randn(4, 4) * 0.1)

    def begin_state(self, device, batch_size=1):
        return (torch.zeros((batch_size, 4), device=device),)

    def forward(self, inputs, state):
        (h,) = state
        outputs = []
        for x in inputs:
            h = torch.tanh(x @ self.W_xh + h @ self.W_hh)
            outputs.append(h)
        return torch.stack(outputs), (h,)


def test_the_state_method_and_the_input_are_found_as_people_write_them():
    torch.manual_seed(0)
    tutorial = rnnexport.from_module(_TutorialLSTM())
    assert tutorial.io.x_features == (4,) and tutorial.io.state.names == ("s0", "s1")
    d2l = rnnexport.from_module(_D2lRNN())
    assert d2l.io.x_features == (7,) and d2l.io.state.names == ("s0",)
    assert rnnexport.from_module(_D2lRNN(), input_size=7).io.x_features == (7,)


def test_an_input_size_nothing_fits_names_every_size_tried():
    with pytest.raises(SourceError) as info:
        rnnexport.from_module(_TutorialLSTM(), input_size=9)
    assert "x of shape (2, 3, 9)" in str(info.value)

    class Mismatched(_TutorialLSTM):
        def forward(self, x, hidden):
            return super().forward(x[..., :3], hidden)  # takes any size, uses 3: none of the layers'

    with pytest.raises(SourceError, match="forward failed on every input rnnexport tried: 6 features "
                                          r"\(a Linear's in_features\): .*; 4 features") as info:
        rnnexport.from_module(Mismatched())
    assert "\n" not in str(info.value)


def test_convert_input_size_reaches_a_factory(tmp_path):
    factory = tmp_path / "factory.py"
    factory.write_text("import torch\n\n"
                       "class Cell(torch.nn.Module):\n"
                       "    def __init__(self):\n"
                       "        super().__init__()\n"
                       "        self.w = torch.nn.Parameter(torch.randn(8, 5))\n"
                       "    def initial_state(self, batch):\n"
                       "        return torch.zeros(batch, 5)\n"
                       "    def forward(self, x, h):\n"
                       "        ys = []\n"
                       "        for t in range(x.shape[0]):\n"
                       "            h = torch.tanh(x[t] @ self.w[: x.shape[-1]] + h)\n"
                       "            ys.append(h)\n"
                       "        return torch.stack(ys), h\n\n"
                       "def make():\n"
                       "    return Cell()\n")
    source = f"{factory}:make"
    assert load_source(source).io.x_features == (8,)  # the first size its forward accepts
    out = tmp_path / "m.onnx"
    code, _, err = invoke("convert", source, "--input-size", "3", "--form", "step", "-o", out)
    assert code == 0, err
    x = onnx.load(str(out)).graph.input[0]
    assert x.type.tensor_type.shape.dim[1].dim_value == 3
    assert_one_line_error(invoke("convert", source, "--hidden-size", "3", "-o", tmp_path / "n.onnx"),
                          "--hidden-size applies to the built-in cells")


# --------------------------------------------------------------------------- tracing refusals


def test_torch_exports_refusal_is_printed_with_its_reason(tmp_path):
    class Branches(GruCellLoop):
        """tests/modules.py's GRUCell loop, stepping only where the input sums above 0."""

        def forward(self, x, h):
            ys = []
            for t in range(x.shape[0]):
                h = self.cell(x[t], h) if x[t].sum() > 0 else h  # a branch on data: no graph can hold it
                ys.append(h)
            return torch.stack(ys), h

    with pytest.raises(ConvertError) as info:
        rnnexport.convert(Branches(), tmp_path / "m.onnx", form="step")
    message = str(info.value)
    assert "data-dependent" in message and "x[t].sum() > 0" in message, message
    assert "Next steps" not in message and "\n" not in message


# --------------------------------------------------------------------------- many streams


def test_the_batcher_gives_and_takes_a_streams_nested_state(converted):
    batcher = StreamBatcher.load(converted("lstm_then_cell", "step").path, max_batch=4)
    first, second = batcher.join(), batcher.join()
    xs = np.random.default_rng(5).standard_normal((3, 1, 3)).astype(np.float32)
    for x_t in xs:
        batcher.step({first: x_t, second: x_t * 2})
    nested = batcher.nested_state(first)
    assert set(nested) == {"lstm", "cell"} and nested["lstm"][0].shape == (1, 1, 4)
    batcher.set_nested_state(second, nested)
    assert all(np.array_equal(a, b) for a, b in zip(batcher.get_state(second).values(),
                                                   batcher.get_state(first).values(), strict=True))
    with pytest.raises(ContractError, match=r"state of stream 1\['lstm'\]: expected a tuple of 2"):
        batcher.set_nested_state(second, {"lstm": nested["cell"], "cell": nested["cell"]})
    batcher.close()
