#!/usr/bin/env bash
# The main job on the default trained model (models/lstm-charlm): convert it (auto lowering),
# verify it against PyTorch, package it, re-check the bundle without PyTorch, then stream text
# out of it with the torch-free runtime. Run from the repository root after installing (README).
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-out}
MODEL=${MODEL:-lstm-charlm}
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "convert $MODEL: sequence graph (any T) and step graph"
"$BIN/rnnexport" convert "$MODEL" -o "$OUT/$MODEL.onnx" --force
"$BIN/rnnexport" convert "$MODEL" --form step -o "$OUT/$MODEL.step.onnx" --force

step "verify against PyTorch, quick grid (every contract in seconds; --grid full is the release check), on onnxruntime and the ReferenceEvaluator (source rebuilt from the graph's metadata)"
"$BIN/rnnexport" verify "$OUT/$MODEL.onnx" --step "$OUT/$MODEL.step.onnx" --grid quick --json "$OUT/$MODEL.verify.json"

step "package: manifest, checksums, test vectors, variants"
"$BIN/rnnexport" package "$OUT/$MODEL.onnx" "$MODEL" --step "$OUT/$MODEL.step.onnx" \
    -o "$OUT/$MODEL-bundle" --zip --force

step "re-check the bundle with no PyTorch source: checksums, then its own test sets and variants (a bundle has no grid)"
"$BIN/rnnexport" verify "$OUT/$MODEL-bundle.zip"

step "stream through the bundle with rnnexport.runtime (onnxruntime + numpy only)"
"$BIN/python" scripts/stream_demo.py "$OUT/$MODEL-bundle.zip"
