"""The bundle manifest: versioned schema ``rnnexport.bundle/1``, documented in docs/bundle.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from rnnexport.bundler.bundle import MANIFEST, SCHEMA, sha256_file
from rnnexport.export.metadata import GraphInfo

__all__ = ["build_manifest", "graph_entry", "operators", "write_manifest"]


def operators(graph: onnx.GraphProto) -> set[str]:
    """Operator types in ``graph`` and its subgraphs, as ``domain::Op`` for non-default domains."""
    found = set()
    for node in graph.node:
        found.add(f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                found |= operators(sub)
    return found


def graph_entry(file: str, model: onnx.ModelProto, info: GraphInfo) -> dict[str, Any]:
    opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return {
        "file": file,
        "form": info.form.value,
        "lowering": info.lowering.value,
        "seq_len": info.seq_len,
        "ir_version": model.ir_version,
        "opset": opset,
        "operators": sorted(operators(model.graph)),
        "inputs": [s.to_json() for s in info.io.inputs(info.form, info.seq_len)],
        "outputs": [s.to_json() for s in info.io.outputs(info.form, info.seq_len)],
    }


def build_manifest(
    root: Path, info: GraphInfo, graphs: dict[str, dict[str, Any]], variants: list[dict[str, Any]],
    test_vectors: list[dict[str, Any]],
) -> dict[str, Any]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {
        "schema": SCHEMA,
        "created_by": {"rnnexport": info.version, "onnxruntime": ort.__version__, "onnx": onnx.__version__},
        "model": {
            "description": info.description,
            "source_kind": info.source_kind,
            "cell_family": info.cell_family,
            "params_sha256": info.params_sha256,
            "origin": info.origin,
        },
        "io": info.io.to_json(),
        "state": info.io.state.to_json(),
        "graphs": graphs,
        "variants": variants,
        "test_vectors": test_vectors,
        "files": [
            {"path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in files
        ],
    }


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
