"""An int8 variant against its float32 graph on the CPU this runs on, by onnxruntime and NumPy alone.

Torch-free, so that it starts in seconds under an emulated CPU (``qemu-x86_64 -cpu Haswell``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from rnnexport.core.contract import Form, IOSpec
from rnnexport.core.inputs import random_inputs


def _run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _misses(variant: dict[str, Any], got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, float]:
    """Per output that misses the variant's recorded tolerance, its max abs error."""
    tol = variant["tolerance"]
    found = {}
    for name, b in want.items():
        error = np.abs(got[name] - b)
        allowed = tol["atol"] + tol["range_atol"] * np.abs(b).max() + tol["rtol"] * np.abs(b)
        if not (error <= allowed).all():
            found[name] = float(error.max())
    return found


def int8_misses(folder: Path, files: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
    """Per graph of the bundle ``folder``, the outputs of its int8 variant (or of ``files[graph]``) that
    miss the variant's recorded tolerance against the float32 graph on this CPU, with their max abs error.

    Inputs are not the ones packaging checked: other characters, and the step graph starts from
    the state a real text leaves, not a random one.
    """
    manifest = json.loads((folder / "manifest.json").read_text())
    io = IOSpec.from_json(manifest["io"])
    variants = {v["of"]: v for v in manifest["variants"] if v["name"] == "int8" and v["status"] == "ok"}
    rng = np.random.default_rng(2024)
    sequence = io.feeds(random_inputs(io, Form.SEQUENCE, 8, 96, rng), io.state.zeros(8))
    graphs = {key: folder / graph["file"] for key, graph in manifest["graphs"].items()}
    want = _run(graphs["sequence"], sequence)
    step = io.feeds(random_inputs(io, Form.STEP, 8, None, rng), [want[name] for name in io.state.output_names])
    cases = {"sequence": (sequence, want), "step": (step, _run(graphs["step"], step))}
    return {graph: _misses(variants[graph], _run(folder / (files or {}).get(graph, variants[graph]["files"][0]),
                                                 feeds), expected)
            for graph, (feeds, expected) in cases.items()}
