"""The internal model every source becomes, and the I/O contract it exports with.

The contract lives here and only here: :class:`StateSpec` and :class:`IOSpec`
generate every tensor name, shape and dynamic axis that the exporter writes, the
verifier feeds, the manifest records and the runtime reads.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from typing import Any

import numpy as np
import torch

__all__ = [
    "BATCH",
    "TIME",
    "Form",
    "IOSpec",
    "Layout",
    "Lowering",
    "NativeLayer",
    "NativePlan",
    "RecurrentModel",
    "SourceKind",
    "StateSpec",
    "TensorSpec",
]

#: Symbolic dimension names used in every exported graph.
BATCH = "B"
TIME = "T"

X_NAME = "x"
Y_NAME = "y"
OUT_SUFFIX = "_out"


class Form(str, enum.Enum):
    """What one call of the graph computes."""

    STEP = "step"
    SEQUENCE = "sequence"


class Lowering(str, enum.Enum):
    """How the recurrence is expressed in ONNX."""

    AUTO = "auto"
    NATIVE = "native"
    SCAN = "scan"
    UNROLLED = "unrolled"


class Layout(str, enum.Enum):
    """Where the time axis of ``x`` and ``y`` sits."""

    TIME_MAJOR = "time_major"  # (T, B, ...)
    BATCH_MAJOR = "batch_major"  # (B, T, ...), torch's batch_first


class SourceKind(str, enum.Enum):
    """Where a model came from."""

    BUILTIN = "builtin"  # a seed cell, with generated or loaded weights
    MODULE = "module"  # a torch.nn module: an RNN/LSTM/GRU or one built around it
    CELL = "cell"  # a user's loop in the seed's convention


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, shape (ints or symbolic names) and dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def concrete(self, batch: int, time: int | None = None) -> tuple[int, ...]:
        """The shape with ``B`` and ``T`` replaced by numbers."""
        sizes = {BATCH: batch, TIME: time}
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(data["name"], tuple(data["shape"]), data["dtype"])


@dataclasses.dataclass(frozen=True)
class StateSpec:
    """The recurrent state: its names and per-tensor shapes around the batch axis.

    Seed cells hold ``(B, H)`` tensors (``batch_axis=0``, ``dims=((H,), ...)``);
    torch.nn modules hold ``(layers * directions, B, H)`` (``batch_axis=1``).
    """

    names: tuple[str, ...]
    dims: tuple[tuple[int, ...], ...]
    batch_axis: int
    dtype: str = "float32"

    def shape(self, index: int, batch: int | str = BATCH) -> tuple[int | str, ...]:
        dims = list(self.dims[index])
        dims.insert(self.batch_axis, batch)
        return tuple(dims)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(name + OUT_SUFFIX for name in self.names)

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(n, self.shape(i), self.dtype) for i, n in enumerate(self.names)]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(n, self.shape(i), self.dtype) for i, n in enumerate(self.output_names)]

    def zeros(self, batch: int) -> list[np.ndarray]:
        """The initial state for ``batch`` streams."""
        return [np.zeros(self.shape(i, batch), dtype=self.dtype) for i in range(len(self.names))]

    def to_json(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "output_names": list(self.output_names),
            "shapes": [list(self.shape(i)) for i in range(len(self.names))],
            "batch_axis": self.batch_axis,
            "dtype": self.dtype,
            "initial": "zeros",
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StateSpec:
        axis = data["batch_axis"]
        dims = tuple(tuple(d for i, d in enumerate(s) if i != axis) for s in data["shapes"])
        return cls(tuple(data["names"]), dims, axis, data.get("dtype", "float32"))


@dataclasses.dataclass(frozen=True)
class IOSpec:
    """The whole I/O contract: data input ``x``, output ``y`` and the state."""

    x_features: tuple[int, ...]
    x_dtype: str
    y_features: tuple[int, ...]
    state: StateSpec
    layout: Layout = Layout.TIME_MAJOR
    y_dtype: str = "float32"
    #: What ``x`` holds: ``real`` vectors, ``one-hot`` vectors over a vocabulary of
    #: size ``x_features[0]``, or ``token-ids`` (int64, no feature axis).
    x_encoding: str = "real"

    @property
    def time_axis(self) -> int:
        return 0 if self.layout is Layout.TIME_MAJOR else 1

    def _data(self, name: str, features: tuple[int, ...], dtype: str, form: Form, seq_len):
        if form is Form.STEP:
            return TensorSpec(name, (BATCH, *features), dtype)
        time = TIME if seq_len is None else seq_len
        lead = (time, BATCH) if self.layout is Layout.TIME_MAJOR else (BATCH, time)
        return TensorSpec(name, (*lead, *features), dtype)

    def inputs(self, form: Form, seq_len: int | None = None) -> list[TensorSpec]:
        """Graph inputs in order: ``x``, then the state (``h``, ``c``)."""
        x = self._data(X_NAME, self.x_features, self.x_dtype, form, seq_len)
        return [x, *self.state.inputs()]

    def outputs(self, form: Form, seq_len: int | None = None) -> list[TensorSpec]:
        """Graph outputs in order: ``y``, then the state (``h_out``, ``c_out``)."""
        y = self._data(Y_NAME, self.y_features, self.y_dtype, form, seq_len)
        return [y, *self.state.outputs()]

    def to_json(self) -> dict[str, Any]:
        return {
            "x_features": list(self.x_features),
            "x_dtype": self.x_dtype,
            "y_features": list(self.y_features),
            "y_dtype": self.y_dtype,
            "layout": self.layout.value,
            "x_encoding": self.x_encoding,
            "state": self.state.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IOSpec:
        return cls(
            x_features=tuple(data["x_features"]),
            x_dtype=data["x_dtype"],
            y_features=tuple(data["y_features"]),
            state=StateSpec.from_json(data["state"]),
            layout=Layout(data["layout"]),
            y_dtype=data.get("y_dtype", "float32"),
            x_encoding=data.get("x_encoding", "real"),
        )


@dataclasses.dataclass(frozen=True)
class NativeLayer:
    """One layer of an ONNX RNN/LSTM/GRU operator, weights already in ONNX layout.

    ``W`` is ``(D, G*H, I)``, ``R`` is ``(D, G*H, H)``, ``B`` is ``(D, 2*G*H)`` or None.
    """

    op: str
    W: np.ndarray
    R: np.ndarray
    B: np.ndarray | None
    hidden_size: int
    activations: tuple[str, ...] | None = None
    linear_before_reset: int | None = None

    @property
    def directions(self) -> int:
        return self.W.shape[0]


@dataclasses.dataclass(frozen=True)
class NativePlan:
    """Everything the native lowering needs: stacked layers and an optional output head."""

    layers: tuple[NativeLayer, ...]
    head: tuple[np.ndarray, np.ndarray] | None = None  # (W_hq (H, Q), b_q (Q,))


class RecurrentModel:
    """A recurrent model ready to export: a torch reference, its contract and parameters.

    Attributes:
        kind: where it came from.
        family: ``"rnn"``, ``"lstm"`` or ``"gru"`` when known, else None.
        io: the I/O contract.
        sequence_module: ``forward(x, *state) -> (y, *state_out)`` in the contract's
            layout; the reference every lowering and check is compared with.
        params: named parameters, for the parameter hash.
        native: the native plan, or None with ``native_reason`` saying why.
        scan_reason: why the scan lowering cannot apply, or None when it can.
        origin: JSON-able description that lets a built-in model be rebuilt.
        description: one line for humans.
        trace_module: computes what ``sequence_module`` computes, in a form that
            torch's exporter traces cleanly (defaults to ``sequence_module``).
        card: the model card, for trained example models.
    """

    def __init__(
        self,
        *,
        kind: SourceKind,
        family: str | None,
        io: IOSpec,
        sequence_module: torch.nn.Module,
        params: list[tuple[str, torch.Tensor]],
        native: NativePlan | None = None,
        native_reason: str = "",
        scan_reason: str | None = None,
        origin: dict[str, Any] | None = None,
        description: str = "",
        trace_module: torch.nn.Module | None = None,
    ) -> None:
        self.kind = kind
        self.family = family
        self.io = io
        self.sequence_module = sequence_module.eval()
        self.params = params
        self.native = native
        self.native_reason = native_reason
        self.scan_reason = scan_reason
        self.origin = origin or {}
        self.description = description
        self.trace_module = (trace_module or sequence_module).eval()
        self.card: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"RecurrentModel({self.description or self.kind.value})"

    def step_module(self) -> torch.nn.Module:
        """``forward(x_t, *state) -> (y_t, *state_out)``: the sequence module on one step."""
        return _OneStep(self.sequence_module, self.io.time_axis)

    def trace_step_module(self) -> torch.nn.Module:
        """One step of ``trace_module``: what the step and scan lowerings trace."""
        return _OneStep(self.trace_module, self.io.time_axis)

    def params_sha256(self) -> str:
        """SHA-256 over every parameter's name, dtype, shape and bytes, in order."""
        digest = hashlib.sha256()
        for name, tensor in self.params:
            array = tensor.detach().cpu().contiguous().numpy()
            header = json.dumps([name, str(array.dtype), list(array.shape)])
            digest.update(header.encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    @torch.no_grad()
    def run_sequence(self, x: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
        """The PyTorch reference on numpy arrays: ``[y, *state_out]``."""
        outputs = self.sequence_module(torch.from_numpy(x), *(torch.from_numpy(s) for s in state))
        return [o.detach().numpy() for o in outputs]

    @torch.no_grad()
    def run_sequence_float64(self, x: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray] | None:
        """The reference computed in float64, or None when the model does not run in float64.

        Verification uses it to measure the float32 reference's own rounding error.
        """
        if not hasattr(self, "_float64"):
            import copy

            self._float64 = copy.deepcopy(self.sequence_module).double()
        x64 = torch.from_numpy(x).double() if np.issubdtype(x.dtype, np.floating) else torch.from_numpy(x)
        try:
            outputs = self._float64(x64, *(torch.from_numpy(s).double() for s in state))
        except (RuntimeError, TypeError):  # a user loop that builds float32 tensors inside
            return None
        return [o.detach().numpy() for o in outputs]

    @torch.no_grad()
    def run_step(self, x: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
        """One step of the PyTorch reference on numpy arrays."""
        outputs = self.step_module()(torch.from_numpy(x), *(torch.from_numpy(s) for s in state))
        return [o.detach().numpy() for o in outputs]


class _OneStep(torch.nn.Module):
    def __init__(self, sequence: torch.nn.Module, time_axis: int) -> None:
        super().__init__()
        self.sequence = sequence
        self.time_axis = time_axis

    def forward(self, x: torch.Tensor, *state: torch.Tensor):
        y, *state_out = self.sequence(x.unsqueeze(self.time_axis), *state)
        return (y.squeeze(self.time_axis), *state_out)
