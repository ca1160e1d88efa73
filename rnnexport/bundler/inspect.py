"""What a graph, bundle folder or bundle zip holds, as data (the CLI renders it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnx

from rnnexport.bundler.bundle import open_bundle
from rnnexport.bundler.manifest import graph_entry, operators
from rnnexport.errors import BundleError, describe
from rnnexport.export.metadata import read_info

__all__ = ["inspect"]


def _graph(path: Path) -> dict[str, Any]:
    try:
        model = onnx.load(path)
    except Exception as e:  # noqa: BLE001
        raise BundleError(f"{path} is not a readable ONNX model ({describe(e)})") from e
    info = read_info(model)
    data: dict[str, Any] = {"kind": "graph", "path": str(path), "size_bytes": os.path.getsize(path)}
    if info is None:
        data.update(
            contract=None,
            operators=sorted(operators(model.graph)),
            inputs=[i.name for i in model.graph.input],
            outputs=[o.name for o in model.graph.output],
        )
        return data
    data.update(graph_entry(path.name, model, info))
    data.update(
        description=info.description,
        state=info.io.state.to_json(),
        metadata={p.key: p.value for p in model.metadata_props},
    )
    return data


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-able summary of a ``.onnx`` graph, a bundle folder or a bundle zip."""
    path = Path(path)
    if path.suffix == ".onnx" and path.is_file():
        return _graph(path)
    with open_bundle(path) as bundle:
        if bundle.manifest is None:
            data = _graph(bundle.root / "model.onnx")
            data["kind"] = "onnx-test-folder"
            data["test_sets"] = [s["dir"] for s in bundle.test_sets]
            return data
        manifest = bundle.manifest
        sizes = {f["path"]: f["size"] for f in manifest["files"]}
        return {
            "kind": "bundle",
            "path": str(path),
            "schema": manifest["schema"],
            "model": manifest["model"],
            "created_by": manifest["created_by"],
            "state": manifest["state"],
            "graphs": {k: {**g, "size_bytes": sizes.get(g["file"])} for k, g in manifest["graphs"].items()},
            "variants": manifest["variants"],
            "test_vectors": manifest["test_vectors"],
            "files": manifest["files"],
            "total_bytes": sum(sizes.values()),
        }
