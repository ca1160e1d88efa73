"""Building a bundle's manifest (the typed :class:`~rnnexport.bundle.Manifest`) and writing it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnxruntime as ort

from rnnexport.bundle import MANIFEST, FileEntry, GraphEntry, Manifest, VariantEntry, VectorEntry
from rnnexport.bundle.manifest import EpCoverage, MobileCoverage
from rnnexport.core.contract import GraphInfo
from rnnexport.core.errors import BundleError, describe
from rnnexport.core.io import atomic_write, scratch_folder

__all__ = ["MOBILE_EPS", "build_manifest", "mobile_coverage", "sha256_file", "write_manifest"]

logger = logging.getLogger("rnnexport.packaging")

#: The mobile execution providers onnxruntime's usability checker judges: manifest name -> its operator list
#: (None: NNAPI's, which the checker finds itself).
MOBILE_EPS = {"nnapi": None, "coreml_mlprogram": "coreml_supported_mlprogram_ops.md",
              "coreml_neuralnetwork": "coreml_supported_neuralnetwork_ops.md"}


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


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    folder = scratch_folder("mobile")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def mobile_coverage(path: Path) -> MobileCoverage | None:
    """How many of the graph's nodes the NNAPI and CoreML execution providers would take.

    onnxruntime's own mobile usability check (``onnxruntime.tools.mobile_helpers``, as
    ``python -m onnxruntime.tools.check_onnx_model_mobile_usability`` runs it): the graph
    after onnxruntime's basic optimizations, shapes inferred, judged per provider against
    the operator list shipped with onnxruntime, first as it is (symbolic batch and time:
    these providers take only nodes of fixed shapes), then as if every shape were fixed.
    Reads local files only. None (with a warning) where the check cannot run here.
    """
    try:
        from onnxruntime.tools.mobile_helpers import usability_checker as checker
        from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model
    except ImportError as e:
        logger.warning("the mobile usability check is not in this onnxruntime (%s): no mobile coverage recorded", e)
        return None
    try:
        with _scratch() as tmp:  # named after this process: a later run removes it if this one is killed
            optimized = tmp / "model.onnx"
            optimize_model(path, optimized, use_external_initializers=True)
            model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
            eps = {}
            for ep, ops in MOBILE_EPS.items():
                def judge(fixed: bool, ops: str | None = ops) -> checker.PartitioningInfo:
                    if ops is None:
                        return checker.check_nnapi_partitions(model, require_fixed_input_sizes=not fixed)
                    return checker.check_coreml_partitions(model, not fixed, ops)
                as_is, fixed = judge(False), judge(True)
                blocked = sorted({op.removeprefix("ai.onnx:") for op in (*fixed.unsupported_ops,
                                                                         *fixed.ops_with_unsupported_rank)})
                eps[ep] = EpCoverage(fixed.num_nodes, as_is.num_supported_nodes, fixed.num_supported_nodes,
                                     fixed.num_partitions, tuple(blocked[:64]))
    except Exception as e:  # noqa: BLE001 - the checker is advice: a graph it cannot judge still ships
        logger.warning("the mobile usability check failed on %s: %s; no mobile coverage recorded", path, describe(e))
        return None
    return MobileCoverage(eps, f"onnxruntime {ort.__version__}", _mobile_note(eps))


def _mobile_note(eps: dict[str, EpCoverage]) -> str:
    """One sentence: what each provider takes as exported and with fixed shapes, and which operators block it."""
    as_is = ", ".join(f"{ep} {c.as_is}/{c.nodes}" for ep, c in eps.items())
    fixed = ", ".join(f"{ep} {c.fixed}/{c.nodes}" for ep, c in eps.items())
    lacking: dict[str, list[str]] = {}
    for ep, c in eps.items():
        for op in c.blocked_by:
            lacking.setdefault(op, []).append(ep)
    blocking = "; ".join(f"{op} ({'all' if len(where) == len(eps) else ', '.join(where)})"
                         for op, where in sorted(lacking.items()))
    return (f"as exported (symbolic batch and time) {as_is}; with fixed shapes {fixed}"
            + (f"; missing from the operator lists: {blocking}" if blocking else ""))
