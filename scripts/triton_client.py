"""Stream S sequences x T steps through a running Triton server and compare with a local run.

Each stream is one sequence id: its first request sets ``sequence_start``, its last
``sequence_end``; the server keeps the state (``h``, ``c``) between requests and
batches the steps of different streams together. The local run advances every
stream through the same ``model.onnx`` with ``rnnexport.runtime``, all streams in
one batch. On CPU, LSTM and GRU models agree bit for bit; a plain RNN within
float32 rounding (onnxruntime's RNN kernel rounds a batch of 1 differently).

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
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn

import numpy as np

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
FIRST_ID = 1_000  # sequence ids FIRST_ID .. FIRST_ID + STREAMS - 1 (0 is not a valid id)
SEED = 0

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("folder", type=Path, help="the model folder rnnexport triton wrote (REPOSITORY/NAME)")
parser.add_argument("--url", default=URL)
parser.add_argument("--streams", type=int, default=STREAMS)
parser.add_argument("--steps", type=int, default=STEPS)
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


# --- the inputs and the local run ----------------------------------------------------------------
try:
    config = read_config(args.folder)
    model = model_file(args.folder, config)
except RnnexportError as e:
    fail(str(e))
try:
    with grpcclient.InferenceServerClient(args.url) as probe:
        ready = probe.is_server_live() and probe.is_model_ready(config.name)
except InferenceServerException as e:
    fail(f"no Triton server answers at {args.url} ({first_line(e)}): start one as docs/serving.md shows, "
         "or pass --url HOST:PORT")
if not ready:
    fail(f"the Triton server at {args.url} has no model {config.name!r} ready: serve the repository that holds "
         f"{args.folder}")
local = StatefulSession.load(model, batch=args.streams)
io = local.contract
rng = np.random.default_rng(args.seed)
xs = np.stack([random_inputs(io, Form.STEP, args.streams, None, rng, vocabulary=2) for _ in range(args.steps)])
want = np.stack([local.step(x) for x in xs], axis=1)  # (streams, steps, ...)
x_name, y_name = config.input[0].name, config.output[0].name
print(f"{config.name}: {args.streams} streams x {args.steps} steps, x {list(xs.shape[2:])} -> y "
      f"{list(want.shape[2:])}, state {', '.join(io.state.names)} kept in the server")


# --- the server run: one thread per stream, each step waits for the previous one -----------------
def stream(index: int) -> np.ndarray:
    """One sequence through the server, start to end; returns its y over time."""
    client = grpcclient.InferenceServerClient(args.url)
    ys = []
    for t in range(args.steps):
        x = xs[t, index : index + 1]
        request = grpcclient.InferInput(x_name, list(x.shape), np_to_triton_dtype(x.dtype))
        request.set_data_from_numpy(x)
        result = client.infer(config.name, [request], outputs=[grpcclient.InferRequestedOutput(y_name)],
                              sequence_id=args.first_id + index, sequence_start=t == 0,
                              sequence_end=t == args.steps - 1)
        ys.append(result.as_numpy(y_name)[0])
    client.close()
    return np.stack(ys)


started = time.perf_counter()
try:
    with ThreadPoolExecutor(max_workers=args.streams) as pool:
        got = np.stack(list(pool.map(stream, range(args.streams))))
except InferenceServerException as e:
    fail(f"the Triton server at {args.url} failed a request: {first_line(e)}")
seconds = time.perf_counter() - started
print(f"served {args.streams * args.steps} requests in {seconds:.2f} s "
      f"({args.streams * args.steps / seconds:.0f} steps/s)")

# --- the comparison -------------------------------------------------------------------------------
exact = sum(np.array_equal(g, w) for g, w in zip(got, want))
figures = compare(got, want, tolerance_for("float32"))
print(f"{exact} of {args.streams} streams bit-exact; max abs error {figures.max_abs:.3g} "
      f"({'PASS' if figures.passed else 'FAIL'}: {tolerance_for('float32').describe()})")
sys.exit(0 if figures.passed else 1)
