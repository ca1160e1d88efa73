"""Writing the contract and provenance into a graph's ``metadata_props``, and reading them back.

The keys and their parsing live in :class:`rnnexport.contract.GraphInfo`.
"""

from __future__ import annotations

import onnx

from rnnexport.contract import Form, GraphInfo, Lowering
from rnnexport.model import RecurrentModel

__all__ = ["GraphInfo", "read_info", "write_info"]


def write_info(onnx_model: onnx.ModelProto, model: RecurrentModel, form: Form, lowering: Lowering,
               seq_len: int | None) -> GraphInfo:
    """Record ``model``'s contract and provenance in ``onnx_model`` (replacing any metadata)."""
    from rnnexport import __version__

    info = GraphInfo(
        version=__version__,
        form=form,
        lowering=lowering,
        io=model.io,
        source_kind=model.kind.value,
        cell_family=model.family,
        params_sha256=model.params_sha256(),
        seq_len=seq_len,
        origin=model.origin,
        description=model.description,
    )
    del onnx_model.metadata_props[:]
    for key, value in info.to_props().items():
        onnx_model.metadata_props.add(key=key, value=value)
    onnx_model.doc_string = f"rnnexport {form.value} graph ({lowering.value}) of {model.description}"
    return info


def read_info(onnx_model: onnx.ModelProto) -> GraphInfo | None:
    """The recorded info, or None for a graph rnnexport did not write.

    Raises:
        ContractError: rnnexport metadata that is present but malformed.
    """
    return GraphInfo.from_props({p.key: p.value for p in onnx_model.metadata_props})
