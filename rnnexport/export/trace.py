"""Tracing torch modules to ONNX with torch's exporter, quietly and with a dynamic batch."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

import onnx
import torch

from rnnexport.core.contract import IOSpec, TensorSpec

__all__ = ["RaggedUnroll", "example_inputs", "trace"]

_LOGGERS = ("torch.onnx", "torch._dynamo", "torch.export", "torch.fx", "onnxscript", "torch._export")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    saved = {name: logging.getLogger(name).level for name in _LOGGERS}
    try:
        for name in _LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _example_batch(io_spec: IOSpec) -> int:
    taken = set(io_spec.x_features) | set(io_spec.y_features)
    taken |= {d for dims in io_spec.state.dims for d in dims}
    return next(b for b in (3, 5, 7, 11, 13, 17, 19, 23) if b not in taken)


def example_inputs(specs: list[TensorSpec], batch: int, time: int | None) -> tuple[torch.Tensor, ...]:
    """Distinct example tensors for ``specs`` (torch's scan and export dislike aliased inputs)."""
    gen = torch.Generator().manual_seed(0)
    tensors = []
    for spec in specs:
        shape = spec.concrete(batch, time)
        if spec.dtype == "int64":
            tensors.append(torch.zeros(shape, dtype=torch.int64))
        else:
            tensors.append(torch.randn(shape, generator=gen) * 0.1)
    return tuple(tensors)


def trace(
    module: torch.nn.Module,
    io_spec: IOSpec,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    time: int | None = None,
) -> onnx.ModelProto:
    """Export ``module`` with torch.onnx (dynamo), every ``B`` axis dynamic.

    Args:
        module: ``forward(x, *state) -> tuple(outputs)``.
        io_spec: the contract, for an example batch size unlike any other dimension.
        inputs, outputs: the graph's inputs and outputs; their ``B`` axes become dynamic.
        time: the fixed sequence length, for specs with a ``T`` axis.
    """
    batch = _example_batch(io_spec)
    args = example_inputs(inputs, batch, time)
    dim = torch.export.Dim("B", min=1)
    axes = [{spec.shape.index("B"): dim} for spec in inputs]
    dynamic = (axes[0], tuple(axes[1:]))  # forward(x, *state)
    with _quiet():
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            dynamic_shapes=dynamic,
            verbose=False,
            optimize=True,
        )
    if program is None:  # torch.onnx.export returns None only when it writes to a file
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    return program.model_proto


class RaggedUnroll(torch.nn.Module):
    """``forward(x, *state, lengths)``: ``step`` unrolled over a fixed T, each stream stopping at its length.

    At step ``t`` a stream with ``t >= lengths[b]`` keeps its state (``torch.where``); its ``y``
    is left as computed (the graph zeroes ``y`` past each end, for every lowering alike).
    What the unrolled lowering traces for a graph with a lengths input.

    Args:
        step: ``forward(x_t, *state) -> (y_t, *state_out)``, one step in ``io``'s layout.
        io: the contract (where time, the batch and each state's batch axis sit).
        time: T.
    """

    def __init__(self, step: torch.nn.Module, io: IOSpec, time: int) -> None:
        super().__init__()
        self.step, self.time = step, time
        self.time_axis, self.state_axis = io.time_axis, io.state.batch_axis

    def forward(self, x: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *state, lengths = rest
        ys = []
        for t in range(self.time):
            y_t, *new = self.step(x.select(self.time_axis, t), *state)
            running = t < lengths  # (B,)
            state = [torch.where(self._along(running, s), n, s) for n, s in zip(new, state)]
            ys.append(y_t)
        return (torch.stack(ys, self.time_axis), *state)

    def _along(self, running: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        shape = [1] * state.dim()
        shape[self.state_axis] = -1
        return running.reshape(shape)
