"""``rnnexport.package`` (this package is ``rnnexport.bundler``): a verified bundle an edge app embeds.

A bundle folder holds ``model.onnx`` (and ``step/model.onnx``), ``manifest.json``,
test vectors in ONNX's layout and the variants that passed their checks. It is
built in a temporary folder and moved into place, so an interrupted run leaves
no half bundle.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from rnnexport.bundler.bundle import MANIFEST, Bundle, checksum_problems, open_bundle
from rnnexport.bundler.manifest import build_manifest, graph_entry, write_manifest
from rnnexport.bundler.variants import VARIANTS, VariantResult, make_variant
from rnnexport.bundler.vectors import write_set
from rnnexport.bundler.zipio import write_zip
from rnnexport.errors import BundleError, describe
from rnnexport.export.metadata import GraphInfo, read_info
from rnnexport.model import Form, RecurrentModel
from rnnexport.testing import random_inputs, random_state

__all__ = ["VARIANTS", "Bundle", "PackageResult", "checksum_problems", "open_bundle", "package"]

VECTOR_BATCH = 2
SINGLE_T, STREAM_T = 8, (5, 4)


@dataclasses.dataclass(frozen=True)
class PackageResult:
    """What :func:`package` wrote."""

    folder: Path
    archive: Path | None
    manifest: dict[str, Any]
    variants: tuple[VariantResult, ...]
    expected_from: str


def _load_graph(path: Path, form: Form | None = None) -> tuple[onnx.ModelProto, GraphInfo]:
    try:
        model = onnx.load(path)
    except Exception as e:  # noqa: BLE001 - any parse failure means "not an ONNX file"
        raise BundleError(f"{path} is not a readable ONNX model ({describe(e)})") from e
    info = read_info(model)
    if info is None:
        raise BundleError(f"{path} has no rnnexport I/O contract in its metadata; convert it with "
                          "`rnnexport convert` first")
    if form is not None and info.form is not form:
        raise BundleError(f"{path} is a {info.form.value} graph; --step needs a step graph "
                          "(rnnexport convert --form step)")
    return model, info


class _Expect:
    """Expected outputs: PyTorch when the source is known, else the CPU execution provider."""

    def __init__(self, path: Path, info: GraphInfo, source: RecurrentModel | None) -> None:
        self.source = source
        self.info = info
        self.session = None if source else ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    @property
    def name(self) -> str:
        return "pytorch" if self.source else "onnxruntime-cpu"

    def __call__(self, x: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
        if self.source is not None:
            run = self.source.run_step if self.info.form is Form.STEP else self.source.run_sequence
            return [np.ascontiguousarray(a) for a in run(x, state)]
        names = [s.name for s in self.info.io.outputs(self.info.form)]
        return self.session.run(names, {"x": x, **dict(zip(self.info.io.state.names, state))})


def _vectors(root: Path, prefix: str, graph: str, path: Path, info: GraphInfo,
             source: RecurrentModel | None, vocabulary: int | None) -> tuple[list[dict[str, Any]], str]:
    io, form = info.io, info.form
    expect = _Expect(path, info, source)
    rng = np.random.default_rng(2024)
    in_names = [s.name for s in io.inputs(form)]
    out_names = [s.name for s in io.outputs(form)]
    fixed = info.seq_len

    def x_for(t: int | None) -> np.ndarray:
        return random_inputs(io, form, VECTOR_BATCH, None if form is Form.STEP else (fixed or t), rng,
                             vocabulary=vocabulary)

    entries = []
    state = random_state(io, VECTOR_BATCH, rng, 0.5)
    x = x_for(SINGLE_T)
    sets = [("single", None, x, state)]
    state = [s.copy() for s in io.state.zeros(VECTOR_BATCH)]
    for call, t in enumerate(STREAM_T):
        sets.append(("stream", call, x_for(t), state))
        state = None  # filled from the previous call's outputs below
    previous = None
    for index, (kind, call, x, state) in enumerate(sets):
        if kind == "stream" and call > 0:
            state = previous[1:]
        outputs = expect(x, state)
        previous = outputs
        folder = f"{prefix}test_data_set_{index}"
        write_set(root / folder, list(zip(in_names, [x, *state])), list(zip(out_names, outputs)))
        entry = {"dir": folder, "graph": graph, "kind": kind, "batch": VECTOR_BATCH,
                 "seq_len": None if form is Form.STEP else int(x.shape[io.time_axis])}
        if kind == "stream":
            entry.update(stream=0, call=call)
        entries.append(entry)
    return entries, expect.name


def _vocabulary(source: RecurrentModel | None) -> int | None:
    card = getattr(source, "card", None) or {}
    return len(card["vocabulary"]) if card.get("vocabulary") and source.io.x_dtype == "int64" else None


def _check_source(source: RecurrentModel, info: GraphInfo, path: Path) -> None:
    if source.io != info.io:
        raise BundleError(f"the source's I/O contract differs from {path}'s; pass the SOURCE it was converted from")
    if source.params_sha256() != info.params_sha256:
        raise BundleError(f"the source's parameters differ from {path}'s (SHA-256 mismatch); pass the "
                          "SOURCE and weights it was converted from")


def _move_into_place(tmp: Path, folder: Path, force: bool) -> None:
    if folder.exists():
        if not force:
            raise BundleError(f"{folder} already exists; remove it or pass --force to replace it")
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        os.replace(folder, old / folder.name)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


def package(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    source: RecurrentModel | None = None,
    step_path: str | os.PathLike | None = None,
    variants: Sequence[str] = VARIANTS,
    archive: bool = False,
    force: bool = False,
) -> PackageResult:
    """Bundle a converted graph for embedding.

    Args:
        model_path: a graph written by :func:`rnnexport.convert`.
        out_dir: the bundle folder to create (moved into place when complete).
        source: the model it was converted from; when given, the test vectors'
            expected outputs come from PyTorch, else from the CPU execution provider.
        step_path: a step graph of the same model to include.
        variants: any of ``ort``, ``int8``, ``fp16``; each is verified against the
            float32 graph and left out, with the reason recorded, when it fails.
        archive: also write ``<out_dir>.zip``, byte-for-byte reproducible.
        force: replace an existing ``out_dir``.
    """
    model_path, out_dir = Path(model_path), Path(out_dir)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise BundleError(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    if out_dir.exists() and not force:
        raise BundleError(f"{out_dir} already exists; remove it or pass --force to replace it")
    model, info = _load_graph(model_path)
    step = _load_graph(Path(step_path), Form.STEP) if step_path else None
    if step is not None and (step[1].io != info.io or step[1].params_sha256 != info.params_sha256):
        raise BundleError(f"{step_path} is not a step graph of the same model as {model_path}")
    if source is not None:
        _check_source(source, info, model_path)
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if not parent.is_dir():
        raise BundleError(f"cannot create {out_dir}: folder {parent} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    try:
        result = _build(tmp, model_path, model, info, step, step_path, source, variants)
        _move_into_place(tmp, out_dir, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    zip_path = None
    if archive:
        zip_path = out_dir.with_name(out_dir.name + ".zip")
        write_zip(out_dir, zip_path)
    manifest, variant_results, expected = result
    return PackageResult(out_dir, zip_path, manifest, tuple(variant_results), expected)


def _build(tmp: Path, model_path: Path, model, info, step, step_path, source, variants):
    shutil.copyfile(model_path, tmp / "model.onnx")
    graphs = {"sequence" if info.form is Form.SEQUENCE else "step": graph_entry("model.onnx", model, info)}
    main_graph = next(iter(graphs))
    vocabulary = _vocabulary(source)
    vectors, expected = _vectors(tmp, "", main_graph, tmp / "model.onnx", info, source, vocabulary)
    if step is not None:
        (tmp / "step").mkdir()
        shutil.copyfile(step_path, tmp / "step" / "model.onnx")
        graphs["step"] = graph_entry("step/model.onnx", step[0], step[1])
        more, _ = _vectors(tmp, "step/", "step", tmp / "step" / "model.onnx", step[1], source, vocabulary)
        vectors += more
    for entry in vectors:
        entry["expected_from"] = expected
    results = [make_variant(v, main_graph, tmp / "model.onnx", tmp, info.io, info.form, info.seq_len,
                            info.cell_family) for v in dict.fromkeys(variants)]
    manifest = build_manifest(tmp, info, graphs, [r.to_json() for r in results], vectors)
    write_manifest(tmp, manifest)
    assert (tmp / MANIFEST).is_file()
    return manifest, results, expected
