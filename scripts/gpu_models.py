"""torch.nn models for scripts/gpu_check.sh, named on the command line as scripts/gpu_models.py:NAME."""

from __future__ import annotations

import torch

INPUT_SIZE = 28
HIDDEN_SIZE = 256


def lstm_2layer_bi() -> torch.nn.Module:
    """A 2-layer bidirectional LSTM (native lowering: one bidirectional ONNX LSTM per layer)."""
    torch.manual_seed(0)
    return torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, bidirectional=True).eval()


def gru_2layer_batch_first() -> torch.nn.Module:
    """A 2-layer batch-first GRU (linear_before_reset=1, Transposes around the ONNX GRU)."""
    torch.manual_seed(1)
    return torch.nn.GRU(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, batch_first=True).eval()
