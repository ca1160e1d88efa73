"""The buffers a graph call binds: fixed arrays (or device memory) and the state's two directions.

:class:`~rnnexport.runtime.session.StatefulSession` and :class:`~rnnexport.runtime.batcher.StreamBatcher`
keep two sets of state buffers: a call reads one set and writes the other, then they swap, so the
state never makes a host round trip and no call allocates. :func:`bind_state` binds one direction.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import onnxruntime as ort

from rnnexport.core.contract import Dim, StateSpec
from rnnexport.core.errors import RunError, describe
from rnnexport.core.ort import Device, stopped, time_limit

__all__ = ["Buffer", "bind_state", "bound_call", "concrete", "run_bound"]


def concrete(shape: tuple[Dim, ...]) -> tuple[int, ...]:
    """A contract shape built with an int batch and time: every dim is an int (the contract's
    shapes are typed for the symbolic "B"/"T" too; a step shape ignores time)."""
    return cast("tuple[int, ...]", shape)


class Buffer:
    """A fixed buffer and the OrtValue over it: host memory on CPU, device memory otherwise."""

    def __init__(self, shape: tuple[int, ...], dtype: str, device: Device, zero: bool = True) -> None:
        self.host: np.ndarray | None
        if device.type == "cpu":
            self.host = np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
            self.value = ort.OrtValue.ortvalue_from_numpy(self.host)
        else:
            self.host = None
            self.value = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.dtype(dtype), device.type, device.id)
            if zero:
                self.value.update_inplace(np.zeros(shape, dtype))

    def read(self) -> np.ndarray:
        """A host copy."""
        return self.host.copy() if self.host is not None else self.value.numpy()

    def take(self) -> np.ndarray:
        """The host array itself on CPU (for buffers used once), a copy from a device."""
        return self.host if self.host is not None else self.value.numpy()

    def write(self, array: np.ndarray) -> None:
        if self.host is not None:
            np.copyto(self.host, array if array.shape == self.host.shape else array.reshape(self.host.shape))
        else:
            self.value.update_inplace(np.ascontiguousarray(array).reshape(self.value.shape()))


def bind_state(binding: ort.IOBinding, spec: StateSpec, reads: Sequence[ort.OrtValue],
               writes: Sequence[ort.OrtValue]) -> None:
    """Bind one direction of a call: the state inputs to ``reads``, the state outputs to ``writes``."""
    for name, value in zip(spec.names, reads, strict=True):
        binding.bind_ortvalue_input(name, value)
    for name, value in zip(spec.output_names, writes, strict=True):
        binding.bind_ortvalue_output(name, value)


def run_bound(session: ort.InferenceSession, binding: ort.IOBinding, what: str, timeout: float | None = None) -> None:
    """One call on bound buffers, within ``timeout`` seconds (None: no bound); onnxruntime's own failures
    (out of memory, an operator's error) as one line.

    Raises:
        RunTimeout: the call ran over its budget and was stopped.
        RunError: naming ``what`` ran and onnxruntime's reason.
    """
    with time_limit(timeout) as limit:
        try:
            session.run_with_iobinding(binding, limit.options)
        except Exception as e:  # onnxruntime raises Fail, RuntimeException, ... for a graph's failure
            if limit.expired:
                raise stopped(session, what, limit.seconds or 0.0) from e
            raise RunError(f"{what} failed in onnxruntime: {describe(e)}") from e


def bound_call(session: ort.InferenceSession, binding: ort.IOBinding) -> Callable[[], None]:
    """``session.run_with_iobinding(binding)`` as a call made once, for a loop that runs it per step.

    onnxruntime's Python wrapper checks, on every call, that the binding belongs to the
    session and whether WebGPU graph capture is on (~1 us at B=1); both are fixed for a
    binding made once, so where the wrapper's C++ session is there and capture is off, the
    call goes straight to it. Otherwise (another onnxruntime, capture on) it is the wrapper.
    Failures are onnxruntime's own exceptions: wrap the call as :func:`run_bound` does.
    """
    inner, raw = getattr(session, "_sess", None), getattr(binding, "_iobinding", None)
    run = getattr(inner, "run_with_iobinding", None)
    capture = getattr(inner, "is_webgpu_graph_capture_enabled", None)
    if inner is None or raw is None or not callable(run) or getattr(binding, "_session", None) is not inner \
            or not callable(capture) or capture():
        return functools.partial(session.run_with_iobinding, binding)
    return functools.partial(run, raw, None)
