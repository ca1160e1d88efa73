"""The contract and provenance of a converted model, written into its graph's ``metadata_props``.

The keys and their parsing live in :class:`rnnexport.core.contract.GraphInfo`; reading and
writing them in :mod:`rnnexport.core.onnxfile`.
"""

from __future__ import annotations

import onnx

from rnnexport.core.contract import Form, GraphInfo, Lowering, NanPolicy
from rnnexport.core.graphs import walk
from rnnexport.core.onnxfile import write_info as write_props
from rnnexport.source.model import RecurrentModel

__all__ = ["write_info"]


def write_info(onnx_model: onnx.ModelProto, model: RecurrentModel, form: Form, lowering: Lowering,
               seq_len: int | None, nan: NanPolicy = NanPolicy.CARRY) -> GraphInfo:
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
        nan=nan,
    )
    del onnx_model.metadata_props[:]
    write_props(onnx_model, info)
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

