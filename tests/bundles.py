"""Bundles built for tests, independently of the packager, and the edits tests make to copies of them.

``make_bundle`` follows the ``rnnexport.bundle/1`` layout by hand: graphs from the export cache,
a manifest with every file's size and SHA-256, and ONNX-standard test vectors whose expected
outputs come from PyTorch. The runtime's bundle reader is tested against these, so a packager
bug cannot hide a reader bug.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import numpy_helper

from rnnexport.core.contract import Form
from rnnexport.testing import random_inputs, random_state

if TYPE_CHECKING:
    from tests.conftest import ExportCache

VECTOR_BATCH = 2
GRAPH_FILES = {"sequence": "model.onnx", "step": "step.onnx"}
Manifest = dict[str, Any]


def _write_set(folder: Path, inputs: list[tuple[str, np.ndarray]], outputs: list[tuple[str, np.ndarray]]) -> None:
    folder.mkdir(parents=True)
    for prefix, tensors in (("input", inputs), ("output", outputs)):
        for k, (name, array) in enumerate(tensors):
            proto = numpy_helper.from_array(np.ascontiguousarray(array), name)
            (folder / f"{prefix}_{k}.pb").write_bytes(proto.SerializeToString())


def _vectors(root: Path, model: Any, form: str, first: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """A single set from a random state, and a stream of two calls (zeros, then carried state)."""
    io, f = model.io, Form(form)
    run = model.run_sequence if f is Form.SEQUENCE else model.run_step
    in_names = [s.name for s in io.inputs(f)]
    out_names = [s.name for s in io.outputs(f)]
    sets: list[tuple[str, int | None, np.ndarray, list[np.ndarray]]] = [
        ("single", None, random_inputs(io, f, VECTOR_BATCH, 8, rng), random_state(io, VECTOR_BATCH, rng, 0.5))]
    state = io.state.zeros(VECTOR_BATCH)
    for number, t in enumerate((5, 4)):
        x = random_inputs(io, f, VECTOR_BATCH, t, rng)
        sets.append(("stream", number, x, state))
        state = run(x, state)[1:]
    entries = []
    for index, (kind, call, x, state) in enumerate(sets, start=first):
        folder = f"test_data_set_{index}"
        _write_set(root / folder, list(zip(in_names, [x, *state], strict=True)),
                   list(zip(out_names, run(x, state), strict=True)))
        entry: dict[str, Any] = {"dir": folder, "graph": form, "kind": kind}
        if kind == "stream":
            entry.update(stream=0, call=call)
        entries.append(entry)
    return entries


def write_manifest(root: Path, manifest: Manifest) -> None:
    """(Re)write ``manifest.json`` with every other file's size and SHA-256."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest["files"] = [{"path": p.relative_to(root).as_posix(), "size": p.stat().st_size,
                          "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in files]
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))


def make_bundle(exports: ExportCache, name: str, root: Path, forms: Iterable[str] = ("sequence", "step")) -> Path:
    """A ``rnnexport.bundle/1`` folder of model ``name``: graphs, manifest, checksums, test vectors."""
    model = exports.model(name)
    root.mkdir(parents=True)
    rng = np.random.default_rng(11)
    graphs: dict[str, dict[str, str]] = {}
    vectors: list[dict[str, Any]] = []
    for form in forms:
        shutil.copyfile(exports.export(name, form=form).path, root / GRAPH_FILES[form])
        graphs[form] = {"file": GRAPH_FILES[form], "form": form}
        vectors += _vectors(root, model, form, len(vectors), rng)
    write_manifest(root, {"schema": "rnnexport.bundle/1", "io": model.io.to_json(), "graphs": graphs,
                          "test_vectors": vectors})
    return root


def zip_bundle(folder: Path, path: Path, top: str = "") -> Path:
    """``folder`` as a zip at ``path``, its members under ``top`` (``""``: at the root)."""
    with zipfile.ZipFile(path, "w") as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, top + p.relative_to(folder).as_posix())
    return path


def copy_bundle(bundle: Path, parent: Path, name: str = "bundle") -> Path:
    """A copy of ``bundle`` at ``parent / name``, for a test to damage; the shared one stays as built."""
    return Path(shutil.copytree(bundle, parent / name))


def edit_manifest(folder: Path, change: Callable[[Manifest], object]) -> Path:
    """Apply ``change`` to ``folder``'s manifest as parsed JSON and write it back (checksums untouched)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def relisted_copy(bundle: Path, target: Path, change: Callable[[Path], object]) -> Path:
    """A copy of ``bundle`` at ``target`` where ``change(folder)`` edits files, then every listed checksum and size
    is made right again (files the manifest does not list stay unlisted)."""
    shutil.copytree(bundle, target)
    change(target)
    manifest = json.loads((target / "manifest.json").read_text())
    for entry in manifest["files"]:
        data = (target / entry["path"]).read_bytes()
        entry["sha256"], entry["size"] = hashlib.sha256(data).hexdigest(), len(data)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target
