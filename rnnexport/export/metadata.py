"""The contract and provenance recorded in every graph's ``metadata_props``."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import onnx

from rnnexport.model import Form, IOSpec, Lowering, RecurrentModel

__all__ = ["GraphInfo", "read_info", "write_info"]

PREFIX = "rnnexport."


@dataclasses.dataclass(frozen=True)
class GraphInfo:
    """What rnnexport wrote into a graph: enough to run, verify and rebuild its source."""

    version: str
    form: Form
    lowering: Lowering
    io: IOSpec
    source_kind: str
    cell_family: str | None
    params_sha256: str
    seq_len: int | None = None
    origin: dict[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""

    def to_props(self) -> dict[str, str]:
        return {
            "version": self.version,
            "form": self.form.value,
            "lowering": self.lowering.value,
            "source_kind": self.source_kind,
            "cell_family": self.cell_family or "",
            "layout": self.io.layout.value,
            "state": json.dumps(self.io.state.to_json()),
            "io": json.dumps(self.io.to_json()),
            "params_sha256": self.params_sha256,
            "seq_len": "" if self.seq_len is None else str(self.seq_len),
            "origin": json.dumps(self.origin),
            "description": self.description,
        }


def write_info(onnx_model: onnx.ModelProto, model: RecurrentModel, form: Form, lowering: Lowering,
               seq_len: int | None) -> GraphInfo:
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
        onnx_model.metadata_props.add(key=PREFIX + key, value=value)
    onnx_model.doc_string = f"rnnexport {form.value} graph ({lowering.value}) of {model.description}"
    return info


def read_info(onnx_model: onnx.ModelProto) -> GraphInfo | None:
    """The recorded info, or None for a graph rnnexport did not write."""
    props = {p.key[len(PREFIX):]: p.value for p in onnx_model.metadata_props if p.key.startswith(PREFIX)}
    if "io" not in props:
        return None
    return GraphInfo(
        version=props.get("version", ""),
        form=Form(props["form"]),
        lowering=Lowering(props["lowering"]),
        io=IOSpec.from_json(json.loads(props["io"])),
        source_kind=props.get("source_kind", ""),
        cell_family=props.get("cell_family") or None,
        params_sha256=props.get("params_sha256", ""),
        seq_len=int(props["seq_len"]) if props.get("seq_len") else None,
        origin=json.loads(props.get("origin") or "{}"),
        description=props.get("description", ""),
    )
