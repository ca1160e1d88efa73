"""Reading bundles: a folder or zip with ``manifest.json``, or a plain ONNX test folder.

Standard library and hashlib only, so the torch-free runtime can use it too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rnnexport.bundler.zipio import UnsafeArchive, safe_extract
from rnnexport.errors import BundleError

__all__ = ["MANIFEST", "SCHEMA", "Bundle", "checksum_problems", "open_bundle", "sha256_file"]

MANIFEST = "manifest.json"
SCHEMA = "rnnexport.bundle/1"
SUPPORTED_SCHEMAS = (SCHEMA,)


@dataclasses.dataclass(frozen=True)
class Bundle:
    """An opened bundle: its folder (extracted for a zip) and manifest (None for an ONNX test folder)."""

    root: Path
    manifest: dict[str, Any] | None
    source: Path

    @property
    def test_sets(self) -> list[dict[str, Any]]:
        """The manifest's test vector entries, or every ``test_data_set_*`` of a plain test folder."""
        if self.manifest is not None:
            return list(self.manifest.get("test_vectors", []))
        sets = sorted(self.root.glob("test_data_set_*"), key=lambda p: int(p.name.rsplit("_", 1)[1]))
        return [{"dir": p.name, "graph": "model.onnx", "kind": "single"} for p in sets]

    def graph_file(self, graph: str) -> Path:
        if self.manifest is None:
            return self.root / "model.onnx"
        return self.root / self.manifest["graphs"][graph]["file"]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(root: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"cannot read {root / MANIFEST}: {e}") from e
    schema = manifest.get("schema") if isinstance(manifest, dict) else None
    if schema not in SUPPORTED_SCHEMAS:
        raise BundleError(f"{root / MANIFEST} has schema {schema!r}; this rnnexport reads "
                          f"{', '.join(SUPPORTED_SCHEMAS)} (upgrade rnnexport or re-package the model)")
    return manifest


def checksum_problems(bundle: Bundle) -> list[str]:
    """Every file of the manifest that is missing, of the wrong size, or has another SHA-256."""
    if bundle.manifest is None:
        return []
    problems = []
    for entry in bundle.manifest.get("files", []):
        path = bundle.root / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']} is missing")
        elif path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['path']} does not match its SHA-256 in the manifest (modified or corrupt)")
    return problems


@contextlib.contextmanager
def open_bundle(path: str | Path) -> Iterator[Bundle]:
    """Open a bundle folder, a bundle zip (extracted safely into a temporary folder), or a test folder.

    Raises:
        BundleError: not a bundle, unknown schema, or an unsafe archive.
    """
    path = Path(path)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            yield Bundle(path, _read_manifest(path), path)
        elif (path / "model.onnx").is_file():
            yield Bundle(path, None, path)
        else:
            raise BundleError(f"{path} has neither {MANIFEST} nor model.onnx; give a bundle made by "
                              "`rnnexport package` or an ONNX test folder")
        return
    if not path.is_file():
        raise BundleError(f"{path} does not exist")
    with tempfile.TemporaryDirectory(prefix="rnnexport-bundle-") as tmp:
        try:
            safe_extract(path, tmp)
        except UnsafeArchive as e:
            raise BundleError(f"refusing {path}: {e}") from e
        root = Path(tmp)
        if not (root / MANIFEST).is_file():
            raise BundleError(f"{path} has no {MANIFEST} at its top level; it is not a bundle")
        yield Bundle(root, _read_manifest(root), path)
