"""A Ray Serve deployment over a step graph, with the stateless contract: the client carries the state.

Ray Serve has no sequence batcher, and its session-affine routing is experimental,
so this server keeps no state: each request sends ``x`` and the stream's state,
and gets ``y`` and the new state back. ``@serve.batch`` stacks the requests of
concurrent streams on the contract's batch axis into one graph call, so any replica
can serve any step and replicas scale freely (keeping state per replica would break
with two replicas under the default router).

A replica only batches what it holds: Ray's default ``max_ongoing_requests`` (5)
would cap every batch at 5 however large ``max_batch_size`` is, so this script sets
it to ``ONGOING_PER_BATCH`` x max_batch_size. The demo streams S sequences of
different lengths, each starting after a random delay, through the deployment;
prints throughput, per-request latency (p50, p99) and the mean batch; and compares
each stream with the same stream run alone through a local ``StatefulSession``
(exit 1 when one differs by more than float32 rounding allows).

Not run in CI (docs/serving.md)::

    pip install "ray[serve]==2.60.0"     # about 690 MB with its dependencies
    rnnexport convert rnn-charlm --form step -o /tmp/step.onnx
    python scripts/ray_serve.py /tmp/step.onnx --streams 100 --steps 50 --replicas 2

Over HTTP (``serve.run`` listens on port 8000), POST JSON ``{"x": [...], "state": {"h": [...], ...}}``
with one stream's ``x`` ``(1, ...)`` and state (batch 1 at the contract's batch axis).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import numpy as np

from rnnexport.core.compare import compare, tolerance_for
from rnnexport.core.contract import Form
from rnnexport.runtime import StatefulSession
from rnnexport.testing import random_inputs

# --- configuration -------------------------------------------------------------------------------
MAX_BATCH_SIZE = 64
BATCH_WAIT_S = 0.002  # how long @serve.batch waits for more requests before a call
ONGOING_PER_BATCH = 4  # max_ongoing_requests = this x max_batch_size: enough held requests to fill batches
STREAMS, STEPS, SEED = 32, 50, 0
MAX_START_DELAY_S = 0.5  # each stream starts after a random delay up to this, and runs STEPS/2 to STEPS steps

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("model", help="a bundle folder or zip with a step graph, or a step graph .onnx")
parser.add_argument("--streams", type=int, default=STREAMS)
parser.add_argument("--steps", type=int, default=STEPS, help="the longest stream's steps")
parser.add_argument("--replicas", type=int, default=1)
parser.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE)
parser.add_argument("--max-ongoing-requests", type=int, default=None,
                    help=f"requests one replica holds at once (default {ONGOING_PER_BATCH} x max batch size)")
parser.add_argument("--seed", type=int, default=SEED)
args = parser.parse_args()
ongoing = args.max_ongoing_requests or ONGOING_PER_BATCH * args.max_batch_size

try:
    from ray import serve
except ImportError:
    sys.exit('scripts/ray_serve.py needs Ray Serve: pip install "ray[serve]==2.60.0"')


@serve.deployment
class StepGraph:
    """One replica: the step graph, called once per batch of requests from any streams."""

    def __init__(self, model: str) -> None:
        self.session = StatefulSession.load(model, form="step")
        self.spec = self.session.contract.state

    @serve.batch(max_batch_size=args.max_batch_size, batch_wait_timeout_s=BATCH_WAIT_S)
    async def step(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Stack the requests' x and state, advance them one step together, split the results."""
        axis, names = self.spec.batch_axis, self.spec.names
        batch = self.session.new_stream(len(requests))
        batch.state = {n: np.concatenate([r["state"][n] for r in requests], axis=axis) for n in names}
        y = batch.step(np.concatenate([r["x"] for r in requests]))
        state = batch.state
        return [{"y": y[i : i + 1], "state": {n: np.take(state[n], [i], axis=axis) for n in names},
                 "batch": len(requests)} for i in range(len(requests))]

    async def __call__(self, http_request: Any) -> dict[str, Any]:
        """HTTP: JSON lists in, JSON lists out."""
        body = await http_request.json()
        dtype = self.session.contract.x_dtype
        request = {"x": np.asarray(body["x"], dtype),
                   "state": {n: np.asarray(v, self.spec.dtype) for n, v in body["state"].items()}}
        result = await self.step(request)
        return {"y": result["y"].tolist(), "state": {n: v.tolist() for n, v in result["state"].items()}}


# --- the client: one coroutine per stream, each step waits for the previous one -------------------
async def stream(handle: Any, xs: np.ndarray, delay: float, zeros: dict[str, np.ndarray],
                 latencies: list[float], batches: list[int]) -> np.ndarray:
    """One stream through the deployment, after ``delay`` s: it sends its state with every step."""
    await asyncio.sleep(delay)
    state, ys = zeros, []
    for x in xs:
        sent = time.perf_counter()
        result = await handle.step.remote({"x": x[None], "state": state})
        latencies.append(time.perf_counter() - sent)
        batches.append(result["batch"])
        state = result["state"]
        ys.append(result["y"][0])
    return np.stack(ys)


async def demo(handle: Any, local: StatefulSession) -> bool:
    io = local.contract
    rng = np.random.default_rng(args.seed)
    lengths = rng.integers(max(1, args.steps // 2), args.steps + 1, size=args.streams)
    xs = [random_inputs(io, Form.STEP, int(n), None, rng, vocabulary=2) for n in lengths]
    delays = rng.uniform(0, MAX_START_DELAY_S, size=args.streams)
    zeros = dict(zip(io.state.names, io.state.zeros(1), strict=True))
    latencies: list[float] = []
    batches: list[int] = []
    started = time.perf_counter()
    got = await asyncio.gather(*(stream(handle, x, d, zeros, latencies, batches) for x, d in zip(xs, delays, strict=True)))
    seconds = time.perf_counter() - started
    requests = int(lengths.sum())
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
    print(f"{args.streams} streams x {lengths.min()}-{lengths.max()} steps ({requests} requests) through Ray Serve, "
          f"{args.replicas} replica(s), max_batch_size {args.max_batch_size}, max_ongoing_requests {ongoing}")
    print(f"throughput {requests / seconds:.0f} requests/s over {seconds:.2f} s; latency p50 {p50:.1f} ms, "
          f"p99 {p99:.1f} ms; mean batch {np.mean(batches):.1f}")
    tolerance = tolerance_for("float32")
    exact, worst, passed = 0, 0.0, True
    for x, served in zip(xs, got, strict=True):  # each stream alone, from the zero state
        alone = local.new_stream()
        want = np.concatenate([alone.step(x_t[None]) for x_t in x])
        figures = compare(served, want, tolerance)
        exact += int(np.array_equal(served, want))
        worst, passed = max(worst, figures.max_abs), passed and figures.passed
    print(f"{exact} of {args.streams} streams bit-exact with the stream run alone; max abs error {worst:.3g} "
          f"({'PASS' if passed else 'FAIL'}: {tolerance.describe()})")
    return passed


local = StatefulSession.load(args.model, form="step")
app = StepGraph.options(num_replicas=args.replicas, max_ongoing_requests=ongoing).bind(args.model)
handle = serve.run(app)
ok = asyncio.run(demo(handle, local))
serve.shutdown()
sys.exit(0 if ok else 1)
