"""Every trained model in models/ converts with every lowering that applies and verifies.

Trained weights saturate gates and carry state over long spans, which is where export errors
and numeric drift show: each graph is verified on the CPU provider and onnx's reference
evaluator, then run over 2048 steps of realistic input (each character model's own greedy
text from its card's prompt, a noisy signal for the forecaster) to show the error along time stays within what float32 rounding explains (PyTorch's own
error against a float64 run).
Random one-hot sequences hundreds of steps long drive a trained char RNN into a chaotic regime
where two float32 implementations diverge by rounding alone, so the grid stays short.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import rnnexport
from rnnexport.source.sources import load_source, models_dir
from rnnexport.testing import feeds
from rnnexport.verification import Contract

MODELS = sorted(p.parent.name for p in models_dir().glob("*/card.json"))
LOWERINGS = {"module": ("scan", "unrolled")}
GRID = {"batch_sizes": (1, 3), "seq_lens": (1, 17, 64), "engines": ("cpu", "reference")}
LONG = 2048


def test_models_are_there():
    assert set(MODELS) >= {"rnn-charlm", "lstm-charlm", "gru-charlm", "lstm-forecaster"}


def _cases():
    for name in MODELS:
        card = json.loads((models_dir() / name / "card.json").read_text())
        for lowering in LOWERINGS.get(card["source"], ("native", "scan", "unrolled")):
            yield name, lowering


@pytest.mark.slow
@pytest.mark.parametrize(("name", "lowering"), list(_cases()))
def test_trained_model_verifies(name, lowering, tmp_path):
    path = tmp_path / f"{name}.{lowering}.onnx"
    result = rnnexport.convert(name, path, lowering=lowering, seq_len=8 if lowering == "unrolled" else None)
    assert result.lowering.value == lowering
    report = rnnexport.verify(path, **GRID)  # the source is rebuilt from the graph's metadata
    assert report.passed, [c for c in report.checks if not c.passed][:3]
    engines = {c.engine for c in report.checks if c.contract is Contract.PYTORCH}
    assert {"onnxruntime:cpu", "onnx-reference"} <= engines, engines
    if lowering != "unrolled":
        _long_sequence_stays_within_tolerance(name, path)


def _realistic_input(model, card) -> np.ndarray:
    """What the model works on: its own greedy text from the card's prompt, or a noisy signal."""
    if card["vocabulary"]:
        vocabulary = card["vocabulary"]
        eye = np.eye(len(vocabulary), dtype=np.float32)
        chars = [vocabulary.index(c) for c in card["prompt"]]
        state = model.io.state.zeros(1)
        for index in range(LONG):
            y, *state = model.run_step(eye[chars[index]][None], state)
            if index + 1 >= len(chars):
                chars.append(int(y[0].argmax()))
        return eye[chars[:LONG]][:, None, :]
    t = np.arange(LONG, dtype=np.float32)
    signal = 0.5 * np.sin(2 * np.pi * t / 11) + 0.3 * np.sin(2 * np.pi * t / 23) + 0.4 * np.sin(2 * np.pi * t / 47)
    noisy = signal + 0.05 * np.random.default_rng(0).standard_normal(LONG).astype(np.float32)
    return noisy.astype(np.float32)[:, None, None]


def _long_sequence_stays_within_tolerance(name: str, path) -> None:
    """2048 steps of realistic input from the zero state: the error must not drift past tolerance."""
    model = load_source(name)
    x = _realistic_input(model, model.card)
    state = model.io.state.zeros(1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds(model.io, x, state))
    want = model.run_sequence(x, state)
    exact = model.run_sequence_float64(x, state)
    for g, w, e in zip(got, want, exact, strict=True):
        own = float(np.abs(w - e).max())  # PyTorch's own float32 rounding error over the sequence
        err = float(np.abs(g - w).max())
        assert err <= 1e-5 + 3 * own, (name, err, own)
    own = np.abs(want[0] - exact[0]).max(axis=(1, 2))
    drift = np.abs(got[0] - want[0]).max(axis=(1, 2))  # the graph's error along time
    assert (drift[-100:] <= 1e-5 + 3 * own.max()).all(), (drift[:100].max(), drift[-100:].max(), own.max())
