"""Stream S sequences through a running Triton server and compare each with the same sequence run alone.

Each stream is one sequence id: its first request sets ``sequence_start``, its last
``sequence_end``; the server keeps the state (``h``, ``c``) between requests and
batches the steps of different streams together. Streams have different lengths
(STEPS/2 to STEPS) and start after different delays, so they start and end on
different ticks and share batches of changing sizes. Each stream is then run alone
through the same ``model.onnx`` with ``rnnexport.runtime``, from the zero state. On
CPU every stream should be bit-exact (LSTM, GRU and plain-RNN step graphs give a row
the same bits in any batch); the exit status is 1 when a stream differs by more than
float32 rounding allows, or a request fails, and 2 when no server answers.

Not run in CI: it needs a server (docs/serving.md)::

    rnnexport triton lstm-charlm -o /tmp/triton-models
    docker run --rm -p 8001:8001 -v /tmp/triton-models:/models nvcr.io/nvidia/tritonserver:24.10-py3 \\
        tritonserver --model-repository=/models
    python scripts/triton_client.py /tmp/triton-models/lstm-charlm --streams 100 --steps 50

Needs tritonclient with gRPC: pip install tritonclient==2.73.0 grpcio==1.85.3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn

import numpy as np
import onnx

from rnnexport.core.compare import compare, tolerance_for
from rnnexport.core.contract import Form
from rnnexport.core.errors import RnnexportError
from rnnexport.runtime import StatefulSession
from rnnexport.serving import read_config
from rnnexport.serving.checks import model_file
from rnnexport.testing import random_inputs

# --- configuration -------------------------------------------------------------------------------
URL = "localhost:8001"  # Triton's gRPC port
STREAMS, STEPS = 100, 50
MAX_START_DELAY_S = 0.5  # each stream starts after a random delay up to this
FIRST_ID = 1_000  # sequence ids FIRST_ID .. FIRST_ID + STREAMS - 1 (0 is not a valid id)
SEED = 0

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("folder", type=Path, help="the model folder rnnexport triton wrote (REPOSITORY/NAME)")
parser.add_argument("--url", default=URL)
parser.add_argument("--streams", type=int, default=STREAMS)
parser.add_argument("--steps", type=int, default=STEPS, help="the longest stream's steps")
parser.add_argument("--first-id", type=int, default=FIRST_ID)
parser.add_argument("--seed", type=int, default=SEED)
args = parser.parse_args()

try:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype
except (ImportError, RuntimeError):
    sys.exit("scripts/triton_client.py needs tritonclient with gRPC: pip install tritonclient==2.73.0 grpcio==1.85.3")


def fail(message: str) -> NoReturn:
    """End with one line and exit status 2, as rnnexport's commands do for what the user can fix."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


def first_line(error: Exception) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def server_or_exit(url: str, model: str) -> None:
    """Return when the server at ``url`` answers and has ``model`` ready; else :func:`fail` with one line."""
    try:
        with grpcclient.InferenceServerClient(url) as probe:
            ready = probe.is_server_live() and probe.is_model_ready(model)
    except InferenceServerException as e:
        fail(f"no Triton server answers at {url} ({first_line(e)}): start one as docs/serving.md shows, "
             "or pass --url HOST:PORT")
    if not ready:
        fail(f"the Triton server at {url} has no model {model!r} ready: serve the repository that holds "
             f"{args.folder}")


def local_session(model: Path, copies: list[str]) -> StatefulSession:
    """The served graph in ``rnnexport.runtime``, without the state ``copies`` that ``--expose-state`` adds."""
    graph = onnx.load(str(model))
    extra = [o.name for o in graph.graph.output if o.name in copies]
    if not extra:
        return StatefulSession.load(model)
    kept = [o for o in graph.graph.output if o.name not in extra]
    del graph.graph.output[:]
    graph.graph.output.extend(kept)
    with tempfile.TemporaryDirectory() as folder:
        onnx.save(graph, Path(folder) / "model.onnx")
        return StatefulSession.load(Path(folder) / "model.onnx")


# --- the inputs ----------------------------------------------------------------------------------
try:
    config = read_config(args.folder)
    model = model_file(args.folder, config)
except RnnexportError as e:
    fail(str(e))
if model is None or not model.is_file():
    fail(f"{args.folder} holds no model file for its config: write it with rnnexport triton")
local = local_session(model, [e.name for e in config.output[1:]])  # y first, then any state copies
io = local.contract
rng = np.random.default_rng(args.seed)
lengths = rng.integers(max(1, args.steps // 2), args.steps + 1, size=args.streams)
xs = [random_inputs(io, Form.STEP, int(n), None, rng, vocabulary=2) for n in lengths]
delays = rng.uniform(0, MAX_START_DELAY_S, size=args.streams)
x_name, y_name = config.input[0].name, config.output[0].name
server_or_exit(args.url, config.name)
print(f"{config.name}: {args.streams} streams x {lengths.min()}-{lengths.max()} steps, x {list(xs[0].shape[1:])} -> "
      f"y, state {', '.join(io.state.names)} kept in the server")


# --- the server run: one thread per stream, each step waits for the previous one -----------------
latencies: list[float] = []
lock = threading.Lock()


def stream(index: int) -> np.ndarray | str:
    """One sequence through the server, start to end: its y over time, or the first error's message."""
    client = grpcclient.InferenceServerClient(args.url)
    time.sleep(delays[index])
    ys = []
    try:
        for t, x_t in enumerate(xs[index]):
            x = x_t[None]
            request = grpcclient.InferInput(x_name, list(x.shape), np_to_triton_dtype(x.dtype))
            request.set_data_from_numpy(x)
            sent = time.perf_counter()
            result = client.infer(config.name, [request], outputs=[grpcclient.InferRequestedOutput(y_name)],
                                  sequence_id=args.first_id + index, sequence_start=t == 0,
                                  sequence_end=t == len(xs[index]) - 1)
            with lock:
                latencies.append(time.perf_counter() - sent)
            ys.append(result.as_numpy(y_name)[0])
    except InferenceServerException as e:
        return f"stream {index} step {len(ys)}: {first_line(e)}"
    finally:
        client.close()
    return np.stack(ys)


started = time.perf_counter()
with ThreadPoolExecutor(max_workers=args.streams) as pool:
    got = list(pool.map(stream, range(args.streams)))
seconds = time.perf_counter() - started
p50, p99 = np.percentile(latencies or [0.0], [50, 99]) * 1e3
print(f"served {len(latencies)} requests in {seconds:.2f} s ({len(latencies) / seconds:.0f} requests/s); "
      f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms")

# --- the comparison: each stream alone, from the zero state ---------------------------------------
failed = [g for g in got if isinstance(g, str)]
tolerance = tolerance_for("float32")
exact, worst, passed = 0, 0.0, not failed
for x, served in zip(xs, got, strict=True):
    if isinstance(served, str):
        continue
    alone = local.new_stream()
    want = np.concatenate([alone.step(x_t[None]) for x_t in x])
    figures = compare(served, want, tolerance)
    exact += int(np.array_equal(served, want))
    worst, passed = max(worst, figures.max_abs), passed and figures.passed
if failed:
    print(f"{len(failed)} of {args.streams} streams failed; the first: {failed[0]}")
print(f"{exact} of {args.streams} streams bit-exact with the stream run alone; max abs error {worst:.3g} "
      f"({'PASS' if passed else 'FAIL'}: {tolerance.describe()})")
sys.exit(0 if passed else 1)
