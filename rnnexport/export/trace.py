"""Tracing torch modules to ONNX with torch's exporter, quietly and with a dynamic batch (and T).

Two of torch's ONNX translations lose what the module computes on inputs that saturate:
``F.logsigmoid`` becomes ``Log(Sigmoid(x))`` (onnxruntime's Sigmoid is 0 from x = -18 down,
so the graph gives -inf where PyTorch gives x) and ``torch.logaddexp`` becomes
``Log(Exp(a) + Exp(b))`` (inf from a = 89 up). :data:`SAFE_TRANSLATIONS` writes them as PyTorch
computes them: ``min(x, 0) - log(1 + exp(-|x|))`` and ``max(a, b) + log(1 + exp(-|a - b|))``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import onnx
import torch
from onnxscript import opset18 as op

from rnnexport.core.contract import IOSpec, TensorSpec

__all__ = ["SAFE_TRANSLATIONS", "RaggedUnroll", "example_inputs", "export_failure", "trace"]

#: The example sequence length of a trace whose T is dynamic (unlike any batch size tried).
EXAMPLE_TIME = 29
#: The most characters of torch's refusal kept in a one-line error.
MAX_REASON = 600


def _like(value: float, x: Any) -> Any:
    """The scalar ``value`` in ``x``'s dtype."""
    constant: Any = op.Constant(value_float=value)
    return op.CastLike(constant, x)


def _log_sigmoid(x: Any) -> Any:
    """``log(sigmoid(x))`` as ``min(x, 0) - log(1 + exp(-|x|))``: finite wherever x is."""
    zero, one = _like(0.0, x), _like(1.0, x)
    return op.Sub(op.Min(x, zero), op.Log(op.Add(one, op.Exp(op.Neg(op.Abs(x))))))


def _logaddexp(a: Any, b: Any) -> Any:
    """``log(exp(a) + exp(b))`` as ``max(a, b) + log(1 + exp(-|a - b|))`` (``a + log 2`` where a == b, for infinities)."""
    one, ln2 = _like(1.0, a), _like(math.log(2), a)
    spread = op.Log(op.Add(one, op.Exp(op.Neg(op.Abs(op.Sub(a, b))))))
    return op.Where(op.Equal(a, b), op.Add(a, ln2), op.Add(op.Max(a, b), spread))


#: torch ops translated here rather than by torch's exporter (see the module docstring).
SAFE_TRANSLATIONS: dict[Callable[..., Any], Callable[..., Any]] = {
    torch.ops.aten.log_sigmoid.default: _log_sigmoid,
    torch.ops.aten.logaddexp.default: _logaddexp,
}

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
    taken = set(io_spec.x_features) | set(io_spec.y_features) | {EXAMPLE_TIME}
    taken |= {d for dims in io_spec.state.dims for d in dims}
    return next(b for b in (3, 5, 7, 11, 13, 17, 19, 23) if b not in taken)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def export_failure(error: BaseException) -> str:
    """torch's reason for refusing a module, in one line: the innermost cause and where forward raised it.

    torch.onnx wraps torch.export's error in a message about next steps; the cause is
    the error torch.export raised, followed by the line of the module that raised it.
    """
    inner = error
    while inner.__cause__ is not None and inner.__cause__ is not inner:
        inner = inner.__cause__
    text = _ANSI.sub("", str(inner))
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = f"{type(inner).__name__}: {lines[0]}" if lines else type(inner).__name__
    where = next((i for i, line in enumerate(lines) if line.startswith("The following call raised this error")), None)
    if where is not None and where + 2 < len(lines):
        reason += f" (at {lines[where + 1]}: {lines[where + 2]})"
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."


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
    dynamic_time: bool = False,
) -> onnx.ModelProto:
    """Export ``module`` with torch.onnx (dynamo), every ``B`` axis dynamic.

    Args:
        module: ``forward(x, *state) -> tuple(outputs)``.
        io_spec: the contract, for an example batch size unlike any other dimension.
        inputs, outputs: the graph's inputs and outputs; their ``B`` axes become dynamic.
        time: the fixed sequence length, for specs with a ``T`` axis.
        dynamic_time: make the ``T`` axes dynamic too (traced at :data:`EXAMPLE_TIME` steps).

    Raises:
        RuntimeError: and whatever torch's exporter raises (:func:`export_failure` reads it).
    """
    batch = _example_batch(io_spec)
    args = example_inputs(inputs, batch, EXAMPLE_TIME if dynamic_time else time)
    dims = {"B": torch.export.Dim("B", min=1)}
    if dynamic_time:
        dims["T"] = torch.export.Dim("T", min=1)
    axes = [{spec.shape.index(name): dim for name, dim in dims.items() if name in spec.shape} for spec in inputs]
    dynamic = (axes[0], tuple(axes[1:]))  # forward(x, *state)
    with _quiet():
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            dynamic_shapes=dynamic,
            custom_translation_table=SAFE_TRANSLATIONS,
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
            state = [torch.where(self._along(running, s), n, s) for n, s in zip(new, state, strict=True)]
            ys.append(y_t)
        return (torch.stack(ys, self.time_axis), *state)

    def _along(self, running: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        shape = [1] * state.dim()
        shape[self.state_axis] = -1
        return running.reshape(shape)
