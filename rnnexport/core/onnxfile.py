"""The one way to open an ONNX file, read and write its rnnexport metadata, and read its values' types.

A graph is data: it is parsed, never executed here, and every failure to read it is one
line in the caller's error type (a bundle command says :class:`BundleError`, verify
:class:`VerifyError`, ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from rnnexport.core.contract import META_PREFIX, GraphInfo, TensorSpec
from rnnexport.core.errors import ContractError, RnnexportError, describe
from rnnexport.core.external import ExternalModel
from rnnexport.core.graphs import tensors

__all__ = ["DTYPES", "inline_external", "load_model", "load_with_info", "read_info", "value_dims", "value_dtype", "value_info",
           "write_info"]

#: The contract's dtype names and their ONNX element types.
DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "float64": TensorProto.DOUBLE,
          "int64": TensorProto.INT64, "int32": TensorProto.INT32}


def load_model(source: str | os.PathLike[str] | bytes | ExternalModel, name: str,
               error: type[RnnexportError] = RnnexportError) -> onnx.ModelProto:
    """Parse the ONNX model at path (or in the bytes) ``source``; ``name`` is how messages call it.

    A model with external data comes back holding all its weights: from the files beside a path
    (onnx's own loader), or from the checked files in memory of an
    :class:`~rnnexport.core.external.ExternalModel` (a bundle's graph and the weights it shares).

    Raises:
        error: the file is missing, unreadable, not an ONNX model, or holds no graph.
    """
    if isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
        raise error(f"{name} does not exist or is not a file; give an .onnx file")
    try:
        if isinstance(source, ExternalModel):
            model = onnx.load_from_string(source.model)
            inline_external(model, source.files)
        else:
            model = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(os.fspath(source))
    except Exception as e:  # any parse failure means "not an ONNX file"
        raise error(f"{name} is not an ONNX model ({describe(e)})") from e
    if not model.graph.node and not model.graph.output:
        raise error(f"{name} is not an ONNX model (it holds no graph)")
    return model


def inline_external(model: onnx.ModelProto, files: Mapping[str, bytes]) -> None:
    """Move every tensor's external data from ``files`` (location -> bytes) into the tensor itself.

    Raises:
        KeyError, ValueError: a reference to a file not in ``files`` or past its end (a bundle's
            graphs are checked when it is opened: :func:`rnnexport.core.external.check_refs`).
    """
    for tensor in tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        data = files[entries["location"]]
        offset = int(entries.get("offset") or 0)
        end = len(data) if entries.get("length") is None else offset + int(entries["length"])
        if end > len(data):
            raise ValueError(f"tensor {tensor.name} reads past the end of {entries['location']}")
        tensor.raw_data = data[offset:end]
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT


def read_info(model: onnx.ModelProto) -> GraphInfo | None:
    """The recorded contract and provenance, or None for a graph rnnexport did not write.

    Raises:
        ContractError: rnnexport metadata that is present but malformed.
    """
    return GraphInfo.from_props({p.key: p.value for p in model.metadata_props})


def load_with_info(source: str | os.PathLike[str] | bytes | ExternalModel, name: str, error: type[RnnexportError],
                   missing: str | None) -> tuple[onnx.ModelProto, GraphInfo | None]:
    """:func:`load_model` and :func:`read_info`, each failure one line in ``error``.

    Args:
        missing: what to tell the user when the graph has no rnnexport metadata (raised as
            ``"{name} has no rnnexport I/O contract in its metadata; {missing}"``), or None
            when a graph without metadata is fine (the info is then None).
    """
    model = load_model(source, name, error)
    try:
        info = read_info(model)
    except ContractError as e:
        raise error(f"{name} has malformed rnnexport metadata: {e}; convert it again") from e
    if info is None and missing is not None:
        raise error(f"{name} has no rnnexport I/O contract in its metadata; {missing}")
    return model, info


def write_info(model: onnx.ModelProto, info: GraphInfo) -> None:
    """Record ``info`` in ``model``'s metadata, replacing rnnexport's keys and keeping any others."""
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(META_PREFIX)]
    del model.metadata_props[:]
    for key, value in [*kept, *info.to_props().items()]:
        model.metadata_props.add(key=key, value=value)


def value_dims(value: onnx.ValueInfoProto | None) -> list[int | str | None] | None:
    """A value's dims (a number, a symbol, or None when unknown); None when it is no tensor of known rank."""
    if value is None or not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value.type.tensor_type.shape.dim]


def value_dtype(value: onnx.ValueInfoProto) -> str | None:
    """A tensor value's element type as numpy names it (``"float32"``); None for a non-tensor or unset type."""
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.elem_type:
        return None
    return np.dtype(helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)).name


def value_info(spec: TensorSpec) -> onnx.ValueInfoProto:
    """A typed graph input or output from a contract tensor spec."""
    return helper.make_tensor_value_info(spec.name, DTYPES[spec.dtype], list(spec.shape))
