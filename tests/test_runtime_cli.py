"""``rnnexport run``: a stream resumed across processes; bad input is one line and exit 2.

Also proves that ``import rnnexport.runtime`` pulls in neither torch nor onnx, and
that the runtime works where they cannot be imported at all.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from rnnexport.cli import main
from rnnexport.core.contract import Form
from rnnexport.testing import assert_close, random_inputs, random_state
from tests.test_runtime_bundle import make_bundle


def rnnexport(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnnexport", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    """The last stderr line is ``error: ...`` holding every fragment; no traceback."""
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in last, last


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
    assert first.returncode == 0, first.stderr
    assert "ran 12 steps x 2 stream(s)" in first.stdout and "CPUExecutionProvider" in first.stdout
    second = rnnexport("run", path, "--input", tmp_path / "x2.npy", "--state-in", tmp_path / "s1.npz",
                       "--state-out", tmp_path / "s2.npz", "-o", tmp_path / "y2.npy")
    assert second.returncode == 0, second.stderr
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
    result = CliRunner().invoke(main, ["run", str(bundle), "-i", str(tmp_path / "x.npy"), "-o",
                                       str(tmp_path / "y.npy"), "--state-out", str(tmp_path / "s.npz")])
    assert result.exit_code == 0, result.output
    assert "ran 1 step x 3 stream(s)" in result.output
    want = model.run_step(x, model.io.state.zeros(3))
    with np.load(tmp_path / "s.npz") as saved:
        assert_close([np.load(tmp_path / "y.npy"), saved["h"]], want, ["y", "h_out"], atol=1e-5, context="step")


def test_errors_exit_2_with_one_line(exports, tmp_path):
    """Wrong shape and a tampered bundle, through the real command line."""
    path = exports.export("seed_lstm").path
    np.save(tmp_path / "bad.npy", np.zeros((4, 2, 3), np.float32))
    wrong = rnnexport("run", path, "--input", tmp_path / "bad.npy")
    assert wrong.returncode == 2
    assert_one_line_error(wrong.stderr, "x: expected float32 array of shape (T, 2, 10), got shape (4, 2, 3)")
    bundle = make_bundle(exports, "seed_lstm", tmp_path / "bundle", forms=("sequence",))
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[100] ^= 1
    (bundle / "model.onnx").write_bytes(bytes(data))
    np.save(tmp_path / "x.npy", np.zeros((4, 1, 10), np.float32))
    tampered = rnnexport("run", bundle, "--input", tmp_path / "x.npy")
    assert tampered.returncode == 2
    assert_one_line_error(tampered.stderr, "checksum mismatch", "model.onnx")


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
    result = CliRunner().invoke(main, ["run", str(path), *[a.format(tmp=tmp_path) for a in args]])
    assert result.exit_code == 2, result.output
    assert_one_line_error(result.output, *fragments)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)



def test_runtime_works_where_torch_cannot_be_imported(exports):
    """With torch and onnx made unimportable, load a graph, step it and run it."""
    path = exports.export("seed_lstm", form="step").path
    result = _python(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "onnx", "onnxscript"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        from rnnexport.runtime import StatefulSession
        s = StatefulSession.load({str(path)!r}, batch=2)
        y = s.step(np.ones((2, 10), np.float32))
        ys = s.run(np.ones((3, 2, 10), np.float32))
        print(y.shape, ys.shape, sorted(s.state))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2, 7) (3, 2, 7) ['c', 'h']"


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
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "ran 3 streams (4, 7, 2 steps)" in result.output and "in 7 calls" in result.output
    from rnnexport.runtime import StatefulSession

    alone = StatefulSession.load(path)
    for i in range(len(lengths)):
        x = np.load(tmp_path / f"x{i}.npy")
        session = alone.new_stream()
        want = np.stack([session.step(x[t]) for t in range(len(x))])
        np.testing.assert_array_equal(np.load(tmp_path / f"y{i}.npy"), want)
