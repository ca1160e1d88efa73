"""The runners: lifecycle, feeds checked against the graph, engines named and started loudly, before any case."""

from __future__ import annotations

import logging
import sys
import warnings

import numpy as np
import pytest
import torch

from rnnexport.core.contract import Form
from rnnexport.core.errors import VerifyError
from rnnexport.engines import (
    EngineUnavailable,
    OrtRunner,
    ReferenceRunner,
    TorchRunner,
    reference_limitations,
)
from rnnexport.engines.registry import ENGINES, engine_spec, running
from rnnexport.export.convert import convert
from rnnexport.testing import feeds, random_inputs, random_state
from rnnexport.verification import verify


def _feeds(model, batch=2, time=4, seed=0):
    rng = np.random.default_rng(seed)
    x = random_inputs(model.io, Form.SEQUENCE, batch, time, rng)
    return feeds(model.io, x, random_state(model.io, batch, rng))


def cuda_starts(path) -> tuple[bool, str]:
    try:
        with OrtRunner(path, "cuda"):
            return True, ""
    except EngineUnavailable as e:
        return False, e.reason


@pytest.fixture(scope="module")
def lstm(exports):
    return exports.model("seed_lstm"), exports.export("seed_lstm")


def test_ort_and_reference_runners_match_the_torch_runner(lstm):
    model, result = lstm
    fed = _feeds(model)
    with TorchRunner(model) as torch_runner:
        want = torch_runner.infer(fed)
    for runner in (OrtRunner(result.path, "cpu"), ReferenceRunner(result.path)):
        with runner:
            got = runner.infer(fed)
        assert list(got) == ["y", "h_out", "c_out"] == list(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-5)
        assert not runner.is_active


def test_infer_before_activate_is_an_error(lstm):
    _, result = lstm
    with pytest.raises(RuntimeError, match="activate"):
        OrtRunner(result.path).infer({})


@pytest.mark.parametrize(("edit", "fragment"), [
    (lambda f: f.pop("c"), "lacks 'c'"),
    (lambda f: f.update(z=np.zeros(1, np.float32)), "has 'z'"),
    (lambda f: f.update(x=f["x"].astype(np.float64)), "'x' is float64"),
    (lambda f: f.update(h=f["h"][None]), "'h' has shape (1, 2, 16)"),
    (lambda f: f.update(x=np.zeros((4, 2, 3), np.float32)), "x float32[T, B, 10]"),
])
def test_feeds_are_checked_against_the_graph_inputs(lstm, edit, fragment):
    model, result = lstm
    fed = _feeds(model)
    edit(fed)
    for runner in (OrtRunner(result.path, "cpu"), ReferenceRunner(result.path)):
        with runner, pytest.raises(VerifyError, match="feed") as info:
            runner.infer(fed)
        assert fragment in str(info.value)


def test_engine_names_are_rnnexports_own_and_unknown_ones_list_the_valid():
    assert engine_spec("cpu").provider == "CPUExecutionProvider"
    assert engine_spec("CUDA").provider == "CUDAExecutionProvider"
    assert engine_spec("TensorrtExecutionProvider").name == "onnxruntime:tensorrt"
    assert engine_spec("reference").name == "onnx-reference" and engine_spec("tract").kind.value == "tract"
    for name in ("gpu", "AzureExecutionProvider", "DnnlExecutionProvider"):  # onnxruntime may list them: no engine
        with pytest.raises(VerifyError, match=f"unknown engine '{name}'; engines are {', '.join(ENGINES)}"):
            engine_spec(name)


def test_running_starts_every_model_and_stops_them_after(lstm):
    _, result = lstm
    with running(engine_spec("cpu"), {"graph": result.path, "again": result.path}) as runners:
        assert not isinstance(runners, EngineUnavailable)
        started = list(runners.values())
        assert [r.is_active for r in started] == [True, True]
    assert not any(r.is_active for r in started)
    ort_format = b"\0\0\0\0ORTM"  # what only onnxruntime reads
    with running(engine_spec("reference"), {"graph": result.path, "variant": ort_format}) as failed:
        assert isinstance(failed, EngineUnavailable)
        assert failed.reason.startswith("variant: the ORT format is onnxruntime's own")


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_a_provider_that_falls_back_is_unavailable_not_cpu(lstm, provider):
    model, result = lstm
    runner = OrtRunner(result.path, provider)
    try:
        runner.activate()
    except EngineUnavailable as e:
        assert e.engine == f"onnxruntime:{provider}"
        assert "did not start" in e.reason or "not in this onnxruntime build" in e.reason
        assert not runner.is_active and runner.session is None
    else:
        assert runner.session.get_providers()[0] == engine_spec(provider).provider
        runner.deactivate()
        pytest.skip(f"{provider} starts here: nothing falls back")
    report = verify(result.path, model, engines=("cpu", provider), batch_sizes=(1,), seq_lens=(3,))
    status = {e.name: e for e in report.engines}[f"onnxruntime:{provider}"]
    assert status.requested and not status.available and status.reason
    assert not report.checks  # asked for by name: verify stopped before the first case
    assert not report.passed and report.missing == (status,)
    assert any(n.kind == "stopped" for n in report.notes)
    allowed = verify(result.path, model, engines=("cpu", provider), batch_sizes=(1,), seq_lens=(3,),
                     allow_missing=True)
    assert allowed.passed and allowed.missing == report.missing
    assert not [c for c in allowed.checks if c.engine == status.name]


def test_a_missing_python_engine_stops_verify_before_any_case(lstm, monkeypatch):
    model, result = lstm
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the engines extra were not installed
    report = verify(result.path, model, engines=("cpu", "openvino"), batch_sizes=(1,), seq_lens=(3,))
    assert not report.passed and not report.checks
    assert [e.name for e in report.missing] == ["openvino"]
    assert "pip install 'rnnexport[engines]'" in report.missing[0].reason
    allowed = verify(result.path, model, engines=("cpu", "openvino"), batch_sizes=(1,), seq_lens=(3,),
                     allow_missing=True)
    assert allowed.passed and {c.engine for c in allowed.checks} == {"pytorch", "onnxruntime:cpu"}


def test_engine_warnings_are_logged_not_shown(tmp_path, caplog):
    """The ReferenceEvaluator's GRU sigmoid overflows in float32 on large pre-activations (a RuntimeWarning)."""
    torch.manual_seed(0)
    module = torch.nn.GRU(4, 6)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.mul_(100)
    path = convert(module, tmp_path / "loud.onnx", lowering="native").path
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="rnnexport.verification"):
        warnings.simplefilter("error")  # any warning that leaks out of verify fails the test
        verify(path, module, engines=("reference",), batch_sizes=(2,), seq_lens=(5,))
    assert "RuntimeWarning: overflow" in caplog.text


def test_reference_limitations_name_the_operator(exports):
    """rnnexport no longer writes what the ReferenceEvaluator cannot run; a foreign graph is still named."""
    import onnx
    from onnx import helper

    batch_first_scan = exports.export("wrapped_batch_first_gru", lowering="scan")
    bidirectional_gru = exports.export("nn_gru_3layer_bi", lowering="native")  # linear_before_reset=1
    assert reference_limitations(onnx.load(batch_first_scan.path)) == []  # scans along axis 0
    assert reference_limitations(onnx.load(bidirectional_gru.path)) == []
    relu = helper.make_graph(
        [helper.make_node("RNN", ["x", "W", "R"], ["y"], hidden_size=2, activations=["Relu"])], "relu",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in
         (("x", [1, 1, 2]), ("W", [1, 2, 2]), ("R", [1, 2, 2]))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = helper.make_model(relu, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    assert "Relu" in reference_limitations(model)[0]
    with pytest.raises(EngineUnavailable, match="cannot run this graph: its RNN operator"):
        ReferenceRunner(model).activate()


@pytest.mark.cuda
def test_cuda_provider_agrees_with_cpu(lstm):
    model, result = lstm
    ok, reason = cuda_starts(result.path)
    if not ok:
        pytest.skip(f"no CUDA execution provider session can start here: {reason}")
    report = verify(result.path, model, engines=("cpu", "cuda"), batch_sizes=(1, 4), seq_lens=(1, 17, 256))
    cuda = [c for c in report.checks if c.engine == "onnxruntime:cuda"]
    assert cuda and {c.contract.value for c in cuda} >= {"graph_vs_pytorch", "ep_vs_cpu"}
    assert report.passed, report.failures[:3]
