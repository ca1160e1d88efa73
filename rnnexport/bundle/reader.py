"""The one bundle reader: a bundle folder, a zip of one (read in memory), a bare .onnx, an ONNX test folder.

Everything read here is untrusted data. Zip members are checked against
:class:`ZipLimits` from the archive's own headers before a byte is inflated;
every path stays inside the bundle; every size is bounded before reading; every
file the manifest lists is checked against its size and SHA-256 when the bundle
is opened, and every graph, test set and made variant it names must be among
them. A graph's external data (the weights file the sequence and step graphs
share) is data too: before any engine sees the graph, every tensor it keeps in
another file must read from the file its manifest entry names (listed, checked),
within that file's bytes (:mod:`rnnexport.core.external`); the graph is then
handed out with the file in memory, so no engine reads anything from disk. A
variant holds all its weights (it reads no external data). A test folder's graph
may read files inside the folder but not itself, all within the limits' total. Nothing is extracted
to disk. Torch-free (standard library only).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Protocol

from rnnexport.bundle.manifest import MANIFEST, SCHEMA, Manifest, VectorEntry, safe_path
from rnnexport.core.contract import Form, IOSpec
from rnnexport.core.data import load_json
from rnnexport.core.errors import BundleError
from rnnexport.core.external import ExternalModel, check_refs, external_refs

__all__ = ["DEFAULT_LIMITS", "Bundle", "GraphSource", "ZipLimits", "is_bundle", "open_bundle"]

#: The graph file of a plain ONNX test folder.
TEST_FOLDER_MODEL = "model.onnx"
_TEST_SET = re.compile(r"test_data_set_([0-9]{1,6})")


@dataclasses.dataclass(frozen=True)
class ZipLimits:
    """What a bundle zip may declare, checked from its central directory before reading.

    Attributes:
        max_members: entries in the archive.
        max_member_bytes: uncompressed size of one entry.
        max_total_bytes: uncompressed size of all entries together.
        max_ratio: uncompressed / compressed size of an entry over ``ratio_floor`` bytes,
            and of the whole archive (a zip bomb's signature).
        ratio_floor: entries at most this large are exempt from the per-entry ratio.
        max_manifest_bytes: size of ``manifest.json``.
    """

    max_members: int = 4096
    max_member_bytes: int = 2 * 1024**3
    max_total_bytes: int = 4 * 1024**3
    max_ratio: float = 200.0
    ratio_floor: int = 64 * 1024
    max_manifest_bytes: int = 16 * 1024**2


DEFAULT_LIMITS = ZipLimits()


@dataclasses.dataclass(frozen=True)
class GraphSource:
    """One graph to load: its form (None until a bare model's metadata is read), name, and path or bytes
    (with the external data files it reads, checked, when it keeps weights in one)."""

    form: Form | None
    name: str
    model: str | bytes | ExternalModel


class _Reader(Protocol):
    where: Path
    limits: ZipLimits

    def read(self, name: str, limit: int) -> bytes: ...

    def size(self, name: str) -> int: ...

    def names(self) -> list[str]: ...


class _FolderReader:
    def __init__(self, root: Path, limits: ZipLimits = DEFAULT_LIMITS) -> None:
        self.where = root
        self.root = root.resolve()
        self.limits = limits

    def _path(self, name: str) -> Path:
        path = (self.root / safe_path(name)).resolve()
        if not path.is_relative_to(self.root):
            raise BundleError(f"bundle {self.where}: {name} leads outside the bundle (a link?)")
        return path

    def size(self, name: str) -> int:
        try:
            return self._path(name).stat().st_size
        except OSError as e:
            raise BundleError(f"bundle {self.where} lacks {name}: {e.strerror}") from e

    def read(self, name: str, limit: int) -> bytes:
        path = self._path(name)
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                raise BundleError(f"bundle {self.where}: {name} is not a regular file")
            if info.st_size > limit:
                raise BundleError(f"bundle {self.where}: {name} is {info.st_size} bytes, over the limit of {limit}")
            return path.read_bytes()
        except OSError as e:
            raise BundleError(f"bundle {self.where} lacks {name}: {e.strerror}") from e

    def names(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())


class _ZipReader:
    """Reads members of a bundle zip in memory; the archive's headers are checked once, up front."""

    def __init__(self, path: Path, limits: ZipLimits) -> None:
        self.where = path
        self.limits = limits
        try:
            self.archive = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile, ValueError) as e:
            raise BundleError(f"cannot open bundle {path}: {e}") from e
        infos = self.archive.infolist()
        if len(infos) > limits.max_members:
            raise BundleError(f"refusing {path}: it holds {len(infos)} entries, over the limit of "
                              f"{limits.max_members}")
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            self._check(info)
            if not info.is_dir():
                self.members[info.filename] = info
        total = sum(i.file_size for i in self.members.values())
        packed = sum(i.compress_size for i in self.members.values())
        if total > limits.max_total_bytes:
            raise BundleError(f"refusing {path}: it declares {total} bytes once inflated, over the limit of "
                              f"{limits.max_total_bytes}")
        if total > limits.ratio_floor and total > limits.max_ratio * max(packed, 1):
            raise BundleError(f"refusing {path}: it inflates {total / max(packed, 1):.0f} times (a zip bomb?)")
        tops = [n for n in self.members if n.endswith("/" + MANIFEST) and n.count("/") == 1]
        if MANIFEST in self.members:
            self.prefix = ""
        elif len(tops) == 1:
            self.prefix = tops[0][: -len(MANIFEST)]
        else:
            raise BundleError(f"{path} holds no {MANIFEST} at its top: not an rnnexport bundle")

    def _check(self, info: zipfile.ZipInfo) -> None:
        name, limits = info.filename, self.limits
        if name.startswith(("/", "\\")) or ".." in name.split("/") or "\\" in name or ":" in name.split("/")[0]:
            raise BundleError(f"refusing {self.where}: entry {name!r:.80} points outside the bundle")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise BundleError(f"refusing {self.where}: entry {name!r:.80} is a symbolic link")
        if info.file_size > limits.max_member_bytes:
            raise BundleError(f"refusing {self.where}: entry {name!r:.80} declares {info.file_size} bytes, over "
                              f"the limit of {limits.max_member_bytes}")
        if info.file_size > limits.ratio_floor and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise BundleError(f"refusing {self.where}: entry {name!r:.80} inflates "
                              f"{info.file_size / max(info.compress_size, 1):.0f} times (a zip bomb?)")

    def _info(self, name: str) -> zipfile.ZipInfo:
        info = self.members.get(self.prefix + safe_path(name))
        if info is None:
            raise BundleError(f"bundle {self.where} lacks {name}")
        return info

    def size(self, name: str) -> int:
        return self._info(name).file_size

    def read(self, name: str, limit: int) -> bytes:
        info = self._info(name)
        if info.file_size > limit:
            raise BundleError(f"bundle {self.where}: {name} is {info.file_size} bytes, over the limit of {limit}")
        try:
            with self.archive.open(info) as member:
                data = member.read(info.file_size + 1)  # CRC is checked when the member is read to its end
        except (OSError, zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as e:
            raise BundleError(f"cannot read {name} from bundle {self.where}: {e}; the zip is damaged") from e
        if len(data) != info.file_size:
            raise BundleError(f"cannot read {name} from bundle {self.where}: it inflates to {len(data)} bytes, "
                              f"its header says {info.file_size}; the zip is damaged or altered")
        return data

    def names(self) -> list[str]:
        return sorted(n[len(self.prefix):] for n in self.members if n.startswith(self.prefix))


@dataclasses.dataclass(frozen=True)
class Bundle:
    """An opened, checked bundle, bare model or ONNX test folder.

    Attributes:
        path: what was opened.
        kind: ``"folder"``, ``"zip"``, ``"model"`` (a bare .onnx) or ``"test-folder"``
            (``model.onnx`` beside ``test_data_set_N/``, no manifest).
        manifest: the parsed manifest; None for a bare model or a test folder.
        graphs: by form (``"step"``, ``"sequence"``); for a bare model or a test folder,
            by file name, with the form read later from the graph's metadata.
        test_vectors: the manifest's test data sets (or a test folder's ``test_data_set_N``).
    """

    path: Path
    kind: str
    manifest: Manifest | None
    graphs: dict[str, GraphSource]
    test_vectors: tuple[VectorEntry, ...]
    _reader: _Reader | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def contract(self) -> IOSpec | None:
        """The manifest's I/O contract; None without a manifest (the graph's metadata holds it)."""
        return self.manifest.io if self.manifest is not None else None

    def read(self, name: str, limit: int = DEFAULT_LIMITS.max_member_bytes) -> bytes:
        """The bytes of a file in the bundle (e.g. ``test_data_set_0/input_0.pb``), at most ``limit``."""
        if self._reader is None:
            raise BundleError(f"{self.path} is a bare model, not a bundle: it holds no {name}")
        return self._reader.read(name, limit)

    def checked(self, name: str, limit: int = DEFAULT_LIMITS.max_member_bytes) -> bytes:
        """The bytes of a file the manifest lists, checked against its SHA-256 again as they are read: what runs
        is what the checksum covered (a file that changed since the bundle was opened is refused).

        Raises:
            BundleError: a bare model; a file the manifest does not list or that does not match its checksum.
        """
        if self._reader is None:
            raise BundleError(f"{self.path} is a bare model, not a bundle: it holds no {name}")
        return _read_checked(self._reader, self.manifest, name, limit)

    def graph(self, name: str, weights: str | None = None, ort_format: bool = False) -> bytes | ExternalModel:
        """The graph file ``name`` as an engine may load it: its bytes, or with the external data it reads.

        Args:
            weights: the file beside it that the graph may read external data from (a manifest's
                ``weights``); None: the graph must hold all its weights.
            ort_format: the file is the ``ort`` variant's, which may be in onnxruntime's ORT format
                (a flatbuffer, no ONNX external data); every other graph is read as ONNX and its
                external references checked, whatever its first bytes say.

        Raises:
            BundleError: a bare model; the graph reads external data from any other file, or
                outside the file's bytes; a file that does not match its checksum.
        """
        if self._reader is None:
            raise BundleError(f"{self.path} is a bare model, not a bundle: it holds no {name}")
        return _load_graph(self._reader, self.manifest, name, weights, ort_format)

    def files_in(self, folder: str) -> list[str]:
        """The names of the files directly in ``folder`` (e.g. a test set), sorted."""
        if self._reader is None:
            return []
        prefix = safe_path(folder).rstrip("/") + "/"
        return [n for n in self._reader.names() if n.startswith(prefix) and "/" not in n[len(prefix):]]


def _check_files(reader: _Reader, manifest: Manifest, keep: set[str]) -> tuple[set[str], dict[str, bytes]]:
    """The names of the listed files, each checked against its size and SHA-256, and the checked bytes of those
    in ``keep`` (the graphs and their weights: read and hashed once, handed out as they were checked)."""
    problems = []
    kept = {}
    sizes = {entry.path: reader.size(entry.path) for entry in manifest.files}
    total, limits = sum(sizes.values()), reader.limits
    if total > limits.max_total_bytes:
        raise BundleError(f"bundle {reader.where}: its manifest lists {total} bytes of files, over the limit of "
                          f"{limits.max_total_bytes}")
    for entry in manifest.files:
        size = sizes[entry.path]
        if size > limits.max_member_bytes:
            raise BundleError(f"bundle {reader.where}: {entry.path} is {size} bytes, over the limit of "
                              f"{limits.max_member_bytes}")
        if entry.size is not None and size != entry.size:
            problems.append(f"{entry.path} is {size} bytes, the manifest says {entry.size}")
            continue
        data = reader.read(entry.path, size)
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            problems.append(f"{entry.path} does not match its SHA-256 in the manifest")
        elif entry.path in keep:
            kept[entry.path] = data
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BundleError(f"checksum mismatch in bundle {reader.where}: {problems[0]}{more}; the bundle is "
                          "damaged or altered")
    return {f.path for f in manifest.files}, kept


def _read_checked(reader: _Reader, manifest: Manifest | None, name: str, limit: int,
                  checked: dict[str, bytes] | None = None) -> bytes:
    """``name``'s bytes, checked again against the manifest's SHA-256: what runs is what the checksum covered.

    Args:
        checked: bytes already read and checked against the manifest, by name (handed out as they are: the
            graphs of a bundle then share one weights object, and nothing is read or hashed twice).
    """
    if checked is not None and name in checked:
        return checked[name]
    data = reader.read(name, limit)
    entry = manifest.file(name) if manifest is not None else None
    if manifest is not None and (entry is None or hashlib.sha256(data).hexdigest() != entry.sha256):
        raise BundleError(f"checksum mismatch in bundle {reader.where}: {name} does not match its SHA-256 in the "
                          "manifest (or has none); the bundle is damaged or altered")
    return data


def _load_graph(reader: _Reader, manifest: Manifest | None, name: str, weights: str | None,
                ort_format: bool = False, checked: dict[str, bytes] | None = None) -> bytes | ExternalModel:
    """A graph of the bundle and the external data it reads (only ``weights``, or with no manifest any file
    inside the folder), every reference checked before an engine sees it. Only the ``ort`` variant's file
    (``ort_format``) may be onnxruntime's ORT format, which holds no ONNX external data: any other graph is
    ONNX, and a valid ONNX file may carry ``ORTM`` at bytes 4-8 (in its producer name)."""
    limit = reader.limits.max_member_bytes
    data = _read_checked(reader, manifest, name, limit, checked)
    where = f"graph {name} of bundle {reader.where}"
    if ort_format and data[4:8] == b"ORTM":  # onnxruntime's own format, a flatbuffer: no ONNX external data
        return data
    refs = external_refs(data, where, BundleError)
    if not refs:
        return data
    folder = PurePosixPath(name).parent
    own = PurePosixPath(name).name
    for ref in refs:
        if ref.location == own:
            raise BundleError(f"{where} reads tensor {ref.tensor!r:.60} from {own}, the graph's own file: the graph "
                              "is damaged or altered")
    if manifest is None:  # an ONNX test folder: files beside the graph, inside the folder
        allowed = {r.location for r in refs}
    elif weights is not None:
        allowed = {PurePosixPath(weights).relative_to(folder).as_posix()}
    else:
        allowed = set()
    paths = {location: (folder / location).as_posix() for location in sorted(allowed)}
    sizes = {location: reader.size(path) for location, path in paths.items()}
    for location, size in sizes.items():
        if size > limit:
            raise BundleError(f"bundle {reader.where}: {paths[location]} is {size} bytes, over the limit of {limit}")
    total = len(data) + sum(sizes.values())
    if total > reader.limits.max_total_bytes:
        raise BundleError(f"{where} and the external data files it reads ({', '.join(sizes)}) are {total} bytes, "
                          f"over the limit of {reader.limits.max_total_bytes}")
    files = {location: _read_checked(reader, manifest, path, limit, checked) for location, path in paths.items()}
    hint = ("which its manifest entry does not name as its weights (only the file named in the graph's "
            "'weights' is read); the bundle is damaged or altered")
    check_refs(refs, {k: len(v) for k, v in files.items()}, where, BundleError, hint)
    return ExternalModel(data, files)


def _graphs(reader: _Reader, manifest: Manifest, listed: set[str], checked: dict[str, bytes]) -> dict[str, GraphSource]:
    found = {}
    for key, entry in manifest.graphs.items():
        for file in (entry.file, entry.weights):
            if file is not None and file not in listed:
                raise BundleError(f"{file} of bundle {reader.where} (graph {key}) has no checksum in the "
                                  "manifest's files")
        found[key] = GraphSource(entry.form, entry.file, _load_graph(reader, manifest, entry.file, entry.weights,
                                                                       checked=checked))
    return found


def _check_vectors(reader: _Reader, manifest: Manifest, listed: set[str]) -> None:
    names = reader.names()
    for vector in manifest.test_vectors:
        if vector.graph not in manifest.graphs:
            raise BundleError(f"test set {vector.dir} of bundle {reader.where} is for graph {vector.graph!r:.40}, "
                              f"which the manifest does not list")
        inside = [n for n in names if n.startswith(vector.dir + "/")]
        unlisted = [n for n in inside if n not in listed]
        if unlisted:
            raise BundleError(f"{unlisted[0]} of bundle {reader.where} has no checksum in the manifest's files")
        if not any(n.startswith(vector.dir + "/input_") for n in inside):
            raise BundleError(f"bundle {reader.where} lacks {vector.dir}/input_0.pb")


def _check_variants(reader: _Reader, manifest: Manifest, listed: set[str]) -> None:
    """Every file of a made variant (an ONNX graph, the ORT format, OpenVINO IR) has its checksum in the manifest."""
    for variant in manifest.variants:
        unlisted = [f for f in variant.files if f not in listed] if variant.ok else []
        if unlisted:
            raise BundleError(f"{unlisted[0]} of variant {variant.name!r:.40} of bundle {reader.where} has no checksum "
                              "in the manifest's files")


def _from_manifest(path: Path, kind: str, reader: _Reader) -> Bundle:
    data = reader.read(MANIFEST, DEFAULT_LIMITS.max_manifest_bytes)
    parsed = load_json(data, f"{MANIFEST} of {path}", BundleError)
    manifest = Manifest.from_json(parsed, str(path))
    keep = {f for g in manifest.graphs.values() for f in (g.file, g.weights) if f is not None}
    listed, checked = _check_files(reader, manifest, keep)
    graphs = _graphs(reader, manifest, listed, checked)
    _check_vectors(reader, manifest, listed)
    _check_variants(reader, manifest, listed)
    return Bundle(path, kind, manifest, graphs, manifest.test_vectors, reader)


def _test_folder(path: Path, limits: ZipLimits) -> Bundle:
    reader = _FolderReader(path, limits)
    sets = sorted((int(m[1]), p.name) for p in path.iterdir() if p.is_dir() and (m := _TEST_SET.fullmatch(p.name)))
    vectors = tuple(VectorEntry(name, TEST_FOLDER_MODEL) for _, name in sets)
    graph = GraphSource(None, TEST_FOLDER_MODEL, _load_graph(reader, None, TEST_FOLDER_MODEL, None))
    return Bundle(path, "test-folder", None, {TEST_FOLDER_MODEL: graph}, vectors, reader)


def is_bundle(path: Path) -> bool:
    """Whether ``path`` is a bundle folder or zip (its manifest names the bundle schema), read within the limits.

    Only the manifest's schema is looked at: a damaged old bundle is still one that ``--force`` may replace.
    """
    try:
        reader: _Reader = _FolderReader(path) if path.is_dir() else _ZipReader(path, DEFAULT_LIMITS)
        data = load_json(reader.read(MANIFEST, DEFAULT_LIMITS.max_manifest_bytes), MANIFEST, BundleError)
    except BundleError:
        return False
    return isinstance(data, dict) and str(data.get("schema", "")).startswith(SCHEMA.split("/")[0] + "/")


def open_bundle(path: str | os.PathLike[str], limits: ZipLimits = DEFAULT_LIMITS) -> Bundle:
    """Open and check a bundle folder, a .zip of one, a bare ``.onnx`` model, or an ONNX test folder.

    Raises:
        BundleError: a missing path, an unsafe or oversized zip, an unknown schema, a
            malformed manifest, an unsafe file name, or a checksum mismatch.
    """
    path = Path(path)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return _from_manifest(path, "folder", _FolderReader(path, limits))
        if (path / TEST_FOLDER_MODEL).is_file():
            return _test_folder(path, limits)
        raise BundleError(f"{path} holds no {MANIFEST}: pass a bundle folder, a .zip of one, an ONNX test "
                          "folder (model.onnx beside test_data_set_N) or a model .onnx file")
    if not path.is_file():
        raise BundleError(f"{path} does not exist: pass a bundle folder, a .zip of one, or a model .onnx file")
    if zipfile.is_zipfile(path):
        return _from_manifest(path, "zip", _ZipReader(path, limits))
    return Bundle(path, "model", None, {path.name: GraphSource(None, path.name, str(path))}, ())
