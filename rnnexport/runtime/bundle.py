"""Opening what an app ships: a bundle folder, a .zip of one, or a bare model.onnx.

A bundle holds ``manifest.json`` (schema ``rnnexport.bundle/1``): the I/O
contract, the graphs by form, every file with its size and SHA-256, and the
test vectors. Every listed file is checked before anything runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from rnnexport.errors import BundleError
from rnnexport.runtime.contract import FORMS, IOContract

__all__ = ["MANIFEST", "SCHEMA", "Bundle", "GraphSource", "TestVector", "open_bundle"]

MANIFEST = "manifest.json"
SCHEMA = "rnnexport.bundle/1"


@dataclasses.dataclass(frozen=True)
class GraphSource:
    """One graph to load: its form (None until a bare model's metadata is read) and bytes or path."""

    form: str | None
    name: str
    model: str | bytes


@dataclasses.dataclass(frozen=True)
class TestVector:
    """One test data set: ``input_K.pb`` / ``output_K.pb`` in graph input/output order.

    ``kind`` is ``"single"`` (a call on its own, with the state its inputs hold)
    or ``"stream"``: call number ``call`` of stream ``stream``, whose state inputs
    are the state outputs of the stream's previous call.
    """

    dir: str
    graph: str
    kind: str
    stream: int | None = None
    call: int | None = None


@dataclasses.dataclass(frozen=True)
class Bundle:
    """An opened, checked bundle (or a bare model, with ``manifest`` None).

    Attributes:
        path: what was opened.
        kind: ``"folder"``, ``"zip"`` or ``"model"``.
        manifest: the parsed manifest, or None for a bare model.
        contract: the manifest's I/O contract, or None for a bare model (its
            graph's metadata holds it).
        graphs: by form (``"step"``, ``"sequence"``); a bare model's key is its file name.
        test_vectors: the manifest's test data sets.
    """

    path: Path
    kind: str
    manifest: dict[str, Any] | None
    contract: IOContract | None
    graphs: dict[str, GraphSource]
    test_vectors: tuple[TestVector, ...]
    _reader: Any = dataclasses.field(default=None, repr=False, compare=False)

    def read(self, name: str) -> bytes:
        """The bytes of a file in the bundle (e.g. ``test_data_set_0/input_0.pb``)."""
        if self._reader is None:
            raise BundleError(f"{self.path} is a bare model, not a bundle: it holds no {name}")
        return self._reader.read(name)


def _safe(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise BundleError(f"manifest names a file {name!r}: expected a relative path")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise BundleError(f"manifest names an unsafe path {name!r}: only paths inside the bundle are allowed")
    return str(path)


class _FolderReader:
    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, name: str) -> bytes:
        path = self.root / _safe(name)
        try:
            return path.read_bytes()
        except OSError as e:
            raise BundleError(f"bundle {self.root} lacks {name}: {e.strerror}") from e

    def model(self, name: str) -> str:
        return str(self.root / _safe(name))  # by path, so external data files resolve


class _ZipReader:
    """Reads members of a bundle zip in memory (nothing is extracted); the file is opened per read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except (OSError, zipfile.BadZipFile) as e:
            raise BundleError(f"cannot open bundle {path}: {e}") from e
        tops = [n for n in names if n.endswith("/" + MANIFEST) and n.count("/") == 1]
        if MANIFEST in names:
            self.prefix = ""
        elif len(tops) == 1:
            self.prefix = tops[0][: -len(MANIFEST)]
        else:
            raise BundleError(f"{path} holds no {MANIFEST} at its top: not an rnnexport bundle")

    def read(self, name: str) -> bytes:
        try:
            with zipfile.ZipFile(self.path) as archive:
                return archive.read(self.prefix + _safe(name))
        except KeyError as e:
            raise BundleError(f"bundle {self.path} lacks {name}") from e
        except (OSError, zipfile.BadZipFile) as e:
            raise BundleError(f"cannot read {name} from bundle {self.path}: {e}") from e

    def model(self, name: str) -> bytes:
        return self.read(name)


def _check_files(reader: Any, files: Any, where: Path) -> set[str]:
    if not isinstance(files, list) or not files:
        raise BundleError(f"manifest of {where} lists no files to check")
    listed = set()
    for entry in files:
        if not isinstance(entry, dict) or "path" not in entry or "sha256" not in entry:
            raise BundleError(f"manifest of {where} has a malformed files entry {entry!r}")
        name = _safe(entry["path"])
        data = reader.read(name)
        if "size" in entry and len(data) != entry["size"]:
            raise BundleError(f"checksum mismatch in bundle {where}: {name} is {len(data)} bytes, "
                              f"the manifest says {entry['size']}; the bundle is damaged or altered")
        digest = hashlib.sha256(data).hexdigest()
        if digest != str(entry["sha256"]).lower():
            raise BundleError(f"checksum mismatch in bundle {where}: {name} has SHA-256 {digest[:16]}..., "
                              f"the manifest says {str(entry['sha256'])[:16]}...; the bundle is damaged or altered")
        listed.add(name)
    return listed


def _graphs(reader: Any, manifest: dict[str, Any], listed: set[str], where: Path) -> dict[str, GraphSource]:
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict) or not graphs:
        raise BundleError(f"manifest of {where} lists no graphs")
    found = {}
    for form, entry in graphs.items():
        if form not in FORMS:
            continue  # a form this runtime does not run (e.g. a future variant)
        name = _safe(entry.get("file") if isinstance(entry, dict) else None)
        if name not in listed:
            raise BundleError(f"graph {name} of bundle {where} has no checksum in the manifest's files")
        found[form] = GraphSource(form, name, reader.model(name))
    if not found:
        raise BundleError(f"manifest of {where} lists no step or sequence graph (got {sorted(graphs)})")
    return found


def _vectors(manifest: dict[str, Any]) -> tuple[TestVector, ...]:
    vectors = []
    for entry in manifest.get("test_vectors") or []:
        try:
            vectors.append(TestVector(_safe(entry["dir"]), str(entry["graph"]), str(entry.get("kind", "single")),
                                      entry.get("stream"), entry.get("call")))
        except (KeyError, TypeError) as e:
            raise BundleError(f"manifest has a malformed test_vectors entry {entry!r}") from e
    return tuple(vectors)


def _from_manifest(path: Path, kind: str, reader: Any) -> Bundle:
    try:
        manifest = json.loads(reader.read(MANIFEST))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{MANIFEST} of {path} is not JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"{MANIFEST} of {path} is not a JSON object")
    schema = manifest.get("schema")
    if schema != SCHEMA:
        raise BundleError(f"bundle {path} has schema {schema!r}; this runtime reads {SCHEMA!r} "
                          f"(upgrade rnnexport, or repackage the model)")
    if "io" not in manifest:
        raise BundleError(f"manifest of {path} holds no I/O contract ('io')")
    listed = _check_files(reader, manifest.get("files"), path)
    contract = IOContract.from_json(manifest["io"])
    return Bundle(path, kind, manifest, contract, _graphs(reader, manifest, listed, path),
                  _vectors(manifest), reader)


def open_bundle(path: str | os.PathLike) -> Bundle:
    """Open and check a bundle folder, a .zip of one, or a bare ``.onnx`` model.

    Raises:
        BundleError: for a missing path, an unknown schema, a malformed manifest,
            an unsafe file name or a checksum mismatch.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise BundleError(f"{path} holds no {MANIFEST}: pass a bundle folder, a .zip of one, "
                              f"or a model .onnx file")
        return _from_manifest(path, "folder", _FolderReader(path))
    if not path.is_file():
        raise BundleError(f"{path} does not exist: pass a bundle folder, a .zip of one, or a model .onnx file")
    if zipfile.is_zipfile(path):
        return _from_manifest(path, "zip", _ZipReader(path))
    return Bundle(path, "model", None, None, {path.name: GraphSource(None, path.name, str(path))}, ())
