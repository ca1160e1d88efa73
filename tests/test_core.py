"""The torch-free core: every module imports without torch (the import contract is in test_architecture)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rnnexport"

#: Modules that need neither torch nor onnx (the runtime builds on these alone).
BARE = ["rnnexport.core.errors", "rnnexport.core.contract", "rnnexport.core.io", "rnnexport.core.ort",
        "rnnexport.bundle", "rnnexport.bundle.manifest", "rnnexport.bundle.reader", "rnnexport.bundle.archive",
        "rnnexport.runtime", "rnnexport.runtime.engine", "rnnexport.runtime.session", "rnnexport.runtime.files",
        "rnnexport.runtime.batcher", "rnnexport.runtime.buffers"]
#: Modules that read ONNX files (onnx allowed, torch not).
WITH_ONNX = ["rnnexport.core", "rnnexport.core.graphs", "rnnexport.core.compare", "rnnexport.core.inputs",
             "rnnexport.bundle.inspect", "rnnexport.bundle.vectors", "rnnexport.verification.bundle",
             "rnnexport.engines.onnxrt", "rnnexport.engines.reference", "rnnexport.serving.checks",
             "rnnexport.serving.emulator", "rnnexport.serving.form"]


def _import_blocking(modules: list[str], blocked: tuple[str, ...]) -> subprocess.CompletedProcess:
    code = f"""
        import importlib, importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        for name in {modules!r}:
            importlib.import_module(name)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxscript")))
    """
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize(("modules", "blocked"), [
    (BARE, ("torch", "onnx", "onnxscript")),
    (WITH_ONNX, ("torch", "onnxscript")),
], ids=["no-torch-no-onnx", "no-torch"])
def test_core_imports_without_torch(modules, blocked):
    result = _import_blocking(modules, blocked)
    assert result.returncode == 0, result.stderr
    loaded = eval(result.stdout.strip())  # a printed list of module names
    assert not [m for m in loaded if m.split(".")[0] in blocked]


def test_atomic_writer_honours_the_umask_and_leaves_no_temp(tmp_path):
    import os
    import stat

    from rnnexport.core.io import atomic_write, remove_stale, temp_folder

    old = os.umask(0o022)
    try:
        target = tmp_path / "out.bin"
        assert atomic_write(target, b"abc") == 3
        folder = temp_folder(tmp_path / "bundle")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"abc" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    stale = tmp_path / ".x.onnx.999999999.abcd1234.tmp"  # a dead process's temp file
    stale.write_bytes(b"")
    remove_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([folder.name, "out.bin"])

