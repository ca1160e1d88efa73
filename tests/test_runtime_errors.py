"""Wrong shapes, dtypes, states and providers: one clear line naming what was expected."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from rnnexport.runtime import ProviderError, RuntimeContractError, StatefulSession


@pytest.fixture(scope="module")
def lstm(exports) -> StatefulSession:
    """seed_lstm's step graph (x (B, 10), h/c (B, 16)) for 2 streams."""
    return StatefulSession.load(exports.export("seed_lstm", form="step").path, batch=2)


@pytest.fixture(scope="module")
def gru_seq(exports) -> StatefulSession:
    """nn_gru_2layer_nobias's sequence graph: state (2, B, 16), batch axis 1."""
    return StatefulSession.load(exports.export("nn_gru_2layer_nobias").path, batch=3)


def message(excinfo) -> str:
    text = str(excinfo.value)
    assert text and "\n" not in text, text
    return text


@pytest.mark.parametrize("x, expected", [
    (np.zeros((2, 10), np.float64), "x: expected float32 array of shape (2, 10), got dtype float64"),
    (np.zeros((1, 10), np.float32), "x: expected float32 array of shape (2, 10), got shape (1, 10)"),
    (np.zeros((2, 9), np.float32), "x: expected float32 array of shape (2, 10), got shape (2, 9)"),
    (np.zeros((1, 2, 10), np.float32), "x: expected float32 array of shape (2, 10), got shape (1, 2, 10)"),
    ([[0.0] * 10] * 2, "x: expected a numpy float32 array of shape (2, 10), got list"),
])
def test_step_input_errors(lstm, x, expected):
    with pytest.raises(RuntimeContractError) as e:
        lstm.step(x)
    assert message(e).startswith(expected)


@pytest.mark.parametrize("x, expected", [
    (np.zeros((5, 2, 10), np.int64), "got dtype int64"),
    (np.zeros((2, 10), np.float32), "expected float32 array of shape (T, 2, 10), got shape (2, 10)"),
    (np.zeros((0, 2, 10), np.float32), "expected float32 array of shape (T, 2, 10), got shape (0, 2, 10)"),
    (np.zeros((5, 3, 10), np.float32), "got shape (5, 3, 10)"),
])
def test_run_input_errors(lstm, x, expected):
    with pytest.raises(RuntimeContractError) as e:
        lstm.run(x)
    assert expected in message(e)


def test_state_errors(lstm, gru_seq):
    good = lstm.state
    with pytest.raises(RuntimeContractError, match="state: expected exactly h, c, got h$"):
        lstm.state = {"h": good["h"]}
    with pytest.raises(RuntimeContractError, match="state: expected exactly h, c, got c, h, x"):
        lstm.state = {**good, "x": good["h"]}
    with pytest.raises(RuntimeContractError, match=r"state c: expected float32 array of shape \(2, 16\), "
                                                   r"got shape \(1, 16\)"):
        lstm.state = {"h": good["h"], "c": good["c"][:1]}
    with pytest.raises(RuntimeContractError, match="state h: .* got dtype float64"):
        lstm.state = {"h": good["h"].astype(np.float64), "c": good["c"]}
    with pytest.raises(RuntimeContractError, match=r"state h: expected float32 array of shape \(2, 3, 16\)"):
        gru_seq.state = {"h": np.zeros((3, 2, 16), np.float32)}  # batch axis is 1 here
    with pytest.raises(RuntimeContractError, match="expected a mapping of h, c, got list"):
        lstm.state = [good["h"], good["c"]]


def test_reset_and_batch_errors(lstm, exports):
    with pytest.raises(RuntimeContractError, match="stream index 2 is out of range for 2 streams") as e:
        lstm.reset(2)
    message(e)
    with pytest.raises(RuntimeContractError, match="stream index -1"):
        lstm.reset([0, -1])
    with pytest.raises(RuntimeContractError, match="batch must be a positive int"):
        lstm.new_stream(0)
    with pytest.raises(RuntimeContractError, match="form must be one of step, sequence"):
        StatefulSession.load(exports.export("seed_lstm").path, form="steps")
    with pytest.raises(RuntimeContractError, match="is a sequence graph, not a step graph"):
        StatefulSession.load(exports.export("seed_lstm").path, form="step")


def test_unrolled_graph_errors(exports):
    session = StatefulSession.load(exports.export("seed_rnn", lowering="unrolled", seq_len=7).path)
    with pytest.raises(RuntimeContractError, match="unrolled at T=7: run\\(\\) takes a multiple of 7 time steps, "
                                                   "got 5"):
        session.run(np.zeros((5, 1, 10), np.float32))
    with pytest.raises(RuntimeContractError, match="step\\(\\) needs a step graph"):
        session.step(np.zeros((1, 10), np.float32))


def test_unavailable_provider_lists_the_available_ones(exports):
    with pytest.raises(ProviderError) as e:
        StatefulSession.load(exports.export("seed_gru").path, providers=["NoSuchExecutionProvider"])
    text = message(e)
    assert "unknown execution provider 'NoSuchExecutionProvider'" in text
    for available in ort.get_available_providers():
        assert available in text


@pytest.mark.parametrize("providers", ["cpu", ["CPU"], ("cpu", "CPUExecutionProvider"),
                                       [("CPUExecutionProvider", {})], ("CPUExecutionProvider", {})])
def test_provider_spellings(exports, providers):
    session = StatefulSession.load(exports.export("seed_gru").path, providers=providers)
    assert session.providers == ("CPUExecutionProvider",) and session.device == "cpu"


def test_malformed_provider(exports):
    with pytest.raises(ProviderError, match="a provider is a name or \\(name, options dict\\), got 3"):
        StatefulSession.load(exports.export("seed_gru").path, providers=[3])


def _cuda_starts(path) -> bool:
    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    return "CUDAExecutionProvider" in session.get_providers()


def test_cuda_that_falls_back_to_cpu_is_an_error(exports):
    """onnxruntime-gpu lists CUDA even where it cannot start; a CPU fallback must not pass for CUDA."""
    path = exports.export("seed_gru").path
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA execution provider")
    if _cuda_starts(path):
        pytest.skip("CUDA starts on this machine; the fallback case cannot be produced")
    for providers in (["cuda"], ["CUDAExecutionProvider", "CPUExecutionProvider"]):
        with pytest.raises(ProviderError) as e:
            StatefulSession.load(path, providers=providers)
        text = message(e)
        assert text.startswith("CUDAExecutionProvider was requested but did not start (")
        assert "the session would run on CPUExecutionProvider" in text


@pytest.mark.cuda
def test_cuda_state_stays_on_the_device(exports):
    """On CUDA the state buffers are device OrtValues and streaming still equals one call."""
    path = exports.export("seed_lstm").path
    if "CUDAExecutionProvider" not in ort.get_available_providers() or not _cuda_starts(path):
        pytest.skip("no working CUDA execution provider on this machine")
    session = StatefulSession.load(path, providers="cuda", batch=2)
    assert session.device == "cuda:0"
    assert all(t.value.device_name() == "cuda" for t in session._state.inputs)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 2, 10)).astype(np.float32)
    want = StatefulSession.load(path, batch=2).run(x)
    y = np.stack([session.step(x[t]) for t in range(50)])
    np.testing.assert_allclose(y, want, atol=1e-4)
