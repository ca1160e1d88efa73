"""The Node.js example streams a bundle's test vectors through onnxruntime-node and checks them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.test_runtime_bundle import make_bundle, write_manifest

NODE_DIR = Path(__file__).resolve().parent.parent / "scripts" / "node"
SCRIPT = NODE_DIR / "check_bundle.js"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with onnxruntime-node installed (npm install once, if needed)."""
    binary = shutil.which("node")
    if binary is None:
        pytest.skip("node is not installed on this machine")
    if not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed, and scripts/node/node_modules is missing")
        env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}
        try:
            done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, env=env,
                                  capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.skip("npm ci timed out (no package registry reachable?)")
        if done.returncode != 0:
            pytest.skip(f"npm ci failed (no package registry reachable?): {done.stderr.strip()[-300:]}")
    return binary


def check(node: str, bundle: Path) -> subprocess.CompletedProcess:
    return subprocess.run([node, str(SCRIPT), str(bundle)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["seed_lstm", "nn_gru_2layer_nobias"])
def test_node_example_passes_the_test_vectors(exports, tmp_path, node, name):
    bundle = make_bundle(exports, name, tmp_path / "bundle")
    result = check(node, bundle)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 7 and lines[-1].startswith("6 passed, 0 failed"), result.stdout
    assert sum(line.startswith("ok   test_data_set_") for line in lines) == 6
    assert "(sequence, stream 0 call 1)" in result.stdout and "(step, single)" in result.stdout


def test_node_example_fails_on_a_wrong_expected_output(exports, tmp_path, node):
    """An expected output off by 1e-3 (checksums redone, so only the comparison can catch it)."""
    bundle = make_bundle(exports, "seed_gru", tmp_path / "bundle", forms=("sequence",))
    target = bundle / "test_data_set_2" / "output_1.pb"  # h_out of the stream's second call
    proto = onnx.TensorProto()
    proto.ParseFromString(target.read_bytes())
    shifted = numpy_helper.to_array(proto) + np.float32(1e-3)
    target.write_bytes(numpy_helper.from_array(shifted, "h_out").SerializeToString())
    write_manifest(bundle, json.loads((bundle / "manifest.json").read_text()))
    result = check(node, bundle)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[2].startswith("FAIL test_data_set_2 (sequence, stream 0 call 1): max abs error y ")
    assert lines[2].endswith("h_out 1.00e-3") and lines[0].startswith("ok   test_data_set_0")
    assert "2 passed, 1 failed" in result.stdout


def test_node_example_refuses_a_tampered_bundle(exports, tmp_path, node):
    bundle = make_bundle(exports, "seed_rnn", tmp_path / "bundle", forms=("step",))
    with open(bundle / "step.onnx", "ab") as f:
        f.write(b"\0")
    result = check(node, bundle)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: checksum mismatch: step.onnx does not match the manifest"



def test_node_example_on_a_bundle_of_rnnexport_package(exports, tmp_path, node):
    package = pytest.importorskip("rnnexport.packaging").package
    result = package(exports.export("seed_lstm").path, tmp_path / "bundle", source=exports.model("seed_lstm"),
                     step_path=exports.export("seed_lstm", form="step").path, variants=())
    done = check(node, result.folder)
    assert done.returncode == 0, done.stdout + done.stderr
    sets = len(result.manifest.test_vectors)
    assert done.stdout.strip().splitlines()[-1].startswith(f"{sets} passed, 0 failed")
