"""Test vectors in ONNX's standard layout: ``test_data_set_N/input_K.pb`` and ``output_K.pb``.

Each file is one serialized ``TensorProto`` named after the graph input or output,
in graph order, as onnxruntime's ``onnx_test_runner`` reads them. Sets are read
through a :class:`~rnnexport.bundle.reader.Bundle`, so they get its path and size
checks. Needs onnx (not torch); the runtime does not import this module.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from rnnexport.bundle.reader import Bundle
from rnnexport.core.errors import BundleError
from rnnexport.core.io import atomic_write

__all__ = ["MAX_TENSORS", "read_set", "write_set"]

#: The most ``input_K.pb`` (or ``output_K.pb``) files one test set may hold.
MAX_TENSORS = 64
_FILE = re.compile(r"^(input|output)_(\d{1,3})\.pb$")

Tensors = list[tuple[str, np.ndarray]]


def write_set(folder: Path, inputs: Tensors, outputs: Tensors) -> None:
    """Write one test data set into ``folder`` (created), each file atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, tensors in (("input", inputs), ("output", outputs)):
        for index, (name, array) in enumerate(tensors):
            proto = numpy_helper.from_array(np.ascontiguousarray(array), name)
            atomic_write(folder / f"{prefix}_{index}.pb", proto.SerializeToString(), "test vector", BundleError)


def _tensor(bundle: Bundle, name: str) -> tuple[str, np.ndarray]:
    proto = onnx.TensorProto()
    try:
        proto.ParseFromString(bundle.read(name))
        return proto.name, numpy_helper.to_array(proto)
    except BundleError:
        raise
    except Exception as e:  # protobuf and numpy_helper raise many types on damaged data
        raise BundleError(f"{name} of {bundle.path} is not a serialized TensorProto ({type(e).__name__})") from e


def read_set(bundle: Bundle, folder: str) -> tuple[Tensors, Tensors]:
    """``(inputs, outputs)`` of the test set ``folder``, each a list of ``(name, array)`` in order.

    Raises:
        BundleError: missing or non-consecutive files, more than :data:`MAX_TENSORS`,
            or a file that is not a TensorProto.
    """
    numbered: dict[str, dict[int, str]] = {"input": {}, "output": {}}
    for name in bundle.files_in(folder):
        match = _FILE.fullmatch(name.rsplit("/", 1)[-1])
        if match:
            numbered[match[1]][int(match[2])] = name
    sets = []
    for prefix, files in numbered.items():
        if len(files) > MAX_TENSORS or sorted(files) != list(range(len(files))) or not files:
            raise BundleError(f"test set {folder} of {bundle.path} needs {prefix}_0.pb, {prefix}_1.pb, ... "
                              f"numbered without gaps (found {', '.join(sorted(files.values())) or 'none'})")
        sets.append([_tensor(bundle, files[k]) for k in sorted(files)])
    return sets[0], sets[1]
