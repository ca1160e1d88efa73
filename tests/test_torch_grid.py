"""PyTorch's own RNN export test grid, through convert (auto) and verify at T = 1, 7 and 100.

The grid of torch.onnx's RNN tests: RNN (tanh, relu), LSTM (with and without proj_size) and
GRU, with 1 or 3 layers, one or two directions, batch-first or not, with or without biases.
An initial state given or not is the verify grid's state kinds (random and zero). Every
configuration must convert as a sequence graph that takes any T and pass verify; every
unidirectional one also as a step graph that streams (contract 3); a bidirectional one has
no step form and is refused with the reason.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import rnnexport
from rnnexport.core.errors import ConvertError
from rnnexport.verification.report import Contract

FAMILIES = ("rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru")
GRID = list(itertools.product(FAMILIES, (1, 3), (False, True), (False, True), (True, False)))
VERIFY = {"batch_sizes": (1, 3), "seq_lens": (1, 7, 100), "engines": ("cpu",)}


def _module(family: str, layers: int, bidirectional: bool, batch_first: bool, bias: bool) -> torch.nn.Module:
    torch.manual_seed(len(GRID) + layers * 10 + bidirectional * 3 + batch_first * 5 + bias)
    common = {"num_layers": layers, "bidirectional": bidirectional, "batch_first": batch_first, "bias": bias}
    if family.startswith("rnn"):
        return torch.nn.RNN(3, 5, nonlinearity=family[4:], **common)
    if family == "gru":
        return torch.nn.GRU(3, 5, **common)
    return torch.nn.LSTM(3, 5, proj_size=2 if family == "lstm_proj" else 0, **common)


def _id(config) -> str:
    family, layers, bidirectional, batch_first, bias = config
    return "-".join([family, f"{layers}l", "bi" if bidirectional else "uni", "bf" if batch_first else "tf",
                     "bias" if bias else "nobias"])


@pytest.mark.slow
@pytest.mark.parametrize("config", GRID, ids=[_id(c) for c in GRID])
def test_every_torch_rnn_configuration_converts_and_verifies(tmp_path, config):
    module = _module(*config)
    sequence = rnnexport.convert(module, tmp_path / "seq.onnx")
    assert sequence.inputs[0].shape[module.batch_first] == "T"  # any T
    step = None
    if module.bidirectional:
        with pytest.raises(ConvertError, match="bidirectional") as refused:
            rnnexport.convert(module, tmp_path / "step.onnx", form="step")
        assert "\n" not in str(refused.value)
    else:
        step = rnnexport.convert(module, tmp_path / "step.onnx", form="step").path
    report = rnnexport.verify(sequence.path, module, step_model=str(step) if step else None, **VERIFY)
    assert report.passed, (sequence.lowering, report.failures[:3], report.unavailable)
    seq_lens = {c.case.split("-")[1] for c in report.checks if c.contract is Contract.PYTORCH}
    assert {"T1", "T7", "T100"} <= seq_lens, seq_lens
    if step is not None:
        assert any(c.contract is Contract.STEP for c in report.checks)
