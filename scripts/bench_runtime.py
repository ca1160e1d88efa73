"""Runtime benchmark: step latency, memory flatness, the NaN policy's cost, and many streams per call.

1. Latency at B=1 of one step, for the ``lstm-charlm`` step graph (H=128) and the
   built-in ``lstm`` (I=28, H=256): ``InferenceSession.run`` with the state passed
   back in a dict; plain IO binding (two bindings made once, state buffers swapped);
   and ``StatefulSession.step`` (that binding plus the contract checks). Each with
   onnxruntime's default threads and with 1.
2. Memory: resident set size before and after streaming 100,000 steps through
   ``.step`` (and 100,000 more through ``.run`` in chunks of 100), after a warm-up.
3. Many streams: seed LSTM (I=28, H=256) step graph converted with ``--nan refuse``, one
   thread, S = 1, 8 and 64 streams: a raw batched IO-binding run at B=S (x copied in, one
   ``run_with_iobinding``, y copied out), ``StreamBatcher.tick`` (an array of S rows in,
   one out) and ``StreamBatcher.step`` (a dict per tick). Targets: tick >= 0.95x the raw
   run at 64 streams, >= 0.85x at 8.
4. The NaN policy: nodes of graphs converted with ``--nan carry`` and ``--nan refuse`` (a
   2-layer nn.LSTM sequence graph, the lstm-charlm step graph, the seed LSTM/GRU step
   graphs), and the streaming step at B=1, one thread, of the seed LSTM and GRU (I=28,
   H=256, weights N(0, 0.1^2)): the eager PyTorch step (the seed cell on a length-1
   input), raw IO binding and ``StatefulSession.step`` on each graph. Target:
   ``StatefulSession.step`` on the lean graph <= 0.40x the eager step.

The graphs are converted in a subprocess (``rnnexport convert``), so this process
imports only the runtime until section 4, which imports torch for the eager step:
no torch in the memory figures.

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
STREAMS, TICKS = (1, 8, 64), 50  # section 3: streams per call; ticks per sample
ROUNDS = 31  # sections 3 and 4: interleaved samples per engine (more than section 1's: ratios on a shared machine)
POLICY_GRAPHS = {  # section 4: graph -> convert arguments
    "2-layer nn.LSTM(8, 32) sequence": ["FACTORY:two_layer_lstm"],  # FACTORY: a file written into the work folder
    "lstm-charlm step": ["lstm-charlm", "--form", "step"],
    "seed lstm step (I=28, H=256)": ["lstm", "--form", "step"],
    "seed gru step (I=28, H=256)": ["gru", "--form", "step"],
}
EAGER_CELLS, HIDDEN, INPUT = ("lstm", "gru"), 256, 28
TARGETS = {"session_vs_eager": 0.40, "tick_vs_binding_64": 0.95, "tick_vs_binding_8": 0.85}
FACTORY = """import torch


def two_layer_lstm():
    torch.manual_seed(0)
    return torch.nn.LSTM(8, 32, num_layers=2)
"""

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=MEMORY_STEPS, help="steps of the memory run")
parser.add_argument("--json", default=None, help="also write the figures here")
parser.add_argument("--sections", default="1,2,3,4", help="which sections to run, e.g. 3,4 (1 and 2 run together)")
args = parser.parse_args()
sections = set(args.sections.split(","))


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


def per_step_us(loops: dict, steps: int = LATENCY_STEPS, rounds: int = REPEATS) -> dict[str, float]:
    """Per loop: the median over ``rounds`` of the mean time of one call, in microseconds.

    The loops take turns, so a slow moment of the machine hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in loops}
    for fn in loops.values():
        fn(200)  # warm up
    for _ in range(rounds):
        for name, fn in loops.items():
            start = time.perf_counter()
            fn(steps)
            times[name].append((time.perf_counter() - start) / steps * 1e6)
    return {name: float(np.median(t)) for name, t in times.items()} | {f"{n} min": float(min(t)) for n, t in times.items()}


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
            feeds = {inputs[0].name: x, **dict(zip(state, out, strict=True))}
    return loop


def binding_loop(path: Path, threads: int | None):
    """Plain onnxruntime IO binding at B=1, no runtime around it: two bindings, state buffers swapped."""
    x, y, run = io_binding(path, 1, threads)
    source = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)

    def loop(n: int) -> None:
        for k in range(n):
            np.copyto(x, source)
            run(k)
            y.copy()
    return loop


def runtime_loop(path: Path, threads: int | None):
    session = StatefulSession.load(path, threads=threads)
    x = np.random.default_rng(0).standard_normal(session.contract.x_shape("step", 1)).astype(np.float32)

    def loop(n: int) -> None:
        for _ in range(n):
            session.step(x)
    return loop


def convert_args(args: list[str], out: Path, folder: Path) -> dict:
    """``rnnexport convert ARGS -o OUT --json -`` in a subprocess; its JSON (nodes, nan, ...)."""
    args = [a.replace("FACTORY", str(folder / "factory.py")) for a in args]
    cli = [sys.executable, "-m", "rnnexport", "convert", *args, "-o", str(out), "--json", "-", "--force"]
    return json.loads(subprocess.run(cli, check=True, capture_output=True, text=True).stdout)


def io_binding(path: Path, batch: int, threads: int | None = 1):
    """A raw IO-binding stream of ``batch`` rows on ``path``: ``(x buffer, y buffer, run(k) for call k)``."""
    options = ort.SessionOptions()
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    x = np.zeros((batch, *inputs[0].shape[1:]), np.float32)
    y = np.zeros((batch, *outputs[0].shape[1:]), np.float32)
    sets = [[np.zeros((batch, *i.shape[1:]), np.float32) for i in inputs[1:]] for _ in range(2)]
    value = ort.OrtValue.ortvalue_from_numpy
    bindings = []
    for reads in (0, 1):
        binding = session.io_binding()
        binding.bind_ortvalue_input(inputs[0].name, value(x))
        binding.bind_ortvalue_output(outputs[0].name, value(y))
        for i, o, a, b in zip(inputs[1:], outputs[1:], sets[reads], sets[1 - reads], strict=True):
            binding.bind_ortvalue_input(i.name, value(a))
            binding.bind_ortvalue_output(o.name, value(b))
        bindings.append(binding)
    return x, y, lambda k: session.run_with_iobinding(bindings[k & 1])


def binding_ticks(path: Path, xs: np.ndarray):
    """Raw batched IO binding over ``xs`` (ticks, S, I): per tick x copied in, one run, y copied out."""
    x, y, run = io_binding(path, xs.shape[1])

    def loop() -> None:
        for k in range(xs.shape[0]):
            np.copyto(x, xs[k])
            run(k)
            y.copy()
    return loop


def batcher_loop(path: Path, xs: np.ndarray, arrays: bool):
    """``StreamBatcher.tick`` (``arrays``) or ``.step`` with a dict per tick (made beforehand) over ``xs``."""
    from rnnexport.runtime import StreamBatcher

    batcher = StreamBatcher.load(path, threads=1, max_batch=max(STREAMS))
    ids = [batcher.join() for _ in range(xs.shape[1])]
    ticks = [{i: xs[k, i:i + 1] for i in ids} for k in range(xs.shape[0])]

    def loop() -> None:
        if arrays:
            for k in range(xs.shape[0]):
                batcher.tick(xs[k])
        else:
            for inputs in ticks:
                batcher.step(inputs)
    return loop


def per_call(loops: dict, calls: int) -> dict[str, float]:
    """Per loop: the median over ROUNDS of one run's seconds divided by ``calls``, in microseconds (interleaved)."""
    times: dict[str, list[float]] = {name: [] for name in loops}
    for fn in loops.values():
        fn()  # warm up
    for _ in range(ROUNDS):
        for name, fn in loops.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: float(np.median(t)) for name, t in times.items()} | {f"{n} min": float(min(t)) for n, t in times.items()}


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


figures = {"onnxruntime": ort.__version__, "cpus": os.cpu_count(), "load_average_start": load_average(),
           "latency_us": {}, "memory_mb": {}, "streams_us_per_tick": {}, "nan_policy": {}, "targets": {}}
def target(key: str, threshold: float, times: dict[str, float], fast: str, slow: str, at_most: bool) -> None:
    """A target's verdict from the medians (the figure) and, beside it, from the fastest samples."""
    for suffix, field in (("", "figure"), (" min", "fastest")):
        figures["targets"].setdefault(key, {"threshold": threshold, "op": "<=" if at_most else ">="})
        ratio = times[fast + suffix] / times[slow + suffix]
        figures["targets"][key][field] = ratio
        figures["targets"][key]["pass" if not suffix else "pass_fastest"] = \
            ratio <= threshold if at_most else ratio >= threshold


with tempfile.TemporaryDirectory() as tmp:
    work = Path(tmp)
    (work / "factory.py").write_text(FACTORY)
    graphs = {label: convert(source, "step", Path(tmp)) for label, source in MODELS.items()}
    sequence = convert(["lstm-charlm"], "sequence", Path(tmp))

    if {"1", "2"} & sections:  # the memory run reuses the latency run's graphs
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

    if "3" in sections:
        # --- 3. many streams: StreamBatcher against a raw batched IO-binding run ---------------------
        lean_lstm = work / "lstm.step.refuse.onnx"
        convert_args(["lstm", "--form", "step", "--nan", "refuse"], lean_lstm, work)
        print(f"\nmany streams, seed lstm step graph (--nan refuse), 1 thread: us per tick, median of {ROUNDS} x "
              f"{TICKS} ticks")
        print(f"  {'S':>3s} {'raw IO binding':>15s} {'tick':>9s} {'step(dict)':>11s} {'tick/raw':>9s} {'step/raw':>9s}")
        rng = np.random.default_rng(1)
        for S in STREAMS:
            xs = rng.standard_normal((TICKS, S, INPUT)).astype(np.float32)
            t = per_call({"raw": binding_ticks(lean_lstm, xs), "tick": batcher_loop(lean_lstm, xs, True),
                          "step": batcher_loop(lean_lstm, xs, False)}, TICKS)
            figures["streams_us_per_tick"][str(S)] = t
            print(f"  {S:3d} {t['raw']:12.1f} us {t['tick']:6.1f} us {t['step']:8.1f} us "
                  f"{t['raw'] / t['tick']:8.2f}x {t['raw'] / t['step']:8.2f}x   fastest samples: "
                  f"{t['raw min'] / t['tick min']:.2f}x {t['raw min'] / t['step min']:.2f}x")
        for S, key in ((64, "tick_vs_binding_64"), (8, "tick_vs_binding_8")):
            # tick's speed over the raw run's: the raw run's time over tick's
            target(key, TARGETS[key], figures["streams_us_per_tick"][str(S)], "raw", "tick", at_most=False)

    if "4" in sections:
        # --- 4. the NaN policy: nodes, and the streaming step against eager PyTorch ---------------------
        print("\nthe NaN policy: nodes with --nan carry -> --nan refuse")
        for label, cli in POLICY_GRAPHS.items():
            counts = {nan: convert_args([*cli, "--nan", nan], work / f"policy.{nan}.onnx", work)["nodes"]
                      for nan in ("carry", "refuse")}
            figures["nan_policy"][label] = {"nodes": counts}
            print(f"  {label:34s} {counts['carry']:3d} -> {counts['refuse']:3d}")

        import torch  # from here on: the eager reference (after the memory figures)
        from safetensors.torch import save_file

        from rnnexport.source import cells

        torch.set_num_threads(1)
        generator = torch.Generator().manual_seed(0)
        print(f"\nstreaming step at B=1, 1 thread, I={INPUT} H={HIDDEN}: us per step, median of {ROUNDS} x "
              f"{LATENCY_STEPS // 4} steps")
        print(f"  {'cell':5s} {'eager step':>11s} {'raw carry':>10s} {'step carry':>11s} {'raw refuse':>11s} "
              f"{'step refuse':>12s} {'refuse/eager':>13s} {'max |y - eager|':>16s}")
        for kind in EAGER_CELLS:
            shapes = cells.param_shapes(kind, INPUT, HIDDEN)
            params = [torch.randn(shape, generator=generator) * 0.1 for shape in shapes.values()]
            weights = work / f"{kind}.safetensors"
            save_file(dict(zip(shapes, params, strict=True)), str(weights))
            paths = {nan: work / f"{kind}.step.{nan}.onnx" for nan in ("carry", "refuse")}
            for nan, path in paths.items():
                convert_args([kind, "--weights", str(weights), "--form", "step", "--nan", nan], path, work)
            xs = torch.from_numpy(rng.standard_normal((LATENCY_STEPS, 1, INPUT)).astype(np.float32))
            seed_fn = getattr(cells, kind)

            def eager(n: int, xs=xs, seed_fn=seed_fn, params=params, kind=kind) -> None:
                state = cells.init_state(kind, 1, HIDDEN)
                with torch.inference_mode():
                    for t in range(n):
                        _, state = seed_fn(xs[t % LATENCY_STEPS:t % LATENCY_STEPS + 1], state, params)

            loops = {"eager": eager}
            for nan, path in paths.items():
                loops[f"raw {nan}"] = binding_loop(path, 1)
                loops[f"step {nan}"] = runtime_loop(path, 1)
            t = per_step_us(loops, LATENCY_STEPS // 4, ROUNDS)
            stream = StatefulSession.load(paths["refuse"], threads=1)
            state, worst = cells.init_state(kind, 1, HIDDEN), 0.0
            with torch.inference_mode():
                for k in range(50):
                    want, state = seed_fn(xs[k:k + 1], state, params)
                    worst = max(worst, float(np.abs(stream.step(xs[k].numpy()) - want.numpy()).max()))
            figures["latency_us"][f"{kind} eager vs runtime (I={INPUT}, H={HIDDEN}), threads=1"] = {**t, "max_abs": worst}
            target(f"session_vs_eager_{kind}", TARGETS["session_vs_eager"], t, "step refuse", "eager", at_most=True)
            ratio, fastest = (figures["targets"][f"session_vs_eager_{kind}"][k] for k in ("figure", "fastest"))
            print(f"  {kind:5s} {t['eager']:8.1f} us {t['raw carry']:7.1f} us {t['step carry']:8.1f} us "
                  f"{t['raw refuse']:8.1f} us {t['step refuse']:9.1f} us {ratio:12.2f}x {worst:16.1e}   fastest "
                  f"samples: eager {t['eager min']:.1f}, raw {t['raw carry min']:.1f} / {t['raw refuse min']:.1f}, "
                  f"step {t['step carry min']:.1f} / {t['step refuse min']:.1f} us: {fastest:.2f}x")

figures["load_average_end"] = load_average()
print("\ntargets (one thread, ratios from this run; load average "
      f"{figures['load_average_start']} at the start, {figures['load_average_end']} at the end)")
for key, t in figures["targets"].items():
    print(f"  {'PASS' if t['pass'] else 'MISS'}  {key}: {t['figure']:.2f}x (needs {t['op']} {t['threshold']:g}x; "
          f"fastest samples {t['fastest']:.2f}x, {'PASS' if t['pass_fastest'] else 'MISS'})")

if args.json:
    Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
