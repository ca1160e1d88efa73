"""Second hardening round: no command writes over its inputs, bounded runs, a batcher with limits.

Each case: one ``error:`` line (or one typed error in the API), the documented exit code, every
input byte-identical afterwards, nothing half-written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from rnnexport.cli import main
from rnnexport.core.contract import Form, GraphInfo, IOSpec, Layout, Lowering, StateSpec
from rnnexport.core.errors import RunError, RuntimeContractError
from rnnexport.core.onnxfile import read_info, write_info
from rnnexport.runtime import StatefulSession, StreamBatcher


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stderr


def one_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture()
def workdir(exports, tmp_path) -> Path:
    """A model, two inputs (one empty) and a saved state, in a folder of their own."""
    path = exports.export("seed_lstm").path
    (tmp_path / "m.onnx").write_bytes(Path(path).read_bytes())
    features = StatefulSession.load(tmp_path / "m.onnx").contract.x_features
    np.save(tmp_path / "a.npy", np.ones((3, 1, *features), np.float32))
    np.save(tmp_path / "empty.npy", np.ones((0, 1, *features), np.float32))
    code, err = invoke("run", tmp_path / "m.onnx", "-i", tmp_path / "a.npy", "--state-out", tmp_path / "s.npz")
    assert code == 0, err
    return tmp_path


@pytest.mark.parametrize(("args", "says"), [
    (["-i", "a.npy", "-o", "m.onnx"], "would overwrite"),
    (["-i", "a.npy", "-o", "a.npy"], "would overwrite"),
    (["-i", "a.npy", "--state-in", "s.npz", "-o", "s.npz"], "would overwrite"),
    (["-i", "a.npy", "-o", "y.npy", "--state-out", "y.npy"], "each output needs its own path"),
    (["-i", "a.npy", "-i", "a.npy", "-o", "y.npy", "-o", "y.npy"], "each output needs its own path"),
    (["-i", "a.npy", "-i", "a.npy", "-o", "y.npy", "-o", "a.npy"], "would overwrite"),
], ids=["model", "input", "saved-state", "y-is-state", "duplicate-y", "y-is-input"])
def test_run_never_writes_over_its_inputs_or_itself(workdir, args, says):
    before = digests(workdir)
    code, err = invoke("run", workdir / "m.onnx", *[workdir / a if a.endswith((".npy", ".npz", ".onnx")) else a
                                                   for a in args])
    assert code == 2
    one_line(err, says)
    assert digests(workdir) == before


def test_run_updates_a_saved_state_in_place(workdir):
    """--state-in and --state-out may name one file: the state moves on (read first, written atomically)."""
    old = dict(np.load(workdir / "s.npz"))
    code, err = invoke("run", workdir / "m.onnx", "-i", workdir / "a.npy", "--state-in", workdir / "s.npz",
                       "--state-out", workdir / "s.npz")
    assert code == 0, err
    new = dict(np.load(workdir / "s.npz"))
    assert new.keys() == old.keys() and any(not np.array_equal(new[k], old[k]) for k in old)


def test_an_empty_stream_among_several_gives_an_empty_y(workdir):
    code, err = invoke("run", workdir / "m.onnx", "-i", workdir / "a.npy", "-i", workdir / "empty.npy",
                       "-o", workdir / "y1.npy", "-o", workdir / "y2.npy")
    assert code == 0, err
    y1, y2 = np.load(workdir / "y1.npy"), np.load(workdir / "y2.npy")
    assert y1.shape[0] == 3 and y2.shape == (0, *y1.shape[1:])
    code, err = invoke("run", workdir / "m.onnx", "-i", workdir / "empty.npy", "-o", workdir / "y3.npy")
    assert code == 2 and not (workdir / "y3.npy").exists()
    one_line(err, "x: expected")


def test_package_into_a_folder_that_cannot_be_made_is_one_line(exports, tmp_path):
    code, err = invoke("package", exports.export("seed_lstm").path, "-o", "/proc/rnnexport-bundle",
                       "--variants", "none")
    assert code == 2
    one_line(err, "cannot create /proc/rnnexport-bundle")


def _huge_allocation_graph(path: Path) -> Path:
    """A graph whose y needs 160 GB: ConstantOfShape([200000, 200000]) added to x."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [200_000, 200_000])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"]),
             helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
             helper.make_node("Add", ["x", "total"], ["y"]), helper.make_node("Identity", ["h"], ["h_out"])]
    graph = helper.make_graph(nodes, "huge", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4]),
                                              helper.make_tensor_value_info("h", TensorProto.FLOAT, ["B", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4]),
                               helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["B", 4])], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    io = IOSpec((4,), "float32", (4,), StateSpec(("h",), ((4,),), 0), Layout.TIME_MAJOR)
    write_info(model, GraphInfo(version="test", form=Form.STEP, lowering=Lowering.UNROLLED, io=io, source_kind="test",
                                cell_family=None, params_sha256="", seq_len=None, origin={}, description="huge"))
    onnx.save(model, path)
    return path


def test_an_allocation_the_machine_cannot_make_is_one_line(tmp_path):
    path = _huge_allocation_graph(tmp_path / "huge.onnx")
    session = StatefulSession.load(path)
    with pytest.raises(RunError, match="failed in onnxruntime"):
        session.step(np.ones((1, 4), np.float32))
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    code, err = invoke("run", path, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert code == 2 and not (tmp_path / "y.npy").exists()
    one_line(err, "failed in onnxruntime")


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"threads": "two"}, "threads must be an int"),
    ({"threads": 0}, "threads must be an int"),
])
def test_session_arguments_are_checked(exports, kwargs, says):
    with pytest.raises(RuntimeContractError, match=says):
        StatefulSession.load(exports.export("seed_gru", form="step").path, **kwargs)


@pytest.fixture()
def step_graph(exports) -> str:
    return str(exports.export("seed_gru", form="step").path)


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"max_batch": 10**9}, "max_batch must be an int from 1 to"),
    ({"max_streams": 0}, "max_streams must be an int from 1 to"),
    ({"idle_timeout": -1}, "idle_timeout must be seconds above 0"),
    ({"on_evict": 3}, "on_evict must be a function"),
])
def test_batcher_arguments_are_checked(step_graph, kwargs, says):
    with pytest.raises(RuntimeContractError, match=says):
        StreamBatcher.load(step_graph, **kwargs)


def test_batcher_refuses_a_join_past_max_streams_and_an_unhashable_id(step_graph):
    with StreamBatcher.load(step_graph, max_streams=3) as batcher:
        streams = [batcher.join() for _ in range(3)]
        with pytest.raises(RuntimeContractError, match="its limit of 3 streams"):
            batcher.join()
        with pytest.raises(RuntimeContractError, match="hashable"):
            batcher.join([1])
        batcher.leave(streams[0])
        assert batcher.join("again") == "again" and len(batcher) == 3


def test_batcher_evicts_idle_streams(step_graph):
    gone: list[object] = []
    with StreamBatcher.load(step_graph, idle_timeout=0.2, on_evict=gone.append) as batcher:
        x = np.ones(batcher.contract.x_shape("step", 1), np.float32)
        idle, busy = batcher.join("idle"), batcher.join("busy")
        deadline = time.monotonic() + 10
        while "idle" in batcher and time.monotonic() < deadline:
            batcher.step({busy: x})  # keeps "busy" fresh; each step also evicts what idles
            time.sleep(0.05)
        assert gone == ["idle"] and batcher.evicted == ("idle",)
        assert busy in batcher and idle not in batcher
        with pytest.raises(RuntimeContractError, match="no stream 'idle'"):
            batcher.step({idle: x})


def test_a_failed_batcher_step_is_an_rnnexport_error(tmp_path):
    path = _huge_allocation_graph(tmp_path / "huge.onnx")
    with StreamBatcher.load(path) as batcher:
        stream = batcher.join()
        x = np.ones((1, 4), np.float32)
        with pytest.raises(RunError):
            batcher.step({stream: x})
        with pytest.raises(RunError):
            batcher.submit(stream, x).result(timeout=60)
    assert os.path.exists(path)


@pytest.fixture(scope="module")
def lstm_bundle(exports, tmp_path_factory) -> Path:
    from tests.test_runtime_bundle import make_bundle

    return make_bundle(exports, "seed_lstm", tmp_path_factory.mktemp("hard") / "bundle")


def _relisted(bundle: Path, target: Path, change) -> Path:
    """A copy of ``bundle`` where ``change(folder)`` edits files, then the manifest re-lists their checksums."""
    shutil.copytree(bundle, target)
    change(target)
    manifest = json.loads((target / "manifest.json").read_text())
    for entry in manifest["files"]:
        data = (target / entry["path"]).read_bytes()
        entry["sha256"], entry["size"] = hashlib.sha256(data).hexdigest(), len(data)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_a_graph_reading_an_unlisted_external_data_file_does_not_run(lstm_bundle, tmp_path):
    """Only what the manifest lists (and checks) runs: a listed graph whose weights sit in an unlisted file fails."""
    def externalize(folder: Path) -> None:
        model = onnx.load(folder / "model.onnx")
        onnx.save(model, folder / "model.onnx", save_as_external_data=True, location="weights.bin",
                  size_threshold=0)

    bundle = _relisted(lstm_bundle, tmp_path / "external", externalize)
    assert (bundle / "weights.bin").is_file()
    x = tmp_path / "x.npy"
    features = StatefulSession.load(lstm_bundle).contract.x_features
    np.save(x, np.ones((2, 1, *features), np.float32))
    for args in (["run", bundle, "-i", x, "-o", tmp_path / "y.npy"], ["verify", bundle, "--engines", "cpu"]):
        code, err = invoke(*args)
        assert code in (1, 2) and not (tmp_path / "y.npy").exists(), err
        assert "error:" in err or "FAIL" in err, err


@pytest.mark.parametrize("value", [-1.0, float("inf"), "1e-3"])
def test_a_tampered_variant_tolerance_is_refused(lstm_bundle, tmp_path, value):
    shutil.copytree(lstm_bundle, tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest.setdefault("variants", []).append({"name": "fp16", "of": "sequence", "status": "ok", "files": [],
                                                "tolerance": {"atol": value, "rtol": 0.1}, "figures": {"y": {}}})
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    code, err = invoke("verify", tmp_path / "b", "--engines", "cpu")
    assert code == 2
    one_line(err, "variant tolerance atol")


def _lying_metadata(graph: Path, target: Path) -> Path:
    """``graph`` with its metadata claiming x has 16 features more than the graph takes."""
    model = onnx.load(graph)
    info = read_info(model)
    assert info is not None
    more = (info.io.x_features[0] + 16,)
    write_info(model, dataclasses.replace(info, io=dataclasses.replace(info.io, x_features=more)))
    onnx.save(model, target)
    return target


def test_metadata_that_disagrees_with_the_graph_is_refused_with_both_shapes(exports, tmp_path):
    path = _lying_metadata(exports.export("seed_lstm", form="step").path, tmp_path / "lying.onnx")
    features = onnx.load(path).graph.input[0].type.tensor_type.shape.dim[1].dim_value
    with pytest.raises(RuntimeContractError, match=rf"metadata does not describe its graph: x has shape \(B, {features}\) "
                                                   rf"in the graph, \(B, {features + 16}\) in its metadata"):
        StatefulSession.load(path)
    with pytest.raises(RuntimeContractError, match="does not describe its graph"):
        StreamBatcher.load(path)
    np.save(tmp_path / "x.npy", np.ones((1, features + 16), np.float32))
    code, err = invoke("run", path, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert code == 2 and not (tmp_path / "y.npy").exists()
    one_line(err, "does not describe its graph")


@pytest.fixture(scope="module")
def variant_bundle(exports, tmp_path_factory) -> Path:
    from rnnexport.packaging import package

    model = exports.model("seed_lstm")
    out = tmp_path_factory.mktemp("variants") / "bundle"
    package(exports.export("seed_lstm").path, out, source=model, variants=["fp16", "int8"])
    return out


def _verify_json(bundle: Path, tmp_path: Path) -> tuple[int, dict]:
    code, err = invoke("verify", bundle, "--engines", "cpu", "--json", tmp_path / "report.json", "-q")
    return code, json.loads((tmp_path / "report.json").read_text())


def test_a_loosened_variant_tolerance_does_not_turn_a_failure_into_a_pass(variant_bundle, tmp_path):
    """Tripled fp16 weights fail against rnnexport's own variant tolerance, whatever the manifest allows."""
    def triple_and_loosen(folder: Path) -> None:
        manifest = json.loads((folder / "manifest.json").read_text())
        variant = next(v for v in manifest["variants"] if v["name"] == "fp16" and v["status"] == "ok")
        model = onnx.load(folder / variant["files"][0])
        for tensor in model.graph.initializer:
            if tensor.data_type == TensorProto.FLOAT16 and len(tensor.dims) == 2:
                array = onnx.numpy_helper.to_array(tensor) * 3
                tensor.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float16), tensor.name))
        onnx.save(model, folder / variant["files"][0])
        variant["tolerance"] = {"atol": 1e6, "range_atol": 1e6, "rtol": 1e6}
        (folder / "manifest.json").write_text(json.dumps(manifest))

    bundle = _relisted(variant_bundle, tmp_path / "loose", triple_and_loosen)
    code, report = _verify_json(bundle, tmp_path)
    failed = [c for c in report["checks"] if not c["passed"]]
    assert code == 1 and failed and all(c.get("variant") == "fp16" or "fp16" in json.dumps(c) for c in failed)


def test_a_variant_proven_on_another_cpu_is_rechecked_and_said_so(variant_bundle, tmp_path):
    def other_cpu(folder: Path) -> None:
        manifest = json.loads((folder / "manifest.json").read_text())
        for variant in manifest["variants"]:
            if variant["status"] == "ok":
                variant["cpu"] = {"machine": variant["cpu"]["machine"], "features": ["avx2"]}
        (folder / "manifest.json").write_text(json.dumps(manifest))

    bundle = _relisted(variant_bundle, tmp_path / "elsewhere", other_cpu)
    code, report = _verify_json(bundle, tmp_path)
    assert code == 0, report
    notes = " ".join(n if isinstance(n, str) else json.dumps(n) for n in report["notes"])
    assert "re-checked here on its test sets" in notes and "proven on" in notes
    assert any(c.get("variant") == "int8" or "int8" in json.dumps(c) for c in report["checks"])
