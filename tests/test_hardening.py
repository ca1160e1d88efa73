"""A graph is data: what its metadata names is never imported or run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest


def _with_origin(source: Path, target: Path, origin: dict) -> Path:
    model = onnx.load(source)
    for prop in model.metadata_props:
        if prop.key == "rnnexport.origin":
            prop.value = json.dumps(origin)
    onnx.save(model, target)
    return target


@pytest.mark.parametrize("origin", [
    {"model": "{evil}:make"},
    {"model": "os:abort"},
    {"model": "nosuch-model", "card": "{card}"},
])
def test_verify_never_imports_what_a_graphs_metadata_names(exports, tmp_path, origin):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\ndef make():\n    raise SystemExit(7)\n")
    card = tmp_path / "card" / "card.json"
    card.parent.mkdir()
    card.write_text(json.dumps({"format": "rnnexport.card/1", "name": "x", "source": "factory",
                                "factory": f"{evil}:make", "weights": "w.safetensors"}))
    filled = {k: v.format(evil=evil, card=card) for k, v in origin.items()}
    graph = _with_origin(exports.export("seed_gru").path, tmp_path / "g.onnx", filled)
    proc = subprocess.run([sys.executable, "-m", "rnnexport", "verify", str(graph), "--batch-sizes", "1",
                           "--seq-lens", "2"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "pass SOURCE" in lines[0], proc.stderr
    assert not marker.exists()
