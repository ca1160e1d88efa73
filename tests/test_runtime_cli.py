"""``rnnexport run``: a stream resumed across processes; bad input is one line and exit 2.

That the runtime and ``run`` work where torch and onnx cannot be imported is in test_install.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from rnnexport.core.contract import Form
from rnnexport.testing import assert_close, random_inputs, random_state
from tests.bundles import copy_bundle, make_bundle
from tests.cli import assert_one_line_error, invoke, rnnexport


def test_stream_resumed_across_processes(exports, tmp_path):
    """Chunk 1 in one process (--state-out), chunk 2 in another (--state-in) == one call from PyTorch."""
    model = exports.model("nn_gru_2layer_nobias")
    rng = np.random.default_rng(0)
    x = random_inputs(model.io, Form.SEQUENCE, 2, 30, rng)
    state = random_state(model.io, 2, rng, 0.5)
    want = model.run_sequence(x, state)
    path = exports.export("nn_gru_2layer_nobias").path
    np.save(tmp_path / "x1.npy", x[:12])
    np.save(tmp_path / "x2.npy", x[12:])
    np.savez(tmp_path / "s0.npz", h=state[0])
    first = rnnexport("run", path, "--input", tmp_path / "x1.npy", "--state-in", tmp_path / "s0.npz",
                      "--state-out", tmp_path / "s1.npz", "-o", tmp_path / "y1.npy")
    assert first.code == 0, first.err
    assert "ran 12 steps x 2 stream(s)" in first.out and "CPUExecutionProvider" in first.out
    second = rnnexport("run", path, "--input", tmp_path / "x2.npy", "--state-in", tmp_path / "s1.npz",
                       "--state-out", tmp_path / "s2.npz", "-o", tmp_path / "y2.npy")
    assert second.code == 0, second.err
    y = np.concatenate([np.load(tmp_path / "y1.npy"), np.load(tmp_path / "y2.npy")])
    with np.load(tmp_path / "s2.npz") as saved:
        assert saved.files == ["h"]
        assert_close([y, saved["h"]], want, ["y", "h_out"], atol=1e-5, context="resumed via files")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_one_step_through_a_bundle(exports, tmp_path):
    """x of rank (B, I) is one step; a bundle's step graph takes it."""
    bundle = make_bundle(exports, "seed_gru", tmp_path / "bundle", forms=("step",))
    model = exports.model("seed_gru")
    x = random_inputs(model.io, Form.STEP, 3, None, np.random.default_rng(1))
    np.save(tmp_path / "x.npy", x)
    code, out, err = invoke("run", bundle, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy",
                            "--state-out", tmp_path / "s.npz")
    assert code == 0, err
    assert "ran 1 step x 3 stream(s)" in out
    want = model.run_step(x, model.io.state.zeros(3))
    with np.load(tmp_path / "s.npz") as saved:
        assert_close([np.load(tmp_path / "y.npy"), saved["h"]], want, ["y", "h_out"], atol=1e-5, context="step")


def test_errors_exit_2_with_one_line(exports, bundle, tmp_path):
    """Wrong shape and a tampered bundle: one line, exit 2, no y written."""
    path = exports.export("seed_lstm").path
    np.save(tmp_path / "bad.npy", np.zeros((4, 2, 3), np.float32))
    assert_one_line_error(invoke("run", path, "--input", tmp_path / "bad.npy", "-o", tmp_path / "y.npy"),
                          "x: expected float32 array of shape (T, 2, 10), got shape (4, 2, 3)")
    tampered = copy_bundle(bundle, tmp_path)
    data = bytearray((tampered / "model.onnx").read_bytes())
    data[100] ^= 1
    (tampered / "model.onnx").write_bytes(bytes(data))
    np.save(tmp_path / "x.npy", np.zeros((4, 1, 10), np.float32))
    assert_one_line_error(invoke("run", tampered, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy"),
                          "checksum mismatch", "model.onnx")
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize("args, fragments", [
    (["--input", "{tmp}/x64.npy"], ["got dtype float64"]),
    (["--input", "{tmp}/rank4.npy"], ["x: expected one step (B, 10) or a chunk (T, B, 10)"]),
    (["--input", "{tmp}/missing.npy"], ["cannot read input"]),
    (["--input", "{tmp}/x.npy", "--state-in", "{tmp}/x.npy"], ["is not an .npz file"]),
    (["--input", "{tmp}/x.npy", "--state-in", "{tmp}/wrong_state.npz"], ["state: expected exactly h, c, got h"]),
    (["--input", "{tmp}/x.npy", "--provider", "nosuch"], ["unknown execution provider 'nosuch'", "CPUExecutionProvider"]),
])
def test_cli_input_errors(exports, tmp_path, args, fragments):
    np.save(tmp_path / "x.npy", np.zeros((4, 1, 10), np.float32))
    np.save(tmp_path / "x64.npy", np.zeros((4, 1, 10)))
    np.save(tmp_path / "rank4.npy", np.zeros((4, 1, 1, 10), np.float32))
    np.savez(tmp_path / "wrong_state.npz", h=np.zeros((1, 16), np.float32))
    path = exports.export("seed_lstm").path
    assert_one_line_error(invoke("run", path, *[a.format(tmp=tmp_path) for a in args]), *fragments)


def test_several_inputs_run_as_streams_in_one_call_per_step(exports, tmp_path):
    """Three streams of different lengths at once equal each one run alone (bit for bit: an LSTM step graph)."""
    model = exports.model("seed_lstm")
    path = exports.export("seed_lstm", form="step").path
    rng = np.random.default_rng(5)
    lengths = (4, 7, 2)
    args = ["run", str(path)]
    for i, t in enumerate(lengths):
        np.save(tmp_path / f"x{i}.npy", random_inputs(model.io, Form.SEQUENCE, 1, t, rng))
        args += ["--input", str(tmp_path / f"x{i}.npy")]
    for i in range(len(lengths)):
        args += ["-o", str(tmp_path / f"y{i}.npy")]
    code, out, err = invoke(*args)
    assert code == 0, err
    assert "ran 3 streams (4, 7, 2 steps)" in out and "in 7 calls" in out
    from rnnexport.runtime import StatefulSession

    alone = StatefulSession.load(path)
    for i in range(len(lengths)):
        x = np.load(tmp_path / f"x{i}.npy")
        session = alone.new_stream()
        want = np.stack([session.step(x[t]) for t in range(len(x))])
        np.testing.assert_array_equal(np.load(tmp_path / f"y{i}.npy"), want)
