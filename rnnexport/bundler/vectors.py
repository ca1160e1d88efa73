"""Test vectors in ONNX's standard layout: ``test_data_set_N/input_K.pb`` and ``output_K.pb``.

Each file is one serialized ``TensorProto`` named after the graph input or output,
in graph order, as onnxruntime's ``onnx_test_runner`` reads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["read_set", "write_set"]


def write_set(folder: Path, inputs: list[tuple[str, np.ndarray]], outputs: list[tuple[str, np.ndarray]]) -> None:
    """Write one test data set."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, tensors in (("input", inputs), ("output", outputs)):
        for index, (name, array) in enumerate(tensors):
            proto = numpy_helper.from_array(np.ascontiguousarray(array), name)
            (folder / f"{prefix}_{index}.pb").write_bytes(proto.SerializeToString())


def _read(path: Path) -> tuple[str, np.ndarray]:
    proto = onnx.TensorProto()
    proto.ParseFromString(path.read_bytes())
    return proto.name, numpy_helper.to_array(proto)


def _numbered(folder: Path, prefix: str) -> list[Path]:
    files = list(folder.glob(f"{prefix}_*.pb"))
    return sorted(files, key=lambda p: int(p.stem.split("_")[1]))


def read_set(folder: Path) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """``(inputs, outputs)`` of one test data set, each a list of ``(name, array)`` in order."""
    return [_read(p) for p in _numbered(folder, "input")], [_read(p) for p in _numbered(folder, "output")]
