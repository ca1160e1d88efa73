"""The gallery's recurrent cells, written as their papers define them: small, seeded by the tests.

``tests/test_gallery.py`` converts, streams and verifies each; ``tests/test_state_domain.py``
verifies the RWKV time mix and the sLSTM from states inside and outside their declared domains.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


def mingru_g(x: torch.Tensor) -> torch.Tensor:
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
            h = (1 - z) * h + z * mingru_g(self.h(x[t]))
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
            h = f / (f + i) * h + i / (f + i) * mingru_g(self.h(x[t]))
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
            h = torch.exp(log_f - total) * h + torch.exp(log_i - total) * mingru_g(self.h(x[t]))
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
