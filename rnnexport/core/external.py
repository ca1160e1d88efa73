"""ONNX external data as data: the one reader of where a serialized graph's tensors keep their bytes.

A graph may keep a tensor's bytes in another file (ONNX external data: ``data_location``
EXTERNAL and ``external_data`` entries ``location``, ``offset``, ``length``). That location is
untrusted data, and every engine resolves it on its own (onnxruntime even from a graph loaded
as bytes: against the working folder). So before any engine opens a graph,
:func:`external_refs` lists every external reference in its bytes (each tensor of the graph,
of every subgraph, node attribute, sparse tensor, function and training graph), read
straight from the protobuf wire format with the standard library, and :func:`check_refs`
holds each one to a file the caller allows, inside its bounds. :class:`ExternalModel` is a
checked graph with its files in memory: what the runtime and the engines load.

Torch-free and onnx-free (standard library only): the runtime and the bundle reader use it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from rnnexport.core.errors import RnnexportError

__all__ = ["ExternalModel", "ExternalRef", "check_refs", "external_refs", "is_safe_location", "materialize"]

#: How deep graphs may nest (a Scan body in a Loop body ...) and how many tensors a graph may hold.
MAX_DEPTH, MAX_TENSORS = 64, 1 << 20
#: A location: relative, ``/``-separated names of letters, digits, ``_``, ``.``, ``-`` (so never ``..``,
#: absolute, a drive, a backslash, or onnxruntime's in-memory tag ``*/_ORT_MEM_ADDR_/*``).
_LOCATION = re.compile(r"[A-Za-z0-9_.-]{1,255}(/[A-Za-z0-9_.-]{1,255}){0,15}")
_NUMBER = re.compile(r"[0-9]{1,19}")
_KEYS = frozenset({"location", "offset", "length", "checksum"})

# field numbers of onnx.proto: message -> {field: message it holds}; "tensor" fields are TensorProtos
_MESSAGES: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "function": {7: "node", 11: "attribute"},
    "training": {1: "graph", 2: "graph"},
    "sparse": {1: "tensor", 2: "tensor"},
}
_TENSOR_NAME, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 8, 13, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class _Malformed(Exception):
    """The bytes are not a well-formed protobuf message."""


@dataclasses.dataclass(frozen=True)
class ExternalRef:
    """One tensor whose bytes live in another file: ``length`` bytes at ``offset`` of ``location``
    (``length`` None: to the end of the file, as the engines read it)."""

    tensor: str
    location: str
    offset: int
    length: int | None


@dataclasses.dataclass(frozen=True)
class ExternalModel:
    """A serialized ONNX graph and the external data files it reads, by location, all in memory and checked.

    The runtime hands the files to onnxruntime from memory; the engines that read external data
    only from disk get them written beside the graph (:func:`materialize`).
    """

    model: bytes
    files: Mapping[str, bytes]

    @property
    def size(self) -> int:
        """Bytes of the graph and its files together."""
        return len(self.model) + sum(len(v) for v in self.files.values())


def is_safe_location(location: str) -> bool:
    """Whether ``location`` is a plain relative path (see :data:`_LOCATION`) with no ``.`` or ``..`` part."""
    return bool(_LOCATION.fullmatch(location)) and not any(part in (".", "..") for part in location.split("/"))


def _varint(data: bytes, at: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= end or shift > 63:
            raise _Malformed("a truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field, wire type, value or start, end)`` of each field of the message in ``data[start:end]``."""
    at = start
    while at < end:
        key, at = _varint(data, at, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at, end)
            yield field, wire, value, at
        elif wire == 1 or wire == 5:
            at += 8 if wire == 1 else 4
            if at > end:
                raise _Malformed("a truncated fixed-size field")
        elif wire == 2:
            size, at = _varint(data, at, end)
            if size > end - at:
                raise _Malformed("a field longer than its message")
            yield field, wire, at, at + size
            at += size
        else:
            raise _Malformed(f"wire type {wire} (groups are not ONNX)")


def _entry(data: bytes, start: int, end: int) -> tuple[str, str]:
    key = value = ""
    for field, wire, begin, stop in _fields(data, start, end):
        if wire == 2 and field in (1, 2):
            text = data[begin:stop].decode("utf-8", errors="replace")
            key, value = (text, value) if field == 1 else (key, text)
    return key, value


def _tensor(data: bytes, start: int, end: int) -> tuple[str, list[tuple[str, str]], bool]:
    """A TensorProto's name, external_data entries, and whether its data_location is EXTERNAL."""
    name, entries, external = "", [], False
    for field, wire, begin, stop in _fields(data, start, end):
        if field == _TENSOR_NAME and wire == 2:
            name = data[begin:stop].decode("utf-8", errors="replace")
        elif field == _TENSOR_EXTERNAL and wire == 2:
            entries.append(_entry(data, begin, stop))
        elif field == _TENSOR_LOCATION and wire == 0:
            external = begin == _EXTERNAL  # the last one counts, as protobuf reads it
    return name, entries, external


def _walk(data: bytes, kind: str, start: int, end: int, depth: int,
          found: Callable[[str, list[tuple[str, str]], bool], None]) -> None:
    if depth > MAX_DEPTH:
        raise _Malformed(f"graphs nested over {MAX_DEPTH} deep")
    holds = _MESSAGES[kind]
    for field, wire, begin, stop in _fields(data, start, end):
        inner = holds.get(field)
        if inner is None or wire != 2:  # what a field of another wire type holds, parsers keep as unknown
            continue
        if inner == "tensor":
            found(*_tensor(data, begin, stop))
        else:
            _walk(data, inner, begin, stop, depth + 1, found)


def _ref(name: str, entries: list[tuple[str, str]]) -> ExternalRef:
    keys = [k for k, _ in entries]
    odd = sorted({k for k in keys if k not in _KEYS or keys.count(k) > 1})
    if odd:
        raise ValueError(f"tensor {name!r:.60} has external data key {odd[0]!r:.40} (unknown or given twice)")
    values = dict(entries)
    location = values.get("location", "")
    if not is_safe_location(location):
        raise ValueError(f"tensor {name!r:.60} reads its bytes from {location!r:.80}, which is not a plain relative "
                         "path inside the graph's folder (absolute, '..', a link tag or odd characters)")
    numbers = {}
    for key in ("offset", "length"):
        text = values.get(key)
        if text is not None and not _NUMBER.fullmatch(text):
            raise ValueError(f"tensor {name!r:.60} has external data {key} {text!r:.40}: expected a whole number")
        numbers[key] = None if text is None else int(text)
    return ExternalRef(name, location, numbers["offset"] or 0, numbers["length"])


def external_refs(model: bytes, name: str, error: type[RnnexportError]) -> list[ExternalRef]:
    """Every tensor of the serialized ONNX ``model`` that keeps its bytes in another file.

    Raises:
        error: bytes that are not a protobuf message, an external reference with an unsafe
            location, a malformed offset or length, or an unknown key (``name`` is how it is called).
    """
    refs: list[ExternalRef] = []
    count = 0

    def found(tensor: str, entries: list[tuple[str, str]], external: bool) -> None:
        nonlocal count
        count += 1
        if count > MAX_TENSORS:
            raise _Malformed(f"over {MAX_TENSORS} tensors")
        if entries or external:
            refs.append(_ref(tensor, entries))

    try:
        _walk(model, "model", 0, len(model), 0, found)
    except _Malformed as e:
        raise error(f"{name} is not an ONNX model ({e}); it cannot be loaded") from e
    except ValueError as e:
        raise error(f"{name}: {e}; refusing to load it") from e
    return refs


def check_refs(refs: list[ExternalRef], sizes: Mapping[str, int], name: str, error: type[RnnexportError],
               hint: str) -> None:
    """Raise ``error`` unless every reference reads from a file of ``sizes`` (location -> bytes), inside it.

    Args:
        hint: what the message tells the user to do about a reference to a file not in ``sizes``.
    """
    for ref in refs:
        size = sizes.get(ref.location)
        if size is None:
            raise error(f"{name} reads tensor {ref.tensor!r:.60} from {ref.location!r:.80}, {hint}")
        length = size - ref.offset if ref.length is None else ref.length
        if ref.offset > size or length < 0 or ref.offset + length > size:
            raise error(f"{name} reads tensor {ref.tensor!r:.60} from bytes {ref.offset} to {ref.offset + length} of "
                        f"{ref.location}, which holds {size}: the graph or its weights are damaged or altered")


def materialize(model: ExternalModel, folder: str | os.PathLike[str], name: str = "model.onnx") -> Path:
    """Write ``model`` and its files into ``folder`` (each file at its location), for engines that read from disk.

    Returns:
        The graph's path.
    """
    root = Path(folder)
    if name in model.files:
        raise ValueError(f"the graph's own name {name!r} is one of its external data files")
    for location, data in model.files.items():
        if not is_safe_location(location):
            raise ValueError(f"external data location {location!r:.80} is not a plain relative path")
        target = root / location
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    path = root / name
    path.write_bytes(model.model)
    return path
