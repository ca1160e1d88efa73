"""The folder tree is the architecture: each layer imports only the layers below it, with no cycles.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``); import-linter checks every
import, those inside functions included.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())"]


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([*LINT, "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "rnnexport", tmp_path / "rnnexport",
                    ignore=shutil.ignore_patterns("node_modules", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_an_upward_import_breaks_the_layers(tmp_path):
    """The core reaching up into the exporter, even inside a function, is caught."""
    root = _copy(tmp_path)
    errors = root / "rnnexport/core/errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _planted():\n    from rnnexport.export import convert\n")
    result = _lint(root)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "rnnexport.core is not allowed to import rnnexport.export" in result.stdout
    assert "rnnexport.core.errors -> rnnexport.export" in result.stdout


def test_a_cycle_inside_a_package_breaks_the_contract(tmp_path):
    root = _copy(tmp_path)
    errors = root / "rnnexport/core/errors.py"  # contract imports errors; now errors imports contract
    errors.write_text(errors.read_text() + "\n\ndef _planted():\n    from rnnexport.core import contract\n")
    result = _lint(root)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "No cycles are allowed in rnnexport.core" in result.stdout


def test_the_runtime_never_imports_torch_or_onnx(tmp_path):
    root = _copy(tmp_path)
    session = root / "rnnexport/runtime/session.py"
    session.write_text(session.read_text() + "\n\ndef _planted():\n    import onnx\n")
    result = _lint(root)
    assert result.returncode == 1 and "rnnexport.runtime is not allowed to import onnx" in result.stdout, \
        result.stdout[-2000:]
