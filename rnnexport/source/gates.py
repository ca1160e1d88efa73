"""Gate orders and weight layouts: the one place where torch and ONNX conventions meet.

ONNX packs the gates of its recurrent operators as LSTM ``i, o, f, c`` and GRU
``z, r, h``; torch.nn packs LSTM as ``i, f, g, o`` and GRU as ``r, z, n``. ONNX's
GRU attribute ``linear_before_reset=1`` is torch.nn.GRU's formula
(``r * (W_hn h + b_hn)``); ``0`` is the seed's (``(r * h) @ W_hh``).
"""

from __future__ import annotations

import numpy as np

from rnnexport.source.cells import CellKind

__all__ = [
    "GATES",
    "ONNX_GATES",
    "ONNX_OP",
    "TORCH_GATES",
    "seed_layer_weights",
    "torch_to_onnx_gates",
]

ONNX_OP = {CellKind.RNN: "RNN", CellKind.LSTM: "LSTM", CellKind.GRU: "GRU"}
GATES = {CellKind.RNN: 1, CellKind.LSTM: 4, CellKind.GRU: 3}

#: Gate names in the order each ONNX operator stacks them.
ONNX_GATES = {CellKind.RNN: ("h",), CellKind.LSTM: ("i", "o", "f", "c"), CellKind.GRU: ("z", "r", "h")}

#: The same gates in torch.nn's stacking order, named with ONNX's letters
#: (torch's ``g`` is ONNX's ``c``, torch's ``n`` is ONNX's ``h``).
TORCH_GATES = {CellKind.RNN: ("h",), CellKind.LSTM: ("i", "f", "c", "o"), CellKind.GRU: ("r", "z", "h")}

#: The seed's parameter suffix for each ONNX gate letter.
_SEED_SUFFIX = {
    CellKind.RNN: {"h": "h"},
    CellKind.LSTM: {"i": "i", "o": "o", "f": "f", "c": "c"},
    CellKind.GRU: {"z": "z", "r": "r", "h": "h"},
}


def torch_to_onnx_gates(kind: CellKind, stacked: np.ndarray) -> np.ndarray:
    """Reorder a torch.nn weight or bias, stacked along axis 0, into ONNX gate order."""
    blocks = np.split(stacked, GATES[kind], axis=0)
    by_name = dict(zip(TORCH_GATES[kind], blocks, strict=True))
    return np.concatenate([by_name[g] for g in ONNX_GATES[kind]], axis=0)


def seed_layer_weights(
    kind: CellKind, params: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX ``W (G*H, I)``, ``R (G*H, H)`` and ``B (2*G*H,)`` from the seed's named parameters.

    The seed multiplies row vectors (``X @ W_x*``), ONNX column vectors, hence the
    transposes. The seed has one bias per gate; ONNX's recurrence bias is zero.
    """
    suffix = _SEED_SUFFIX[kind]
    W = np.concatenate([params[f"W_x{suffix[g]}"].T for g in ONNX_GATES[kind]], axis=0)
    R = np.concatenate([params[f"W_h{suffix[g]}"].T for g in ONNX_GATES[kind]], axis=0)
    Wb = np.concatenate([params[f"b_{suffix[g]}"] for g in ONNX_GATES[kind]], axis=0)
    return W, R, np.concatenate([Wb, np.zeros_like(Wb)])
