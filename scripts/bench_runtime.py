"""Runtime benchmark: step latency (StatefulSession vs raw onnxruntime) and memory flatness.

1. Latency at B=1 of one step, for the ``lstm-charlm`` step graph (H=128) and the
   built-in ``lstm`` (I=28, H=256): ``InferenceSession.run`` with the state passed
   back in a dict; plain IO binding (two bindings made once, state buffers swapped);
   and ``StatefulSession.step`` (that binding plus the contract checks). Each with
   onnxruntime's default threads and with 1.
2. Memory: resident set size before and after streaming 100,000 steps through
   ``.step`` (and 100,000 more through ``.run`` in chunks of 100), after a warm-up.

The graphs are converted in a subprocess (``rnnexport convert``), so this process
imports only the runtime: no torch in its memory figures.

    python scripts/bench_runtime.py [--steps 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnexport.runtime import StatefulSession

# --- configuration -------------------------------------------------------------------------------
MODELS = {"lstm-charlm (H=128)": ["lstm-charlm"], "lstm built-in (I=28, H=256)": ["lstm"]}
LATENCY_STEPS, REPEATS = 2000, 11
MEMORY_STEPS, WARMUP, CHUNK = 100_000, 2_000, 100

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=MEMORY_STEPS, help="steps of the memory run")
parser.add_argument("--json", default=None, help="also write the figures here")
args = parser.parse_args()


def rss_mb() -> float:
    """Resident set size of this process now, in MB (Linux /proc; else the peak from getrusage)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def convert(source: list[str], form: str, folder: Path) -> Path:
    out = folder / f"{source[0]}.{form}.onnx"
    cli = [sys.executable, "-m", "rnnexport", "convert", *source, "--form", form, "-o", str(out), "-q"]
    subprocess.run(cli, check=True, capture_output=True)
    return out


def per_step_us(loops: dict, steps: int = LATENCY_STEPS) -> dict[str, float]:
    """Per loop: the median over REPEATS of the mean time of one call, in microseconds.

    The loops take turns, so a slow moment of the machine hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in loops}
    for fn in loops.values():
        fn(200)  # warm up
    for _ in range(REPEATS):
        for name, fn in loops.items():
            start = time.perf_counter()
            fn(steps)
            times[name].append((time.perf_counter() - start) / steps * 1e6)
    return {name: float(np.median(t)) for name, t in times.items()}


def raw_loop(path: Path, threads: int | None):
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    x = np.random.default_rng(0).standard_normal((1, *inputs[0].shape[1:])).astype(np.float32)
    state = {i.name: np.zeros((1, *i.shape[1:]), np.float32) for i in inputs[1:]}

    def loop(n: int) -> None:
        feeds = {inputs[0].name: x, **state}
        for _ in range(n):
            y, *out = session.run(None, feeds)
            feeds = {inputs[0].name: x, **dict(zip(state, out))}
    return loop


def binding_loop(path: Path, threads: int | None):
    """Plain onnxruntime IO binding, no runtime around it: two bindings, state buffers swapped."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    x = np.zeros((1, *inputs[0].shape[1:]), np.float32)
    y = np.zeros((1, *outputs[0].shape[1:]), np.float32)
    sets = [[np.zeros((1, *i.shape[1:]), np.float32) for i in inputs[1:]] for _ in range(2)]
    value = ort.OrtValue.ortvalue_from_numpy
    bindings = []
    for reads in (0, 1):
        binding = session.io_binding()
        binding.bind_ortvalue_input(inputs[0].name, value(x))
        binding.bind_ortvalue_output(outputs[0].name, value(y))
        for i, o, a, b in zip(inputs[1:], outputs[1:], sets[reads], sets[1 - reads]):
            binding.bind_ortvalue_input(i.name, value(a))
            binding.bind_ortvalue_output(o.name, value(b))
        bindings.append(binding)
    source = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)

    def loop(n: int) -> None:
        for k in range(n):
            np.copyto(x, source)
            session.run_with_iobinding(bindings[k & 1])
            y.copy()
    return loop


def runtime_loop(path: Path, threads: int | None):
    session = StatefulSession.load(path, threads=threads)
    x = np.random.default_rng(0).standard_normal(session.contract.x_shape("step", 1)).astype(np.float32)

    def loop(n: int) -> None:
        for _ in range(n):
            session.step(x)
    return loop


figures = {"onnxruntime": ort.__version__, "cpus": os.cpu_count(), "latency_us": {}, "memory_mb": {}}
with tempfile.TemporaryDirectory() as tmp:
    graphs = {label: convert(source, "step", Path(tmp)) for label, source in MODELS.items()}
    sequence = convert(["lstm-charlm"], "sequence", Path(tmp))

    # --- 1. latency -----------------------------------------------------------------------------
    print(f"step latency at B=1, median of {REPEATS} x {LATENCY_STEPS} steps (onnxruntime {ort.__version__}, "
          f"{os.cpu_count()} CPUs)")
    print(f"  {'graph':28s} {'threads':>7s} {'session.run':>12s} {'IO binding':>11s} {'StatefulSession.step':>21s}")
    for label, path in graphs.items():
        for threads in (None, 1):
            t = per_step_us({"raw_run": raw_loop(path, threads), "raw_binding": binding_loop(path, threads),
                             "step": runtime_loop(path, threads)})
            figures["latency_us"][f"{label}, threads={threads or 'default'}"] = t
            print(f"  {label:28s} {str(threads or 'default'):>7s} {t['raw_run']:9.1f} us {t['raw_binding']:8.1f} us "
                  f"{t['step']:18.1f} us")

    # --- 2. memory ------------------------------------------------------------------------------
    session = StatefulSession.load(graphs["lstm-charlm (H=128)"], threads=1)
    x = np.eye(32, dtype=np.float32)[None, 3]
    for _ in range(WARMUP):
        session.step(x)
    before = rss_mb()
    samples = []
    start = time.perf_counter()
    for i in range(args.steps):
        session.step(x)
        if i % (args.steps // 10) == 0:
            samples.append(round(rss_mb(), 1))
    seconds = time.perf_counter() - start
    after = rss_mb()
    figures["memory_mb"]["step"] = {"steps": args.steps, "before": before, "after": after, "samples": samples,
                                    "seconds": seconds}
    print(f"\nmemory, {args.steps} steps of lstm-charlm through StatefulSession.step ({seconds:.1f} s): "
          f"RSS {before:.1f} MB before, {after:.1f} MB after ({after - before:+.2f} MB); samples {samples}")

    chunked = StatefulSession.load(sequence, threads=1)
    xs = np.repeat(x[None], CHUNK, axis=0)  # (CHUNK, 1, 32)
    for _ in range(WARMUP // CHUNK):
        chunked.run(xs)
    before = rss_mb()
    start = time.perf_counter()
    for _ in range(args.steps // CHUNK):
        chunked.run(xs)
    seconds = time.perf_counter() - start
    after = rss_mb()
    figures["memory_mb"]["run"] = {"steps": args.steps, "chunk": CHUNK, "before": before, "after": after,
                                   "seconds": seconds}
    print(f"memory, {args.steps} steps of lstm-charlm through StatefulSession.run in chunks of {CHUNK} "
          f"({seconds:.1f} s): RSS {before:.1f} MB before, {after:.1f} MB after ({after - before:+.2f} MB)")

if args.json:
    Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
