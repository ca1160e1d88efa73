"""kill -9 at several moments: the output path holds nothing or a complete result, and the next run
leaves no debris (temporary files, half bundles, orphaned converter processes)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from rnnexport.bundle import open_bundle

pytestmark = pytest.mark.slow

#: Seconds after start at which the command is killed: during start-up, tracing, writing.
MOMENTS = (0.5, 2.5, 4.0, 6.0)


def _start(*args: object, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rnnexport", *map(str, args)], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_at(moment: float, *args: object, cwd: Path) -> None:
    proc = _start(*args, cwd=cwd)
    try:
        proc.wait(timeout=moment)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _orphans(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in command and "convert_onnx_models_to_ort" in command:
                found.append(command)
    return found


def test_convert_killed_leaves_nothing_or_a_whole_graph(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "m.onnx"
    for moment in MOMENTS:
        _kill_at(moment, "convert", "lstm", "--lowering", "scan", "--hidden-size", "32", "-o", target, "--force",
                 cwd=tmp_path)
        if target.exists():
            onnx.checker.check_model(onnx.load(target))  # complete, never half written
    done = subprocess.run([sys.executable, "-m", "rnnexport", "convert", "lstm", "--lowering", "scan",
                           "--hidden-size", "32", "-o", target, "--force"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    onnx.checker.check_model(onnx.load(target))
    assert _debris(out) == []


def test_package_killed_leaves_nothing_or_a_whole_bundle(exports, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    graph = exports.export("seed_lstm").path
    bundle = out / "b"
    for moment in MOMENTS:
        _kill_at(moment, "package", graph, "-o", bundle, "--zip", "--force", cwd=tmp_path)
        for path in (bundle, out / "b.zip"):
            if path.exists():
                assert open_bundle(path).manifest is not None  # complete and every checksum right
        time.sleep(0.2)
        assert _orphans(str(out)) == []  # the ORT-format converter died with its parent
    done = subprocess.run([sys.executable, "-m", "rnnexport", "package", graph, "-o", bundle, "--zip", "--force"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert open_bundle(bundle).manifest is not None and open_bundle(out / "b.zip").manifest is not None
    assert _debris(out) == []
