"""Every command's error paths, walked in-process: one ``error:`` line, exit 2, no traceback, nothing written.

Bad input of every kind each command reads: missing files, files that are not ONNX, zips that
are not bundles, folders that are not bundles, damaged arrays and state files, bad options.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.cli import assert_one_line_error, invoke, snapshot


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, str]:
    """Placeholders of the cases below and their files: graphs, a matching x, and every kind of bad file."""
    from rnnexport import builtin, convert

    root = tmp_path_factory.mktemp("paths")
    graphs = tmp_path_factory.mktemp("graphs")
    model = builtin("gru", 4, 16)  # its source is rebuilt from the graphs' metadata
    graph = convert(model, graphs / "gru.onnx").path
    step = convert(model, graphs / "gru.step.onnx", form="step").path
    np.save(root / "x.npy", np.ones((1, 4), np.float32))
    (root / "text.onnx").write_text("this is not an ONNX graph\n")
    (root / "empty.onnx").write_bytes(b"")
    (root / "notzip.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with zipfile.ZipFile(root / "plain.zip", "w") as archive:
        archive.writestr("readme.txt", "a zip that holds no bundle")
    (root / "folder").mkdir()
    (root / "state.npz").write_bytes(b"not an npz")
    (root / "statedir.npz").mkdir()
    (root / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(root / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (root / "locked.npz").write_bytes(b"PK\x03\x04 a state nobody may read")
    (root / "locked.npz").chmod(0)  # unreadable, except to root, who reads a damaged file instead
    return {"{locked}": str(root / "locked.npz"), "{root}": str(root), "{graph}": str(graph), "{step}": str(step), "{x}": str(root / "x.npy"), "{text}": str(root / "text.onnx"),
            "{empty}": str(root / "empty.onnx"), "{notzip}": str(root / "notzip.zip"),
            "{zip}": str(root / "plain.zip"), "{dir}": str(root / "folder"), "{state}": str(root / "state.npz"),
            "{statedir}": str(root / "statedir.npz"), "{badx}": str(root / "bad.npy"), "{objx}": str(root / "obj.npy"),
            "{missing}": str(root / "missing.onnx"), "{nofolder}": str(root / "no" / "such" / "out")}


CASES = {
    "convert": [
        ["nosuchmodel"], ["{missing}"], ["{text}"], ["missing_module.py:factory"], ["{text}:factory"],
        ["lstm", "--hidden-size", "0"], ["lstm", "--form", "diagonal"], ["lstm", "--lowering", "magic"],
        ["lstm", "--weights", "{missing}"], ["lstm", "--weights", "{text}"], ["lstm", "-o", "{nofolder}/m.onnx"],
        ["lstm", "-o", "{dir}"], ["lstm", "--seq-len", "-3"],
    ],
    "verify": [
        ["{missing}"], ["{text}"], ["{empty}"], ["{notzip}"], ["{zip}"], ["{dir}"],
        ["{graph}", "--engines", "bogus"], ["{graph}", "--engines", ","], ["{graph}", "--batch-sizes", "0"],
        ["{graph}", "--seq-lens", "x"], ["{graph}", "--grid", "huge"], ["{graph}", "--timeout", "0"],
        ["{graph}", "--json", "{nofolder}/r.json"], ["{graph}", "--json", "{graph}"], ["{graph}", "--atol", "-1"],
        ["{graph}", "--step", "{text}"], ["{graph}", "nosuchmodel"], ["{dir}", "lstm"],
    ],
    "package": [
        ["{missing}", "-o", "{root}/b1"], ["{text}", "-o", "{root}/b2"], ["{empty}", "-o", "{root}/b3"],
        ["{graph}", "-o", "{root}/b4", "--variants", "bogus"], ["{graph}", "-o", "{root}/b5", "--step", "{text}"],
        ["{graph}", "-o", "{root}/b6", "--step", "{graph}"], ["{graph}", "-o", "{nofolder}"],
        ["{graph}", "-o", "{root}/b7", "--timeout", "-1"], ["{graph}", "-o", "{root}/b8", "--json", "{graph}"],
        ["{graph}", "nosuchmodel", "-o", "{root}/b9"], ["{notzip}", "-o", "{root}/b10"],
        ["{graph}", "-o", "{x}"],
    ],
    "inspect": [
        ["{missing}"], ["{text}"], ["{empty}"], ["{notzip}"], ["{zip}"], ["{dir}"], ["{graph}", "--json", "{graph}"],
    ],
    "run": [
        ["{missing}", "-i", "{x}"], ["{text}", "-i", "{x}"], ["{notzip}", "-i", "{x}"], ["{zip}", "-i", "{x}"],
        ["{dir}", "-i", "{x}"], ["{step}", "-i", "{missing}"], ["{step}", "-i", "{badx}"], ["{step}", "-i", "{objx}"],
        ["{step}", "-i", "{text}"], ["{step}", "-i", "{x}", "--state-in", "{state}"],
        ["{step}", "-i", "{x}", "--state-in", "{statedir}"], ["{step}", "-i", "{x}", "--state-in", "{missing}"],
        ["{step}", "-i", "{x}", "--state-in", "{x}"], ["{step}", "-i", "{x}", "--state-in", "{locked}"],
        ["{step}", "-i", "{x}", "--provider", "bogus"],
        ["{step}", "-i", "{x}", "-o", "{nofolder}/y.npy"], ["{step}", "-i", "{x}", "-o", "{dir}"],
        ["{step}", "-i", "{x}", "--timeout", "nan"], ["{step}", "-i", "{x}", "-i", "{x}", "-o", "{root}/y.npy"],
    ],
    "triton": [
        ["{missing}", "-o", "{root}/r1"], ["{text}", "-o", "{root}/r2"], ["{notzip}", "-o", "{root}/r3"],
        ["{zip}", "-o", "{root}/r4"], ["{graph}", "-o", "{root}/r5"], ["{step}", "-o", "{root}/r6", "--name", "a b"],
        ["{step}", "-o", "{root}/r9", "--name", "model\n"],
        ["{step}", "-o", "{root}/r7", "--max-batch-size", "0"], ["{step}", "-o", "{nofolder}"],
        ["{step}", "-o", "{x}"], ["nosuchmodel", "-o", "{root}/r8"],
    ],
}


def _fill(args: list[str], files: dict[str, str]) -> list[str]:
    filled = []
    for arg in args:
        for key, value in files.items():
            arg = arg.replace(key, value)
        filled.append(arg)
    return filled


@pytest.mark.parametrize(("command", "args"), [(c, a) for c, cases in CASES.items() for a in cases],
                         ids=[f"{c}-{i}" for c, cases in CASES.items() for i in range(len(cases))])
def test_every_error_path_is_one_line(work, command, args):
    if command == "triton":
        pytest.importorskip("tritonclient")
    root = Path(work["{root}"])
    before = snapshot(root)
    assert_one_line_error(invoke(command, *_fill(args, work)))
    assert snapshot(root) == before  # nothing written, nothing left half-done
