"""The portable int8 variant (``int8-qdq``): the rewrite, calibration with state, the proof on every engine, the task.

Reference values come from NumPy (what a quantized product computes, the ranges a stream
reaches), the float32 graph run by onnxruntime, and the training script's own generator.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

import rnnexport
from rnnexport.core.compare import VARIANT_TOLERANCES
from rnnexport.core.contract import Form
from rnnexport.core.cpu import this_cpu
from rnnexport.core.errors import BundleError
from rnnexport.core.onnxfile import load_with_info
from rnnexport.packaging import PackageResult, package
from rnnexport.packaging.calibration import (
    Calibration,
    CalibrationSequence,
    calibrate,
    read_calibration,
)
from rnnexport.packaging.forecast import held_out_series, signal_of
from rnnexport.packaging.manifest import build_manifest, write_manifest
from rnnexport.packaging.qdq import (
    ACTIVATION_LEVELS,
    Observed,
    Range,
    activation_params,
    block_size,
    dequantized,
    find_sites,
    quantize,
    quantized_weight,
    to_observe,
)
from rnnexport.packaging.variants import GraphContext, check
from rnnexport.source.sources import load_source
from rnnexport.verification import verify
from tests.cli import assert_one_line_error, invoke

ROOT = Path(__file__).resolve().parent.parent
#: The engines every int8-qdq variant here is proven on (wasm too for lstm-charlm, the slowest to start).
ENGINES = ["cpu", "reference", "openvino", "tract"]
TRAINED = ("lstm-charlm", "gru-charlm", "rnn-charlm", "lstm-forecaster")


# --------------------------------------------------------------------------- the rewrite on hand-built graphs


def _matmul_graph(weight: np.ndarray) -> onnx.ModelProto:
    k, n = weight.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["B", k])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["B", n])],
                              [numpy_helper.from_array(weight, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_weights_are_int8_per_channel_and_block_and_the_graph_computes_them():
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((70, 24)) * np.linspace(0.1, 3, 70)[:, None]).astype(np.float32)
    model = _matmul_graph(weight)
    done = quantize(model, {})  # no calibration: weights only
    assert (done.products, done.weights, done.activations) == (1, weight.size, 0)
    stored = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(stored) == 1 and list(stored[0].dims) == [70, 24] and not any(
        t.data_type == onnx.TensorProto.FLOAT and list(t.dims) == [70, 24] for t in model.graph.initializer)
    ints, scales = quantized_weight(weight, 0)
    assert block_size(70) == 35 and scales.shape == (2, 24) and np.abs(ints).max() == 127
    x = rng.standard_normal((5, 70)).astype(np.float32)
    want = x @ dequantized(ints, scales, 0)
    np.testing.assert_allclose(_run(model, x), want, rtol=1e-5, atol=1e-5)
    # each weight within half a step of its block's scale, the step set by the block's largest weight
    steps = np.repeat(scales, 35, axis=0)
    assert (np.abs(dequantized(ints, scales, 0) - weight) <= steps / 2 + 1e-7).all()
    np.testing.assert_allclose(ReferenceEvaluator(model).run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


def test_an_activation_is_clipped_to_its_range_and_quantized_in_7_bits():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((16, 8)).astype(np.float32)
    model = _matmul_graph(weight)
    seen = Observed()
    seen.add(np.asarray([-1.0, 2.0], np.float32))
    done = quantize(model, {((), "x"): seen})
    assert done.activations == 1
    found = activation_params(Range(-1.0, 2.0))
    assert found is not None
    scale, zero = float(found[0]), int(found[1])
    assert found[0] == np.float32(3 / ACTIVATION_LEVELS) and zero == 42
    x = (rng.standard_normal((6, 16)) * 2).astype(np.float32)  # beyond the range too
    q = np.clip(np.rint(np.clip(x, -zero * scale, (ACTIVATION_LEVELS - zero) * scale) / scale) + zero, 0, 255)
    assert q.max() <= ACTIVATION_LEVELS
    ints, scales = quantized_weight(weight, 0)
    want = ((q - zero) * scale).astype(np.float32) @ dequantized(ints, scales, 0)
    np.testing.assert_allclose(_run(model, x), want, rtol=1e-5, atol=1e-5)


def test_sites_reach_into_scan_bodies_and_recurrent_operators(exports):
    scan = find_sites(onnx.load(exports.export("seed_rnn", lowering="scan").path))
    assert any(site.path for site in scan), "no product inside the Scan body"
    native = find_sites(onnx.load(exports.export("seed_lstm", lowering="native").path))
    assert {site.node.op_type for site in native} >= {"LSTM"}
    assert to_observe(native) == []  # a graph with a recurrent operator gets no activation quantization
    assert all(key[1] for key in to_observe(scan))


def test_calibration_streams_with_the_state_carried_and_reset_between_sequences(exports):
    """The Scan body's recurrent product reads h(t-1): over a stream, the initial state and every state but the last."""
    result = exports.export("seed_rnn", lowering="scan")
    model, info = load_with_info(result.path, str(result.path), BundleError, "")
    io = info.io
    key = next(k for k in to_observe(find_sites(model)) if k[0])  # the product in the body
    rng = np.random.default_rng(3)
    first, second = (rng.standard_normal((12, 2, 10)).astype(np.float32) for _ in range(2))
    start = [rng.standard_normal((2, 16)).astype(np.float32) * 3]  # beyond anything tanh reaches
    calibration = Calibration((CalibrationSequence((first[:5], first[5:]), tuple(start)),
                               CalibrationSequence((second,))), "test")
    seen = calibrate(model, [key], calibration, io, Form.SEQUENCE, None)[key]
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    visited = []
    for x, state in ((first, start[0]), (second, np.zeros((2, 16), np.float32))):
        for t in range(x.shape[0]):  # one step at a time, from the float32 graph's own state outputs
            visited.append(state)
            state = session.run(None, {"x": x[t:t + 1], "h": state})[1]
    visited = np.stack(visited)
    assert seen.low == pytest.approx(float(visited.min()), abs=1e-6)
    assert seen.high == pytest.approx(float(visited.max()), abs=1e-6)
    assert seen.high > 1.5  # the first sequence's starting state was seen, not the zeros


def test_calibration_files_are_checked_against_the_contract(tmp_path):
    io = load_source("lstm-charlm").io
    good = tmp_path / "x.npz"
    np.savez(good, a=np.eye(32, dtype=np.float32)[np.arange(40) % 32][:, None, :])
    found = read_calibration(good, io)
    assert len(found.sequences) == 1 and found.steps(io) == 40 and found.source == "file x.npz"
    text = tmp_path / "t.txt"
    text.write_text("the hidden state carries on " * 4)
    assert read_calibration(text, io).steps(io) >= 100
    np.savez(tmp_path / "bad.npz", a=np.zeros((5, 2, 7), np.float32))
    with pytest.raises(BundleError, match=r"has shape \[5, 2, 7\].*\(T, B, 32\)"):
        read_calibration(tmp_path / "bad.npz", io)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BundleError, match="not a NumPy file without pickles"):
        read_calibration(tmp_path / "obj.npy", io)
    with pytest.raises(BundleError, match="must be a .npy or .npz"):
        read_calibration(text, load_source("lstm-forecaster").io)


def test_held_out_series_are_the_training_scripts():
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "scripts" / "train.py")
    assert spec is not None and spec.loader is not None
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    signal = signal_of(load_source("lstm-forecaster").card)
    assert signal is not None and signal["valid_series"] == train.SIGNAL["valid_series"]
    ours = held_out_series(signal, signal["seed"] + 1, 16)
    theirs = train.generate_signal(16, seed=train.SEED + 1).numpy()
    np.testing.assert_array_equal(ours, theirs)


# --------------------------------------------------------------------------- bundles of every kind of model


def _leaky(inputs, state, params):
    """A user cell that is none of the seed's: a leaky tanh RNN with a head."""
    w_xh, w_hh, bias, w_hy = params
    (h,) = state
    ys = []
    for x in inputs:
        h = 0.5 * h + 0.5 * torch.tanh(x @ w_xh + h @ w_hh + bias)
        ys.append(h @ w_hy)
    return torch.cat(ys, 0), (h,)


class LstmThenCell(nn.Module):
    """An nn.LSTM, then a residual GRUCell loop with a head: nested state ``{"lstm": (h, c), "cell": h}``."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(16, 48)
        self.cell = nn.GRUCell(48, 48)
        self.head = nn.Linear(48, 8)

    def initial_state(self, batch: int):
        return {"lstm": (torch.zeros(1, batch, 48), torch.zeros(1, batch, 48)), "cell": torch.zeros(batch, 48)}

    def forward(self, x, state):
        y, lstm = self.lstm(x, state["lstm"])
        h, ys = state["cell"], []
        for t in range(y.shape[0]):
            h = self.cell(y[t], h) + y[t]
            ys.append(self.head(h))
        return torch.stack(ys), {"lstm": lstm, "cell": h}


def _user_models() -> dict[str, rnnexport.RecurrentModel]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(16, 64, generator=g) * 0.3, torch.randn(64, 64, generator=g) * 0.15, torch.zeros(64),
              torch.randn(64, 8, generator=g) * 0.2]
    return {"user-cell": rnnexport.from_cell(_leaky, params, init_state=(torch.zeros(1, 64),)),
            "nested-state": rnnexport.from_module(LstmThenCell().eval()),
            "bidirectional-gru": rnnexport.from_module(nn.GRU(16, 64, bidirectional=True).eval())}


class Bundles:
    """Each model above packaged with int8-qdq (and the step graph where the model streams), once, on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: dict[str, tuple[PackageResult, Path]] = {}

    def __getitem__(self, name: str) -> tuple[PackageResult, Path]:
        if name not in self.made:
            source = load_source(name) if name in TRAINED else _user_models()[name]
            sequence = rnnexport.convert(source, self.root / f"{name}.onnx")
            step = None if name == "bidirectional-gru" else rnnexport.convert(
                source, self.root / f"{name}.step.onnx", form="step").path
            engines = ENGINES + (["wasm"] if name == "lstm-charlm" else [])
            self.made[name] = (package(sequence.path, self.root / name, source=source, step_path=step,
                                       variants=["int8-qdq"], engines=engines), sequence.path)
        return self.made[name]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Bundles:
    return Bundles(tmp_path_factory.mktemp("qdq"))


def _float_bytes(result: PackageResult, graph: str) -> int:
    """The size of the float graph a variant was made of, with the weights it reads from the shared weights.bin."""
    return onnx.load(result.folder / result.manifest.graphs[graph].file).ByteSize()


@pytest.mark.parametrize("name", [*(pytest.param(n, marks=pytest.mark.slow) if n != "rnn-charlm" else n for n in TRAINED),
                                  "user-cell", "nested-state", "bidirectional-gru"])
def test_int8_qdq_is_made_and_proven_on_every_engine(bundles, name):
    """Every trained model in the full suite; the fast lane (``-m "not slow"``) makes the smallest one's."""
    result, _ = bundles[name]
    graphs = {"sequence"} if name == "bidirectional-gru" else {"sequence", "step"}
    variants = {v.of: v for v in result.variants}
    assert set(variants) == graphs and all(v.ok for v in variants.values()), [v.reason for v in variants.values()]
    for variant in variants.values():
        checks = {c.engine: c for c in variant.checked_on}
        for engine in ("onnxruntime:cpu", "openvino", "tract"):
            assert checks[engine].status == "passed" and checks[engine].sets == 3, (engine, checks[engine])
        assert checks["onnx-reference"].status in ("passed", "unavailable")
        assert variant.engines == ()  # standard operators only: any engine
        assert all(f["passed"] for f in variant.figures.values())
        assert variant.size_bytes < _float_bytes(result, variant.of)
        stored = onnx.load(result.folder / variant.files[0])
        assert all(n.domain in ("", "ai.onnx") for g in [stored.graph] for n in g.node)
    report = verify(result.folder, engines=("cpu",))
    assert report.passed, report.failures[:3]


@pytest.mark.slow
def test_lstm_charlm_int8_qdq_meets_its_targets(bundles):
    result, graph = bundles["lstm-charlm"]
    for variant in result.variants:
        assert variant.agreement["next_char_agreement"] >= 0.95, variant.agreement
        float_size = _float_bytes(result, variant.of)
        assert variant.size_bytes <= 0.35 * float_size, (variant.size_bytes, float_size)
        assert {c.engine: c.status for c in variant.checked_on}["wasm"] == "passed"
        assert variant.cpu is not None and variant.quantization["recurrent_operators"] == 1


@pytest.mark.slow
def test_lstm_forecaster_int8_qdq_forecasts_within_5_percent(bundles):
    result, _ = bundles["lstm-forecaster"]
    for variant in result.variants:
        agreement = variant.agreement
        assert agreement["series"] == 256 and agreement["mae_ratio"] <= 1.05, agreement
        assert agreement["mae_float"] == pytest.approx(0.0488, abs=0.002)  # the card's held-out score, as MAE
        assert variant.quantization["quantized_activations"] == 3  # the Scan body's products


def test_a_planted_bad_scale_fails_the_check_with_figures(bundles, tmp_path):
    """One activation scale a tenth of its calibrated value: the check and verify both fail, with figures."""
    result, _ = bundles["rnn-charlm"]
    folder = tmp_path / "bundle"
    shutil.copytree(result.folder, folder)
    variant = next(v for v in result.variants if v.of == "sequence")
    path = folder / variant.files[0]
    model = onnx.load(path)
    body = next(n for n in model.graph.node if n.op_type == "Scan").attribute[0].g
    scale = next(t for t in body.initializer if "_scale" in t.name and not t.dims)  # the recurrent input's
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) / 10, scale.name))
    onnx.save(model, path)
    info = load_with_info(folder / "model.onnx", "m", BundleError, "")[1]
    assert info is not None
    figures = check(folder / "model.onnx", path, GraphContext(info.io, info.form, prompt="the hidden state "),
                    VARIANT_TOLERANCES["int8-qdq"])
    assert not all(f["passed"] for f in figures.values())
    assert max(f["max_abs"] for f in figures.values()) > 1.0, figures
    manifest = result.manifest
    write_manifest(folder, build_manifest(folder, info, dict(manifest.graphs), list(manifest.variants),
                                          list(manifest.test_vectors)))
    report = verify(folder, engines=("cpu",))
    failed = [c for c in report.failures if c.variant == "variant int8-qdq"]
    assert failed and max(c.max_abs or 0 for c in failed) > 0.5, report.failures[:3]


def test_package_cli_calibrates_on_a_file_and_refuses_bad_ones_in_one_line(bundles, tmp_path):
    _, graph = bundles["rnn-charlm"]
    text = tmp_path / "text.txt"
    text.write_text("the hidden state of a recurrent network carries what it has read. " * 20)
    code, _, err = invoke("package", graph, "rnn-charlm", "-o", "b", "--variants", "int8-qdq", "--calibration", text,
                          "--engines", "cpu", cwd=tmp_path)
    assert code == 0, err
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    variant = manifest["variants"][0]
    assert variant["status"] == "ok" and variant["quantization"]["calibration"].startswith("file text.txt")
    assert variant["quantization"]["calibration_sequences"] == 3  # the file's one, the test sets' two
    assert [c["engine"] for c in variant["checked_on"]] == ["onnxruntime:cpu"]
    np.save(tmp_path / "wrong.npy", np.zeros((4, 2, 3), np.float32))
    for args, message in ((["--variants", "fp16", "--calibration", text], "used by the int8-qdq variant only"),
                          (["--variants", "int8-qdq", "--calibration", tmp_path / "wrong.npy"], "has shape [4, 2, 3]"),
                          (["--engines", "cpu,warp"], "unknown engine 'warp'")):
        assert_one_line_error(invoke("package", graph, "-o", "c", *args, cwd=tmp_path), message)
        assert not (tmp_path / "c").exists()


# --------------------------------------------------------------------------- an AVX2-only CPU


_ENGINES_SCRIPT = """
import json, sys
import numpy as np, onnxruntime as ort, openvino as ov
rng = np.random.default_rng(5)
core = ov.Core()
found = {}
for path in sys.argv[1:]:
    compiled = core.compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    feeds = {p.any_name: rng.standard_normal([8 if d.is_dynamic else d.get_length() for d in p.get_partial_shape()])
             .astype(np.float32) for p in compiled.inputs}
    found["openvino " + path] = [compiled(feeds)[o].tolist() for o in compiled.outputs]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    found["onnxruntime " + path] = [a.tolist() for a in session.run(None, feeds)]
print(json.dumps(found))
"""


@pytest.mark.slow
def test_int8_qdq_runs_the_same_on_an_emulated_avx2_cpu(bundles, tmp_path):
    """OpenVINO runs the Scan body's quantized products in int8; on a CPU without VNNI (a Haswell emulated by
    qemu's user mode) it adds pairs of uint8 x int8 products in saturating int16. With 8-bit activations it
    goes wrong there on inputs that reach the top of their range (random normal x for a one-hot model); the
    variant's 7-bit activations give the same outputs as on this CPU, on OpenVINO and onnxruntime."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None or this_cpu().machine != "x86_64":
        pytest.skip("needs qemu-x86_64 on PATH (Debian: apt-get install qemu-user) on an x86-64 host")
    pytest.importorskip("openvino")
    result, graph = bundles["rnn-charlm"]
    shipped = result.folder / next(v for v in result.variants if v.of == "sequence").files[0]
    model, info = load_with_info(graph, str(graph), BundleError, "")
    assert info is not None
    calibration = Calibration((CalibrationSequence((np.eye(32, dtype=np.float32)[np.arange(64) % 32][:, None],)),),
                              "test")
    seen = calibrate(model, to_observe(find_sites(model)), calibration, info.io, Form.SEQUENCE, None)
    eight_bit = tmp_path / "eight_bit.onnx"
    quantize(model, seen, activation_levels=255)
    onnx.save(model, eight_bit)
    paths = [str(shipped), str(eight_bit)]

    def outputs(*prefix: str) -> dict[str, list[np.ndarray]]:
        proc = subprocess.run([*prefix, sys.executable, "-c", _ENGINES_SCRIPT, *paths], capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return {k: [np.asarray(a) for a in v] for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}

    here, haswell = outputs(), outputs(qemu, "-cpu", "Haswell")
    differ = {k: max(float(np.abs(a - b).max()) for a, b in zip(here[k], haswell[k], strict=True)) for k in here}
    assert differ[f"openvino {eight_bit}"] > 0.5, f"8-bit activations did not saturate under emulation: {differ}"
    assert differ[f"openvino {shipped}"] < 1e-4 and differ[f"onnxruntime {shipped}"] < 1e-4, differ
