"""Where two lists must be as long as each other, a difference is named, never silently cut short.

Each case here was a truncating ``zip`` before: a test set without one of its output files
passed ``verify`` with that output unchecked, extra weights passed to ``builtin`` were dropped,
and ``assert_close`` compared only as many outputs as the shortest list held.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnexport
from rnnexport.core.errors import ContractError, WeightsError
from rnnexport.source import cells
from rnnexport.testing import assert_close
from tests.cli import assert_one_line_error, invoke


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> Path:
    """A bundle of a small seed LSTM, without variants."""
    work = tmp_path_factory.mktemp("strict")
    model = rnnexport.builtin("lstm", input_size=3, hidden_size=5)
    graph = rnnexport.convert(model, work / "m.onnx")
    return rnnexport.package(graph.path, work / "bundle", source=model, variants=()).folder


def _tampered(packaged: Path, tmp_path: Path, change) -> Path:
    """A copy of the bundle whose first test set is changed by ``change(folder)``, its file list rewritten
    to match (so the reader's checksums pass and only the set's shape is wrong)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(packaged, bundle)
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    change(bundle / manifest["test_vectors"][0]["dir"])
    manifest["files"] = [
        {"path": p.relative_to(bundle).as_posix(), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
         "size": p.stat().st_size}
        for p in sorted(bundle.rglob("*")) if p.is_file() and p.name != "manifest.json"]
    manifest_path.write_text(json.dumps(manifest))
    return bundle


def _outputs(folder: Path) -> list[Path]:
    return sorted(folder.glob("output_*.pb"))


@pytest.mark.parametrize("change", [
    pytest.param(lambda folder: _outputs(folder)[-1].unlink(), id="an output file missing"),
    pytest.param(lambda folder: shutil.copy(_outputs(folder)[0], folder / f"output_{len(_outputs(folder))}.pb"),
                 id="an output file too many"),
    pytest.param(lambda folder: sorted(folder.glob("input_*.pb"))[-1].unlink(), id="an input file missing"),
])
def test_verify_bundle_refuses_a_set_whose_files_do_not_match_the_graph(packaged, tmp_path, change):
    assert invoke("verify", packaged).code == 0  # the untouched bundle passes
    assert_one_line_error(invoke("verify", _tampered(packaged, tmp_path, change)), "test set", "one file each")


def test_builtin_refuses_more_weights_than_the_cell_has():
    shapes = cells.param_shapes("gru", 3, 4)
    params = [torch.zeros(s) for s in shapes.values()]
    rnnexport.builtin("gru", input_size=3, hidden_size=4, params=params)  # the right count is taken
    with pytest.raises(WeightsError, match=str(len(params))):
        rnnexport.builtin("gru", input_size=3, hidden_size=4, params=[*params, torch.zeros(4)])


def test_assert_close_fails_when_an_output_is_missing():
    y, h = np.ones((2, 3), np.float32), np.zeros((3,), np.float32)
    assert_close([y, h], [y, h], ["y", "h_out"])
    with pytest.raises(AssertionError, match="1 outputs, 2 expected"):
        assert_close([y], [y, h], ["y", "h_out"])


def test_feeds_refuse_another_number_of_state_arrays():
    io = rnnexport.builtin("lstm", input_size=3, hidden_size=4).io
    x, h, c = np.zeros((2, 1, 3), np.float32), np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32)
    assert list(io.feeds(x, [h, c])) == ["x", "h", "c"]
    with pytest.raises(ContractError):
        io.feeds(x, [h])
