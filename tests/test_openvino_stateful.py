"""The ``openvino-stateful`` variant: a step graph as OpenVINO IR with the state inside, streamed with resets.

Bundles are packaged once per module (small hidden sizes). The independent reference is the
PyTorch model run step by step (``RecurrentModel.run_step``); OpenVINO runs the IR as an app
would: ``compile_model``, one infer request fed only ``x``, ``query_state``, ``reset_state``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnexport
from rnnexport.bundle import STATEFUL_VARIANT, open_bundle
from rnnexport.core.compare import VARIANT_TOLERANCES
from rnnexport.core.errors import BundleError
from rnnexport.core.external import ExternalModel, materialize
from rnnexport.engines.openvino import installed
from rnnexport.packaging import package
from rnnexport.packaging.stateful import make_ir
from rnnexport.source.sources import load_source
from rnnexport.testing import assert_close
from rnnexport.verification.report import Contract
from rnnexport.verification.stateful import AFTER_RESET
from tests.cli import assert_one_line_error, invoke
from tests.configs import build
from tests.modules import GruCellLoop, LstmCellThenGruCell, user_module
from tests.schemas import validate

pytestmark = pytest.mark.skipif(not installed("openvino"), reason="openvino is not installed (pip install "
                                "'rnnexport[engines]'): the openvino-stateful variant is made and run by it")

ROOT = Path(__file__).resolve().parent.parent
TOL = VARIANT_TOLERANCES[STATEFUL_VARIANT]
#: name -> the model: seed cells, torch.nn modules (state (layers, B, H)), user modules with nested state, and
#: user modules whose output is a state tensor (y_t = h_t; y_t = g_t, the last of ((h, c), g)).
MODELS = {
    "seed_lstm": lambda: build("seed_lstm"),
    "seed_gru": lambda: build("seed_gru"),
    "nn_lstm": lambda: load_source(_seeded(lambda: torch.nn.LSTM(10, 16, num_layers=2))),
    "nn_gru_batch_first": lambda: load_source(_seeded(lambda: torch.nn.GRU(10, 16, batch_first=True))),
    "nested_lstm_then_gru": lambda: load_source(user_module("lstm_then_gru")),
    "y_is_the_state": lambda: load_source(_seeded(GruCellLoop)),
    "y_is_the_last_of_a_nested_state": lambda: load_source(_seeded(LstmCellThenGruCell)),
}
#: The models whose y is the value of their last state tensor.
Y_IS_STATE = ["y_is_the_state", "y_is_the_last_of_a_nested_state"]
#: Models whose bundles run in the full suite only: the fast lane (``-m "not slow"``) keeps a seed cell, torch.nn
#: modules and the single-state y.
FULL_SUITE = {"nested_lstm_then_gru", "y_is_the_last_of_a_nested_state"}


def lanes(names):
    """``names`` as pytest parameters, those of :data:`FULL_SUITE` marked slow."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in FULL_SUITE else n for n in names]


def _seeded(make):
    torch.manual_seed(0)
    return make().eval()


class Bundles:
    """Each model converted (step form; seed_lstm with its sequence graph too) and packaged with the variant, once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: dict[str, tuple[Path, rnnexport.RecurrentModel]] = {}

    def __call__(self, name: str) -> tuple[Path, rnnexport.RecurrentModel]:
        if name not in self.made:
            model = MODELS[name]()
            step = rnnexport.convert(model, self.root / f"{name}.step.onnx", form="step").path
            sequence = rnnexport.convert(model, self.root / f"{name}.onnx").path if name == "seed_lstm" else None
            folder = self.root / name
            package(sequence or step, folder, source=model, step_path=step if sequence else None,
                    variants=[STATEFUL_VARIANT], engines=["cpu"])
            self.made[name] = (folder, model)
        return self.made[name]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Bundles:
    return Bundles(tmp_path_factory.mktemp("stateful"))


def _entry(folder: Path) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    found = [v for v in manifest["variants"] if v["name"] == STATEFUL_VARIANT]
    assert len(found) == 1, manifest["variants"]
    return found[0]


def _compiled(folder: Path):
    import openvino

    xml = next(f for f in _entry(folder)["files"] if f.endswith(".xml"))
    model = openvino.Core().read_model(str(folder / xml))  # the .bin beside it, as an app reads IR
    return openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


@pytest.mark.parametrize("name", lanes(MODELS))
def test_the_manifest_records_the_variant_and_its_proof(bundles, name):
    folder, model = bundles(name)
    entry = _entry(folder)
    prefix = "step/" if name == "seed_lstm" else ""
    assert entry["status"] == "ok" and entry["of"] == "step"
    assert entry["files"] == [f"{prefix}variants/model.openvino-stateful.xml", f"{prefix}variants/model.openvino-stateful.bin"]
    listed = {f["path"]: f for f in json.loads((folder / "manifest.json").read_text())["files"]}
    assert all(listed[f]["sha256"] == hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in entry["files"])
    assert entry["size_bytes"] == sum((folder / f).stat().st_size for f in entry["files"])
    assert entry["engines"] == ["openvino"]
    assert entry["tolerance"] == {"atol": TOL.atol, "range_atol": TOL.range_atol, "rtol": TOL.rtol}
    outputs = ["y", *model.io.state.output_names]
    assert sorted(entry["figures"]) == sorted(outputs) and all(f["passed"] for f in entry["figures"].values())
    (proof,) = entry["checked_on"]
    assert proof["engine"] == "openvino" and proof["status"] == "passed" and proof["sets"] == 3
    assert proof["max_abs"] <= TOL.atol, proof
    assert ", ".join(model.io.state.names) in entry["notes"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [v["of"] for v in manifest["variants"]] == ["step"]  # a sequence graph has no such variant


def _torch_stream(model, xs: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """PyTorch, one step at a time from the zero state: every step's y, and the state after the last."""
    state = model.io.state.zeros(xs.shape[1])
    ys = []
    for x in xs:
        y, *state = model.run_step(x, state)
        ys.append(y)
    return ys, state


@pytest.mark.parametrize("name", lanes(MODELS))
def test_two_streams_with_a_reset_match_pytorch_step_by_step(bundles, name):
    """Only x is fed; query_state() gives the state by the contract's names; reset_state() starts over from zeros,
    at another batch too; without the reset the next stream would not match (the check is not vacuous)."""
    folder, model = bundles(name)
    compiled = _compiled(folder)
    assert [i.get_any_name() for i in compiled.inputs] == ["x"] and [o.get_any_name() for o in compiled.outputs] == ["y"]
    request = compiled.create_infer_request()
    rng = np.random.default_rng(11)
    names = model.io.state.names
    for number, batch in enumerate((2, 1)):
        xs = rng.standard_normal((100, batch, *model.io.x_features)).astype(np.float32)
        ys, state = _torch_stream(model, xs)
        if number:  # the first stream's state (batch 2) is still in the model
            carried = request.infer({"x": np.repeat(xs[0], 2, axis=0)})["y"]
            assert not np.allclose(carried[:1], ys[0], atol=1e-3), "the state carried over acts like a reset"
            request.reset_state()
        for t, x in enumerate(xs):
            y = request.infer({"x": x})["y"]
            assert_close([y], [ys[t]], ["y"], tolerance=TOL, context=f"{name} stream {number} step {t}")
        variables = {s.name: s.state.data for s in request.query_state()}
        assert sorted(variables) == sorted(names)
        assert_close([variables[n] for n in names], state, names, tolerance=TOL, context=f"{name} stream {number} state")


def test_verify_streams_the_variant_with_a_reset(bundles):
    """``rnnexport verify BUNDLE`` re-checks the variant on OpenVINO: its test sets streamed, and again after a reset."""
    folder, _ = bundles("seed_gru")
    report = rnnexport.verify(folder, engines=("cpu",))
    assert report.passed, report.failures[:3]
    mine = [c for c in report.checks if c.bundle_variant == STATEFUL_VARIANT]
    assert mine and {c.engine for c in mine} == {"openvino"}
    assert {c.case for c in mine} == {"test_data_set_0", "test_data_set_1", "test_data_set_2"}
    again = [c for c in mine if c.variant.endswith(AFTER_RESET)]
    assert {c.case for c in again} == {"test_data_set_1", "test_data_set_2"}  # the stream, from zeros again
    assert {c.output for c in again} == {"y", "h_out"}


@pytest.mark.parametrize("name", lanes(Y_IS_STATE))
def test_a_y_that_is_a_state_tensor_is_still_the_one_output_and_verify_rechecks_it(bundles, name):
    """Where y is the last state tensor's value, OpenVINO merges the two when it compiles; the IR's one output is
    still y and nothing else, and ``verify BUNDLE`` streams y and every state variable, again after a reset."""
    folder, model = bundles(name)
    x = np.random.default_rng(3).standard_normal((2, *model.io.x_features)).astype(np.float32)
    y, *state = model.run_step(x, model.io.state.zeros(2))
    np.testing.assert_array_equal(y, state[-1])  # the case at hand: y_t is the state, in PyTorch too
    assert [sorted(o.get_names()) for o in _compiled(folder).outputs] == [["y"]]
    report = rnnexport.verify(folder, engines=("cpu",))
    assert report.passed, report.failures[:3]
    mine = [c for c in report.checks if c.bundle_variant == STATEFUL_VARIANT and c.contract == Contract.VECTORS]
    assert mine and {c.engine for c in mine} == {"openvino"} and all(c.passed for c in mine)
    outputs = {"y", *model.io.state.output_names}
    for tag in (f"variant {STATEFUL_VARIANT}", f"variant {STATEFUL_VARIANT}, {AFTER_RESET}"):
        cases = {"test_data_set_0", "test_data_set_1", "test_data_set_2"} if tag.endswith(STATEFUL_VARIANT) \
            else {"test_data_set_1", "test_data_set_2"}
        assert {(c.case, c.output) for c in mine if c.variant == tag} == {(k, o) for k in cases for o in outputs}


def test_with_shared_weights_the_ir_holds_every_weight_and_verify_rechecks_it(bundles, tmp_path):
    """seed_lstm's pair is packaged the default way, sharing weights.bin (schema /2). Its IR is the same bytes as
    with --no-shared-weights (/1) and as made from the step graph the reader hands out with weights.bin; its two
    files alone, no weights.bin beside them, stream as PyTorch does; verify BUNDLE re-checks it in both forms."""
    folder, model = bundles("seed_lstm")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["schema"] == "rnnexport.bundle/2", manifest["schema"]
    assert manifest["graphs"]["step"]["file"] == "step.onnx" and manifest["graphs"]["step"]["weights"] == "weights.bin"
    files = _entry(folder)["files"]
    own = tmp_path / "own"
    package(bundles.root / "seed_lstm.onnx", own, source=model, step_path=bundles.root / "seed_lstm.step.onnx",
            variants=[STATEFUL_VARIANT], engines=["cpu"], shared_weights=False)
    assert json.loads((own / "manifest.json").read_text())["schema"] == "rnnexport.bundle/1"
    assert _entry(own)["files"] == files and not (own / "weights.bin").exists()
    step = open_bundle(folder).graphs["step"].model  # the step graph with its checked weights.bin, in memory
    assert isinstance(step, ExternalModel) and list(step.files) == ["weights.bin"]
    made = tmp_path / "made" / "model.openvino-stateful.xml"
    make_ir(materialize(step, tmp_path / "step", "step.onnx"), made, model.io)
    for name, again in zip(files, (made, made.with_suffix(".bin")), strict=True):
        assert (folder / name).read_bytes() == (own / name).read_bytes() == again.read_bytes(), name
    assert (folder / files[1]).stat().st_size >= (folder / "weights.bin").stat().st_size  # the weights, all of them
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in files:
        shutil.copy(folder / name, alone)
    import openvino

    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(alone / Path(files[0]).name)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    xs = np.random.default_rng(5).standard_normal((50, 2, *model.io.x_features)).astype(np.float32)
    ys, state = _torch_stream(model, xs)
    got = [request.infer({"x": x})["y"] for x in xs]
    assert_close(got, ys, [f"y{t}" for t in range(len(xs))], tolerance=TOL, context="IR alone, shared bundle")
    variables = {s.name: s.state.data for s in request.query_state()}
    names = model.io.state.names
    assert_close([variables[n] for n in names], state, names, tolerance=TOL, context="IR alone, state")
    for bundle in (folder, own):
        report = rnnexport.verify(bundle, engines=("cpu",))
        assert report.passed, (bundle.name, report.failures[:3])
        mine = [c for c in report.checks if c.bundle_variant == STATEFUL_VARIANT]
        assert mine and {c.engine for c in mine} == {"openvino"} and all(c.passed for c in mine)
        assert {c.case for c in mine} == {f"step/test_data_set_{n}" for n in range(3)}, bundle.name


def _copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    return copy


def test_a_tampered_bin_fails_verify(bundles, tmp_path):
    """A changed weight fails the checksum (exit 2); with the checksum forged too, it fails the stream (exit 1)."""
    copy = _copy(bundles("seed_lstm")[0], tmp_path)
    files = _entry(copy)["files"]
    xml, weights = (copy / f for f in files)
    # the largest float32 constant of the IR: its bytes in the .bin, from the .xml's Const layers
    consts = [layer.find("data").attrib for layer in ET.parse(xml).getroot().iter("layer")
              if layer.get("type") == "Const" and layer.find("data").get("element_type") == "f32"]
    biggest = max(consts, key=lambda a: int(a["size"]))
    start, size = int(biggest["offset"]), int(biggest["size"])
    data = bytearray(weights.read_bytes())
    data[start:start + size] = (np.frombuffer(data[start:start + size], np.float32) + 0.25).tobytes()
    weights.write_bytes(bytes(data))
    line = assert_one_line_error(invoke("verify", copy, "--engines", "cpu"), files[1])
    assert line.startswith("error: checksum mismatch")
    manifest = json.loads((copy / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == files[1]:
            entry["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code, out, err = invoke("verify", copy, "--engines", "cpu")
    assert code == 1, out + err
    assert "FAIL test vectors == stored outputs openvino" in out and STATEFUL_VARIANT in out


@pytest.mark.parametrize("case", ["bidirectional", "no --step"])
def test_a_bundle_without_a_step_graph_is_refused_in_one_line(bundles, tmp_path, case):
    """A step-less model (a bidirectional layer) cannot have the variant; a sequence graph alone is told to add --step."""
    if case == "bidirectional":
        factory = tmp_path / "bi.py"
        factory.write_text("import torch\n\n\ndef make():\n    torch.manual_seed(0)\n"
                           "    return torch.nn.GRU(4, 8, bidirectional=True).eval()\n")
        graph = tmp_path / "bi.onnx"
        rnnexport.convert(load_source(_seeded(lambda: torch.nn.GRU(4, 8, bidirectional=True))), graph)
        args = [str(graph), f"{factory}:make"]
    else:
        bundles("seed_lstm")  # converts seed_lstm.onnx, the sequence graph
        args = [str(bundles.root / "seed_lstm.onnx")]
    line = assert_one_line_error(invoke("package", *args, "--variants", STATEFUL_VARIANT, "-o", tmp_path / "out"),
                                 "bidirectional layer, so it has no step form" if case == "bidirectional" else "--step")
    assert line.startswith(f"error: the {STATEFUL_VARIANT} variant cannot be made: it is made of the bundle's "
                           "step graph, and this bundle has none")
    assert not (tmp_path / "out").exists()


def test_when_it_may_be_left_out_the_reason_is_recorded(bundles, tmp_path):
    _, model = bundles("seed_lstm")
    with pytest.raises(BundleError, match="pass one with --step"):  # a unidirectional source: the step form exists
        package(bundles.root / "seed_lstm.onnx", tmp_path / "a", source=model, variants=[STATEFUL_VARIANT])
    result = package(bundles.root / "seed_lstm.onnx", tmp_path / "b", variants=[STATEFUL_VARIANT],
                     optional=[STATEFUL_VARIANT], engines=["cpu"])
    (entry,) = result.variants
    assert not entry.ok and entry.of == "step" and "pass one with --step" in entry.reason
    assert not (tmp_path / "b" / "variants").exists()


@pytest.mark.parametrize(("edit", "error"), [
    (lambda v: v.update(files=["../model.openvino-stateful.xml", v["files"][1]]), "unsafe path"),
    (lambda v: v.update(files=v["files"][:1]), "must list its IR as two files, the .xml then the .bin"),
    (lambda v: v.update(files=v["files"][::-1]), "must list its IR as two files, the .xml then the .bin"),
    (lambda v: v.update(files=[v["files"][0], "variants/other.bin"]), "variants/other.bin of variant "
                                                                       "'openvino-stateful' of bundle"),
], ids=["outside", "one file", "bin first", "no checksum"])
def test_the_manifest_bounds_and_checks_the_ir_files(bundles, tmp_path, edit, error):
    copy = _copy(bundles("seed_gru")[0], tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(next(v for v in manifest["variants"] if v["name"] == STATEFUL_VARIANT))
    (copy / "manifest.json").write_text(json.dumps(manifest))
    if "other.bin" in error:
        (copy / "variants" / "other.bin").write_bytes(b"\0" * 8)
    with pytest.raises(BundleError, match=error.replace(".", r"\.").replace("(", r"\(")):
        open_bundle(copy)


def test_without_openvino_the_variant_is_one_line_and_its_bundle_still_runs(bundles, tmp_path):
    """Where openvino cannot be imported: asking for the variant is one line saying what to install; a bundle that
    holds it loads and streams in rnnexport.runtime, inspect lists it, and verify passes with it unavailable."""
    folder, _ = bundles("seed_lstm")
    code = f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "openvino":
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        from rnnexport.cli import main
        from rnnexport.runtime import StatefulSession
        session = StatefulSession.load({str(folder)!r}, batch=1)
        print("y", session.step(np.zeros((1, 10), np.float32)).shape)
        for args in (["inspect", {str(folder)!r}], ["verify", {str(folder)!r}, "--engines", "cpu"],
                     ["package", {str(bundles.root / "seed_lstm.onnx")!r}, "--step",
                      {str(bundles.root / "seed_lstm.step.onnx")!r}, "--variants", "{STATEFUL_VARIANT}", "-o",
                      {str(tmp_path / "out")!r}]):
            try:
                main(args, standalone_mode=False)
                print("exit 0")
            except SystemExit as e:
                print("exit", e.code)
        print("openvino imported:", "openvino" in sys.modules)
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    out = proc.stdout
    assert proc.returncode == 0 and "y (1, 7)" in out, out[-2000:] + proc.stderr[-2000:]
    assert f"variant {STATEFUL_VARIANT} of step" in out and "runs on openvino only" in out
    assert out.count("exit 0") == 2 and "PASS" in out, out[-2000:]
    assert f"openvino (variant {STATEFUL_VARIANT}): the openvino package is not installed" in out  # verify says why
    assert f"error: the {STATEFUL_VARIANT} variant needs openvino, which is not installed: pip install " \
           "'rnnexport[engines]'" in proc.stderr, proc.stderr[-2000:]
    assert out.strip().endswith("exit 2\nopenvino imported: False") and not (tmp_path / "out").exists()


def test_inspect_json_lists_the_variant_as_its_schema_says(bundles):
    folder, _ = bundles("seed_gru")
    code, out, err = invoke("inspect", folder, "--json", "-")
    assert code == 0, err
    doc = validate(json.loads(out), "inspect-result")
    (variant,) = doc["variants"]
    assert variant["name"] == STATEFUL_VARIANT and variant["status"] == "ok" and variant["engines"] == ["openvino"]


@pytest.mark.parametrize("name", lanes(["seed_gru", "y_is_the_last_of_a_nested_state"]))
def test_the_ir_is_the_same_bytes_when_made_again(bundles, tmp_path, name):
    """OpenVINO names new ops from a process-wide counter; the variant's IR does not depend on it."""
    folder, model = bundles(name)
    again = tmp_path / "again"
    package(bundles.root / f"{name}.step.onnx", again, source=model, variants=[STATEFUL_VARIANT], engines=["cpu"])
    for name in _entry(folder)["files"]:
        assert (again / name).read_bytes() == (folder / name).read_bytes(), name
