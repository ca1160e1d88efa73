"""convert refuses a module that cannot be streamed: its output at a step depends on later steps."""

from __future__ import annotations

import pytest
import torch

import rnnexport
from rnnexport.core.contract import Form
from rnnexport.core.errors import ConvertError
from rnnexport.export.causal import check_causal


class _Centred(torch.nn.Module):
    """Subtracts the mean over time before its GRU: the first output depends on the last input."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(4, 8)

    def forward(self, x, h):
        return self.gru(x - x.mean(dim=0, keepdim=True), h)


class _Reversed(torch.nn.Module):
    """Reads the sequence backwards through a forward LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 8)

    def forward(self, x, state):
        y, state = self.lstm(torch.flip(x, [0]), state)
        return torch.flip(y, [0]), state


class _Residual(torch.nn.Module):
    """Causal: a residual connection around a GRU, with a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(4, 4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x, h):
        y, h = self.gru(x, h)
        return self.head(y + x), h


@pytest.mark.parametrize("module", [_Centred, _Reversed])
@pytest.mark.parametrize("form", ["sequence", "step"])
def test_a_non_causal_module_is_refused_with_the_reason(tmp_path, module, form):
    torch.manual_seed(0)
    with pytest.raises(ConvertError, match="is not causal: .* depends on later steps") as info:
        rnnexport.convert(module(), tmp_path / "m.onnx", form=form)
    assert "\n" not in str(info.value) and not (tmp_path / "m.onnx").exists()


def test_a_causal_wrapper_converts_and_streams(tmp_path):
    torch.manual_seed(0)
    result = rnnexport.convert(_Residual(), tmp_path / "m.onnx")
    report = rnnexport.verify(result.path, _Residual_seeded(), batch_sizes=(2,), seq_lens=(5,), engines=("cpu", "reference"))
    assert report.passed, report.failures[:3]


def _Residual_seeded() -> torch.nn.Module:  # the same module, rebuilt with the same seed
    torch.manual_seed(0)
    return _Residual()


class _InPlace(torch.nn.Module):
    """Causal, but updates its state in place (``copy_``), as fast streaming code does."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(4, 4)

    def initial_state(self, batch: int):
        return torch.zeros(batch, 4)

    def forward(self, x, h):
        ys = []
        for t in range(x.shape[0]):
            h.copy_(torch.sigmoid(self.gate(x[t])) * h + x[t])
            ys.append(h.clone())
        return torch.stack(ys), h


def test_a_module_that_updates_its_state_in_place_is_causal(tmp_path):
    torch.manual_seed(0)
    module = _InPlace()
    model = rnnexport.from_module(module)
    check_causal(model)  # each run on copies: the first run cannot change the state of the next
    result = rnnexport.convert(module, tmp_path / "m.onnx", form="step")
    report = rnnexport.verify(result.path, module, batch_sizes=(2,), seq_lens=(1, 7), engines=("cpu",))
    assert report.passed, report.failures[:3]


@pytest.mark.parametrize("module", [
    lambda: torch.nn.GRU(4, 8, bidirectional=True),
    lambda: _Tagger(),
])
def test_a_bidirectional_model_has_a_sequence_form_and_no_step_form(tmp_path, module):
    torch.manual_seed(0)
    model = rnnexport.from_module(module())
    check_causal(model, Form.SEQUENCE)  # reads the whole sequence by design
    with pytest.raises(ConvertError, match="has no step form") as info:
        check_causal(model, Form.STEP)
    assert "not causal" not in str(info.value)
    with pytest.raises(ConvertError, match="has no step form"):
        rnnexport.convert(module(), tmp_path / "m.onnx", form="step")


class _Tagger(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.lstm = torch.nn.LSTM(4, 3, bidirectional=True)
        self.out = torch.nn.Linear(6, 2)

    def forward(self, x, state):
        y, state = self.lstm(self.embed(x), state)
        return self.out(y), state
