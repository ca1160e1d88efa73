"""A Ray Serve deployment over a step graph, with the stateless contract: the client carries the state.

Ray Serve has no sequence batcher, and its session-affine routing is experimental,
so this server keeps no state: each request sends ``x`` and the stream's state,
and gets ``y`` and the new state back. ``@serve.batch`` stacks the requests of
concurrent streams on the contract's batch axis into one graph call, so any replica
can serve any step and replicas scale freely (keeping state per replica would break
with two replicas under the default router). The demo streams S sequences x T steps
through the deployment and compares them with a local run of the same graph.

Not run in CI (docs/serving.md)::

    pip install "ray[serve]==2.60.0"     # about 690 MB with its dependencies
    rnnexport convert lstm-charlm --form step -o /tmp/step.onnx
    python scripts/ray_serve.py /tmp/step.onnx --streams 32 --steps 50

Over HTTP (``serve.run`` listens on port 8000), POST JSON ``{"x": [...], "state": {"h": [...], ...}}``
with one stream's ``x`` ``(1, ...)`` and state (batch 1 at the contract's batch axis).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import numpy as np

from rnnexport.core.compare import compare, tolerance_for
from rnnexport.core.contract import Form
from rnnexport.runtime import StatefulSession
from rnnexport.testing import random_inputs

# --- configuration -------------------------------------------------------------------------------
MAX_BATCH_SIZE = 64
BATCH_WAIT_S = 0.002  # how long @serve.batch waits for more requests before a call
STREAMS, STEPS, SEED = 32, 50, 0

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("model", help="a bundle folder or zip with a step graph, or a step graph .onnx")
parser.add_argument("--streams", type=int, default=STREAMS)
parser.add_argument("--steps", type=int, default=STEPS)
parser.add_argument("--replicas", type=int, default=1)
args = parser.parse_args()

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

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def step(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Stack the requests' x and state, advance them one step together, split the results."""
        axis, names = self.spec.batch_axis, self.spec.names
        batch = self.session.new_stream(len(requests))
        batch.state = {n: np.concatenate([r["state"][n] for r in requests], axis=axis) for n in names}
        y = batch.step(np.concatenate([r["x"] for r in requests]))
        state = batch.state
        return [{"y": y[i : i + 1], "state": {n: np.take(state[n], [i], axis=axis) for n in names}}
                for i in range(len(requests))]

    async def __call__(self, http_request: Any) -> dict[str, Any]:
        """HTTP: JSON lists in, JSON lists out."""
        body = await http_request.json()
        dtype = self.session.contract.x_dtype
        request = {"x": np.asarray(body["x"], dtype),
                   "state": {n: np.asarray(v, self.spec.dtype) for n, v in body["state"].items()}}
        result = await self.step(request)
        return {"y": result["y"].tolist(), "state": {n: v.tolist() for n, v in result["state"].items()}}


async def stream(handle: Any, xs: np.ndarray, zeros: dict[str, np.ndarray]) -> np.ndarray:
    """One stream through the deployment: it sends its state with every step and keeps what comes back."""
    state, ys = zeros, []
    for x in xs:
        result = await handle.step.remote({"x": x[None], "state": state})
        state = result["state"]
        ys.append(result["y"][0])
    return np.stack(ys)


async def demo(handle: Any, local: StatefulSession) -> None:
    io = local.contract
    rng = np.random.default_rng(SEED)
    xs = np.stack([random_inputs(io, Form.STEP, args.streams, None, rng, vocabulary=2) for _ in range(args.steps)])
    want = np.stack([local.step(x) for x in xs], axis=1)  # (streams, steps, ...)
    zeros = dict(zip(io.state.names, io.state.zeros(1)))
    got = np.stack(await asyncio.gather(*(stream(handle, xs[:, i], zeros) for i in range(args.streams))))
    figures = compare(got, want, tolerance_for("float32"))
    exact = sum(np.array_equal(g, w) for g, w in zip(got, want))
    print(f"{args.streams} streams x {args.steps} steps through Ray Serve: {exact} bit-exact, max abs error "
          f"{figures.max_abs:.3g} ({'PASS' if figures.passed else 'FAIL'})")


local = StatefulSession.load(args.model, form="step", batch=args.streams)
app = StepGraph.options(num_replicas=args.replicas).bind(args.model)
handle = serve.run(app)
asyncio.run(demo(handle, local))
serve.shutdown()
