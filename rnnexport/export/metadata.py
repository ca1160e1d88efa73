"""Writing the contract and provenance into a graph's ``metadata_props``, and reading them back.

The keys and their parsing live in :class:`rnnexport.contract.GraphInfo`.
"""

from __future__ import annotations

import onnx

from rnnexport.contract import Form, GraphInfo, Lowering
from rnnexport.graphs import walk
from rnnexport.model import RecurrentModel

__all__ = ["GraphInfo", "read_info", "write_info"]


def write_info(onnx_model: onnx.ModelProto, model: RecurrentModel, form: Form, lowering: Lowering,
               seq_len: int | None) -> GraphInfo:
    """Record ``model``'s contract and provenance in ``onnx_model`` (replacing any metadata).

    torch's exporter records each node's Python stack trace, with the absolute path of
    every file on it; that is dropped, so a graph holds no path of the machine it was
    built on and the same model gives the same bytes from any checkout.
    """
    from rnnexport import __version__

    _drop_stack_traces(onnx_model)

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


#: The node metadata key under which torch.onnx records where in Python a node came from.
STACK_TRACE = "pkg.torch.onnx.stack_trace"


def _drop_stack_traces(onnx_model: onnx.ModelProto) -> None:
    for node in walk(onnx_model.graph):
        kept = [p for p in node.metadata_props if p.key != STACK_TRACE]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)


def read_info(onnx_model: onnx.ModelProto) -> GraphInfo | None:
    """The recorded info, or None for a graph rnnexport did not write.

    Raises:
        ContractError: rnnexport metadata that is present but malformed.
    """
    return GraphInfo.from_props({p.key: p.value for p in onnx_model.metadata_props})
