#!/usr/bin/env bash
# The main job on the built-in default model: convert it, then check it with ONNX Runtime.
# Run from the repository root after installing (see README).
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-out}
mkdir -p "$OUT"
"$BIN/rnnexport" convert lstm -o "$OUT/lstm.onnx"
"$BIN/python" - "$OUT/lstm.onnx" <<'PY'
import sys

import numpy as np
import onnxruntime as ort

import rnnexport
from rnnexport.export import read_info
import onnx

path = sys.argv[1]
info = read_info(onnx.load(path))
model = rnnexport.builtin("lstm")
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
for T, B in ((1, 1), (35, 4), (500, 2)):
    x = rng.standard_normal((T, B, 28)).astype(np.float32)
    state = [rng.standard_normal((B, 256)).astype(np.float32) for _ in info.io.state.names]
    got = session.run(None, {"x": x, **dict(zip(info.io.state.names, state))})
    want = model.run_sequence(x, state)
    err = max(float(np.abs(a - b).max()) for a, b in zip(got, want))
    print(f"onnxruntime CPU vs PyTorch  T={T:<4d} B={B}  max abs error {err:.2e}")
PY
