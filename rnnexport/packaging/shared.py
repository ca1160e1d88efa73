"""One weight file for a bundle's graphs: the tensors the sequence and step graphs both hold, stored once.

A bundle's sequence and step graphs are lowered from one model, so they hold the same weights
(an LSTM's W, R and B, the output head) under different names. A constant tensor is only its
bytes, so two initializers with the same bytes are interchangeable: every top-level initializer
of at least :data:`MIN_BYTES` whose bytes another graph of the bundle also holds moves into
``weights.bin`` (once, at a 64-byte aligned offset), and each graph reads it as ONNX external
data (``location`` ``weights.bin``, ``offset``, ``length``), as onnxruntime (Python, Node, web),
onnx's ReferenceEvaluator, OpenVINO and tract all load. Everything else stays in the graph.
External data is resolved in the graph's own folder, so the graphs sit beside ``weights.bin``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx.external_data_helper import set_external_data

from rnnexport.core.errors import BundleError
from rnnexport.core.io import atomic_write

__all__ = ["MIN_BYTES", "WEIGHTS", "SharedWeights", "share_weights"]

#: The shared weights file, beside the graphs.
WEIGHTS = "weights.bin"
#: Smaller tensors (axes, scalars, small biases) stay in their graphs.
MIN_BYTES = 1024
_ALIGN = 64


@dataclasses.dataclass(frozen=True)
class SharedWeights:
    """What :func:`share_weights` stored: the file, its distinct tensors, its size, and the bytes not stored twice."""

    file: str
    tensors: int
    size: int
    saved: int

    def line(self) -> str:
        return (f"{self.file} ({self.size / 1e3:.0f} kB): {self.tensors} tensors the graphs share, stored once "
                f"({self.saved / 1e3:.0f} kB saved)")


def _shareable(tensor: onnx.TensorProto) -> bytes | None:
    """The tensor's bytes when it may move to the weights file: raw data, in the graph, big enough."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.raw_data) < MIN_BYTES:
        return None
    return bytes(tensor.raw_data)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def share_weights(graphs: Sequence[tuple[onnx.ModelProto, Path]], root: Path) -> SharedWeights | None:
    """Write ``graphs`` (model, target path in the bundle folder ``root``) with their shared tensors in
    ``root/weights.bin``; None (nothing written) when no two graphs hold a tensor in common.

    Every target must be directly in ``root``: external data resolves in the graph's own folder.
    """
    held: dict[str, set[int]] = {}
    for index, (model, target) in enumerate(graphs):
        if target.parent != root:
            raise ValueError(f"{target} is not directly in the bundle folder {root}")
        for tensor in model.graph.initializer:
            data = _shareable(tensor)
            if data is not None:
                held.setdefault(_digest(data), set()).add(index)
    shared = {digest for digest, where in held.items() if len(where) > 1}
    if not shared:
        return None
    blob = bytearray()
    offsets: dict[str, tuple[int, int]] = {}
    saved = 0
    rewritten = []
    for model, target in graphs:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        for tensor in copy.graph.initializer:
            data = _shareable(tensor)
            if data is None or (digest := _digest(data)) not in shared:
                continue
            if digest not in offsets:
                blob.extend(bytes(-len(blob) % _ALIGN))
                offsets[digest] = (len(blob), len(data))
                blob.extend(data)
            else:
                saved += len(data)
            set_external_data(tensor, WEIGHTS, *offsets[digest])
            tensor.ClearField("raw_data")
        rewritten.append((copy, target))
    atomic_write(root / WEIGHTS, bytes(blob), "shared weights", BundleError)
    for copy, target in rewritten:
        atomic_write(target, copy.SerializeToString(), "bundle graph", BundleError)
    return SharedWeights(WEIGHTS, len(offsets), len(blob), saved)
