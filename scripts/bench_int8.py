"""int8 against float32 on every engine that runs it: file size, load time, sequence and step time.

For each trained model (``models/``), the sequence and step graphs are packaged with the
``int8-qdq`` variant (and onnxruntime's dynamic ``int8`` where it can be made), then each
graph file is loaded and run on onnxruntime's CPU provider, OpenVINO (CPU, f32 inference
precision: on CPUs with bf16 it would otherwise run float32 graphs in bf16) and tract, one
thread each where the engine takes the setting:

- load: median seconds from the file to a session ready to run;
- sequence: median ms per call of the sequence graph at T=64, B=1 and B=32, from the zero state;
- step: median us per call of the step graph at B=1.

Prints a table and writes the figures as JSON (default: a new temporary folder). Timings on
a busy machine vary; run it on a quiet one and compare rows of one run only.

    python scripts/bench_int8.py [--models lstm-charlm,...] [--runs 30] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

import rnnexport
from rnnexport.core.cpu import this_cpu
from rnnexport.core.io import atomic_write
from rnnexport.testing import random_inputs

MODELS = ("lstm-charlm", "gru-charlm", "rnn-charlm", "lstm-forecaster")
SEQUENCE_POINTS = ((64, 1), (64, 32))  # (T, B)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--models", default=",".join(MODELS), help="comma-separated trained models")
parser.add_argument("--runs", type=int, default=30, help="timed calls per figure (after warm-up)")
parser.add_argument("--out", default=None, help="folder for bench-int8.json (default: a new temporary folder)")
args = parser.parse_args()
out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rnnexport-bench-int8-"))
work = Path(tempfile.mkdtemp(prefix="rnnexport-bench-int8-work-"))


def median_s(fn: Callable[[], object], runs: int) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def onnxruntime_engine(path: Path) -> Callable[[dict], object]:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)


def openvino_engine(path: Path) -> Callable[[dict], object]:
    import openvino

    compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                "INFERENCE_NUM_THREADS": 1})
    request = compiled.create_infer_request()
    return lambda feeds: request.infer(feeds)


def tract_engine(path: Path) -> Callable[[dict], object]:
    import tract

    model = tract.onnx().load(str(path)).into_model().into_runnable()
    return lambda feeds: model.run(list(feeds.values()))


ENGINES = {"onnxruntime": onnxruntime_engine, "openvino": openvino_engine, "tract": tract_engine}


def feeds_for(io: rnnexport.IOSpec, form: rnnexport.Form, batch: int, steps: int | None) -> dict:
    rng = np.random.default_rng(0)
    return io.feeds(random_inputs(io, form, batch, steps, rng), io.state.zeros(batch))


cpu = this_cpu()
print(f"int8 vs float32: {cpu.describe()}, {args.runs} timed calls per figure; work in {work}", flush=True)
rows = []
for name in args.models.split(","):
    sequence = rnnexport.convert(name, work / f"{name}.onnx")
    step = rnnexport.convert(name, work / f"{name}.step.onnx", form="step")
    bundle = rnnexport.package(sequence.path, work / name, step_path=step.path, variants=["int8-qdq", "int8"],
                               optional=["int8"], engines=["cpu"])
    files = {("sequence", "float32"): bundle.folder / "model.onnx", ("step", "float32"): bundle.folder / "step" /
             "model.onnx"}
    files |= {(v.of, v.name): bundle.folder / v.files[0] for v in bundle.variants if v.ok}
    io = sequence.info.io
    for (graph, variant), path in files.items():
        form = rnnexport.Form(graph)
        points = SEQUENCE_POINTS if form is rnnexport.Form.SEQUENCE else ((None, 1),)
        for engine, start in ENGINES.items():
            if variant == "int8" and engine != "onnxruntime":
                continue  # onnxruntime's own operators
            row = {"model": name, "graph": graph, "variant": variant, "engine": engine,
                   "bytes": path.stat().st_size}
            try:
                row["load_ms"] = median_s(lambda s=start, p=path: s(p), max(3, args.runs // 5)) * 1e3
                run = start(path)
                for steps, batch in points:
                    feeds = feeds_for(io, form, batch, steps)
                    key = f"ms_T{steps}_B{batch}" if steps else "us_step_B1"
                    seconds = median_s(lambda r=run, f=feeds: r(f), args.runs)
                    row[key] = seconds * (1e3 if steps else 1e6)
            except Exception as e:  # noqa: BLE001 - an engine that cannot run a graph is a finding, not a crash
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            rows.append(row)
            print("  " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)

print(f"\nint8 against float32 on {cpu.describe()}: size, load ms, sequence ms (T=64), step us (B=1); "
      "ratio to float32 in brackets")
header = f"{'model':16s} {'graph':8s} {'variant':9s} {'engine':11s} {'kB':>15s} {'load ms':>15s} " \
         f"{'T64 B1 ms':>15s} {'T64 B32 ms':>15s} {'step us':>15s}"
print(header)


def cell(row: dict, key: str, base: dict | None) -> str:
    value = row.get(key)
    if value is None:
        return f"{'-':>15s}"
    ratio = f" ({value / base[key]:.2f}x)" if base and base.get(key) and base is not row else ""
    scaled = value / 1e3 if key == "bytes" else value
    return f"{scaled:>7.3g}{ratio:>8s}"


for row in rows:
    base = next((r for r in rows if (r["model"], r["graph"], r["engine"], r["variant"]) ==
                 (row["model"], row["graph"], row["engine"], "float32")), None)
    figures = " ".join(cell(row, k, base) for k in ("bytes", "load_ms", "ms_T64_B1", "ms_T64_B32", "us_step_B1"))
    print(f"{row['model']:16s} {row['graph']:8s} {row['variant']:9s} {row['engine']:11s} {figures}"
          + (f"  {row['error']}" if "error" in row else ""))

results = {"schema": "rnnexport.bench-int8/1", "cpu": {"machine": cpu.machine, "features": list(cpu.features)},
           "runs": args.runs, "onnxruntime": ort.__version__, "rows": rows}
out_dir.mkdir(parents=True, exist_ok=True)
atomic_write(out_dir / "bench-int8.json", (json.dumps(results, indent=1) + "\n").encode(), "figures")
print(f"\nwrote {out_dir / 'bench-int8.json'}")
