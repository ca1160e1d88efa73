"""Building a bundle's manifest (the typed :class:`~rnnexport.bundle.Manifest`) and writing it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import onnxruntime as ort

from rnnexport.bundle import MANIFEST, FileEntry, GraphEntry, Manifest, VariantEntry, VectorEntry
from rnnexport.core.contract import GraphInfo
from rnnexport.core.errors import BundleError
from rnnexport.core.io import atomic_write

__all__ = ["build_manifest", "sha256_file", "write_manifest"]


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(root: Path, info: GraphInfo, graphs: dict[str, GraphEntry], variants: list[VariantEntry],
                   test_vectors: list[VectorEntry]) -> Manifest:
    """The manifest of the bundle folder ``root``: every file in it (but the manifest) with size and SHA-256."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    return Manifest(
        io=info.io,
        graphs=graphs,
        files=tuple(FileEntry(p.relative_to(root).as_posix(), p.stat().st_size, sha256_file(p)) for p in files),
        test_vectors=tuple(test_vectors),
        variants=tuple(variants),
        created_by={"rnnexport": info.version, "onnxruntime": ort.__version__, "onnx": onnx.__version__},
        model={
            "description": info.description,
            "source_kind": info.source_kind,
            "cell_family": info.cell_family,
            "params_sha256": info.params_sha256,
            "origin": info.origin,
        },
    )


def write_manifest(root: Path, manifest: Manifest) -> None:
    """``root/manifest.json``, sorted keys, written atomically."""
    text = json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n"
    atomic_write(root / MANIFEST, text.encode(), "manifest", BundleError)
