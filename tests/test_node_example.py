"""The Node.js example streams a bundle's test vectors (folder or zip) through onnxruntime-node and checks them."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.bundles import edit_manifest, make_bundle, write_manifest, zip_bundle
from tests.nodejs import check

pytestmark = pytest.mark.slow


def edit_output(bundle: Path, path: str, change) -> None:
    """Replace an expected output with ``change(array)``, checksums redone (only the comparison can catch it)."""
    proto = onnx.TensorProto()
    proto.ParseFromString((bundle / path).read_bytes())
    changed = change(numpy_helper.to_array(proto)).astype(np.float32)
    (bundle / path).write_bytes(numpy_helper.from_array(changed, proto.name).SerializeToString())
    write_manifest(bundle, json.loads((bundle / "manifest.json").read_text()))


def set_tolerance(bundle: Path, folder: str, tolerance: dict) -> None:
    edit_manifest(bundle, lambda m: next(v for v in m["test_vectors"] if v["dir"] == folder).update(tolerance=tolerance))


@pytest.mark.parametrize(("name", "as_zip"), [("seed_lstm", False), ("nn_gru_2layer_nobias", True)])
def test_node_example_passes_the_test_vectors(exports, tmp_path, node, name, as_zip):
    bundle = make_bundle(exports, name, tmp_path / "bundle")
    result = check(node, zip_bundle(bundle, tmp_path / "bundle.zip") if as_zip else bundle)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 7 and lines[-1] == "6 passed, 0 failed (|got - want| <= 0.00001 + 0.0001 * |want|)"
    assert sum(line.startswith("ok   test_data_set_") for line in lines) == 6
    assert "(sequence, stream 0 call 1)" in result.stdout and "(step, single)" in result.stdout


def test_node_example_fails_on_a_wrong_expected_output(exports, tmp_path, node):
    bundle = make_bundle(exports, "seed_gru", tmp_path / "bundle", forms=("sequence",))
    edit_output(bundle, "test_data_set_2/output_1.pb", lambda a: a + np.float32(1e-3))  # h_out of call 1
    result = check(node, bundle)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[2].startswith("FAIL test_data_set_2 (sequence, stream 0 call 1): max abs error y ")
    assert lines[2].endswith("h_out 1.00e-3") and lines[0].startswith("ok   test_data_set_0")
    assert "2 passed, 1 failed" in result.stdout


def test_node_example_takes_the_test_sets_tolerance(exports, tmp_path, node):
    """A set's own atol / rtol from the manifest decide it; --atol / --rtol override them."""
    bundle = make_bundle(exports, "seed_gru", tmp_path / "bundle", forms=("sequence",))
    edit_output(bundle, "test_data_set_2/output_1.pb", lambda a: a + np.float32(1e-3))
    edit_output(bundle, "test_data_set_1/output_0.pb", lambda a: a * np.float32(1 + 3e-3))  # y of call 0
    assert check(node, bundle, "--rtol", "4e-3").returncode == 1  # set 2 still off by 1e-3
    set_tolerance(bundle, "test_data_set_1", {"rtol": 4e-3})
    set_tolerance(bundle, "test_data_set_2", {"atol": 2e-3, "rtol": 1e-4})
    result = check(node, bundle)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[2].endswith("h_out 1.00e-3 (atol 0.002, rtol 0.0001)")
    overridden = check(node, bundle, "--atol", "1e-5", "--rtol", "1e-4")
    assert overridden.returncode == 1 and overridden.stdout.splitlines()[1].startswith("FAIL test_data_set_1 ")


def test_node_example_refuses_a_tampered_bundle(exports, tmp_path, node):
    bundle = make_bundle(exports, "seed_rnn", tmp_path / "bundle", forms=("step",))
    with open(bundle / "step.onnx", "ab") as f:
        f.write(b"\0")
    result = check(node, bundle)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: checksum mismatch: step.onnx does not match the manifest"
    result = check(node, zip_bundle(bundle, tmp_path / "bundle.zip"))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: checksum mismatch: step.onnx does not match the manifest"


def _unsafe_entry(bundle: Path, archive: Path) -> None:
    zip_bundle(bundle, archive)
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("../outside.pb", b"")


def _unsafe_listing(bundle: Path, archive: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"].append({"path": "../outside.pb", "size": 0, "sha256": "0" * 64})
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    zip_bundle(bundle, archive)


@pytest.mark.parametrize(("make", "message"), [
    (_unsafe_entry, 'error: zip {zip} names an unsafe path "../outside.pb": only paths inside the bundle are allowed'),
    (_unsafe_listing, 'error: the manifest names an unsafe path "../outside.pb": only paths inside the bundle are allowed'),
])
def test_node_example_refuses_paths_outside_the_bundle(exports, tmp_path, node, make, message):
    bundle = make_bundle(exports, "seed_rnn", tmp_path / "bundle", forms=("step",))
    archive = tmp_path / "bundle.zip"
    make(bundle, archive)
    result = check(node, archive)
    assert result.returncode == 2 and result.stderr.strip() == message.format(zip=archive), result.stderr


def test_node_example_on_a_bundle_of_rnnexport_package(exports, tmp_path, node):
    package = pytest.importorskip("rnnexport.packaging").package
    result = package(exports.export("seed_lstm").path, tmp_path / "bundle", source=exports.model("seed_lstm"),
                     step_path=exports.export("seed_lstm", form="step").path, variants=(), archive=True)
    sets = len(result.manifest.test_vectors)
    for bundle in (result.folder, result.archive):
        done = check(node, bundle)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip().splitlines()[-1].startswith(f"{sets} passed, 0 failed")
