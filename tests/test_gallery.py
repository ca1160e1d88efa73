"""The gallery of recurrent cells (tests/gallery.py), as their papers define them: converted, streamed, verified.

Each module is small and seeded. Each converts (sequence, and step where it has one), and its
graphs stream through onnxruntime (``StatefulSession``) equal to the PyTorch module itself at
T 1, 7 and 300; a few are verified on a small grid, the NaN cases included. The compositions of
operators the cells use are checked on saturating inputs against PyTorch in float64.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnexport
from rnnexport.core.contract import Form, IOSpec, StateSpec
from rnnexport.core.errors import ConvertError
from rnnexport.export.nanprobe import nan_sources
from rnnexport.export.trace import trace
from rnnexport.runtime import StatefulSession
from rnnexport.testing import assert_close, random_inputs, random_state
from tests.gallery import (
    QRNN,
    SLSTM,
    SRU,
    CacheModule,
    CleanInput,
    ConvGRUBuffers,
    DiagonalSSM,
    IndRNN,
    LogMinLSTM,
    MinGRU,
    MinLSTM,
    NormResidualGRU,
    RWKVTimeMix,
    SelectiveSSM,
    Tagger,
    mingru_g,
)
from tests.modules import LSTMCellLoop


@dataclasses.dataclass(frozen=True)
class Entry:
    """A gallery module: how to build it, what to pass, which forms, whether to verify."""

    make: type[nn.Module]
    input_size: int | None = None
    step: bool = True
    verify: bool = False
    names: tuple[str, ...] = ()


GALLERY = {
    "mingru": Entry(MinGRU, verify=True, names=("h",)),
    "minlstm": Entry(MinLSTM, names=("h",)),
    "minlstm_log": Entry(LogMinLSTM, verify=True, names=("h",)),
    "indrnn": Entry(IndRNN, verify=True, names=("s0",)),
    "sru": Entry(SRU, verify=True, names=("h",)),
    "qrnn": Entry(QRNN, verify=True, names=("c", "last")),
    "rwkv": Entry(RWKVTimeMix, verify=True, names=("shift", "num", "den", "max")),
    "diagonal_ssm": Entry(DiagonalSSM, verify=True, names=("h",)),
    "selective_ssm": Entry(SelectiveSSM, verify=True, names=("h",)),
    "slstm": Entry(SLSTM, verify=True, names=("s0", "s1", "s2", "s3")),
    "norm_residual_gru": Entry(NormResidualGRU, verify=True, names=("h",)),
    "clean_input": Entry(CleanInput, verify=True, names=("h",)),
    "buffers": Entry(ConvGRUBuffers, verify=True, names=("cache", "h")),
    "cache_object": Entry(CacheModule, verify=True, names=("window", "hidden")),
    "tagger": Entry(Tagger, step=False, verify=True, names=("h", "c")),
}

FORMS = [(name, form) for name, entry in GALLERY.items() for form in (("sequence", "step") if entry.step else ("sequence",))]
#: The fast lane (``-m "not slow"``) streams every cell's sequence graph and minGRU's step graph; the full suite all.
LANES = [pytest.param(name, form, marks=pytest.mark.slow) if form == "step" and name != "mingru" else (name, form)
         for name, form in FORMS]


def _module(name: str) -> nn.Module:
    torch.manual_seed(0)
    return GALLERY[name].make().eval()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """``converted(name, form)``: the gallery module's graph in ``form``, converted once."""
    folder = tmp_path_factory.mktemp("gallery")
    cache: dict[tuple[str, str], rnnexport.ConvertResult] = {}

    def get(name: str, form: str) -> rnnexport.ConvertResult:
        if (name, form) not in cache:
            cache[name, form] = rnnexport.convert(_module(name), folder / f"{name}.{form}.onnx", form=form)
        return cache[name, form]

    return get


# --------------------------------------------------------------------------- converting and streaming


@pytest.mark.parametrize("name", GALLERY)
def test_the_state_is_read_as_the_module_holds_it(name):
    model = rnnexport.from_module(_module(name), GALLERY[name].input_size)
    assert model.io.state.names == GALLERY[name].names


def _stream_reference(model, x: np.ndarray) -> list[np.ndarray]:
    return model.run_sequence(x, model.io.state.zeros(x.shape[model.io.batch_axis]))


@pytest.mark.parametrize(("name", "form"), LANES)
def test_streams_equal_to_pytorch(converted, name, form):
    """From the zero state, T = 1, 7 and 300 in one session, each length a new stream."""
    result = converted(name, form)
    assert result.lowering.value == ("scan" if form == "sequence" else "unrolled")
    model = rnnexport.from_module(_module(name), GALLERY[name].input_size)
    io, batch = model.io, 2
    session = StatefulSession.load(result.path, batch=batch)
    for time in (1, 7, 300):
        x = random_inputs(io, Form.SEQUENCE, batch, time, np.random.default_rng(time), vocabulary=11)
        want = _stream_reference(model, x)
        session.reset()
        if form == "sequence":
            y = session.run(x)
        else:
            y = np.stack([session.step(np.take(x, t, axis=io.time_axis)) for t in range(time)], axis=io.time_axis)
        got_state = [session.state[n] for n in io.state.names]
        assert_close([y, *got_state], want, ["y", *io.state.names], context=f"{name} {form} T={time}")


@pytest.mark.parametrize("name", [n for n, e in GALLERY.items() if e.verify])
def test_verifies_with_the_nan_cases(converted, name):
    step = converted(name, "step").path if GALLERY[name].step else None
    report = rnnexport.verify(converted(name, "sequence").path, _module(name), batch_sizes=(2,), seq_lens=(1, 7),
                              engines=("cpu",), step_model=str(step) if step else None)
    assert report.passed, report.failures[:3]
    nan_cases = {c.case for c in report.checks if "nan" in str(c.case)}
    assert nan_cases, "the grid has NaN cases"



def test_plain_minlstm_fails_verify_only_on_saturating_inputs(converted):
    """The one gallery cell that does not verify, and why: minLSTM's plain ``f / (f + i)`` of two saturated
    sigmoids, where onnxruntime's Sigmoid is 0 from x = -18 down (its log-space form verifies, above)."""
    report = rnnexport.verify(converted("minlstm", "sequence").path, _module("minlstm"), batch_sizes=(2,),
                              seq_lens=(1, 7), engines=("cpu",))
    assert not report.passed
    assert {c.case for c in report.failures} and all("saturating" in str(c.case) for c in report.failures), \
        report.failures[:3]

def test_the_tagger_has_no_step_form(tmp_path):
    with pytest.raises(ConvertError, match="has no step form") as info:
        rnnexport.convert(_module("tagger"), tmp_path / "m.onnx", form="step")
    assert "not causal" not in str(info.value) and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(("name", "nan_in", "nans_in_y"), [("mingru", "state", 5), ("clean_input", "x", 0)])
def test_nan_stays_where_pytorch_keeps_it(converted, name, nan_in, nans_in_y):
    """minGRU keeps a NaN of its state in that element (one per step of y); nan_to_num removes a NaN input."""
    model = rnnexport.from_module(_module(name))
    io = model.io
    x = random_inputs(io, Form.SEQUENCE, 2, 5, np.random.default_rng(0))
    state = io.state.zeros(2)
    if nan_in == "x":
        x[2, 0, 0] = np.nan
    else:
        state[0][0, 0] = np.nan
    want = model.run_sequence(x, state)
    assert np.isnan(want[0]).sum() == nans_in_y
    session = ort.InferenceSession(str(converted(name, "sequence").path), providers=["CPUExecutionProvider"])
    assert_close(session.run(None, io.feeds(x, state)), want, ["y", *io.state.output_names], context=name)


# --------------------------------------------------------------------------- operator compositions


COMPOSITIONS = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "exp_of_negative": lambda x: torch.exp(-torch.abs(x)),
    "softplus": F.softplus,
    "logsigmoid": F.logsigmoid,
    "silu": F.silu,
    "logaddexp": lambda x: torch.logaddexp(x, 0.5 * x.flip(-1)),
    "stabilised_exp": lambda x: torch.exp(x - torch.maximum(x, 0.5 * x.flip(-1))),
    "layer_norm": lambda x: F.layer_norm(x, x.shape[-1:]),
    "mingru_g": mingru_g,
    "nan_to_num": lambda x: torch.nan_to_num(x, nan=0.0),
}


class _Apply(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x, *state):
        return (self.fn(x), state[0] + 0)


@pytest.mark.parametrize("name", COMPOSITIONS)
def test_each_composition_matches_pytorch_on_saturating_inputs(name):
    """The traced graph gives what PyTorch gives (float64 reference) from -100 to 100, NaN and Inf included."""
    fn = COMPOSITIONS[name]
    io = IOSpec((16,), "float32", (16,), StateSpec(("h",), ((1,),), 0))
    graph = trace(_Apply(fn), io, io.inputs(Form.STEP), io.outputs(Form.STEP))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    values = np.concatenate([np.linspace(-100, 100, 29), [-18.5, 17.5, 88.0, -88.0, np.nan, np.inf, -np.inf]])
    x = np.resize(values.astype(np.float32), (3, 16))  # 48 values: every one, some twice, in other columns
    got = session.run(None, {"x": x, "h": np.zeros((x.shape[0], 1), np.float32)})[0]
    want = fn(torch.from_numpy(x).double()).numpy()
    finite = np.isfinite(want) & (np.abs(want) < 3e38)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{name}: NaN where PyTorch has none (or the reverse)"
    assert np.array_equal(np.isinf(got)[~finite | np.isinf(want)], np.isinf(want)[~finite | np.isinf(want)])
    assert not np.isinf(got[finite]).any(), f"{name}: Inf where PyTorch is finite: x = {x[np.isinf(got) & finite]}"
    assert_close([got[finite]], [want[finite].astype(np.float32)], [name], context=name)


def test_the_guard_goes_only_where_pytorch_spreads_nan(tmp_path):
    """An LSTM's NaN in h spreads over the stream; one in c stays in its element of h and c (and spreads to y)."""
    torch.manual_seed(0)
    module = LSTMCellLoop(hidden=4).eval()
    model = rnnexport.from_module(module)
    assert nan_sources(model, Form.STEP) == ((True, True, True), (True, True, False), (True, True, False))
    assert nan_sources(rnnexport.from_module(_module("clean_input")), Form.SEQUENCE) == ((False, True), (False, True))
    path = rnnexport.convert(module, tmp_path / "m.onnx", form="step").path
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    for k in range(2):
        state = [np.zeros((2, 4), np.float32) for _ in range(2)]
        state[k][0, 0] = np.nan
        want = model.run_step(x, state)
        assert_close(session.run(None, model.io.feeds(x, state)), want, ["y", "s0_out", "s1_out"], context=f"NaN in {k}")
        assert np.isnan(want[2]).sum() == (4 if k == 0 else 1)


def test_the_tagger_takes_ragged_batches(tmp_path):
    """With lengths, each stream of the tagger runs alone on its own length (its backward scan starts at its end)."""
    result = rnnexport.convert(_module("tagger"), tmp_path / "m.onnx", lengths=True)
    model = rnnexport.from_module(_module("tagger")).with_lengths()
    io = model.io
    lengths = np.array([7, 3, 0], np.int64)
    rng = np.random.default_rng(2)
    x = random_inputs(io, Form.SEQUENCE, 3, 7, rng, vocabulary=11)
    state = random_state(io, 3, rng)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    got = session.run(None, io.feeds(x, state, lengths))
    want = model.run_sequence(x, state, lengths)
    assert_close(got, want, ["y", *io.state.output_names], context="ragged tagger")
