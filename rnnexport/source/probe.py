"""The one probe of a module against its contract: example inputs, and what forward returns for them."""

from __future__ import annotations

from typing import cast

import torch

from rnnexport.core.contract import Layout, StateSpec
from rnnexport.core.errors import SourceError, describe

__all__ = ["PROBE_BATCHES", "PROBE_TIME", "example_x", "probe_output"]

#: Two batch sizes (a state axis that follows them is the batch axis) and the steps of an example input.
PROBE_BATCHES = (3, 5)
PROBE_TIME = 2


def example_x(x_features: tuple[int, ...], x_dtype: str, layout: Layout, batch: int) -> torch.Tensor:
    """Zeros of the contract's input shape, ``PROBE_TIME`` steps of ``batch`` streams."""
    lead = (PROBE_TIME, batch) if layout is Layout.TIME_MAJOR else (batch, PROBE_TIME)
    return torch.zeros((*lead, *x_features), dtype=torch.int64 if x_dtype == "int64" else torch.float32)


def probe_output(sequence: torch.nn.Module, x_features: tuple[int, ...], x_dtype: str, state: StateSpec,
                 layout: Layout) -> tuple[int, ...]:
    """Run ``sequence`` once on zeros and return its ``y`` features; refuse what breaks the contract.

    Raises:
        SourceError: when forward fails or returns something other than ``(y, *state)`` of the
            shapes ``state`` declares.
    """
    batch = PROBE_BATCHES[0]
    x = example_x(x_features, x_dtype, layout, batch)
    # an int batch makes every dim an int; StateSpec.shape is typed for the symbolic "B" too
    states = [torch.zeros(cast("tuple[int, ...]", state.shape(i, batch))) for i in range(len(state.names))]
    try:
        with torch.no_grad():
            y, *state_out = sequence(x, *states)
    except Exception as e:  # noqa: BLE001 - the user's forward failing is a user error
        raise SourceError(f"the module's forward(x, state) failed on an example x of shape {tuple(x.shape)}: "
                          f"{describe(e)}; it must take (x, state) and return (y, state)") from e
    if not isinstance(y, torch.Tensor) or len(state_out) != len(state.names) \
            or not all(isinstance(s, torch.Tensor) for s in state_out):
        kinds = ", ".join(type(s).__name__ for s in state_out)
        raise SourceError(f"the module returned y as a {type(y).__name__} and a state of {kinds}, "
                          f"expected a tensor y and state tensors {', '.join(state.names)}")
    for i, s in enumerate(state_out):
        if tuple(s.shape) != state.shape(i, batch):
            raise SourceError(f"the module returned state {state.names[i]} of shape {tuple(s.shape)}, "
                              f"expected {state.shape(i, batch)}")
    return tuple(y.shape[2:])
