"""kill -9 at random moments: the output path holds nothing or a complete result, no process the command
started outlives it, and the next run leaves no debris (temporary files, half bundles, work folders).

Each killed command runs with a marker in its environment, which every child inherits: a process
that still carries it after the kill is an orphan (the ORT-format converter, an engine's process).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest

from rnnexport.bundle import open_bundle
from rnnexport.core.process import python_child_env

pytestmark = pytest.mark.slow

#: Seconds after start at which a command is killed: start-up, tracing, writing, and two drawn at
#: random (seeded: a failure can be replayed) within the command's usual run time.
_DRAW = random.Random(28)
MOMENTS = (0.5, 2.5, 4.0, 6.0, *(round(_DRAW.uniform(0.3, 8.0), 2) for _ in range(2)))
MARK = "RNNEXPORT_KILL_TEST"


@pytest.fixture()
def tmp() -> Iterator[Path]:
    """The commands' TMPDIR, of the test's own; short, as Chromium's profile holds a Unix socket's path."""
    folder = Path(tempfile.mkdtemp(prefix="kill-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _env(tmp: Path, mark: str) -> dict[str, str]:
    """The commands' environment: this checkout's rnnexport, the marker, the test's TMPDIR."""
    return python_child_env({MARK: mark, "TMPDIR": str(tmp)})


def _run(*args: object, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rnnexport", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True)


def _kill_at(moment: float, *args: object, cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "rnnexport", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=moment)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _debris(*folders: Path) -> list[str]:
    """Hidden entries (temporary files and folders) in the output folders."""
    return sorted(p.name for folder in folders if folder.is_dir() for p in folder.iterdir() if p.name.startswith("."))


def _scratch(tmp: Path) -> list[str]:
    """rnnexport's entries in the commands' TMPDIR (other libraries' are not this test's business)."""
    return sorted(p.name for p in tmp.iterdir() if "rnnexport" in p.name)


def _orphans(mark: str) -> list[str]:
    """Processes that still carry ``mark`` in their environment (children inherit it)."""
    wanted = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if wanted in (entry / "environ").read_bytes().split(b"\0"):
                    found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return found


def _no_orphans(mark: str) -> None:
    deadline = time.monotonic() + 5  # the kernel delivers the parent-death signal at once; reaping may lag
    while _orphans(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _orphans(mark) == []


def test_convert_killed_leaves_nothing_or_a_whole_graph(tmp_path, tmp):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "m.onnx"
    env = _env(tmp, uuid.uuid4().hex)
    args = ("convert", "lstm", "--lowering", "scan", "--hidden-size", "32", "-o", target, "--force")
    for moment in MOMENTS:
        _kill_at(moment, *args, cwd=tmp_path, env=env)
        if target.exists():
            onnx.checker.check_model(onnx.load(target))  # complete, never half written
    _no_orphans(env[MARK])
    done = _run(*args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    onnx.checker.check_model(onnx.load(target))
    assert _debris(out) == [] and _scratch(tmp) == []


def test_package_killed_leaves_nothing_or_a_whole_bundle(exports, tmp_path, tmp):
    out = tmp_path / "out"
    out.mkdir()
    graph = exports.export("seed_lstm").path
    bundle = out / "b"
    env = _env(tmp, uuid.uuid4().hex)
    for moment in MOMENTS:
        _kill_at(moment, "package", graph, "-o", bundle, "--zip", "--force", cwd=tmp_path, env=env)
        for path in (bundle, out / "b.zip"):
            if path.exists():
                assert open_bundle(path).manifest is not None  # complete and every checksum right
        _no_orphans(env[MARK])  # the ORT-format converter and the ReferenceEvaluator's process died with it
    done = _run("package", graph, "-o", bundle, "--zip", "--force", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert open_bundle(bundle).manifest is not None and open_bundle(out / "b.zip").manifest is not None
    assert _debris(out) == [] and _scratch(tmp) == []


def test_triton_killed_leaves_nothing_or_a_whole_model(tmp_path, tmp):
    """A SOURCE is converted first, in a work folder beside the repository that the next run removes."""
    pytest.importorskip("tritonclient")
    repository = tmp_path / "repo"
    env = _env(tmp, uuid.uuid4().hex)
    args = ("triton", "gru", "--hidden-size", "16", "--input-size", "4", "-o", repository, "--force")
    for moment in MOMENTS:
        _kill_at(moment, *args, cwd=tmp_path, env=env)
        model = repository / "gru"
        if model.exists():
            assert (model / "config.pbtxt").is_file() and (model / "1" / "model.onnx").is_file()
        _no_orphans(env[MARK])
    done = _run(*args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert _debris(tmp_path, repository) == [] and _scratch(tmp) == []


def test_verify_killed_leaves_no_engine_running(tmp_path, tmp):
    """The engines' processes (node, wasm, the ReferenceEvaluator's, OpenVINO's) die with verify; their
    work folders are removed by the next run."""
    pytest.importorskip("openvino")
    graph = tmp_path / "gru.onnx"
    env = _env(tmp, uuid.uuid4().hex)
    made = _run("convert", "gru", "--hidden-size", "16", "--input-size", "4", "-o", graph, cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    engines = "cpu,reference,openvino"
    from rnnexport.engines.js import _modules, chromium_binary

    if (_modules() / "onnxruntime-node").is_dir():
        engines += ",node,wasm" + (",browser" if chromium_binary() else "")
    for moment in (2.0, 5.0, 8.0):  # engines starting, cases running
        _kill_at(moment, "verify", graph, "--engines", engines, cwd=tmp_path, env=env)
        _no_orphans(env[MARK])
    done = _run("verify", graph, "--engines", engines, "-q", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _scratch(tmp) == []
