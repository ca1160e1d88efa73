"""Bundles: the runtime checks manifests and checksums, and streams the test vectors.

The bundles are built by hand (``tests/bundles.py``: graphs from the export cache, a manifest,
SHA-256s and test vectors whose expected outputs come from PyTorch), so these tests do not
depend on the packager.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from rnnexport.bundle.vectors import read_set
from rnnexport.core.contract import Form
from rnnexport.runtime import BundleError, RuntimeContractError, StatefulSession, open_bundle
from rnnexport.testing import assert_close, random_inputs
from tests.bundles import copy_bundle, edit_manifest, zip_bundle


def stream_test_vectors(path: Path) -> int:
    """Run every test set of a bundle as an app would (stream calls carry their own state); count them."""
    session = StatefulSession.load(path)
    c = session.contract
    out_names = ["y", *c.state.output_names]
    streams = {}
    for vector in session.bundle.test_vectors:
        inputs, outputs = ([array for _, array in named] for named in read_set(session.bundle, vector.dir))
        key = (vector.graph, vector.stream)
        if vector.kind == "single" or vector.call == 0:
            batch = inputs[0].shape[0 if vector.graph == "step" else c.batch_axis]
            streams[key] = session.new_stream(batch)
            streams[key].state = dict(zip(c.state.names, inputs[1:], strict=True))
        stream = streams[key]
        y = stream.step(inputs[0]) if vector.graph == "step" else stream.run(inputs[0])
        assert_close([y, *stream.state.values()], outputs, out_names, atol=1e-5, context=f"{path} {vector.dir}")
    return len(session.bundle.test_vectors)


@pytest.mark.parametrize("kind", ["folder", "zip", "zip-in-folder"])
def test_test_vectors_stream_through_the_runtime(bundle, tmp_path, kind):
    path = {"folder": bundle, "zip": zip_bundle(bundle, tmp_path / "b.zip"),
            "zip-in-folder": zip_bundle(bundle, tmp_path / "c.zip", top="bundle/")}[kind]
    session = StatefulSession.load(path)
    assert session.forms == ("sequence", "step") and session.bundle.kind == kind.split("-")[0]
    assert stream_test_vectors(path) == 6


def test_bundles_of_rnnexport_package(exports, tmp_path):
    """The packager's own bundles (folder and zip) load, and their test vectors stream."""
    package = pytest.importorskip("rnnexport.packaging").package
    name = "nn_gru_2layer_nobias"
    result = package(exports.export(name).path, tmp_path / "bundle", source=exports.model(name),
                     step_path=exports.export(name, form="step").path, variants=(), archive=True)
    assert stream_test_vectors(result.folder) == stream_test_vectors(result.archive) > 0
    assert StatefulSession.load(result.archive).forms == ("sequence", "step")


def test_step_and_sequence_graphs_share_the_state(exports, bundle):
    """A bundle with both graphs: run() uses the sequence graph, step() the step graph, one state."""
    model = exports.model("seed_lstm")
    rng = np.random.default_rng(3)
    x = random_inputs(model.io, Form.SEQUENCE, 1, 12, rng)
    want = model.run_sequence(x, model.io.state.zeros(1))
    session = StatefulSession.load(bundle)
    y = np.concatenate([session.run(x[:5]), session.step(x[5])[None], session.run(x[6:])])
    assert_close([y, *session.state.values()], want, ["y", "h_out", "c_out"], atol=1e-5, context="mixed")


def test_form_selects_one_graph(bundle):
    assert StatefulSession.load(bundle, form="step").forms == ("step",)
    assert StatefulSession.load(bundle, form="sequence").forms == ("sequence",)


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def test_checksum_mismatch_is_one_line(bundle, tmp_path):
    broken = copy_bundle(bundle, tmp_path)
    data = bytearray((broken / "model.onnx").read_bytes())
    data[-10] ^= 0xFF  # same size, other bytes
    (broken / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        StatefulSession.load(broken)
    assert "checksum mismatch" in one_line(e) and "model.onnx" in str(e.value)
    with pytest.raises(BundleError, match="checksum mismatch"):
        StatefulSession.load(zip_bundle(broken, tmp_path / "broken.zip"))


def test_size_mismatch_and_missing_file(bundle, tmp_path):
    broken = copy_bundle(bundle, tmp_path)
    with open(broken / "test_data_set_0" / "input_0.pb", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="input_0.pb is .* bytes"):
        open_bundle(broken)
    (broken / "test_data_set_0" / "input_0.pb").unlink()
    with pytest.raises(BundleError, match="lacks test_data_set_0/input_0.pb"):
        open_bundle(broken)


@pytest.mark.parametrize("edit, error", [
    (lambda m: m.update(schema="rnnexport.bundle/3"), "schema 'rnnexport.bundle/3'; this runtime reads"),
    (lambda m: m.pop("io"), "no I/O contract"),
    (lambda m: m.update(files=[]), "lists no files"),
    (lambda m: m["files"].append({"path": "../outside", "sha256": "0"}), "unsafe path '../outside'"),
    (lambda m: m["files"].append({"path": "/etc/passwd", "sha256": "0"}), "unsafe path"),
    (lambda m: m.update(files=[f for f in m["files"] if f["path"] != "step.onnx"]), "step.onnx .* no checksum"),
    (lambda m: m.update(graphs={}), "lists no graphs"),
    (lambda m: m["io"].update(y_features=[3]), "differs from the manifest's io"),
    (lambda m: m["graphs"].update(step={"file": "model.onnx"}), "listed as the step graph but is a sequence"),
])
def test_malformed_manifests_are_refused(bundle, tmp_path, edit, error):
    with pytest.raises((BundleError, RuntimeContractError), match=error) as e:
        StatefulSession.load(edit_manifest(copy_bundle(bundle, tmp_path), edit))
    one_line(e)


def test_what_is_not_a_bundle(tmp_path, bundle):
    with pytest.raises(BundleError, match="does not exist"):
        StatefulSession.load(tmp_path / "nothing")
    with pytest.raises(BundleError, match="holds no manifest.json"):
        StatefulSession.load(tmp_path)
    (tmp_path / "x.onnx").write_bytes(b"not a model")
    with pytest.raises(BundleError, match="onnxruntime cannot load x.onnx") as e:
        StatefulSession.load(tmp_path / "x.onnx")
    one_line(e)
    with pytest.raises(BundleError, match="has no step graph"):
        StatefulSession.load(make_bundle_seq_only(bundle, tmp_path), form="step")


def make_bundle_seq_only(bundle: Path, tmp_path: Path) -> Path:
    def drop_step(m):
        m["graphs"].pop("step")
        m["test_vectors"] = [v for v in m["test_vectors"] if v["graph"] != "step"]
    return edit_manifest(copy_bundle(bundle, tmp_path, "seq"), drop_step)


def test_graph_without_contract_metadata(tmp_path):
    """A plain ONNX model (no rnnexport metadata) is refused with what to do."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    onnx.save(model, tmp_path / "plain.onnx")
    with pytest.raises(RuntimeContractError, match="no rnnexport I/O contract.*rnnexport convert") as e:
        StatefulSession.load(tmp_path / "plain.onnx")
    one_line(e)
