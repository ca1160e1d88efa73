"""Benchmarks: sequence throughput, streaming step latency and export cost of each lowering.

For each seed cell (rnn, lstm, gru; input 28, hidden --hidden) with the same random
weights everywhere, in one process:

1. Sequence throughput over a grid of T x B: the eager PyTorch seed loop
   (``rnnexport.source.cells``), the equivalent torch.nn module (nn.RNN/LSTM/GRU + Linear
   head) on the same weights, and each rnnexport lowering under onnxruntime's CPU
   provider (native, scan; unrolled at one T). Medians of interleaved rounds after
   a warm-up.
2. Streaming step latency at B=1: the seed cell on a length-1 input, raw
   ``InferenceSession.run`` on the step graph, and ``StatefulSession.step`` on it and on the
   lean step graph (``convert --nan refuse``: no NaN guards; the runtime refuses NaN input).

Two floors frame the figures: ``gemm floor`` times only the recurrent matmuls
(T of ``(B, H) @ (H, G*H)`` in torch), the serial work no engine avoids;
``call floor`` is ``InferenceSession.run`` on Identity nodes with the step
graph's inputs and outputs, onnxruntime's cost of one call from Python.
3. Many streams at once (S = 1 ... 256; the lean step graphs of the seed LSTM and GRU and
   of the trained char models): aggregate steps per second of S independent
   ``StatefulSession`` streams, ``StreamBatcher.step`` (a dict per tick, one call),
   ``StreamBatcher.tick`` (an array of S rows in and out), a raw batched
   ``InferenceSession.run`` at B=S, a raw batched IO-binding run at B=S (x copied in, one
   ``run_with_iobinding``, y copied out), and the batched gemm floor (one
   ``(S, H) @ (H, G*H)`` per tick).
4. Export: wall time, node count and file size of each lowering.
5. The same sequence figures on CUDA when a GPU is present.

Then each performance target with PASS/MISS and its figure. Writes bench-results.json,
bench-speedup.png and bench-streams.png into --out (default out/bench in the working folder;
with --quick a new temporary folder per run), never into the checkout unless asked:
``--out docs`` replaces the figures the README and docs/performance.md show.

    python scripts/bench.py [--quick] [--hidden 256] [--threads 1] [--out DIR] [--json PATH] [--plot PATH]
                            [--plot-streams PATH]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from bench_plot import (  # scripts/ is on sys.path: python puts the script's folder there
    STREAM_ENGINES,
    draw_plots,
)
from onnx import helper
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnexport
from rnnexport.core.io import atomic_write
from rnnexport.source import cells
from rnnexport.testing import feeds, random_inputs, random_state

try:
    from rnnexport.runtime import StatefulSession, StreamBatcher
except ImportError:  # the torch-free runtime is optional here: its rows then say so
    StatefulSession = StreamBatcher = None

# --- configuration -------------------------------------------------------------------------------
CELLS = ("rnn", "lstm", "gru")
INPUT_SIZE = 28
WEIGHT_SCALE = 0.1  # weights and biases ~ N(0, 0.1^2): gates neither saturated nor linear
FULL = {
    "times": (1, 35, 500), "batches": (1, 8, 32), "unrolled_T": 35, "export_T": (35, 500),
    "budget_s": 2.0,      # sampling time per grid point, shared by its engines
    "min_rounds": 5, "max_rounds": 100,
    "min_sample_s": 0.005,  # calls per sample grow until a sample takes this long
    "stream_steps": 200,    # steps per streaming sample
    "streams": (1, 4, 8, 16, 64, 256), "multi_ticks": 20,  # streams at once; ticks per multi-stream sample
    "char_models": ("lstm-charlm", "gru-charlm", "rnn-charlm"),
    "ragged_T": (100, 500), "ragged_B": 32,  # ragged batches: 32 sequences, lengths uniform in 1..T
    "bundle_models": ("lstm-charlm", "lstm"), "bundle_runs": 20,  # bundle size and load time, weights shared or not
}
QUICK = {
    "times": (1, 5), "batches": (1, 2), "unrolled_T": 5, "export_T": (5,),
    "budget_s": 0.0, "min_rounds": 3, "max_rounds": 3, "min_sample_s": 0.0, "stream_steps": 5,
    "streams": (1, 4), "multi_ticks": 3, "char_models": ("gru-charlm",),
    "ragged_T": (5,), "ragged_B": 3, "bundle_models": ("lstm",), "bundle_runs": 2,
}
CUDA_POINTS = ((35, 1), (35, 32), (500, 32))  # (T, B) measured on the GPU (quick: the last grid point)
SEED_LOOPS = {"rnn": cells.rnn, "lstm": cells.lstm, "gru": cells.gru}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
TORCH_GATES = {"rnn": ("h",), "lstm": ("i", "f", "c", "o"), "gru": ("r", "z", "h")}  # seed suffixes in torch.nn order
TARGETS = {  # name: (what, comparison, threshold, unit of the figure)
    "native_vs_eager_B1": ("native >= 4x the eager seed loop at T={T}, B={B}", ">=", 4.0, "x"),
    "native_vs_eager_Bmax": ("native >= 1.5x the eager seed loop at T={T}, B={B}", ">=", 1.5, "x"),
    "native_vs_nn": ("native never slower than the torch.nn module: worst native/torch.nn", "<=", 1.0, "x"),
    "scan_vs_native": ("scan within 1.5x of native: worst scan/native", "<=", 1.5, "x"),
    "session_vs_raw": ("StatefulSession.step / raw InferenceSession.run", "<=", 1.15, "x"),
    "session_vs_eager": ("StatefulSession.step on the lean step graph / the eager PyTorch step", "<=", 0.4, "x"),
    "export_native": ("export native", "<", 1.0, "s"),
    "export_scan": ("export scan", "<", 10.0, "s"),
}
MULTI_TARGETS = {  # name: (what, engine over engine at the largest S up to 64, threshold), for the seed LSTM
    "batcher_vs_sessions": ("StreamBatcher >= 4x the aggregate steps/s of {S} independent StatefulSessions",
                            ("StreamBatcher", "StatefulSession x S"), 4.0),
    "batcher_vs_raw": ("StreamBatcher >= 0.8x a raw batched InferenceSession.run at B={S}",
                       ("StreamBatcher", "InferenceSession.run B=S"), 0.8),
    "tick_vs_binding": ("StreamBatcher.tick >= 0.95x a raw batched IO-binding run at B={S}",
                        ("StreamBatcher.tick", "IO binding B=S"), 0.95),
}
#: The same as a multi-stream target, at 8 streams.
TICK_AT_8 = ("tick_vs_binding_8", "StreamBatcher.tick >= 0.85x a raw batched IO-binding run at B=8", 8, 0.85)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="a tiny grid in seconds (hidden 16, 3 rounds)")
parser.add_argument("--hidden", type=int, default=None, help="hidden size (default 256; quick: 16)")
parser.add_argument("--threads", type=int, default=1, help="intra-op threads of torch and onnxruntime")
parser.add_argument("--unrolled-500", default="rnn", metavar="CELLS",
                    help="cells whose unrolled graph is also exported at the largest export T: comma list, "
                         "'all' or 'none' (default rnn; the lstm's takes ~10 minutes)")
parser.add_argument("--out", default=None, metavar="DIR",
                    help="folder for the figures and plots (default out/bench; --quick: a new temporary folder); "
                         "--out docs replaces the published ones")
parser.add_argument("--json", default=None, help="where to write the figures (default OUT/bench-results.json)")
parser.add_argument("--plot", default=None, help="where to draw the speed-ups (default OUT/bench-speedup.png)")
parser.add_argument("--plot-streams", default=None,
                    help="where to draw throughput vs streams (default OUT/bench-streams.png)")
args = parser.parse_args()
if args.out:
    out_dir = Path(args.out)
elif args.quick:  # a folder of its own: concurrent quick runs never share one
    out_dir = Path(tempfile.mkdtemp(prefix="rnnexport-bench-quick-"))
else:
    out_dir = Path("out") / "bench"
args.json = args.json or str(out_dir / "bench-results.json")
args.plot = args.plot or str(out_dir / "bench-speedup.png")
args.plot_streams = args.plot_streams or str(out_dir / "bench-streams.png")

cfg = QUICK if args.quick else FULL
hidden = args.hidden or (16 if args.quick else 256)
long_unrolled = {"all": set(CELLS), "none": set()}.get(args.unrolled_500, set(args.unrolled_500.split(",")))
if not long_unrolled <= set(CELLS):
    parser.error(f"--unrolled-500: expected cells among {', '.join(CELLS)}, 'all' or 'none'")
torch.set_num_threads(args.threads)
rng = np.random.default_rng(0)
generator = torch.Generator().manual_seed(0)
work = Path(tempfile.mkdtemp(prefix="rnnexport-bench-"))


def measure(fns: dict) -> tuple[dict[str, float], int]:
    """Median seconds per call of each function, sampled in interleaved rounds after a warm-up.

    Interleaving spreads a busy machine's noise over every engine alike instead of
    charging it to whichever ran while another process was busy.
    """
    calls, round_s = {}, 0.0
    for name, fn in fns.items():
        fn()  # warm-up: allocations, onnxruntime's first-shape planning
        start = time.perf_counter()
        fn()
        once = time.perf_counter() - start
        calls[name] = max(1, math.ceil(cfg["min_sample_s"] / max(once, 1e-7)))
        round_s += once * calls[name]
    rounds = min(cfg["max_rounds"], max(cfg["min_rounds"], int(cfg["budget_s"] / max(round_s, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / calls[name])
    return {name: statistics.median(s) for name, s in samples.items()}, rounds


def session_options() -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def cpu_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])


class TorchNet(torch.nn.Module):
    """torch.nn's layer on the seed's weights and the seed's output head: ``(x, state) -> (y, state)``."""

    def __init__(self, kind: str, named: dict[str, torch.Tensor]) -> None:
        super().__init__()
        layer = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
        self.rnn = layer(INPUT_SIZE, hidden)
        self.head = torch.nn.Linear(hidden, named["W_hq"].shape[1])
        gates = TORCH_GATES[kind]
        with torch.no_grad():
            self.rnn.weight_ih_l0.copy_(torch.cat([named[f"W_x{g}"].T for g in gates]))
            self.rnn.weight_hh_l0.copy_(torch.cat([named[f"W_h{g}"].T for g in gates]))
            self.rnn.bias_ih_l0.copy_(torch.cat([named[f"b_{g}"] for g in gates]))
            self.rnn.bias_hh_l0.zero_()
            self.head.weight.copy_(named["W_hq"].T)
            self.head.bias.copy_(named["b_q"])

    def forward(self, x, state):
        y, state = self.rnn(x, state)
        return self.head(y), state


def nn_state(state: list[torch.Tensor]):
    """Seed state ``(B, H)`` tensors as torch.nn's ``(1, B, H)`` (a tuple for the LSTM)."""
    unsq = [s.unsqueeze(0) for s in state]
    return unsq[0] if len(unsq) == 1 else tuple(unsq)


def synchronized(fn, *fn_args):
    """Call ``fn`` and wait for the GPU, so that its time is the work's and not the launch's."""
    out = fn(*fn_args)
    torch.cuda.synchronize()
    return out


def cuda_session(path: Path, feed: dict) -> tuple[ort.InferenceSession | None, str]:
    """A session that really runs ``path`` on CUDA, or None and why not (a CPU fallback never counts)."""
    try:
        session = ort.InferenceSession(str(path), session_options(),
                                       providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        session.run(None, feed)
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors for an op the provider lacks vary
        return None, f"onnxruntime CUDA failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    if session.get_providers()[0] != "CUDAExecutionProvider":
        return None, f"onnxruntime's CUDA provider did not start (session runs on {session.get_providers()})"
    return session, ""


def max_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def gemm_floor(h: torch.Tensor, R: torch.Tensor, steps: int) -> None:
    """The serial work no engine avoids: one ``(B, H) @ (H, G*H)`` matmul per time step."""
    for _ in range(steps):
        torch.mm(h, R)


def identity_graph(io) -> onnx.ModelProto:
    """A step graph's inputs and outputs joined by Identity nodes: onnxruntime's cost of one call."""
    ins, outs = io.inputs(rnnexport.Form.STEP), io.outputs(rnnexport.Form.STEP)
    assert [s.shape for s in ins] == [s.shape for s in outs], "x and y must have one shape here"
    graph = helper.make_graph(
        [helper.make_node("Identity", [i.name], [o.name]) for i, o in zip(ins, outs, strict=True)], "identity",
        [helper.make_tensor_value_info(s.name, onnx.TensorProto.FLOAT, s.shape) for s in ins],
        [helper.make_tensor_value_info(s.name, onnx.TensorProto.FLOAT, s.shape) for s in outs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def eager_stream(kind: str, xs: torch.Tensor, ps: list[torch.Tensor]) -> None:
    """The seed cell fed one step at a time (a length-1 input), its state carried by hand."""
    fn, state = SEED_LOOPS[kind], cells.init_state(kind, 1, hidden)
    for t in range(xs.shape[0]):
        _, state = fn(xs[t:t + 1], state, ps)


def raw_stream(session: ort.InferenceSession, io, xs: np.ndarray) -> None:
    """``InferenceSession.run`` on the step graph, the state outputs fed back as inputs."""
    state = [np.zeros(io.state.shape(i, 1), io.state.dtype) for i in range(len(io.state.names))]
    for t in range(xs.shape[0]):
        state = session.run(None, feeds(io, xs[t], state))[1:]


def session_stream(stream, xs: np.ndarray) -> None:
    """``StatefulSession.step`` from the zero state."""
    stream.reset()
    for t in range(xs.shape[0]):
        stream.step(xs[t])


def independent_streams(streams: list, xs: np.ndarray) -> None:
    """S one-stream ``StatefulSession`` streams of one loaded graph, each stepped once per tick."""
    for t in range(xs.shape[0]):
        for i, stream in enumerate(streams):
            stream.step(xs[t, i:i + 1])


def batcher_ticks(batcher, ticks: list[dict]) -> None:
    """``StreamBatcher.step`` once per tick (the input dicts are made beforehand, as an app has them)."""
    for inputs in ticks:
        batcher.step(inputs)


def tick_arrays(batcher, xs: np.ndarray) -> None:
    """``StreamBatcher.tick`` once per tick: the S streams' rows in joining order, an array in and out."""
    for t in range(xs.shape[0]):
        batcher.tick(xs[t])


def binding_batched(path: Path, io, xs: np.ndarray):
    """A raw batched IO-binding loop at B=S on ``xs`` (ticks, S, ...): x copied in, one call, y copied out,
    two bindings made once with the state buffers swapped. What ``StreamBatcher.tick`` adds to."""
    session, S = cpu_session(path), xs.shape[1]
    value = ort.OrtValue.ortvalue_from_numpy
    x = np.zeros((S, *io.x_features), io.x_dtype)
    y = np.zeros((S, *io.y_features), io.y_dtype)
    sets = [io.state.zeros(S) for _ in range(2)]
    bindings = []
    for reads in (0, 1):
        binding = session.io_binding()
        binding.bind_ortvalue_input(session.get_inputs()[0].name, value(x))
        binding.bind_ortvalue_output(session.get_outputs()[0].name, value(y))
        for name, out, a, b in zip(io.state.names, io.state.output_names, sets[reads], sets[1 - reads], strict=True):
            binding.bind_ortvalue_input(name, value(a))
            binding.bind_ortvalue_output(out, value(b))
        bindings.append(binding)

    def loop() -> None:
        for t in range(xs.shape[0]):
            np.copyto(x, xs[t])
            session.run_with_iobinding(bindings[t & 1])
            y.copy()
    return loop


def raw_batched(session: ort.InferenceSession, io, xs: np.ndarray) -> None:
    """``InferenceSession.run`` at B=S, the state outputs fed back: what the batcher's bookkeeping adds to."""
    state = io.state.zeros(xs.shape[1])
    for t in range(xs.shape[0]):
        state = session.run(None, feeds(io, xs[t], state))[1:]


def same_as_alone(path: Path, xs: np.ndarray) -> bool:
    """Whether the batcher's y equals, bit for bit, each stream's own ``StatefulSession`` over ``xs``."""
    batcher = StreamBatcher.load(path, threads=args.threads, session_options=session_options(),
                                 max_batch=xs.shape[1])
    ids = [batcher.join() for _ in range(xs.shape[1])]
    alone = StatefulSession.load(path, threads=args.threads, session_options=session_options())
    streams = [alone.new_stream() for _ in ids]
    for t in range(xs.shape[0]):
        ys = batcher.step({i: xs[t, i:i + 1] for i in ids})
        if not all(np.array_equal(ys[i], stream.step(xs[t, i:i + 1])) for i, stream in zip(ids, streams, strict=True)):
            return False
    return True


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


# --- models: the same weights for the seed loop, torch.nn and every export ----------------------
print(f"rnnexport benchmark: hidden {hidden}, input {INPUT_SIZE}, threads {args.threads}"
      f"{', quick' if args.quick else ''}; exports in {work}", flush=True)
models, params, nets, nn_vs_seed = {}, {}, {}, {}
for kind in CELLS:
    shapes = cells.param_shapes(kind, INPUT_SIZE, hidden)
    params[kind] = [torch.randn(s, generator=generator) * WEIGHT_SCALE for s in shapes.values()]
    models[kind] = rnnexport.builtin(kind, input_size=INPUT_SIZE, hidden_size=hidden, params=params[kind])
    nets[kind] = TorchNet(kind, dict(zip(shapes, params[kind], strict=True))).eval()
    x = torch.from_numpy(random_inputs(models[kind].io, rnnexport.Form.SEQUENCE, 2, 5, rng))
    state = [torch.from_numpy(s) for s in random_state(models[kind].io, 2, rng, 0.5)]
    with torch.inference_mode():
        want, _ = SEED_LOOPS[kind](x, state, params[kind])
        got, _ = nets[kind](x, nn_state(state))
    nn_vs_seed[kind] = max_abs(got.reshape(want.shape), want)
print("torch.nn module vs seed loop, same weights (max abs y): "
      + ", ".join(f"{k} {v:.1e}" for k, v in nn_vs_seed.items())
      + "  (gru: torch.nn.GRU is linear_before_reset=1, the seed's GRU 0: a slightly different function)")

# --- export: wall time, nodes and size per lowering ---------------------------------------------
rnnexport.convert(rnnexport.builtin("lstm", input_size=4, hidden_size=4), work / "warmup.onnx",
                  lowering="scan")  # one untimed trace: torch.onnx's first use imports and compiles a lot
export_rows, graphs = [], {}
for kind in CELLS:
    jobs = [("native", None, "sequence"), ("scan", None, "sequence"), ("native", None, "step")]
    jobs += [("unrolled", t, "sequence") for t in cfg["export_T"]
             if t == cfg["unrolled_T"] or kind in long_unrolled]
    for lowering, seq_len, form in jobs:
        label = f"{lowering}@T={seq_len}" if seq_len else lowering + (" step" if form == "step" else "")
        print(f"  export {kind} {label}...", flush=True)
        start = time.perf_counter()
        result = rnnexport.convert(models[kind], work / f"{kind}.{form}.{lowering}.{seq_len or 'T'}.onnx",
                                   form=form, lowering=lowering, seq_len=seq_len)
        seconds = time.perf_counter() - start
        graphs[(kind, form, lowering, seq_len)] = result.path
        export_rows.append({
            "cell": kind, "form": form, "lowering": lowering, "T": seq_len, "nan": "carry", "seconds": seconds,
            "nodes": result.nodes, "bytes": result.size_bytes,
            "note": f"fixed T={seq_len}" if seq_len else "same file for every T",
        })
    start = time.perf_counter()
    lean = rnnexport.convert(models[kind], work / f"{kind}.step.native.lean.onnx", form="step", nan="refuse")
    graphs[(kind, "step", "lean", None)] = lean.path
    export_rows.append({"cell": kind, "form": "step", "lowering": "native", "T": None, "nan": "refuse",
                        "seconds": time.perf_counter() - start, "nodes": lean.nodes, "bytes": lean.size_bytes,
                        "note": "--nan refuse: no NaN guards"})
    skipped = [t for t in cfg["export_T"] if t != cfg["unrolled_T"] and kind not in long_unrolled]
    for t in skipped:
        export_rows.append({"cell": kind, "form": "sequence", "lowering": "unrolled", "T": t, "seconds": None,
                            "nodes": None, "bytes": None,
                            "note": f"not measured in this run (--unrolled-500 {kind} measures it)"})

# --- sequence throughput on CPU ------------------------------------------------------------------
sequence_rows = []
recurrent = {kind: torch.randn(hidden, GATES[kind] * hidden, generator=generator) for kind in CELLS}
sessions = {key: cpu_session(path) for key, path in graphs.items() if key[1] == "sequence"}
with torch.inference_mode():
    for kind in CELLS:
        io, fn, net, ps = models[kind].io, SEED_LOOPS[kind], nets[kind], params[kind]
        for T in cfg["times"]:
            for B in cfg["batches"]:
                x = random_inputs(io, rnnexport.Form.SEQUENCE, B, T, rng)
                state = random_state(io, B, rng, 0.5)
                xt, st = torch.from_numpy(x), [torch.from_numpy(s) for s in state]
                nst, feed = nn_state(st), feeds(io, x, state)
                engines = {"eager": functools.partial(fn, xt, st, ps), "torch.nn": functools.partial(net, xt, nst),
                           "gemm floor": functools.partial(gemm_floor, st[0], recurrent[kind], T)}
                lowerings = {"native": (kind, "sequence", "native", None), "scan": (kind, "sequence", "scan", None)}
                if T == cfg["unrolled_T"]:
                    lowerings["unrolled"] = (kind, "sequence", "unrolled", T)
                for name, key in lowerings.items():
                    engines[name] = functools.partial(sessions[key].run, None, feed)
                want = fn(xt, st, ps)[0].numpy().reshape(T, B, -1)
                outputs = {"eager": want, "torch.nn": net(xt, nst)[0].numpy(), "gemm floor": None}
                outputs |= {name: sessions[key].run(None, feed)[0] for name, key in lowerings.items()}
                medians, rounds = measure(engines)
                for name, seconds in medians.items():
                    sequence_rows.append({
                        "cell": kind, "T": T, "B": B, "engine": name, "device": "cpu", "ms": seconds * 1e3,
                        "steps_per_s": T * B / seconds, "speedup_vs_eager": medians["eager"] / seconds,
                        "max_abs_vs_eager": None if outputs[name] is None else max_abs(outputs[name], want),
                        "rounds": rounds,
                    })
                line = "  ".join(f"{n} {s * 1e3:.3f}" for n, s in medians.items())
                print(f"  {kind:4s} T={T:<3d} B={B:<2d} ms: {line}", flush=True)

# --- streaming step latency at B=1 ---------------------------------------------------------------
stream_rows = []
steps = cfg["stream_steps"]
with torch.inference_mode():
    for kind in CELLS:
        io = models[kind].io
        xs = random_inputs(io, rnnexport.Form.SEQUENCE, 1, steps, rng)  # (steps, 1, I): one x per step
        step_path = graphs[(kind, "step", "native", None)]
        engines = {
            "eager step": functools.partial(eager_stream, kind, torch.from_numpy(xs), params[kind]),
            "InferenceSession.run": functools.partial(raw_stream, cpu_session(step_path), io, xs),
            "call floor": functools.partial(raw_stream, ort.InferenceSession(
                identity_graph(io).SerializeToString(), session_options(), providers=["CPUExecutionProvider"]), io, xs),
        }
        if StatefulSession is not None:
            stream = StatefulSession.load(step_path, threads=args.threads, session_options=session_options())
            engines["StatefulSession.step"] = functools.partial(session_stream, stream, xs)
            lean = StatefulSession.load(graphs[(kind, "step", "lean", None)], threads=args.threads,
                                        session_options=session_options())
            engines["StatefulSession.step (lean)"] = functools.partial(session_stream, lean, xs)
        medians, rounds = measure(engines)
        for name, seconds in medians.items():
            stream_rows.append({"cell": kind, "engine": name, "us_per_step": seconds / steps * 1e6,
                                "steps": steps, "rounds": rounds})
        if StatefulSession is None:
            for name in ("StatefulSession.step", "StatefulSession.step (lean)"):
                stream_rows.append({"cell": kind, "engine": name, "us_per_step": None,
                                    "status": "runtime not available"})
        line = "  ".join(f"{n} {s / steps * 1e6:.1f}" for n, s in medians.items())
        print(f"  {kind:4s} step us: {line}", flush=True)

# --- many streams at once -----------------------------------------------------------------------
multi_rows, multi_models = [], {}
for kind in ("lstm", "gru"):
    multi_models[kind] = (graphs[(kind, "step", "lean", None)], models[kind].io, kind, hidden)
for name in cfg["char_models"]:
    result = rnnexport.convert(name, work / f"{name}.step.onnx", form="step", nan="refuse")
    io = result.info.io
    multi_models[name] = (result.path, io, result.info.cell_family, io.state.dims[0][-1])
ticks = cfg["multi_ticks"]
with torch.inference_mode():
    for name, (path, io, family, size) in multi_models.items():
        if StatefulSession is None:
            multi_rows.append({"model": name, "S": None, "engine": "StreamBatcher", "steps_per_s": None,
                               "status": "runtime not available"})
            continue
        exact = same_as_alone(path, random_inputs(io, rnnexport.Form.SEQUENCE, 4, 3, rng))
        for S in cfg["streams"]:
            xs = random_inputs(io, rnnexport.Form.SEQUENCE, S, ticks, rng)  # (ticks, S, I)
            alone = StatefulSession.load(path, threads=args.threads, session_options=session_options())
            batcher = StreamBatcher.load(path, threads=args.threads, session_options=session_options(),
                                         max_batch=max(cfg["streams"]))
            ids = [batcher.join() for _ in range(S)]
            per_tick = [{i: xs[t, i:i + 1] for i in ids} for t in range(ticks)]
            R = torch.randn(size, GATES[family] * size, generator=generator)
            ticker = StreamBatcher.load(path, threads=args.threads, session_options=session_options(),
                                        max_batch=max(cfg["streams"]))
            for _ in ids:
                ticker.join()
            engines = {
                "StatefulSession x S": functools.partial(independent_streams, [alone.new_stream() for _ in ids], xs),
                "StreamBatcher": functools.partial(batcher_ticks, batcher, per_tick),
                "StreamBatcher.tick": functools.partial(tick_arrays, ticker, xs),
                "InferenceSession.run B=S": functools.partial(raw_batched, cpu_session(path), io, xs),
                "IO binding B=S": binding_batched(path, io, xs),
                "batched gemm floor": functools.partial(gemm_floor, torch.randn(S, size, generator=generator), R,
                                                        ticks),
            }
            medians, rounds = measure(engines)
            for engine, seconds in medians.items():
                row = {"model": name, "S": S, "engine": engine, "steps_per_s": S * ticks / seconds,
                       "us_per_tick": seconds / ticks * 1e6, "rounds": rounds}
                if engine == "StreamBatcher":
                    row["bit_equal_to_sessions"] = exact
                multi_rows.append(row)
            line = "  ".join(f"{e} {S * ticks / v:,.0f}" for e, v in medians.items())
            print(f"  {name:11s} S={S:<3d} steps/s: {line}", flush=True)


def multi_rate(model: str, S: int, engine: str) -> float | None:
    return next((r["steps_per_s"] for r in multi_rows if (r["model"], r["S"], r["engine"]) == (model, S, engine)),
                None)


multi_S = max(S for S in cfg["streams"] if S <= 64)
multi_targets = []
for key, (text, (fast, slow), threshold) in MULTI_TARGETS.items():
    fast_rate, slow_rate = multi_rate("lstm", multi_S, fast), multi_rate("lstm", multi_S, slow)
    figure = fast_rate / slow_rate if fast_rate and slow_rate else None
    multi_targets.append({"target": key, "cell": "lstm", "text": text.format(S=multi_S), "figure": figure,
                          "op": ">=", "threshold": threshold, "unit": "x", "where": f"S={multi_S}",
                          "pass": None if figure is None else bool(figure >= threshold)})
key, text, S8, threshold = TICK_AT_8
fast_rate, slow_rate = multi_rate("lstm", S8, "StreamBatcher.tick"), multi_rate("lstm", S8, "IO binding B=S")
figure = fast_rate / slow_rate if fast_rate and slow_rate else None
multi_targets.append({"target": key, "cell": "lstm", "text": text, "figure": figure, "op": ">=",
                      "threshold": threshold, "unit": "x", "where": f"S={S8}",
                      "pass": None if figure is None else bool(figure >= threshold),
                      **({} if figure is not None else {"status": "runtime not available" if StatefulSession is None
                                                        else f"not measured: S={S8} is not among this run's streams"})})

# --- ragged batches: one call with a lengths input vs PyTorch's packed run vs one call per sequence ---
ragged_rows, ragged_targets = [], []
RAGGED_LAYERS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def nn_zero_state(kind: str, B: int) -> list[np.ndarray]:
    return [np.zeros((1, B, hidden), np.float32) for _ in range(2 if kind == "lstm" else 1)]


def ragged_feed(names: list[str], x: np.ndarray, state: list[np.ndarray], lengths=None) -> dict:
    return dict(zip(names, [x, *state] if lengths is None else [x, *state, lengths], strict=True))


def packed_torch(layer, xt: torch.Tensor, lengths: torch.Tensor) -> None:
    packed = pack_padded_sequence(xt, lengths, enforce_sorted=False)
    pad_packed_sequence(layer(packed)[0], total_length=xt.shape[0])


def separate_calls(session: ort.InferenceSession, names: list[str], kind: str, x: np.ndarray,
                   lengths: np.ndarray) -> None:
    for b, n in enumerate(lengths):
        session.run(None, ragged_feed(names, x[:n, b:b + 1], nn_zero_state(kind, 1)))


with torch.inference_mode():
    for kind, layer_type in RAGGED_LAYERS.items():
        layer = layer_type(INPUT_SIZE, hidden).eval()
        plain = rnnexport.convert(layer, work / f"ragged.{kind}.onnx")
        ragged = rnnexport.convert(layer, work / f"ragged.{kind}.lengths.onnx", lengths=True)
        with_lengths, without = cpu_session(ragged.path), cpu_session(plain.path)
        names = [i.name for i in with_lengths.get_inputs()]
        B = cfg["ragged_B"]
        for T in cfg["ragged_T"]:
            x = rng.standard_normal((T, B, INPUT_SIZE)).astype(np.float32)
            lengths = rng.integers(1, T + 1, B).astype(np.int64)  # uniform in 1..T, unsorted
            full = np.full(B, T, np.int64)
            xt, state = torch.from_numpy(x), nn_zero_state(kind, B)
            engines = {
                "one call, lengths": functools.partial(with_lengths.run, None, ragged_feed(names, x, state, lengths)),
                "torch packed": functools.partial(packed_torch, layer, xt, torch.from_numpy(lengths)),
                f"{B} separate calls": functools.partial(separate_calls, without, names[:-1], kind, x, lengths),
                "full batch, lengths": functools.partial(with_lengths.run, None, ragged_feed(names, x, state, full)),
                "full batch, no lengths": functools.partial(without.run, None, ragged_feed(names[:-1], x, state)),
            }
            got = with_lengths.run(None, ragged_feed(names, x, state, lengths))[0]
            want = pad_packed_sequence(layer(pack_padded_sequence(xt, torch.from_numpy(lengths),
                                                                  enforce_sorted=False))[0], total_length=T)[0]
            medians, rounds = measure(engines)
            error = max_abs(got, want.numpy())
            for engine, seconds in medians.items():
                ragged_rows.append({"cell": kind, "T": T, "B": B, "engine": engine, "ms": seconds * 1e3,
                                    "rounds": rounds, "lengths": "T" if engine.startswith("full") else "1..T",
                                    **({"max_abs_vs_torch_packed": error} if engine == "one call, lengths" else {})})
            line = "  ".join(f"{e} {s * 1e3:.2f}" for e, s in medians.items())
            print(f"  ragged {kind:4s} T={T:<3d} B={B} ms: {line}", flush=True)
            if T != cfg["ragged_T"][0]:
                continue
            one = medians["one call, lengths"]
            for key, figure, op, threshold in (
                ("ragged_vs_packed", medians["torch packed"] / one, ">=", 1.3),
                ("ragged_vs_separate", medians[f"{B} separate calls"] / one, ">=", 5.0),
                ("lengths_overhead", medians["full batch, lengths"] / medians["full batch, no lengths"], "<=", 1.10),
            ):
                text = {"ragged_vs_packed": "one ragged call >= 1.3x faster than PyTorch's packed module",
                        "ragged_vs_separate": f"one ragged call >= 5x faster than {B} separate calls",
                        "lengths_overhead": "a lengths input costs <= 10% on a full batch"}[key]
                ok = figure >= threshold if op == ">=" else figure <= threshold
                ragged_targets.append({"target": key, "cell": kind, "text": text, "figure": figure, "op": op,
                                       "threshold": threshold, "unit": "x", "where": f"T={T} B={B}",
                                       "pass": bool(ok)})

# --- bundles: size and load time with the weights of the sequence and step graphs stored once, and twice ---
bundle_rows: list[dict] = []
bundle_targets: list[dict] = []
if StatefulSession is not None:  # load times are the runtime's
    from bench_bundle import measure_bundles

    print("  bundles: packaging " + ", ".join(cfg["bundle_models"]) + " with and without shared weights...", flush=True)
    bundle_rows, bundle_targets = measure_bundles(cfg["bundle_models"], cfg["bundle_runs"], work / "bundles")

# --- CUDA, when a GPU is present -----------------------------------------------------------------
cuda = {"status": "no GPU", "reason": "torch.cuda.is_available() is False", "rows": []}
if torch.cuda.is_available():
    probe_io = models["lstm"].io
    probe_feed = feeds(probe_io, random_inputs(probe_io, rnnexport.Form.SEQUENCE, 1, 2, rng),
                       random_state(probe_io, 1, rng))
    probe, reason = cuda_session(graphs[("lstm", "sequence", "native", None)], probe_feed)
    cuda = {"status": "ok", "reason": torch.cuda.get_device_name(0), "rows": []} if probe else \
        {"status": "no GPU", "reason": reason, "rows": []}
if cuda["status"] == "ok":
    points = CUDA_POINTS if not args.quick else ((cfg["times"][-1], cfg["batches"][-1]),)
    with torch.inference_mode():
        for kind in CELLS:
            io, fn = models[kind].io, SEED_LOOPS[kind]
            ps, net = [p.cuda() for p in params[kind]], copy.deepcopy(nets[kind]).cuda()
            for T, B in points:
                x, state = random_inputs(io, rnnexport.Form.SEQUENCE, B, T, rng), random_state(io, B, rng, 0.5)
                xt, st = torch.from_numpy(x).cuda(), [torch.from_numpy(s).cuda() for s in state]
                nst, feed = nn_state(st), feeds(io, x, state)
                engines = {
                    "eager": functools.partial(synchronized, fn, xt, st, ps),
                    "torch.nn": functools.partial(synchronized, net, xt, nst),
                }
                for low in ("native", "scan"):  # numpy in and out: the copies are part of the figure
                    session, reason = cuda_session(graphs[(kind, "sequence", low, None)], feed)
                    if session is None:
                        cuda["rows"].append({"cell": kind, "T": T, "B": B, "engine": low, "device": "cuda",
                                             "ms": None, "status": reason})
                    else:
                        engines[low] = functools.partial(session.run, None, feed)
                medians, rounds = measure(engines)
                for name, seconds in medians.items():
                    cuda["rows"].append({
                        "cell": kind, "T": T, "B": B, "engine": name, "device": "cuda", "ms": seconds * 1e3,
                        "steps_per_s": T * B / seconds, "speedup_vs_eager": medians["eager"] / seconds,
                        "rounds": rounds,
                    })
else:
    cuda["rows"] = [{"cell": kind, "engine": engine, "device": "cuda", "ms": None, "status": "no GPU"}
                    for kind in CELLS for engine in ("eager", "torch.nn", "native", "scan")]

# --- targets -------------------------------------------------------------------------------------
def seq_ms(kind: str, T: int, B: int, engine: str) -> float:
    return next(r["ms"] for r in sequence_rows
                if (r["cell"], r["T"], r["B"], r["engine"]) == (kind, T, B, engine))


def worst_ratio(kind: str, slow: str, fast: str) -> tuple[float, str]:
    """The largest ``slow / fast`` time ratio over the grid, and where it is."""
    ratios = [(seq_ms(kind, T, B, slow) / seq_ms(kind, T, B, fast), f"T={T} B={B}")
              for T in cfg["times"] for B in cfg["batches"]]
    return max(ratios)


def stream_us(kind: str, engine: str) -> float | None:
    return next(r["us_per_step"] for r in stream_rows if (r["cell"], r["engine"]) == (kind, engine))


def export_s(kind: str, lowering: str) -> float:
    return next(r["seconds"] for r in export_rows
                if (r["cell"], r["form"], r["lowering"]) == (kind, "sequence", lowering))


target_T, b_small, b_large = cfg["unrolled_T"], cfg["batches"][0], cfg["batches"][-1]
targets = []
for kind in CELLS:
    figures = {  # target: (figure, where it was measured)
        "native_vs_eager_B1": (seq_ms(kind, target_T, b_small, "eager") / seq_ms(kind, target_T, b_small, "native"),
                               f"T={target_T} B={b_small}"),
        "native_vs_eager_Bmax": (seq_ms(kind, target_T, b_large, "eager") / seq_ms(kind, target_T, b_large, "native"),
                                 f"T={target_T} B={b_large}"),
        "native_vs_nn": worst_ratio(kind, "native", "torch.nn"),
        "scan_vs_native": worst_ratio(kind, "scan", "native"),
    }
    session_us = stream_us(kind, "StatefulSession.step")
    if session_us is not None:
        figures["session_vs_raw"] = (session_us / stream_us(kind, "InferenceSession.run"), "B=1")
        lean_us = stream_us(kind, "StatefulSession.step (lean)")
        figures["session_vs_eager"] = (lean_us / stream_us(kind, "eager step"), "B=1, lean step graph")
    figures["export_native"] = (export_s(kind, "native"), "sequence graph")
    figures["export_scan"] = (export_s(kind, "scan"), "sequence graph")
    for key, (figure, where) in figures.items():
        text, op, threshold, unit = TARGETS[key]
        ok = figure >= threshold if op == ">=" else figure <= threshold if op == "<=" else figure < threshold
        text = text.format(T=target_T, B=b_small if key.endswith("B1") else b_large)
        targets.append({"target": key, "cell": kind, "text": text,
                        "figure": figure, "op": op, "threshold": threshold, "unit": unit, "where": where,
                        "pass": bool(ok)})
    if session_us is None:
        for key in ("session_vs_raw", "session_vs_eager"):
            text, op, threshold, unit = TARGETS[key]
            targets.append({"target": key, "cell": kind, "text": text, "figure": None, "op": op,
                            "threshold": threshold, "unit": unit, "where": "B=1", "pass": None,
                            "status": "runtime not available"})

# --- the report ----------------------------------------------------------------------------------
engines_order = ["eager", "torch.nn", "native", "scan", "unrolled", "gemm floor"]
print(f"\nSequence throughput, CPU, {args.threads} thread(s), hidden {hidden}: ms per call "
      "(speed-up over the eager seed loop)")
print(f"{'cell':5s} {'T':>4s} {'B':>3s} " + " ".join(f"{e:>17s}" for e in engines_order))
for kind in CELLS:
    for T in cfg["times"]:
        for B in cfg["batches"]:
            cols = []
            for engine in engines_order:
                row = next((r for r in sequence_rows if (r["cell"], r["T"], r["B"], r["engine"]) ==
                            (kind, T, B, engine)), None)
                cols.append(f"{row['ms']:9.3f} ({row['speedup_vs_eager']:5.1f}x)" if row else f"{'-':>17s}")
            print(f"{kind:5s} {T:4d} {B:3d} " + " ".join(cols))
print("\nStreaming step latency, B=1: us per step")
stream_engines = ["eager step", "InferenceSession.run", "StatefulSession.step", "StatefulSession.step (lean)",
                  "call floor"]
print(f"{'cell':5s} " + " ".join(f"{e:>21s}" for e in stream_engines))
for kind in CELLS:
    values = [stream_us(kind, e) for e in stream_engines]
    print(f"{kind:5s} " + " ".join(f"{v:21.1f}" if v is not None else f"{'runtime not available':>21s}"
                                   for v in values))
print(f"\nMany streams, CPU, {args.threads} thread(s): aggregate steps/s (batcher over S sessions, over raw B=S)")
print(f"{'model':11s} {'S':>4s} " + " ".join(f"{e:>24s}" for e in STREAM_ENGINES)
      + f" {'vs S':>6s} {'vs raw':>6s} {'tick vs binding':>15s}")
for name in multi_models:
    for S in cfg["streams"]:
        rates = [multi_rate(name, S, e) for e in STREAM_ENGINES]
        if None in rates:
            continue
        print(f"{name:11s} {S:4d} " + " ".join(f"{v:24,.0f}" for v in rates)
              + f" {rates[1] / rates[0]:5.2f}x {rates[1] / rates[3]:5.2f}x {rates[2] / rates[4]:14.2f}x")
exact = {r["model"]: r["bit_equal_to_sessions"] for r in multi_rows if "bit_equal_to_sessions" in r}
print("batcher y bit-equal to one session per stream: " + ", ".join(f"{k} {v}" for k, v in exact.items())
      + "  (plain-RNN step graphs are Gemm + Tanh: the RNN operator's kernel rounds a batch of one "
      + "differently, docs/embedding.md)")
for t in multi_targets:
    verdict = "----" if t["pass"] is None else "PASS" if t["pass"] else "MISS"
    figure = t.get("status", "runtime not available") if t["figure"] is None else f"{t['figure']:.2f} x"
    print(f"  {verdict}  {t['cell']:5s} {t['text']}: {figure} ({t['where']}; needs >= {t['threshold']:g})")
print("\nExport: wall time (in-process, after one warm-up trace), nodes, file size")
for r in export_rows:
    what = (f"{r['lowering']}{' step' if r['form'] == 'step' else ''}" + (f" T={r['T']}" if r["T"] else "")
            + (" lean" if r.get("nan") == "refuse" else ""))
    if r["seconds"] is None:
        print(f"  {r['cell']:5s} {what:18s} {r['note']}")
    else:
        print(f"  {r['cell']:5s} {what:18s} {r['seconds']:8.2f} s {r['nodes']:6d} nodes "
              f"{r['bytes'] / 1e6:7.2f} MB  {r['note']}")
print(f"\nCUDA: {cuda['status']} ({cuda['reason']})")
for r in cuda["rows"]:
    if r.get("ms") is not None:
        print(f"  {r['cell']:5s} T={r['T']:<3d} B={r['B']:<2d} {r['engine']:9s} {r['ms']:9.3f} ms "
              f"({r['speedup_vs_eager']:.1f}x)")
print("\nTargets" + (" (quick grid: figures are not meaningful)" if args.quick else ""))
for t in targets:
    if t["pass"] is None:
        print(f"  ----  {t['cell']:5s} {t['text']}: {t['status']}")
        continue
    print(f"  {'PASS' if t['pass'] else 'MISS'}  {t['cell']:5s} {t['text']}: {t['figure']:.2f} {t['unit']} "
          f"({t['where']}; needs {t['op']} {t['threshold']:g})")

print("\nBundles without variants: bytes and StatefulSession.load ms, weights shared / separate")
for r in bundle_rows:
    print(f"  {r['model']:12s} {r['form']:9s} folder {r['folder_bytes']:>10,} B  zip {r['zip_bytes']:>10,} B  "
          f"load folder {r['load_folder_ms']:6.1f} ms  load zip {r['load_zip_ms']:6.1f} ms")
for t in bundle_targets:
    print(f"  {'PASS' if t['pass'] else 'MISS'}  {t['cell']:5s} {t['text']}: {t['figure']:.2f} {t['unit']} "
          f"({t['where']}; needs {t['op']} {t['threshold']:g})")
print("\nRagged batches (torch.nn modules, native lowering)")
for t in ragged_targets:
    print(f"  {'PASS' if t['pass'] else 'MISS'}  {t['cell']:5s} {t['text']}: {t['figure']:.2f} {t['unit']} "
          f"({t['where']}; needs {t['op']} {t['threshold']:g})")

results = {
    "schema": "rnnexport.bench/1",
    "command": " ".join(["python", "scripts/bench.py", *sys.argv[1:]]),
    "quick": args.quick,
    "machine": {"cpu": lscpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                "python": platform.python_version(), "torch": torch.__version__,
                "onnxruntime": ort.__version__, "rnnexport": rnnexport.__version__},
    "config": {"cells": list(CELLS), "input_size": INPUT_SIZE, "hidden": hidden, "threads": args.threads,
               "weight_scale": WEIGHT_SCALE, "times": list(cfg["times"]), "batches": list(cfg["batches"]),
               "unrolled_T": cfg["unrolled_T"], "export_T": list(cfg["export_T"]),
               "stream_steps": steps, "streams": list(cfg["streams"]), "multi_ticks": ticks,
               "char_models": list(cfg["char_models"]),
               "ragged_T": list(cfg["ragged_T"]), "ragged_B": cfg["ragged_B"],
               "bundle_models": list(cfg["bundle_models"]), "bundle_runs": cfg["bundle_runs"]},
    "nn_vs_seed_max_abs": nn_vs_seed,
    "notes": ["torch.nn.GRU is linear_before_reset=1, the seed's GRU is 0: its torch.nn row times a "
              "slightly different function on the same weights",
              "ms are medians per call over interleaved rounds after a warm-up; max_abs_vs_eager compares y"],
    "sequence": sequence_rows,
    "streaming": stream_rows,
    "multi_stream": {"rows": multi_rows, "targets": multi_targets,
                     "note": "aggregate steps/s of S streams; the batcher's input dicts are made before timing"},
    "export": export_rows,
    "cuda": cuda,
    "targets": targets,
    "bundle": {"rows": bundle_rows, "targets": bundle_targets,
               "note": f"sequence + step graphs packaged without variants; load is StatefulSession.load, median of "
                       f"{cfg['bundle_runs']} after a warm-up" if bundle_rows else "runtime not available"},
    "ragged": {"rows": ragged_rows, "targets": ragged_targets,
               "note": "torch.nn LSTM/GRU, native lowering, lengths uniform in 1..T; 'torch packed' is "
                       "pack_padded_sequence + the module + pad_packed_sequence; separate calls run each "
                       "sequence alone on the graph without a lengths input"},
}
json_path = Path(args.json)
json_path.parent.mkdir(parents=True, exist_ok=True)
atomic_write(json_path, (json.dumps(results, indent=1) + "\n").encode(), "figures")
print(f"\nwrote {json_path}")

# --- the plots -----------------------------------------------------------------------------------
draw_plots(results, Path(args.plot), Path(args.plot_streams))
shutil.rmtree(work, ignore_errors=True)
