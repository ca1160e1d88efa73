"""``rnnexport triton`` for a module with its own initial state: each sequence starts from it, not from zeros.

The configuration names a ``data_file`` per state (``initial_state/<state>.bin``), the
files hold the module's learned values, the checks pass, and the emulated sequence
batcher gives every stream what PyTorch gives it from ``module.initial_state(1)``. A
bad ``data_file`` (missing, the wrong size, a path) is one line of the checks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnexport
from rnnexport.core.compare import compare, tolerance_for
from rnnexport.core.contract import StateSpec
from rnnexport.core.errors import ContractError
from rnnexport.serving import (
    check_model_folder,
    emulate_sequence_batcher,
    read_config,
    render_config,
)
from rnnexport.serving.checks import initial_state_path
from rnnexport.serving.config import initial_state_file
from tests.cli import invoke
from tests.modules import LearnedStart

pytest.importorskip("tritonclient.grpc", reason="needs tritonclient (pip install tritonclient grpcio)")

#: The step graph's state names for ((h, c), g), and the parameters each starts from.
STATES = {"s0_0": "h0", "s0_1": "c0", "s1": "g0"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The module, and the model folder ``rnnexport triton`` wrote from its step graph (with ``--expose-state``)."""
    module = LearnedStart().eval()
    root = tmp_path_factory.mktemp("triton-initial")
    step = rnnexport.convert(module, root / "learned.step.onnx", form="step").path
    outcome = invoke("triton", step, "-o", root / "models", "--name", "learned", "--max-batch-size", "8",
                     "--expose-state")
    assert outcome.code == 0, outcome.err
    assert "the module's initial state (initial_state/s0_0.bin) at sequence start" in outcome.out
    return module, root / "models" / "learned"


def pytorch(module: LearnedStart, xs: np.ndarray) -> dict[str, np.ndarray]:
    """One stream ``xs`` (T, 3) stepped through the module from ``initial_state(1)``: y and each new state, (T, ...)."""
    got: dict[str, list[np.ndarray]] = {}
    (h, c), g = module.initial_state(1)
    with torch.no_grad():
        for x in torch.from_numpy(xs):
            y, ((h, c), g) = module(x[None, None], ((h, c), g))
            for name, value in zip(("y", "s0_0_state", "s0_1_state", "s1_state"), (y[0], h, c, g), strict=True):
                got.setdefault(name, []).append(value[0].numpy())
    return {name: np.stack(values) for name, values in got.items()}


def sequences(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(2, 12)), 3)).astype(np.float32) for _ in range(count)]


def test_each_state_starts_from_a_data_file_of_the_modules_values(served):
    module, folder = served
    config = read_config(folder)  # Triton's own ModelConfig schema: unknown fields fail
    assert [s.input_name for s in config.sequence_batching.state] == list(STATES)
    for entry, parameter in zip(config.sequence_batching.state, STATES.values(), strict=True):
        (initial,) = entry.initial_state
        assert initial.WhichOneof("state_data") == "data_file"
        assert initial.data_file == f"{entry.input_name}.bin" and list(initial.dims) == list(entry.dims)
        want = getattr(module, parameter).detach().numpy()
        got = np.fromfile(folder / "initial_state" / initial.data_file, "<f4")
        np.testing.assert_array_equal(got, want.ravel())
    report = check_model_folder(folder)
    assert report.passed, report.lines()


def test_emulated_streams_equal_pytorch_from_its_initial_state(served):
    module, folder = served
    xs = sequences(16, seed=0)
    run = emulate_sequence_batcher(folder, xs, seed=0)
    assert not run.errors and max(run.batch_sizes) > 1, run.batch_sizes
    tolerance = tolerance_for("float32")
    for x, outputs in zip(xs, run.outputs, strict=True):
        want = pytorch(module, x)
        assert sorted(outputs) == sorted(want)  # y and the exposed state copies
        for name, value in outputs.items():
            result = compare(value, want[name], tolerance)
            assert result.passed, (name, result)


def test_zeros_in_place_of_the_data_files_give_other_numbers(served, tmp_path):
    """What the folder served before it named the data files: every stream's first step is off."""
    module, folder = served
    config = read_config(folder)
    for entry in config.sequence_batching.state:
        entry.initial_state[0].zero_data = True
    zeros = tmp_path / "learned"
    zeros.mkdir()
    (zeros / "config.pbtxt").write_text(render_config(config))
    (zeros / "1").mkdir()
    (zeros / "1" / "model.onnx").write_bytes((folder / "1" / "model.onnx").read_bytes())
    assert check_model_folder(zeros).passed
    xs = sequences(4, seed=1)
    run = emulate_sequence_batcher(zeros, xs, seed=1)
    for x, outputs in zip(xs, run.outputs, strict=True):
        assert np.abs(outputs["y"][0] - pytorch(module, x)["y"][0]).max() > 1e-3


def test_any_state_name_gets_a_plain_file_name_of_its_own():
    names = ("h", "a.b", "a_b", "../x", "x", "s 1", "a/b")
    spec = StateSpec(names, ((2,),) * len(names), 0)
    files = [initial_state_file(spec, i) for i in range(len(names))]
    assert files[:3] == ["h.bin", "a_b.1.bin", "a_b.bin"]
    assert len(set(files)) == len(files)
    assert all(initial_state_path(Path("m"), f) == Path("m", "initial_state", f) for f in files)


def missing(folder) -> None:
    (folder / "initial_state" / "s1.bin").unlink()


def short(folder) -> None:
    path = folder / "initial_state" / "s1.bin"
    path.write_bytes(path.read_bytes()[:4])


def long(folder) -> None:
    path = folder / "initial_state" / "s1.bin"
    path.write_bytes(path.read_bytes() + b"\0" * 4)


def escaping(folder) -> None:
    config = read_config(folder)
    config.sequence_batching.state[2].initial_state[0].data_file = "../x"
    (folder / "config.pbtxt").write_text(render_config(config))
    (folder / "x").write_bytes((folder / "initial_state" / "s1.bin").read_bytes())  # there, but outside


@pytest.mark.parametrize(("spoil", "message", "emulated"), [
    (missing, "initial state of s1: initial_state/s1.bin cannot be read (No such file or directory)",
     "missing or not a file"),
    (short, "initial state of s1: initial_state/s1.bin holds 4 bytes; dims [2] of TYPE_FP32 need 8",
     "holds 4 bytes, the state needs 8"),
    (long, "initial state of s1: initial_state/s1.bin holds 12 bytes; dims [2] of TYPE_FP32 need 8", None),
    (escaping, "initial state of s1 names data_file '../x': it must be a plain file name", "is not one Triton loads"),
])
def test_a_bad_data_file_is_one_line_of_the_checks(served, tmp_path, spoil, message, emulated):
    module, folder = served
    folder = tmp_path / folder.name
    shutil.copytree(served[1], folder)
    spoil(folder)
    report = check_model_folder(folder)
    assert [(p.check, p.message.startswith(message), "\n" in p.message) for p in report.problems] == \
        [("initial-state", True, False)], report.lines()
    xs = sequences(3, seed=2)
    if emulated is None:  # Triton reads a longer file's first bytes: the streams are still right
        run = emulate_sequence_batcher(folder, xs, seed=2)
        for x, outputs in zip(xs, run.outputs, strict=True):
            np.testing.assert_allclose(outputs["y"], pytorch(module, x)["y"], atol=1e-5, rtol=1e-5)
        return
    with pytest.raises(ContractError, match=emulated) as info:
        emulate_sequence_batcher(folder, xs, seed=2)
    assert "\n" not in str(info.value)
