"""``rnnexport.package``: a verified bundle an edge app embeds.

A bundle folder holds ``model.onnx`` (and ``step/model.onnx``), ``manifest.json``,
test vectors in ONNX's layout and the variants that passed their checks. It is
built in a temporary folder and moved into place, so an interrupted run leaves
no half bundle.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from rnnexport.bundle import MANIFEST, Manifest, VariantEntry, VectorEntry, write_zip
from rnnexport.bundle.inspect import graph_entry
from rnnexport.bundle.vectors import write_set
from rnnexport.contract import Form, GraphInfo
from rnnexport.errors import BundleError, ContractError, describe
from rnnexport.export.metadata import read_info
from rnnexport.io import temp_folder
from rnnexport.model import RecurrentModel
from rnnexport.ort import start_session
from rnnexport.packaging.manifest import build_manifest, write_manifest
from rnnexport.packaging.variants import VARIANTS, make_variant
from rnnexport.verification.inputs import random_inputs, random_state

__all__ = ["VARIANTS", "PackageResult", "package"]

VECTOR_BATCH = 2
SINGLE_T, STREAM_T = 8, (5, 4)


@dataclasses.dataclass(frozen=True)
class PackageResult:
    """What :func:`package` wrote."""

    folder: Path
    archive: Path | None
    manifest: Manifest
    variants: tuple[VariantEntry, ...]
    expected_from: str

    def lines(self) -> list[str]:
        """A summary for people: graphs, vectors, variants, files."""
        manifest = self.manifest
        lines = [f"packaged {manifest.description} -> {self.folder}"]
        for name, graph in manifest.graphs.items():
            lines.append(f"  graph     {name}: {graph.file} ({graph.lowering}, operators {', '.join(graph.operators)})")
        lines.append(f"  vectors   {len(manifest.test_vectors)} test sets, expected outputs from {self.expected_from}")
        for variant in self.variants:
            if variant.ok:
                worst = max(f["max_abs"] for f in variant.figures.values())
                lines.append(f"  variant   {variant.name}: {', '.join(variant.files)} ({variant.size_bytes / 1e3:.0f} kB, "
                             f"max abs error {worst:.2g} vs float32)")
            else:
                lines.append(f"  variant   {variant.name}: left out: {variant.reason}")
        total = sum(f.size or 0 for f in manifest.files)
        lines.append(f"  files     {len(manifest.files)} files, {total / 1e6:.2f} MB, SHA-256 in manifest.json")
        if self.archive:
            lines.append(f"  archive   {self.archive}")
        return lines


def _load_graph(path: Path, form: Form | None = None) -> tuple[onnx.ModelProto, GraphInfo]:
    try:
        model = onnx.load(path)
    except Exception as e:  # noqa: BLE001 - any parse failure means "not an ONNX file"
        raise BundleError(f"{path} is not a readable ONNX model ({describe(e)})") from e
    try:
        info = read_info(model)
    except ContractError as e:
        raise BundleError(f"{path} has malformed rnnexport metadata: {e}; convert it again") from e
    if info is None:
        raise BundleError(f"{path} has no rnnexport I/O contract in its metadata; convert it with "
                          "`rnnexport convert` first")
    _check_weights_finite(model, path)
    if form is not None and info.form is not form:
        raise BundleError(f"{path} is a {info.form.value} graph; --step needs a step graph "
                          "(rnnexport convert --form step)")
    return model, info


def _check_weights_finite(model: onnx.ModelProto, path: Path) -> None:
    """A graph with NaN or Inf among its weights would ship test vectors that bless its output."""
    from onnx import numpy_helper

    from rnnexport.graphs import walk_graphs

    for graph in walk_graphs(model.graph):
        for tensor in graph.initializer:
            if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
                array = numpy_helper.to_array(tensor)
                if not np.isfinite(array).all():
                    raise BundleError(f"{path} has NaN or Inf in its weights ({tensor.name}); it cannot be "
                                      "packaged: convert it again from finite weights")


class _Expect:
    """Expected outputs: PyTorch when the source is known, else the CPU execution provider."""

    def __init__(self, path: Path, info: GraphInfo, source: RecurrentModel | None) -> None:
        self.source = source
        self.info = info
        self.session = None if source else start_session(path, "cpu", name=str(path)).session

    @property
    def name(self) -> str:
        return "pytorch" if self.source else "onnxruntime-cpu"

    def __call__(self, x: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
        if self.source is not None:
            run = self.source.run_step if self.info.form is Form.STEP else self.source.run_sequence
            return [np.ascontiguousarray(a) for a in run(x, state)]
        names = [s.name for s in self.info.io.outputs(self.info.form)]
        assert self.session is not None
        return self.session.run(names, self.info.io.feeds(x, state))


def _vectors(root: Path, prefix: str, graph: str, path: Path, info: GraphInfo,
             source: RecurrentModel | None, vocabulary: int | None) -> tuple[list[VectorEntry], str]:
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
    state: list[np.ndarray] | None = random_state(io, VECTOR_BATCH, rng, 0.5)
    x = x_for(SINGLE_T)
    sets: list[tuple[str, int | None, np.ndarray, list[np.ndarray] | None]] = [("single", None, x, state)]
    state = [s.copy() for s in io.state.zeros(VECTOR_BATCH)]
    call: int | None  # a stream call's number, None for the single set
    for call, t in enumerate(STREAM_T):
        sets.append(("stream", call, x_for(t), state))
        state = None  # filled from the previous call's outputs below
    previous: list[np.ndarray] | None = None
    for index, (kind, call, x, state) in enumerate(sets):
        if kind == "stream" and call is not None and call > 0:  # a stream call is numbered
            assert previous is not None  # call 0 ran before
            state = previous[1:]
        assert state is not None  # single and call 0 carry a state, later calls take the previous one
        outputs = expect(x, state)
        previous = outputs
        folder = f"{prefix}test_data_set_{index}"
        write_set(root / folder, list(zip(in_names, [x, *state])), list(zip(out_names, outputs)))
        entries.append(VectorEntry(folder, graph, kind, 0 if kind == "stream" else None, call, VECTOR_BATCH,
                                   None if form is Form.STEP else int(x.shape[io.time_axis]), expect.name))
    return entries, expect.name


def _vocabulary(source: RecurrentModel | None) -> int | None:
    card = getattr(source, "card", None) or {}
    return (len(card["vocabulary"]) if card.get("vocabulary") and source is not None and source.io.x_dtype == "int64"
            else None)


def _check_source(source: RecurrentModel, info: GraphInfo, path: Path) -> None:
    if source.io != info.io:
        raise BundleError(f"the source's I/O contract differs from {path}'s; pass the SOURCE it was converted from")
    if source.params_sha256() != info.params_sha256:
        raise BundleError(f"the source's parameters differ from {path}'s (SHA-256 mismatch); pass the "
                          "SOURCE and weights it was converted from")


def _is_bundle(path: Path) -> bool:
    """Whether ``path`` is a bundle folder or zip that ``--force`` may replace (it has a bundle manifest)."""
    import json
    import zipfile

    try:
        if path.is_dir():
            text = (path / MANIFEST).read_text()
        elif path.is_file() and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo(MANIFEST)
                if info.file_size > 16 * 2**20:
                    return False
                text = archive.read(info).decode()
        else:
            return False
        data = json.loads(text)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    return isinstance(data, dict) and str(data.get("schema", "")).startswith("rnnexport.bundle/")


def _check_target(path: Path, what: str, force: bool, inputs: list[Path]) -> None:
    """Refuse to write over an input of this command, or over anything but an earlier bundle."""
    target = path.resolve()
    for given in inputs:
        source = given.resolve()
        if source == target or target in source.parents:
            raise BundleError(f"{what} {path} would overwrite {given}, an input of this command; choose another path")
    if target == Path.cwd().resolve() or target in Path.cwd().resolve().parents:
        raise BundleError(f"{what} {path} is the current folder or holds it; choose a new folder for the bundle")
    if not path.exists() and not path.is_symlink():
        return
    if not force:
        raise BundleError(f"{path} already exists; remove it or pass --force to replace it")
    if path.is_symlink() or not _is_bundle(path):
        raise BundleError(f"{path} exists and is not an rnnexport bundle: --force replaces only a bundle; "
                          "remove it yourself or choose another path")


def _move_into_place(tmp: Path, folder: Path, force: bool) -> None:
    if folder.exists():
        if not force:
            raise BundleError(f"{folder} already exists; remove it or pass --force to replace it")
        old = temp_folder(folder)
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
    model_path, out_dir = Path(model_path), Path(out_dir).absolute()
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise BundleError(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    inputs = [model_path, *([Path(step_path)] if step_path else [])]
    _check_target(out_dir, "bundle folder", force, inputs)
    if archive:
        _check_target(out_dir.with_name(out_dir.name + ".zip"), "bundle archive", force, inputs)
    model, info = _load_graph(model_path)
    step = _load_graph(Path(step_path), Form.STEP) if step_path else None
    if step is not None and (step[1].io != info.io or step[1].params_sha256 != info.params_sha256):
        raise BundleError(f"{step_path} is not a step graph of the same model as {model_path}")
    if source is not None:
        _check_source(source, info, model_path)
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if not parent.is_dir():
        raise BundleError(f"cannot create {out_dir}: folder {parent} does not exist")
    tmp = temp_folder(out_dir)
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
    results = [make_variant(v, main_graph, tmp / "model.onnx", tmp, info.io, info.form, info.seq_len,
                            info.cell_family) for v in dict.fromkeys(variants)]
    manifest = build_manifest(tmp, info, graphs, results, vectors)
    write_manifest(tmp, manifest)
    assert (tmp / MANIFEST).is_file()
    return manifest, results, expected
