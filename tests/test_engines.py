"""Every graph rnnexport writes runs the same on every engine a user deploys to.

verify with --engines cpu,reference,openvino,tract,node,wasm,browser, every engine really
running (none may be missing): the seed cells in every lowering and form, a 2-layer nn.LSTM
scan graph, a relu batch-first nn.RNN in every form it converts to, an LSTM with proj_size,
bidirectional scans (all but the ReferenceEvaluator, which runs Scan forwards only),
and the trained models. Engines come from the ``engines`` extra, the npm lockfile in
rnnexport/engines/js and Debian's chromium (README, "Set up and run").
"""

from __future__ import annotations

import shutil

import pytest
import torch

import rnnexport
from rnnexport.engines.js import JS_INSTALL, chromium_binary
from rnnexport.engines.registry import ENGINES
from rnnexport.verification import Contract
from tests.cli import invoke

pytestmark = pytest.mark.slow

ALL = ("cpu", "reference", "openvino", "tract", "node", "wasm", "browser")
GRID = {"batch_sizes": (2,), "seq_lens": (1, 4), "engines": ALL}
SEED_FORMS = [(cell, form, lowering) for cell in ("rnn", "lstm", "gru")
              for form, lowering in (("sequence", "native"), ("sequence", "scan"), ("sequence", "unrolled"),
                                     ("step", "native"), ("step", "unrolled"))]


def _missing() -> str | None:
    import importlib.util

    from rnnexport.engines.js import _modules

    for package in ("openvino", "tract"):
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed (pip install 'rnnexport[engines]')"
    if shutil.which("node") is None or not (_modules() / "onnxruntime-web").is_dir():
        return f"node or the npm packages are missing ({JS_INSTALL})"
    if chromium_binary() is None:
        return "chromium is not installed (apt-get install -y --no-install-recommends chromium)"
    return None


@pytest.fixture(scope="module", autouse=True)
def engines_installed():
    reason = _missing()
    if reason is not None:
        if __import__("os").environ.get("CI"):
            pytest.fail(f"CI must have every engine: {reason}")
        pytest.skip(reason)


def _check(report) -> None:
    ran = {e.kind.value for e in report.engines if e.available}
    assert ran >= {"onnxruntime", "reference", "openvino", "tract", "node", "wasm", "browser"}, report.engines
    assert not report.missing, [(e.name, e.reason) for e in report.missing]
    assert report.passed, [(c.contract.value, c.engine, c.case, c.output, c.detail) for c in report.failures[:5]]
    engines = {c.engine for c in report.checks if c.contract is Contract.PYTORCH}
    assert {"onnxruntime:cpu", "onnx-reference", "openvino", "tract", "node", "wasm", "browser"} <= engines


@pytest.mark.parametrize(("cell", "form", "lowering"), SEED_FORMS)
def test_seed_cells_run_on_every_engine(tmp_path, cell, form, lowering):
    result = rnnexport.convert(cell, tmp_path / "m.onnx", form=form, lowering=lowering,
                               seq_len=4 if lowering == "unrolled" and form == "sequence" else None)
    _check(rnnexport.verify(result.path, cell, **GRID))


def _module(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return {"lstm2": lambda: torch.nn.LSTM(5, 8, num_layers=2),
            "relu_bf": lambda: torch.nn.RNN(5, 8, nonlinearity="relu", batch_first=True),
            "proj": lambda: torch.nn.LSTM(5, 8, proj_size=3),
            "bi_proj_bf": lambda: torch.nn.LSTM(5, 6, num_layers=2, bidirectional=True, proj_size=3,
                                                batch_first=True),
            "bi_relu": lambda: torch.nn.RNN(5, 6, nonlinearity="relu", bidirectional=True)}[name]()


@pytest.mark.parametrize(("name", "form", "lowering"), [
    ("lstm2", "sequence", "scan"),
    ("relu_bf", "sequence", "auto"), ("relu_bf", "sequence", "unrolled"), ("relu_bf", "step", "auto"),
    ("proj", "sequence", "auto"),
])
def test_torch_modules_run_on_every_engine(tmp_path, name, form, lowering):
    module = _module(name)
    result = rnnexport.convert(module, tmp_path / "m.onnx", form=form, lowering=lowering,
                               seq_len=4 if lowering == "unrolled" else None)
    _check(rnnexport.verify(result.path, module, **GRID))


@pytest.mark.parametrize("name", ["bi_proj_bf", "bi_relu"])
def test_bidirectional_scans_run_on_every_engine_but_the_reference(tmp_path, name):
    """The backward half's Scan runs in reverse: every engine runs it but onnx's ReferenceEvaluator."""
    module = _module(name)
    result = rnnexport.convert(module, tmp_path / "m.onnx")
    assert result.lowering.value == "scan"
    report = rnnexport.verify(result.path, module, **{**GRID, "allow_missing": True})
    assert report.passed, [(c.contract.value, c.engine, c.case, c.output) for c in report.failures[:5]]
    assert [e.name for e in report.missing] == ["onnx-reference"]
    assert "forward direction" in report.missing[0].reason
    engines = {c.engine for c in report.checks if c.contract is Contract.PYTORCH}
    assert {"onnxruntime:cpu", "openvino", "tract", "node", "wasm", "browser"} <= engines


@pytest.mark.parametrize("name", ["rnn-charlm", "lstm-charlm", "gru-charlm", "lstm-forecaster"])
def test_trained_models_run_on_every_engine(tmp_path, name):
    result = rnnexport.convert(name, tmp_path / "m.onnx")
    _check(rnnexport.verify(result.path, **GRID))


def test_every_engine_name_is_documented():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "verify.md").read_text()
    assert all(f"`{name}`" in text for name in ENGINES)


def test_a_requested_engine_that_cannot_start_fails_verify(tmp_path, monkeypatch):
    result = rnnexport.convert("gru", tmp_path / "m.onnx")
    monkeypatch.setenv("RNNEXPORT_NODE_MODULES", str(tmp_path / "nowhere"))  # as if npm ci never ran
    code, out, _ = invoke("verify", result.path, "--engines", "cpu,node", "--batch-sizes", "1", "--seq-lens", "2")
    assert code == 1 and "requested engine(s) did not start" in out and "npm ci" in out
    assert "no checks ran" in out  # it stopped before the first case
    code, out, _ = invoke("verify", result.path, "--engines", "cpu,node", "--allow-missing", "--batch-sizes", "1",
                          "--seq-lens", "2")
    assert code == 0, out


def test_bundle_of_a_trained_model_verifies_on_every_engine_with_its_variants(tmp_path):
    graph = rnnexport.convert("lstm-charlm", tmp_path / "lm.onnx")
    step = rnnexport.convert("lstm-charlm", tmp_path / "lm.step.onnx", form="step")
    made = rnnexport.package(graph.path, tmp_path / "bundle", step_path=step.path, archive=True)
    assert {v.name for v in made.variants if v.ok} >= {"ort", "int8", "fp16"}
    report = rnnexport.verify(made.archive, engines=ALL)
    assert report.passed and not report.missing, report.failures[:3]
    checked = {(c.engine, c.variant) for c in report.checks}
    assert ("onnxruntime:cpu", "variant int8") in checked and ("onnxruntime:cpu", "variant ort") in checked
    assert ("tract", "variant fp16") in checked and ("browser", "variant fp16") in checked
    skipped = {(u.engine, u.case): u.reason for u in report.unavailable}
    assert "onnxruntime-only" in skipped[("openvino", "variant int8")]
    assert "ORT format" in skipped[("tract", "variant ort")]
