#!/usr/bin/env bash
# Verify the seed cells (rnn, lstm, gru) and two torch.nn models on onnxruntime's CUDA and
# TensorRT execution providers, with the CPU provider as the baseline, and print one table;
# then time StatefulSession (state on the device, IO binding) and the StreamBatcher on each.
#
#   PYTHON=python3 scripts/gpu_check.sh            # from anywhere; installs nothing
#
# Environment: PYTHON (default python3) must import torch, onnx, onnxscript, onnxruntime (the
# GPU build for CUDA/TensorRT), click, numpy and safetensors; the repository is put on its path.
# BATCH_SIZES / SEQ_LENS override the grid; REPORTS=DIR keeps one JSON report per model there.
# On a machine without a GPU, cuda and tensorrt are reported unavailable with the reason.
# Exit status: 0 when every model passes, 1 otherwise.
set -euo pipefail
PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export BATCH_SIZES=${BATCH_SIZES:-1,16} SEQ_LENS=${SEQ_LENS:-1,17,256,2048} WORK ROOT REPORTS=${REPORTS:-}
cd "$ROOT"
exec "$PYTHON" - <<'PY'
import contextlib
import os
import sys
import time

import onnxruntime as ort

import rnnexport
from rnnexport.verification import CONTRACT_TITLES
from rnnexport.verification.render import write_json

# ---------------------------------------------------------------- config
MODELS = [  # (name, source, has a step form)
    ("seed rnn", "rnn", True),
    ("seed lstm", "lstm", True),
    ("seed gru", "gru", True),
    ("nn.LSTM 2 layers bi", "scripts/gpu_models.py:lstm_2layer_bi", False),
    ("nn.GRU 2 layers batch_first", "scripts/gpu_models.py:gru_2layer_batch_first", True),
]
PROVIDERS = ("cpu", "cuda", "tensorrt")
BATCH_SIZES = tuple(int(v) for v in os.environ["BATCH_SIZES"].split(","))
SEQ_LENS = tuple(int(v) for v in os.environ["SEQ_LENS"].split(","))
WORK, REPORTS = os.environ["WORK"], os.environ["REPORTS"]

with contextlib.suppress(Exception):  # CUDA/cuDNN from the nvidia wheels, where present
    ort.preload_dlls()
print(f"onnxruntime {ort.__version__}, lists {', '.join(ort.get_available_providers())}")
print(f"grid: batch {BATCH_SIZES} x T {SEQ_LENS}; providers {', '.join(PROVIDERS)}", flush=True)

rows = [("model", "contract", "engine", "checks", "failed", "worst case", "max abs", "result")]
unavailable, verdicts, started = {}, [], time.perf_counter()
for label, source, has_step in MODELS:
    stem = os.path.join(WORK, label.replace(" ", "_").replace(".", ""))
    rnnexport.convert(source, stem + ".onnx")
    step = rnnexport.convert(source, stem + ".step.onnx", form="step").path if has_step else None
    report = rnnexport.verify(stem + ".onnx", source, engines=(*PROVIDERS, "reference"), batch_sizes=BATCH_SIZES,
                              seq_lens=SEQ_LENS, step_model=step and str(step), allow_missing=True)
    for (contract, engine), (worst, count, failed) in report.worst().items():
        figure = "-" if worst.max_abs is None else f"{worst.max_abs:.2e}"
        rows.append((label, CONTRACT_TITLES[contract], engine, str(count), str(failed), worst.case, figure,
                     "FAIL" if failed else "pass"))
    for item in report.unavailable:
        unavailable.setdefault((item.engine, item.reason), set()).add(label)
    verdicts.append((label, report.passed, report.seconds))
    if REPORTS:
        write_json(report, os.path.join(REPORTS, os.path.basename(stem) + ".json"))
    print(f"  {label}: {'PASS' if report.passed else 'FAIL'} in {report.seconds:.1f} s", flush=True)

widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
print()
for row in rows:
    print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
for (engine, reason), labels in unavailable.items():
    print(f"unavailable  {engine} ({len(labels)} models): {reason}")
# ---------------------------------------------------------------- streaming on each provider
import numpy as np

from rnnexport.errors import ProviderError
from rnnexport.runtime import StatefulSession, StreamBatcher

print("\nstreaming, seed lstm step graph (hidden 256): provider, B=1 step latency, 64-stream batcher steps/s")
step_graph = rnnexport.convert("lstm", os.path.join(WORK, "stream.step.onnx"), form="step").path
for provider in PROVIDERS:
    try:
        session = StatefulSession.load(step_graph, provider)
        batcher = StreamBatcher.load(step_graph, provider, max_batch=64)
    except ProviderError as e:
        print(f"  {provider}: unavailable: {e}")
        continue
    x = np.ones((1, 28), np.float32)
    for _ in range(50):
        session.step(x)
    begun = time.perf_counter()
    for _ in range(500):
        session.step(x)
    latency = (time.perf_counter() - begun) / 500 * 1e6
    with batcher:
        streams = [batcher.join() for _ in range(64)]
        inputs = {s: x for s in streams}
        for _ in range(10):
            batcher.step(inputs)
        begun = time.perf_counter()
        for _ in range(100):
            batcher.step(inputs)
        rate = 64 * 100 / (time.perf_counter() - begun)
    print(f"  {provider}: {session.device}, step {latency:.1f} us, batcher {rate:,.0f} steps/s")

failed = [label for label, ok, _ in verdicts if not ok]
total = time.perf_counter() - started
print(f"{'FAIL' if failed else 'PASS'}  {len(verdicts) - len(failed)} of {len(verdicts)} models pass in {total:.0f} s"
      + (f"; failing: {', '.join(failed)}" if failed else ""))
sys.exit(1 if failed else 0)
PY
