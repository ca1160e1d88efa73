"""A gallery of recurrent cells written as their papers define them, converted, streamed and verified.

Each module is small and seeded. Each converts (sequence, and step where it has one), and its
graphs stream through onnxruntime (``StatefulSession``) equal to the PyTorch module itself at
T 1, 7 and 300; a few are verified on a small grid, the NaN cases included. The compositions of
operators the cells use are checked on saturating inputs against PyTorch in float64.
"""

from __future__ import annotations

import dataclasses
import math

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

# --------------------------------------------------------------------------- the cells


def _g(x: torch.Tensor) -> torch.Tensor:
    """minGRU's positive activation: x + 0.5 for x >= 0, sigmoid(x) below."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


class MinGRU(nn.Module):
    """minGRU (Feng et al. 2024), sequential mode: h = (1 - z) h + z g(W_h x), z = sigmoid(W_z x); y = h."""

    def __init__(self, size: int = 6, hidden: int = 8) -> None:
        super().__init__()
        self.z = nn.Linear(size, hidden)
        self.h = nn.Linear(size, hidden)
        self.hidden = hidden

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.hidden)

    def forward(self, x, h):
        ys = []
        for t in range(x.shape[0]):
            z = torch.sigmoid(self.z(x[t]))
            h = (1 - z) * h + z * _g(self.h(x[t]))
            ys.append(h)
        return torch.stack(ys), h


class MinLSTM(nn.Module):
    """minLSTM (Feng et al. 2024): normalised forget and input gates, h = f' h + i' g(W_h x)."""

    def __init__(self, size: int = 6, hidden: int = 8) -> None:
        super().__init__()
        self.f = nn.Linear(size, hidden)
        self.i = nn.Linear(size, hidden)
        self.h = nn.Linear(size, hidden)
        self.out = nn.Linear(hidden, 3)
        self.hidden = hidden

    def init_hidden(self, bsz: int) -> torch.Tensor:  # PyTorch's examples name it so
        return torch.zeros(bsz, self.hidden)

    def forward(self, x, h):
        ys = []
        for t in range(x.shape[0]):
            f, i = torch.sigmoid(self.f(x[t])), torch.sigmoid(self.i(x[t]))
            h = f / (f + i) * h + i / (f + i) * _g(self.h(x[t]))
            ys.append(self.out(h))
        return torch.stack(ys), h


class LogMinLSTM(MinLSTM):
    """minLSTM in log space, as its paper computes it for stability: the normalised gates from
    logsigmoid and logaddexp. (The plain form's f / (f + i) of two saturated sigmoids differs
    from PyTorch by 1e-2 on verify's saturating inputs: onnxruntime's Sigmoid is accurate in
    absolute terms only, 0 from x = -18 down.)"""

    def forward(self, x, h):
        ys = []
        for t in range(x.shape[0]):
            log_f, log_i = F.logsigmoid(self.f(x[t])), F.logsigmoid(self.i(x[t]))
            total = torch.logaddexp(log_f, log_i)
            h = torch.exp(log_f - total) * h + torch.exp(log_i - total) * _g(self.h(x[t]))
            ys.append(self.out(h))
        return torch.stack(ys), h


class IndRNN(nn.Module):
    """IndRNN (Li et al. 2018): h = relu(W x + u * h + b), u one weight per unit; y = h."""

    def __init__(self, size: int = 6, hidden: int = 8) -> None:
        super().__init__()
        self.w = nn.Linear(size, hidden)
        self.u = nn.Parameter(torch.rand(hidden) * 0.9)
        self.hidden = hidden

    def begin_state(self, batch_size: int, device=None):  # d2l's name and signature
        return (torch.zeros(batch_size, self.hidden, device=device),)

    def forward(self, x, state):
        (h,) = state
        ys = []
        for t in range(x.shape[0]):
            h = torch.relu(self.w(x[t]) + self.u * h)
            ys.append(h)
        return torch.stack(ys), (h,)


class SRU(nn.Module):
    """SRU (Lei et al. 2018) as commonly written: raw weights, no Linear; highway to the input (size = hidden)."""

    def __init__(self, size: int = 6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(size, 3 * size) / math.sqrt(size))
        self.v = nn.Parameter(torch.randn(2, size) * 0.5)
        self.b = nn.Parameter(torch.zeros(2, size))
        self.size = size

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.size)

    def forward(self, x, c):
        ys = []
        for t in range(x.shape[0]):
            u, wf, wr = (x[t] @ self.weight).chunk(3, -1)
            f = torch.sigmoid(wf + self.v[0] * c + self.b[0])
            r = torch.sigmoid(wr + self.v[1] * c + self.b[1])
            c = f * c + (1 - f) * u
            ys.append(r * c + (1 - r) * x[t])
        return torch.stack(ys), c


class QRNN(nn.Module):
    """QRNN (Bradbury et al. 2017) with a width-2 causal convolution and fo-pooling; the last frame is state."""

    def __init__(self, size: int = 5, hidden: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv1d(size, 3 * hidden, kernel_size=2)
        self.size, self.hidden = size, hidden

    def initial_state(self, batch: int):
        return {"c": torch.zeros(batch, self.hidden), "last": torch.zeros(batch, self.size)}

    def forward(self, x, state):
        frames = torch.cat([state["last"][None], x], 0)  # (T + 1, B, I)
        z, f, o = self.conv(frames.permute(1, 2, 0)).permute(2, 0, 1).chunk(3, -1)  # (T, B, H) each
        z, f, o = torch.tanh(z), torch.sigmoid(f), torch.sigmoid(o)
        c, ys = state["c"], []
        for t in range(x.shape[0]):
            c = f[t] * c + (1 - f[t]) * z[t]
            ys.append(o[t] * c)
        return torch.stack(ys), {"c": c, "last": x[-1]}


class RWKVTimeMix(nn.Module):
    """RWKV-4 time mixing: token shift, and the WKV recurrence in its stable (num, den, max) form."""

    def __init__(self, size: int = 8) -> None:
        super().__init__()
        self.decay = nn.Parameter(torch.randn(size) * 0.5)
        self.first = nn.Parameter(torch.randn(size) * 0.5)
        self.mix = nn.Parameter(torch.rand(3, size))
        self.key, self.value, self.receptance = (nn.Linear(size, size, bias=False) for _ in range(3))
        self.output = nn.Linear(size, size, bias=False)
        self.size = size

    def initial_state(self, batch: int):
        zeros = torch.zeros(batch, self.size)
        return {"shift": zeros, "num": zeros, "den": zeros, "max": zeros.clone()}

    def state_domain(self):
        return {"den": "positive"}  # a sum of exponentials: a random state from it is one the module can reach

    def forward(self, x, state):
        last, num, den, top = state["shift"], state["num"], state["den"], state["max"]
        w = -torch.exp(self.decay)
        ys = []
        for t in range(x.shape[0]):
            xt = x[t]
            mk, mv, mr = (xt * m + last * (1 - m) for m in self.mix)
            k, v, r = self.key(mk), self.value(mv), torch.sigmoid(self.receptance(mr))
            ww = self.first + k
            p = torch.maximum(top, ww)
            e1, e2 = torch.exp(top - p), torch.exp(ww - p)
            ys.append(self.output(r * (e1 * num + e2 * v) / (e1 * den + e2)))
            ww = top + w
            p = torch.maximum(ww, k)
            e1, e2 = torch.exp(ww - p), torch.exp(k - p)
            num, den, top, last = e1 * num + e2 * v, e1 * den + e2, p, xt
        return torch.stack(ys), {"shift": last, "num": num, "den": den, "max": top}


class DiagonalSSM(nn.Module):
    """A real diagonal linear state space: h = a * h + B x, y = C h + D x, a = exp(-exp(log_rate)) in (0, 1)."""

    def __init__(self, size: int = 4, state: int = 12) -> None:
        super().__init__()
        self.log_rate = nn.Parameter(torch.randn(state) - 1)
        self.B = nn.Linear(size, state, bias=False)
        self.C = nn.Linear(state, size, bias=False)
        self.D = nn.Parameter(torch.randn(size))
        self.state = state

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.state)

    def forward(self, x, h):
        a = torch.exp(-torch.exp(self.log_rate))
        ys = []
        for t in range(x.shape[0]):
            h = a * h + self.B(x[t])
            ys.append(self.C(h) + self.D * x[t])
        return torch.stack(ys), h


class SelectiveSSM(nn.Module):
    """A Mamba-style selective scan step: input-dependent dt, B and C, a (B, D, N) state updated in place."""

    def __init__(self, size: int = 6, n: int = 4) -> None:
        super().__init__()
        self.dt = nn.Linear(size, size)
        self.B = nn.Linear(size, n, bias=False)
        self.C = nn.Linear(size, n, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1).float()).repeat(size, 1))
        self.D = nn.Parameter(torch.ones(size))
        self.size, self.n = size, n

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.size, self.n)

    def forward(self, x, ssm_state):
        A = -torch.exp(self.A_log)  # (D, N)
        ys = []
        for t in range(x.shape[0]):
            dt = F.softplus(self.dt(x[t]))  # (B, D)
            decay = torch.exp(dt[..., None] * A)
            update = dt[..., None] * self.B(x[t])[:, None, :] * x[t][..., None]
            ssm_state.copy_(ssm_state * decay + update)  # in place, as fast implementations do
            ys.append((ssm_state * self.C(x[t])[:, None, :]).sum(-1) + self.D * x[t])
        return torch.stack(ys), ssm_state


class SLSTM(nn.Module):
    """xLSTM's sLSTM cell (Beck et al. 2024): exponential input gate, sigmoid forget gate in log space,
    normaliser n and stabiliser m; state (h, c, n, m)."""

    def __init__(self, size: int = 5, hidden: int = 6) -> None:
        super().__init__()
        self.w = nn.Linear(size, 4 * hidden)
        self.r = nn.Linear(hidden, 4 * hidden, bias=False)
        self.hidden = hidden

    def initial_state(self, batch: int):
        return tuple(torch.zeros(batch, self.hidden) for _ in range(4))

    def state_domain(self):
        return (None, None, (1.0, None), None)  # the normaliser n: a step keeps n >= 1 (n grows, or starts at 1)

    def forward(self, x, state):
        h, c, n, m = state
        ys = []
        for t in range(x.shape[0]):
            z, i, f, o = (self.w(x[t]) + self.r(h)).chunk(4, -1)
            log_f = F.logsigmoid(f)
            m_new = torch.maximum(log_f + m, i)
            i_gate, f_gate = torch.exp(i - m_new), torch.exp(log_f + m - m_new)
            c = f_gate * c + i_gate * torch.tanh(z)
            n = f_gate * n + i_gate
            h = torch.sigmoid(o) * (c / n)
            m = m_new
            ys.append(h)
        return torch.stack(ys), (h, c, n, m)


class NormResidualGRU(nn.Module):
    """A GRUCell with layer norm on its state and a residual connection around it."""

    def __init__(self, size: int = 6) -> None:
        super().__init__()
        self.cell = nn.GRUCell(size, size)
        self.norm = nn.LayerNorm(size)
        self.size = size

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.size)

    def forward(self, x, h):
        ys = []
        for t in range(x.shape[0]):
            h = self.norm(self.cell(x[t], h))
            ys.append(h + x[t])
        return torch.stack(ys), h


class CleanInput(nn.Module):
    """A GRUCell loop that cleans its input with torch.nan_to_num: a NaN input gives finite outputs."""

    def __init__(self, size: int = 4, hidden: int = 5) -> None:
        super().__init__()
        self.cell = nn.GRUCell(size, hidden)
        self.hidden = hidden

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.hidden)

    def forward(self, x, h):
        ys = []
        for t in range(x.shape[0]):
            h = self.cell(torch.nan_to_num(x[t], nan=0.0), h)
            ys.append(h)
        return torch.stack(ys), h


class ConvGRUBuffers(nn.Module):
    """A streaming block with its state in buffers: a width-3 causal conv cache, then a GRUCell (batch-first)."""

    batch_first = True

    def __init__(self, size: int = 4, hidden: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv1d(size, hidden, kernel_size=3)
        self.gru = nn.GRUCell(hidden, hidden)
        self.register_buffer("cache", torch.zeros(1, size, 2))  # the last two frames, one stream
        self.register_buffer("h", torch.zeros(1, hidden))
        self.register_buffer("scale", torch.ones(hidden))  # read, never written: not state

    def forward(self, x):  # (B, T, I)
        frames = torch.cat([self.cache.expand(x.shape[0], -1, -1), x.transpose(1, 2)], -1)
        self.cache = frames[..., -2:]  # reassigned
        c = self.conv(frames).transpose(1, 2)
        h = self.h.expand(x.shape[0], -1)
        ys = []
        for t in range(x.shape[1]):
            h = self.gru(c[:, t], h)
            ys.append(h * self.scale)
        self.h.copy_(h)  # updated in place
        return torch.stack(ys, 1)


@dataclasses.dataclass
class ConvCache:
    """A cache object as streaming libraries write them: a causal-conv window and a recurrent state."""

    window: torch.Tensor
    hidden: torch.Tensor
    width: int = 2


class CacheModule(nn.Module):
    """Takes and returns a ConvCache: ``forward(x, cache) -> (y, cache)``."""

    def __init__(self, size: int = 4, hidden: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv1d(size, hidden, kernel_size=2)
        self.cell = nn.GRUCell(hidden, hidden)
        self.size, self.hidden = size, hidden

    def initial_state(self, batch: int) -> ConvCache:
        return ConvCache(torch.zeros(batch, self.size, 1), torch.zeros(batch, self.hidden))

    def forward(self, x, cache: ConvCache):
        frames = torch.cat([cache.window, x.permute(1, 2, 0)], -1)  # (B, I, T + 1)
        c = self.conv(frames).permute(2, 0, 1)
        h, ys = cache.hidden, []
        for t in range(x.shape[0]):
            h = self.cell(c[t], h)
            ys.append(h)
        return torch.stack(ys), ConvCache(frames[..., -1:], h, cache.width)


class Tagger(nn.Module):
    """Embedding -> bidirectional LSTM -> Linear, torch's state convention (no step form)."""

    batch_first = True

    def __init__(self, vocabulary: int = 11, hidden: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, 6)
        self.lstm = nn.LSTM(6, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, 3)

    def forward(self, x, state):
        y, state = self.lstm(self.embed(x), state)
        return self.out(y), state


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
    "sru": Entry(SRU, names=("h",)),
    "qrnn": Entry(QRNN, names=("c", "last")),
    "rwkv": Entry(RWKVTimeMix, verify=True, names=("shift", "num", "den", "max")),
    "diagonal_ssm": Entry(DiagonalSSM, verify=True, names=("h",)),
    "selective_ssm": Entry(SelectiveSSM, names=("h",)),
    "slstm": Entry(SLSTM, verify=True, names=("s0", "s1", "s2", "s3")),
    "norm_residual_gru": Entry(NormResidualGRU, names=("h",)),
    "clean_input": Entry(CleanInput, verify=True, names=("h",)),
    "buffers": Entry(ConvGRUBuffers, verify=True, names=("cache", "h")),
    "cache_object": Entry(CacheModule, verify=True, names=("window", "hidden")),
    "tagger": Entry(Tagger, step=False, verify=True, names=("h", "c")),
}

FORMS = [(name, form) for name, entry in GALLERY.items() for form in (("sequence", "step") if entry.step else ("sequence",))]


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


@pytest.mark.parametrize(("name", "form"), FORMS)
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
    "mingru_g": _g,
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


class _LSTMCellLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(3, 4)
        self.head = nn.Linear(4, 2)

    def initial_state(self, batch: int):
        return torch.zeros(batch, 4), torch.zeros(batch, 4)

    def forward(self, x, state):
        h, c = state
        ys = []
        for t in range(x.shape[0]):
            h, c = self.cell(x[t], (h, c))
            ys.append(self.head(h))
        return torch.stack(ys), (h, c)


def test_the_guard_goes_only_where_pytorch_spreads_nan(tmp_path):
    """An LSTM's NaN in h spreads over the stream; one in c stays in its element of h and c (and spreads to y)."""
    torch.manual_seed(0)
    module = _LSTMCellLoop().eval()
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
