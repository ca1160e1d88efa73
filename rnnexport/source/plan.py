"""The native lowering's plan: stacked ONNX RNN/LSTM/GRU layers and an optional output head.

Sources build a plan from their parameters when the ONNX operators can express the
model; :mod:`rnnexport.export.native` writes the graph from it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["NativeLayer", "NativePlan"]


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
