"""Second hardening round: no command writes over its inputs, bounded runs, a batcher with limits.

Each case: one ``error:`` line (or one typed error in the API), the documented exit code, every
input byte-identical afterwards, nothing half-written.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rnnexport.bundle.manifest import STATEFUL_VARIANT
from rnnexport.bundle.reader import open_bundle
from rnnexport.core.compare import VARIANT_TOLERANCES
from rnnexport.core.contract import Form, GraphInfo, IOSpec, Layout, Lowering, StateSpec
from rnnexport.core.errors import BundleError, RunError, RuntimeContractError
from rnnexport.core.onnxfile import read_info, write_info
from rnnexport.engines.openvino import installed
from rnnexport.runtime import StatefulSession, StreamBatcher
from rnnexport.verification.stateful import check_stateful, stateful_variants
from tests.bundles import relisted_copy
from tests.cli import assert_one_line_error, invoke, snapshot


@pytest.fixture()
def workdir(exports, tmp_path) -> Path:
    """A model, two inputs (one empty) and a saved state, in a folder of their own."""
    path = exports.export("seed_lstm").path
    (tmp_path / "m.onnx").write_bytes(Path(path).read_bytes())
    features = StatefulSession.load(tmp_path / "m.onnx").contract.x_features
    np.save(tmp_path / "a.npy", np.ones((3, 1, *features), np.float32))
    np.save(tmp_path / "empty.npy", np.ones((0, 1, *features), np.float32))
    code, _, err = invoke("run", tmp_path / "m.onnx", "-i", tmp_path / "a.npy", "--state-out", tmp_path / "s.npz")
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
    before = snapshot(workdir)
    paths = [workdir / a if a.endswith((".npy", ".npz", ".onnx")) else a for a in args]
    assert_one_line_error(invoke("run", workdir / "m.onnx", *paths), says)
    assert snapshot(workdir) == before


def test_run_updates_a_saved_state_in_place(workdir):
    """--state-in and --state-out may name one file: the state moves on (read first, written atomically)."""
    old = dict(np.load(workdir / "s.npz"))
    code, _, err = invoke("run", workdir / "m.onnx", "-i", workdir / "a.npy", "--state-in", workdir / "s.npz",
                       "--state-out", workdir / "s.npz")
    assert code == 0, err
    new = dict(np.load(workdir / "s.npz"))
    assert new.keys() == old.keys() and any(not np.array_equal(new[k], old[k]) for k in old)


def test_an_empty_stream_among_several_gives_an_empty_y(workdir):
    code, _, err = invoke("run", workdir / "m.onnx", "-i", workdir / "a.npy", "-i", workdir / "empty.npy",
                       "-o", workdir / "y1.npy", "-o", workdir / "y2.npy")
    assert code == 0, err
    y1, y2 = np.load(workdir / "y1.npy"), np.load(workdir / "y2.npy")
    assert y1.shape[0] == 3 and y2.shape == (0, *y1.shape[1:])
    assert_one_line_error(invoke("run", workdir / "m.onnx", "-i", workdir / "empty.npy", "-o", workdir / "y3.npy"),
                          "x: expected")
    assert not (workdir / "y3.npy").exists()


def test_package_into_a_folder_that_cannot_be_made_is_one_line(exports, tmp_path):
    assert_one_line_error(invoke("package", exports.export("seed_lstm").path, "-o", "/proc/rnnexport-bundle",
                                 "--variants", "none"), "cannot create /proc/rnnexport-bundle")


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
    assert_one_line_error(invoke("run", path, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy"),
                          "failed in onnxruntime")
    assert not (tmp_path / "y.npy").exists()


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


def test_a_graph_reading_an_unlisted_external_data_file_does_not_run(bundle, tmp_path):
    """Only what the manifest lists (and checks) runs: a listed graph whose weights sit in an unlisted file fails."""
    def externalize(folder: Path) -> None:
        model = onnx.load(folder / "model.onnx")
        onnx.save(model, folder / "model.onnx", save_as_external_data=True, location="weights.bin",
                  size_threshold=0)

    external = relisted_copy(bundle, tmp_path / "external", externalize)
    assert (external / "weights.bin").is_file()
    x = tmp_path / "x.npy"
    features = StatefulSession.load(bundle).contract.x_features
    np.save(x, np.ones((2, 1, *features), np.float32))
    for args in (["run", external, "-i", x, "-o", tmp_path / "y.npy"], ["verify", external, "--engines", "cpu"]):
        code, _, err = invoke(*args)
        assert code in (1, 2) and not (tmp_path / "y.npy").exists(), err
        assert "error:" in err or "FAIL" in err, err


@pytest.mark.parametrize("value", [-1.0, float("inf"), "1e-3"])
def test_a_tampered_variant_tolerance_is_refused(bundle, tmp_path, value):
    shutil.copytree(bundle, tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest.setdefault("variants", []).append({"name": "fp16", "of": "sequence", "status": "ok", "files": [],
                                                "tolerance": {"atol": value, "rtol": 0.1}, "figures": {"y": {}}})
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(invoke("verify", tmp_path / "b", "--engines", "cpu"), "variant tolerance atol")


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
    assert_one_line_error(invoke("run", path, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy"),
                          "does not describe its graph")
    assert not (tmp_path / "y.npy").exists()


@pytest.fixture(scope="module")
def variant_bundle(exports, tmp_path_factory) -> Path:
    from rnnexport.packaging import package

    model = exports.model("seed_lstm")
    out = tmp_path_factory.mktemp("variants") / "bundle"
    package(exports.export("seed_lstm").path, out, source=model, variants=["fp16", "int8"])
    return out


@pytest.mark.skipif(not installed("openvino"), reason="openvino is not installed (pip install 'rnnexport[engines]'): "
                    "the openvino-stateful variant is made and run by it")
def test_the_stateful_variant_runs_only_the_bytes_its_checksum_covered(exports, tmp_path):
    """Like every other graph, the stateful IR is re-checked as it is read to run: a file changed after the
    bundle was opened (and checked) is refused, not streamed."""
    from rnnexport.packaging import package

    model = exports.model("seed_lstm")
    out = tmp_path / "bundle"
    package(exports.export("seed_lstm").path, out, source=model, step_path=exports.export("seed_lstm", form="step").path,
            variants=[STATEFUL_VARIANT], engines=["cpu"])
    bundle = open_bundle(out)
    assert bundle.manifest is not None
    (variant,) = stateful_variants(bundle.manifest.variants)
    checks, unavailable = check_stateful(bundle, variant, VARIANT_TOLERANCES[STATEFUL_VARIANT], 60.0)
    assert checks and all(c.passed for c in checks) and not unavailable
    weights = out / variant.files[1]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"checksum mismatch in bundle .*: {variant.files[1]} does not match"):
        check_stateful(bundle, variant, VARIANT_TOLERANCES[STATEFUL_VARIANT], 60.0)


def _verify_json(bundle: Path, tmp_path: Path) -> tuple[int, dict]:
    code, _, err = invoke("verify", bundle, "--engines", "cpu", "--json", tmp_path / "report.json", "-q")
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

    bundle = relisted_copy(variant_bundle, tmp_path / "loose", triple_and_loosen)
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

    bundle = relisted_copy(variant_bundle, tmp_path / "elsewhere", other_cpu)
    code, report = _verify_json(bundle, tmp_path)
    assert code == 0, report
    notes = " ".join(n if isinstance(n, str) else json.dumps(n) for n in report["notes"])
    assert "re-checked here on its test sets" in notes and "proven on" in notes
    assert any(c.get("variant") == "int8" or "int8" in json.dumps(c) for c in report["checks"])


# --- time budgets: a graph that loops without end cannot hang a command ----------------------------

def _looping(graph: Path, target: Path) -> Path:
    """``graph`` with its y sent through an ONNX Loop of 2**62 iterations (an Identity/Add body that adds 0).

    The I/O contract and the metadata stay valid: only running the graph never ends.
    """
    model = onnx.load(graph)
    y = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{y}_core" if name == y else name for name in node.output]
        if node.name == y:
            node.name = f"{y}_core"
    body = helper.make_graph(
        [helper.make_node("Identity", ["go_in"], ["go_out"]), helper.make_node("Add", ["v_in", "zero"], ["v_out"])],
        "spin", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("go_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("go_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    model.graph.initializer.extend([helper.make_tensor("trips", TensorProto.INT64, [], [2**62]),
                                    helper.make_tensor("go", TensorProto.BOOL, [], [True])])
    model.graph.node.extend([helper.make_node("Loop", ["trips", "go", f"{y}_core"], [f"{y}_spun"], body=body),
                             helper.make_node("Identity", [f"{y}_spun"], [y], name=y)])
    onnx.checker.check_model(model)
    onnx.save(model, target)
    return target


@pytest.fixture(scope="module")
def looping_step(tmp_path_factory) -> Path:
    """A step graph of the built-in GRU (its source rebuilt from the metadata) whose y never comes."""
    from rnnexport import builtin, convert

    folder = tmp_path_factory.mktemp("loop")
    step = convert(builtin("gru", 4, 16), folder / "gru.step.onnx", form="step").path
    return _looping(step, folder / "looping.step.onnx")


def _children() -> set[int]:
    """This process's child processes that are still there (zombies included)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == os.getpid():
                found.add(int(entry.name))
    return found


def _node_engines() -> list[str]:
    from rnnexport.engines.js import _modules

    return ["node", "wasm"] if shutil.which("node") and (_modules() / "onnxruntime-node").is_dir() else []


@pytest.mark.slow
def test_verify_stops_a_looping_graph_on_every_engine(looping_step, tmp_path):
    """One FAIL line per engine, naming it and the budget; exit 1; no engine process left behind.

    tract is not among them: it cannot load an ONNX Loop at all (a requested engine that does not start
    ends verify before its first case, which tests/test_verify_backends.py covers).
    """
    pytest.importorskip("openvino")
    engines = ["cpu", "reference", "openvino", *_node_engines()]
    before = _children()
    started = time.monotonic()
    code, out, err = invoke("verify", looping_step, "--engines", ",".join(engines), "--timeout", "1",
                            "--json", tmp_path / "report.json")
    assert code == 1, (out, err)
    assert time.monotonic() - started < 120  # a bound on the whole command, not a speed target
    stopped = [line for line in out.splitlines()
               if line.startswith("  FAIL ") and "within its time budget of 1 s (--timeout)" in line]
    names = ["onnxruntime:cpu", "onnx-reference", "openvino", *_node_engines()]
    assert sorted(line.split()[5] for line in stopped) == sorted(names), out  # FAIL 1 graph == PyTorch ENGINE
    report = json.loads((tmp_path / "report.json").read_text())
    assert not report["passed"]
    assert _children() <= before


def test_run_and_package_stop_a_looping_graph(looping_step, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    started = time.monotonic()
    assert_one_line_error(invoke("run", looping_step, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy",
                                 "--timeout", "1"),
                          "onnxruntime (CPUExecutionProvider) stopped a step after its time budget of 1 s")
    assert not (tmp_path / "y.npy").exists()
    assert_one_line_error(invoke("package", looping_step, "-o", tmp_path / "bundle", "--variants", "none",
                                 "--timeout", "1"),
                          "stopped a test-vector call of the step graph after its time budget of 1 s")
    assert time.monotonic() - started < 60  # a bound on the two commands, not a speed target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]  # no bundle, no temporary folder


def test_the_api_stops_a_looping_graph(looping_step):
    from rnnexport.core.errors import RunTimeout

    session = StatefulSession.load(looping_step, timeout=0.5)
    with pytest.raises(RunTimeout, match="time budget of 0.5 s"):
        session.step(np.ones((1, 4), np.float32))
    with StreamBatcher.load(looping_step, timeout=0.5) as batcher:
        stream = batcher.join()
        with pytest.raises(RunTimeout):
            batcher.step({stream: np.ones((1, 4), np.float32)})
    for bad in (0, -1, float("nan"), "1", True):
        with pytest.raises(RuntimeContractError, match="timeout must be seconds above 0"):
            StatefulSession.load(looping_step, timeout=bad)


def test_a_looping_graph_in_a_bundle_fails_verify_and_run(bundle, tmp_path):
    looping = relisted_copy(bundle, tmp_path / "looping", lambda folder: _looping(folder / "model.onnx",
                                                                              folder / "model.onnx"))
    code, out, _ = invoke("verify", looping, "--engines", "cpu,reference", "--timeout", "1")
    assert code == 1, out
    assert "onnxruntime:cpu did not finish a call within its time budget of 1 s" in out
    assert "onnx-reference did not finish a call within its time budget of 1 s" in out
    features = StatefulSession.load(bundle).contract.x_features
    np.save(tmp_path / "x.npy", np.ones((2, 1, *features), np.float32))
    assert_one_line_error(invoke("run", looping, "-i", tmp_path / "x.npy", "--timeout", "1"), "time budget of 1 s")


@pytest.mark.parametrize("args", [["verify", "MODEL", "--timeout", "0"], ["run", "MODEL", "-i", "x.npy", "--timeout", "-1"],
                                  ["package", "MODEL", "-o", "b", "--timeout", "nan"]],
                         ids=["verify", "run", "package"])
def test_a_timeout_that_is_not_seconds_is_one_line(looping_step, tmp_path, args):
    assert_one_line_error(invoke(*[str(looping_step) if a == "MODEL" else a for a in args]), "--timeout")


def test_a_rerun_after_an_interrupted_zip_write_says_so(exports, tmp_path):
    """Killed while writing b.zip: b is whole, b.zip missing, its temporary file left; the rerun removes the
    temporary file and says what happened and what to do."""
    graph = exports.export("seed_lstm").path
    code, _, err = invoke("package", graph, "-o", tmp_path / "b", "--variants", "none")
    assert code == 0, err
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".b.zip.{int(ended.stdout)}.x1y2z3.tmp"  # the temporary zip of a process now dead
    stale.write_bytes(b"PK\x03\x04 half a zip")
    assert_one_line_error(invoke("package", graph, "-o", tmp_path / "b", "--variants", "none", "--zip"),
                          "already exists, from an earlier run that was interrupted", "--force")
    assert not stale.exists() and not (tmp_path / "b.zip").exists()
    code, _, err = invoke("package", graph, "-o", tmp_path / "b", "--variants", "none", "--zip", "--force")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.zip"]


def test_an_engine_that_aborts_is_contained(tmp_path):
    """tract panics (and aborts its process) on the 160 GB graph: verify's process lives on, the engine is
    unavailable with how its process ended."""
    pytest.importorskip("tract")
    from rnnexport.engines.base import EngineUnavailable
    from rnnexport.engines.registry import engine_spec, running

    path = _huge_allocation_graph(tmp_path / "huge.onnx")
    feeds = {"x": np.ones((1, 4), np.float32), "h": np.ones((1, 4), np.float32)}
    with running(engine_spec("tract"), {"graph": path}, timeout=30) as runners:
        if isinstance(runners, EngineUnavailable):
            assert "its process ended while it loaded this graph (killed by SIGABRT)" in runners.reason
        else:  # a tract that loads it fails the call instead
            from rnnexport.engines.base import EngineFailure

            with pytest.raises(EngineFailure, match="ended while it ran the graph"):
                runners["graph"].infer(feeds)


def test_a_child_engine_that_dies_during_a_call_fails_it_then_runs_no_more(looping_step):
    """The ReferenceEvaluator's process killed from outside while it runs: that call fails with the signal,
    the next is refused, and every graph of the shared process goes with it."""
    import signal
    import threading

    from rnnexport.engines.base import EngineFailure, EngineKind, EngineUnavailable
    from rnnexport.engines.child import ChildRunner, shared_workers

    feeds = {"x": np.ones((1, 4), np.float32), "h": np.ones((1, 16), np.float32)}
    with shared_workers():
        first, second = ChildRunner(EngineKind.REFERENCE, looping_step), ChildRunner(EngineKind.REFERENCE, looping_step)
        with first, second:
            assert first.worker is second.worker  # one process per engine kind in the block
            pid = first.worker.process.pid
            threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
            with pytest.raises(EngineFailure, match=r"ended while it ran the graph \(killed by SIGKILL\)"):
                first.infer(feeds)
            with pytest.raises(EngineUnavailable, match="its process is gone"):
                second.infer(feeds)
    assert pid not in _children()


def test_child_engines_stop_with_their_block(looping_step):
    """Outside any block (a fresh context, not the session's): a block's processes end with it, and so
    do those of a block nested in it only with the outer one."""
    contextvars.Context().run(_child_engines_stop_with_their_block, looping_step)


def _child_engines_stop_with_their_block(looping_step):
    from rnnexport.engines.base import EngineKind
    from rnnexport.engines.child import ChildRunner, shared_workers

    before = _children()
    with shared_workers():
        runner = ChildRunner(EngineKind.REFERENCE, looping_step)
        runner.activate()
        worker = runner.worker
        assert _children() - before == {worker.process.pid}
        runner.deactivate()
        assert _children() - before  # the shared process waits for another graph of the run ...
        with shared_workers():  # ... in a nested block too, which uses it ...
            inner = ChildRunner(EngineKind.REFERENCE, looping_step)
            inner.activate()
            assert inner.worker is worker
            inner.deactivate()
        assert _children() - before
    assert _children() <= before  # ... and ends with the outer block
    alone = ChildRunner(EngineKind.REFERENCE, looping_step, timeout=0.5)  # outside a block: its own process
    with alone:
        from rnnexport.engines.base import EngineTimeout

        with pytest.raises(EngineTimeout, match="time budget of 0.5 s"):
            alone.infer({"x": np.ones((1, 4), np.float32), "h": np.ones((1, 16), np.float32)})
    assert _children() <= before


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads a process's environment from /proc (Linux)")
def test_a_child_engine_runs_numpy_on_one_thread(looping_step):
    """The ReferenceEvaluator's process is told to keep numpy's BLAS to one thread, as every child engine runs."""
    from rnnexport.engines.base import EngineKind
    from rnnexport.engines.child import ChildRunner

    with ChildRunner(EngineKind.REFERENCE, looping_step) as runner:
        told = dict(entry.split("=", 1) for entry in
                    Path(f"/proc/{runner.worker.process.pid}/environ").read_text().split("\0") if "=" in entry)
    assert {told.get(name) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")} == {"1"}
