"""The I/O contract as the runtime reads it: JSON in, shapes and checks out.

This mirrors the parts of :class:`rnnexport.model.IOSpec` that an app needs
(that module imports torch, this one must not). It reads the JSON that
``IOSpec.to_json`` writes, into the graph's ``rnnexport.io`` metadata and the
bundle manifest's ``io``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from rnnexport.errors import RuntimeContractError

__all__ = ["FORMS", "SEQUENCE", "STEP", "IOContract", "StateContract", "check_array", "show_shape"]

STEP = "step"
SEQUENCE = "sequence"
FORMS = (STEP, SEQUENCE)

#: Symbolic sizes in shapes: the batch (number of streams) and the time axis.
BATCH = "B"
TIME = "T"

_LAYOUTS = ("time_major", "batch_major")


def _ints(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
        raise RuntimeContractError(f"malformed I/O contract: {what} must be a list of ints, got {values!r}")
    return tuple(values)


@dataclasses.dataclass(frozen=True)
class StateContract:
    """The recurrent state: names in and out, shapes around the batch axis, dtype.

    Attributes:
        names: graph inputs that carry the state in (``h``, ``c``).
        output_names: graph outputs that carry it out, in the same order.
        shapes: per-tensor shapes with ``"B"`` at ``batch_axis``.
        batch_axis: where the batch (stream) axis sits in every state tensor.
        dtype: numpy dtype name of every state tensor.
    """

    names: tuple[str, ...]
    output_names: tuple[str, ...]
    shapes: tuple[tuple[int | str, ...], ...]
    batch_axis: int
    dtype: str = "float32"

    def shape(self, index: int, batch: int) -> tuple[int, ...]:
        """The concrete shape of state tensor ``index`` for ``batch`` streams."""
        return tuple(batch if d == BATCH else d for d in self.shapes[index])

    def zeros(self, batch: int) -> dict[str, np.ndarray]:
        """The initial state (zeros) for ``batch`` streams, by name."""
        return {n: np.zeros(self.shape(i, batch), self.dtype) for i, n in enumerate(self.names)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StateContract:
        try:
            names = tuple(data["names"])
            outputs = tuple(data["output_names"])
            shapes = tuple(tuple(s) for s in data["shapes"])
            axis = int(data["batch_axis"])
        except (KeyError, TypeError, ValueError) as e:
            raise RuntimeContractError(f"malformed state contract: missing or bad {e}") from e
        if not (len(names) == len(outputs) == len(shapes)) or not names:
            raise RuntimeContractError("malformed state contract: names, output_names and shapes differ in length")
        if any(not (0 <= axis < len(s)) or s[axis] != BATCH for s in shapes):
            raise RuntimeContractError(f"malformed state contract: batch axis {axis} is not 'B' in {shapes}")
        return cls(names, outputs, shapes, axis, str(data.get("dtype", "float32")))


@dataclasses.dataclass(frozen=True)
class IOContract:
    """What a graph takes and gives: ``x`` and the state in, ``y`` and the state out.

    Attributes:
        x_features: the trailing axes of ``x`` (``()`` for token ids).
        x_dtype: numpy dtype name of ``x``.
        y_features: the trailing axes of ``y``.
        y_dtype: numpy dtype name of ``y``.
        layout: ``"time_major"`` (``x`` is ``(T, B, ...)``) or ``"batch_major"`` (``(B, T, ...)``).
        state: the state contract.
        x_encoding: what ``x`` holds: ``"real"`` vectors, ``"one-hot"`` vectors over a
            vocabulary of ``x_features[0]``, or ``"token-ids"`` (int64, no feature axis).
    """

    x_features: tuple[int, ...]
    x_dtype: str
    y_features: tuple[int, ...]
    y_dtype: str
    layout: str
    state: StateContract
    x_encoding: str = "real"

    @property
    def time_axis(self) -> int:
        """Axis of time in sequence ``x``/``y``; the batch axis is the other of 0 and 1."""
        return 0 if self.layout == "time_major" else 1

    @property
    def batch_axis(self) -> int:
        """Axis of the batch in sequence ``x``/``y``."""
        return 1 - self.time_axis

    def x_shape(self, form: str, batch: int | str = BATCH, time: int | str = TIME) -> tuple:
        """Shape of ``x`` for one call of a ``form`` graph."""
        return self._data_shape(self.x_features, form, batch, time)

    def y_shape(self, form: str, batch: int | str = BATCH, time: int | str = TIME) -> tuple:
        """Shape of ``y`` for one call of a ``form`` graph."""
        return self._data_shape(self.y_features, form, batch, time)

    def _data_shape(self, features: tuple[int, ...], form: str, batch, time) -> tuple:
        if form == STEP:
            return (batch, *features)
        lead = (time, batch) if self.layout == "time_major" else (batch, time)
        return (*lead, *features)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> IOContract:
        """Parse the JSON of ``IOSpec.to_json`` (a dict or its text).

        Raises:
            RuntimeContractError: when a field is missing or malformed.
        """
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as e:
                raise RuntimeContractError(f"malformed I/O contract: not JSON ({e})") from e
        if not isinstance(data, Mapping):
            raise RuntimeContractError("malformed I/O contract: expected a JSON object")
        try:
            layout = data.get("layout", "time_major")
            if layout not in _LAYOUTS:
                raise RuntimeContractError(f"malformed I/O contract: unknown layout {layout!r}")
            return cls(
                x_features=_ints(data["x_features"], "x_features"),
                x_dtype=str(data["x_dtype"]),
                y_features=_ints(data["y_features"], "y_features"),
                y_dtype=str(data.get("y_dtype", "float32")),
                layout=layout,
                state=StateContract.from_json(data["state"]),
                x_encoding=str(data.get("x_encoding", "real")),
            )
        except KeyError as e:
            raise RuntimeContractError(f"malformed I/O contract: missing {e}") from e


def show_shape(shape: tuple) -> str:
    """``(T, B, 32)``: a shape as the error messages write it."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def check_array(name: str, value: Any, dtype: str, shape: tuple) -> np.ndarray:
    """``value`` as a C-contiguous array, or a one-line error naming what was expected.

    ``shape`` holds ints (must match) and names (``"T"``: any size of at least 1).

    Raises:
        RuntimeContractError: for a non-array, a wrong dtype or a wrong shape.
    """
    if type(value) is np.ndarray and value.shape == shape and value.dtype == dtype \
            and value.flags.c_contiguous:
        return value  # the common case, checked fast: this runs once per step
    want = f"{dtype} array of shape {show_shape(shape)}"
    if not isinstance(value, np.ndarray):
        raise RuntimeContractError(f"{name}: expected a numpy {want}, got {type(value).__name__}")
    if value.dtype != np.dtype(dtype):
        raise RuntimeContractError(f"{name}: expected {want}, got dtype {value.dtype} "
                                   f"(convert with .astype(np.{dtype}))")
    fits = value.ndim == len(shape) and all(
        (size >= 1) if isinstance(want_size, str) else size == want_size
        for size, want_size in zip(value.shape, shape))
    if not fits:
        raise RuntimeContractError(f"{name}: expected {want}, got shape {show_shape(value.shape)}")
    return np.ascontiguousarray(value)
