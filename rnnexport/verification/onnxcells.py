"""ONNX's RNN, LSTM and GRU operators in NumPy, one step at a time, with every gate kept.

onnxruntime and onnx's ReferenceEvaluator return an operator's ``Y``, ``Y_h`` and ``Y_c``;
a diagnosis needs the gates inside it at the step where a layer parts from PyTorch. This
follows the operators' definitions for the attributes rnnexport and torch.onnx write
(default activations, no clip, no peepholes, ``layout`` 0 inputs); :func:`supported`
says when a node uses anything else. ``tests/test_diagnose.py`` checks it against the
ReferenceEvaluator.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from rnnexport.core.graphs import attribute
from rnnexport.source.cells import CellKind
from rnnexport.source.gates import GATES, ONNX_GATES

__all__ = ["KINDS", "CellWeights", "run_direction", "supported"]

KINDS = {"RNN": CellKind.RNN, "LSTM": CellKind.LSTM, "GRU": CellKind.GRU}


def supported(node: onnx.NodeProto) -> bool:
    """Whether :func:`run_direction` computes what ``node`` does (no clip, peepholes or other activations)."""
    if node.op_type not in KINDS or attribute(node, "clip") is not None or attribute(node, "input_forget", 0):
        return False
    if len(node.input) > 7 and node.input[7]:
        return False
    activations = attribute(node, "activations")
    tanh_only = activations is None or {a.decode() if isinstance(a, bytes) else a for a in activations} <= {"Tanh"}
    return tanh_only and len(node.input) > 4 and not node.input[4]  # no sequence_lens


def _sigmoid(v: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-v))


@dataclasses.dataclass(frozen=True)
class CellWeights:
    """One direction of a node: ``W (G*H, I)``, ``R (G*H, H)``, ``B (2*G*H,)`` or None, and GRU's flag."""

    op: str
    W: np.ndarray
    R: np.ndarray
    B: np.ndarray | None
    linear_before_reset: int = 0

    @property
    def hidden(self) -> int:
        return self.R.shape[1]

    def _biases(self) -> tuple[np.ndarray, np.ndarray]:
        width = self.W.shape[0]
        if self.B is None:
            return np.zeros(width), np.zeros(width)
        return self.B[:width].astype(np.float64), self.B[width:].astype(np.float64)

    def step(self, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """One step from ``x (B, I)``, ``h`` and ``c`` (``(B, H)``): the activated gates by ONNX's letters, h, c."""
        kind = KINDS[self.op]
        wb, rb = self._biases()
        inputs = np.split(x @ self.W.T.astype(np.float64) + wb, GATES[kind], axis=-1)
        recurrent = np.split(h @ self.R.T.astype(np.float64), GATES[kind], axis=-1)
        rbs = np.split(rb, GATES[kind])
        pre = {g: inputs[j] + recurrent[j] + rbs[j] for j, g in enumerate(ONNX_GATES[kind])}
        if kind is CellKind.RNN:
            h = np.tanh(pre["h"])
            return {"h": h}, h, c
        if kind is CellKind.LSTM:
            gates = {g: _sigmoid(pre[g]) for g in ("i", "o", "f")} | {"c": np.tanh(pre["c"])}
            c = gates["f"] * c + gates["i"] * gates["c"]
            return gates, gates["o"] * np.tanh(c), c
        z, r = _sigmoid(pre["z"]), _sigmoid(pre["r"])
        hr = np.split(self.R.astype(np.float64), 3)[2]
        if self.linear_before_reset:
            candidate = np.tanh(inputs[2] + r * (h @ hr.T + rbs[2]))
        else:
            candidate = np.tanh(inputs[2] + (r * h) @ hr.T + rbs[2])
        return {"z": z, "r": r, "h": candidate}, (1.0 - z) * candidate + z * h, c


def run_direction(weights: CellWeights, x: np.ndarray, h0: np.ndarray, c0: np.ndarray | None,
                  reverse: bool) -> list[dict[str, np.ndarray]]:
    """Every step of one direction over ``x (T, B, I)``, in time order: the gates and ``h`` (and ``c``) after it."""
    h, c = h0.astype(np.float64), (np.zeros_like(h0, np.float64) if c0 is None else c0.astype(np.float64))
    found: dict[int, dict[str, np.ndarray]] = {}
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    for t in steps:
        gates, h, c = weights.step(x[t].astype(np.float64), h, c)
        found[t] = {**gates, "Y": h, "C": c}
    return [found[t] for t in range(x.shape[0])]
