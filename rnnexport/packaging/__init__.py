"""``rnnexport.package``: a verified bundle an edge app embeds.

A bundle folder holds ``model.onnx`` (and the step graph), ``manifest.json``, test
vectors in ONNX's layout and, beside each graph, the variants that passed their checks.
With a step graph, the weights both graphs hold are stored once, in ``weights.bin``
beside ``model.onnx`` and ``step.onnx`` (:mod:`rnnexport.packaging.shared`); without
sharing, the step graph is ``step/model.onnx``, self-contained. Before it ships, every graph and variant runs its test vectors on onnxruntime's
CPU provider and onnx's ReferenceEvaluator, and the manifest records what each gave, and
how many of each graph's nodes the NNAPI and CoreML providers would take (onnxruntime's
mobile usability check).
It is built in a temporary folder and moved into place, so an interrupted run (or a
requested variant that cannot be made) leaves no half bundle.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rnnexport.bundle import (
    DEFAULT_VARIANTS,
    MANIFEST,
    STATEFUL_VARIANT,
    VARIANT_NAMES,
    CheckStatus,
    EngineCheck,
    GraphEntry,
    Manifest,
    VariantEntry,
    is_bundle,
    write_zip,
)
from rnnexport.bundle.inspect import graph_entry
from rnnexport.core.contract import Form, GraphInfo
from rnnexport.core.errors import BundleError, VerifyError, missing_extra
from rnnexport.core.io import (
    atomic_write,
    check_replaceable,
    refuse_overwrite,
    swap_in,
    temp_folder,
)
from rnnexport.core.onnxfile import load_with_info
from rnnexport.core.ort import check_timeout
from rnnexport.engines.registry import engine_spec
from rnnexport.packaging.calibration import Calibration, from_calls, read_calibration
from rnnexport.packaging.forecast import forecast_agreement, forecast_notes, signal_of
from rnnexport.packaging.manifest import build_manifest, mobile_coverage, write_manifest
from rnnexport.packaging.proof import PROOF_ENGINES, Proof, prove
from rnnexport.packaging.shared import SharedWeights, share_weights
from rnnexport.packaging.text import is_char_model, text_agreement, text_notes
from rnnexport.packaging.variants import GraphContext, applies, left_out, make_variant
from rnnexport.packaging.vectors import Vectors, make_vectors
from rnnexport.source.model import RecurrentModel
from rnnexport.verification.options import DEFAULT_TIMEOUT

__all__ = ["PackageResult", "VariantPlan", "package"]


@dataclasses.dataclass(frozen=True)
class VariantPlan:
    """Which variants to make for every graph, and which of them may be left out.

    A required variant that cannot be made (or fails its checks) fails the whole
    command and nothing is written; an optional one is left out with the reason.
    """

    names: tuple[str, ...] = DEFAULT_VARIANTS
    optional: frozenset[str] = frozenset(VARIANT_NAMES)

    @classmethod
    def of(cls, variants: Sequence[str] | None, optional: Sequence[str] | None = None) -> VariantPlan:
        """``variants`` None: the default variants, each optional; named ones are required unless ``optional`` says so."""
        names = tuple(dict.fromkeys(DEFAULT_VARIANTS if variants is None else variants))
        unknown = [v for v in (*names, *(optional or ())) if v not in VARIANT_NAMES]
        if unknown:
            raise BundleError(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANT_NAMES)}")
        allowed = frozenset(VARIANT_NAMES if variants is None and optional is None else optional or ())
        return cls(names, allowed)


@dataclasses.dataclass(frozen=True)
class PackageResult:
    """What :func:`package` wrote."""

    folder: Path
    archive: Path | None
    manifest: Manifest
    variants: tuple[VariantEntry, ...]
    expected_from: str
    #: The weights file the graphs share; None when they are self-contained.
    shared: SharedWeights | None = None

    def lines(self) -> list[str]:
        """A summary for people: graphs and where they were proved, vectors, variants, files."""
        manifest = self.manifest
        lines = [f"packaged {manifest.description} -> {self.folder}"]
        for name, graph in manifest.graphs.items():
            lines.append(f"  graph     {name}: {graph.file} ({graph.lowering}, operators {', '.join(graph.operators)})")
            lines.append(f"            checked on {_checked(graph.checked_on)}")
            if graph.mobile is not None:
                lines.append(f"            mobile: {graph.mobile.note}")
        if self.shared is not None:
            lines.append(f"  weights   {self.shared.line()}")
        lines.append(f"  vectors   {len(manifest.test_vectors)} test sets, expected outputs from {self.expected_from}")
        for variant in self.variants:
            what = f"{variant.name} of {variant.of}"
            if variant.ok:
                worst = max(f["max_abs"] for f in variant.figures.values())
                lines.append(f"  variant   {what}: {', '.join(variant.files)} ({variant.size_bytes / 1e3:.0f} kB, "
                             f"max abs error {worst:.2g} vs float32; checked on {_checked(variant.checked_on)})")
                if variant.agreement:
                    lines.append(f"            {_task_notes(variant.agreement)}")
            else:
                lines.append(f"  variant   {what}: left out: {variant.reason}")
        total = sum(f.size or 0 for f in manifest.files)
        lines.append(f"  files     {len(manifest.files)} files, {total / 1e6:.2f} MB, SHA-256 in manifest.json")
        if self.archive:
            lines.append(f"  archive   {self.archive}")
        return lines


def _task_notes(agreement: dict[str, Any]) -> str:
    return forecast_notes(agreement) if "mae_ratio" in agreement else text_notes(agreement)


def _checked(checks: Sequence[EngineCheck]) -> str:
    ran = [f"{c.engine} (max abs {c.max_abs:.2g})" for c in checks if c.status is CheckStatus.PASSED and c.max_abs is not None]
    skipped = [c.engine for c in checks if c.status is CheckStatus.UNAVAILABLE]
    return ", ".join(ran) + (f"; not on {', '.join(skipped)} (see the manifest)" if skipped else "")


def _load_graph(path: Path, form: Form | None = None) -> tuple[onnx.ModelProto, GraphInfo]:
    model, info = load_with_info(path, str(path), BundleError, "convert it with `rnnexport convert` first")
    assert info is not None  # a graph without metadata was refused
    _check_weights_finite(model, path)
    if form is not None and info.form is not form:
        raise BundleError(f"{path} is a {info.form.value} graph; --step needs a step graph "
                          "(rnnexport convert --form step)")
    return model, info


def _check_weights_finite(model: onnx.ModelProto, path: Path) -> None:
    """A graph with NaN or Inf among its weights would ship test vectors that bless its output."""
    from onnx import numpy_helper

    from rnnexport.core.graphs import walk_graphs

    for graph in walk_graphs(model.graph):
        for tensor in graph.initializer:
            if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
                array = numpy_helper.to_array(tensor)
                if not np.isfinite(array).all():
                    raise BundleError(f"{path} has NaN or Inf in its weights ({tensor.name}); it cannot be "
                                      "packaged: convert it again from finite weights")


def _check_source(source: RecurrentModel, info: GraphInfo, path: Path) -> None:
    if source.io.without_lengths() != info.io.without_lengths():  # a graph converted with --lengths has them
        raise BundleError(f"the source's I/O contract differs from {path}'s; pass the SOURCE it was converted from")
    if source.params_sha256() != info.params_sha256:
        raise BundleError(f"the source's parameters differ from {path}'s (SHA-256 mismatch); pass the "
                          "SOURCE and weights it was converted from")


def _check_target(path: Path, what: str, force: bool, inputs: list[Path]) -> None:
    """Refuse to write over an input of this command, or over anything but an earlier bundle."""
    refuse_overwrite([(what, path)], [("an input", given) for given in inputs], BundleError)
    target = path.resolve()
    if target == Path.cwd().resolve() or target in Path.cwd().resolve().parents:
        raise BundleError(f"{what} {path} is the current folder or holds it; choose a new folder for the bundle")
    check_replaceable(path, force, is_bundle, "an rnnexport bundle", BundleError)


def package(
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    source: RecurrentModel | None = None,
    step_path: str | os.PathLike[str] | None = None,
    variants: Sequence[str] | None = None,
    archive: bool = False,
    force: bool = False,
    optional: Sequence[str] | None = None,
    *,
    calibration: str | os.PathLike[str] | None = None,
    engines: Sequence[str] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    shared_weights: bool = True,
) -> PackageResult:
    """Bundle a converted graph for embedding.

    Args:
        model_path: a graph written by :func:`rnnexport.convert`.
        out_dir: the bundle folder to create (moved into place when complete).
        source: the model it was converted from; when given, the test vectors'
            expected outputs come from PyTorch, else from the CPU execution provider.
        step_path: a step graph of the same model to include.
        variants: any of ``ort``, ``int8``, ``int8-qdq``, ``fp16``, made for every graph and
            verified against it, and ``openvino-stateful``, made of the step graph (it needs
            openvino). None (the default): the first four, each left out with the reason
            recorded when it cannot be made. Named ones are required.
        archive: also write ``<out_dir>.zip``, byte-for-byte reproducible.
        force: replace an existing ``out_dir``.
        optional: named variants that may be left out (with the reason) rather than fail.
        calibration: a file of input sequences ``int8-qdq`` takes its activation ranges from
            (:func:`rnnexport.packaging.calibration.read_calibration`), with the bundle's own
            test sets; None: the test sets alone.
        engines: the engines every graph and variant runs its test sets on before the bundle
            is written (names as ``rnnexport verify --engines`` takes them); None: the CPU
            provider and onnx's ReferenceEvaluator. One that cannot run a graph here is
            recorded as unavailable.
        timeout: seconds each call of a graph may take (test vectors, calibration, variant
            checks, the proof on each engine); None: no bound.
        shared_weights: with a step graph, store the weights both graphs hold once, in
            ``weights.bin`` (ONNX external data; the step graph is then ``step.onnx`` beside
            ``model.onnx``, and the manifest's schema ``rnnexport.bundle/2``). False: two
            self-contained graphs (``step/model.onnx``), schema ``rnnexport.bundle/1``.

    Raises:
        BundleError: bad inputs, a graph whose test vectors fail on an engine, or a
            required variant that cannot be made; nothing is written then.
        RunTimeout: a graph ran over ``timeout``; nothing is written then.
    """
    timeout = check_timeout(timeout, "timeout", BundleError)
    model_path, out_dir = Path(model_path), Path(out_dir).absolute()
    plan = VariantPlan.of(variants, optional)
    proof_engines = _engines(engines)
    if calibration is not None and "int8-qdq" not in plan.names:
        raise BundleError("a calibration file is used by the int8-qdq variant only; add int8-qdq to the variants")
    inputs = [model_path, *([Path(step_path)] if step_path else [])]
    _check_target(out_dir, "bundle folder", force, inputs)
    if archive:
        _check_target(out_dir.with_name(out_dir.name + ".zip"), "bundle archive", force, inputs)
    model, info = _load_graph(model_path)
    step = _load_graph(Path(step_path), Form.STEP) if step_path else None
    if step is not None and info.form is Form.STEP:
        raise BundleError(f"{model_path} is a step graph too; give the sequence graph as MODEL and the step "
                          "graph with --step")
    if step is not None and (step[1].io != info.io.without_lengths() or step[1].params_sha256 != info.params_sha256):
        raise BundleError(f"{step_path} is not a step graph of the same model as {model_path}")
    if source is not None:
        _check_source(source, info, model_path)
    stateful = _stateful_refusal(plan, [info.form, *([step[1].form] if step is not None else [])], source)
    given = read_calibration(calibration, info.io) if calibration is not None else None
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if not parent.is_dir():
        raise BundleError(f"cannot create {out_dir}: folder {parent} does not exist")
    graphs = [(model_path, model, info), *([(Path(step_path), *step)] if step is not None and step_path else [])]
    tmp = temp_folder(out_dir, BundleError)
    try:
        result = _build(tmp, graphs, source, plan, _Proving(proof_engines, given, timeout), shared_weights,
                        stateful)
        check_replaceable(out_dir, force, is_bundle, "an rnnexport bundle", BundleError)
        swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    zip_path = None
    if archive:
        zip_path = out_dir.with_name(out_dir.name + ".zip")
        write_zip(out_dir, zip_path)
    manifest, variant_results, expected, shared = result
    return PackageResult(out_dir, zip_path, manifest, tuple(variant_results), expected, shared)


@dataclasses.dataclass(frozen=True)
class _Proving:
    """How a bundle is proven: its engines, the calibration file's sequences (None: its test sets), and the
    time budget of each call of a graph (None: no bound)."""

    engines: tuple[str, ...]
    calibration: Calibration | None
    timeout: float | None = None


def _stateful_refusal(plan: VariantPlan, forms: list[Form], source: RecurrentModel | None) -> VariantEntry | None:
    """Why ``openvino-stateful`` cannot be made here (None when it is not asked for or can be): one line, at once
    when it was asked for by name, else the entry that records it as left out."""
    if STATEFUL_VARIANT not in plan.names:
        return None
    missing = missing_extra(ModuleNotFoundError(name="openvino"), f"the {STATEFUL_VARIANT} variant")
    if Form.STEP not in forms:
        none = ("the model has a bidirectional layer, so it has no step form" if source is not None
                and source.bidirectional() else "pass one with --step (rnnexport convert --form step); a "
                "bidirectional model has no step form")
        why = f"the {STATEFUL_VARIANT} variant cannot be made: it is made of the bundle's step graph, and this " \
              f"bundle has none: {none}"
    elif missing is not None:
        why = str(missing)
    else:
        return None
    if STATEFUL_VARIANT not in plan.optional:
        raise BundleError(why)
    return VariantEntry(STATEFUL_VARIANT, Form.STEP.value, False, reason=why)


def _engines(names: Sequence[str] | None) -> tuple[str, ...]:
    """The proof's engines, every name checked before anything is made."""
    chosen = tuple(dict.fromkeys(n.strip() for n in (PROOF_ENGINES if names is None else names) if n.strip()))
    if not chosen:
        raise BundleError("no engine to prove the bundle on; name at least one (cpu, reference, openvino, tract, "
                          "node, wasm, ...)")
    for name in chosen:
        try:
            engine_spec(name)
        except VerifyError as e:
            raise BundleError(str(e)) from e
    return chosen


def _default_calibration(made: dict[str, Vectors], info: GraphInfo) -> Calibration:
    """The test sets' calls as sequences: the sequence graph's when there is one (the step graph steps through them)."""
    key = Form.SEQUENCE.value if Form.SEQUENCE.value in made else next(iter(made))
    calls = made[key].calls
    if key == Form.STEP.value:  # a step's x has no time axis
        calls = [(kind, stream, np.expand_dims(x, info.io.time_axis), state) for kind, stream, x, state in calls]
    return from_calls(calls, "the test sets")


def _share(tmp: Path, given: list[tuple[Path, onnx.ModelProto, GraphInfo]], graphs: dict[str, GraphEntry],
           placed: dict[str, tuple[Path, GraphInfo]]) -> SharedWeights | None:
    """Store the weights the graphs share once (after their variants are made from the self-contained
    graphs): the step graph moves beside the sequence graph as ``step.onnx``, both read ``weights.bin``."""
    targets = {key: tmp / ("model.onnx" if key == Form.SEQUENCE.value else f"{key}.onnx") for key in placed}
    shared = share_weights([(model, targets[info.form.value]) for _, model, info in given], tmp)
    if shared is None:
        return None
    for key, (path, info) in placed.items():
        if path != targets[key]:
            path.unlink()
        placed[key] = (targets[key], info)
        graphs[key] = dataclasses.replace(graphs[key], file=targets[key].name, weights=shared.file)
    return shared


def _build(tmp: Path, given: list[tuple[Path, onnx.ModelProto, GraphInfo]], source: RecurrentModel | None,
           plan: VariantPlan, proving: _Proving,
           shared_weights: bool = True,
           refused: VariantEntry | None = None) -> tuple[Manifest, list[VariantEntry], str, SharedWeights | None]:
    vocabulary = source.vocabulary_size() if source is not None and source.io.x_dtype == "int64" else None
    graphs: dict[str, GraphEntry] = {}
    placed: dict[str, tuple[Path, GraphInfo]] = {}
    made: dict[str, Vectors] = {}
    for index, (path, model, info) in enumerate(given):
        key, prefix = info.form.value, "step/" if index else ""  # MODEL at the top, --step's graph in step/
        target = tmp / prefix / "model.onnx"
        target.parent.mkdir(exist_ok=True)
        atomic_write(target, path.read_bytes(), "bundle graph", BundleError)
        graphs[key] = dataclasses.replace(graph_entry(f"{prefix}model.onnx", model, info),
                                          mobile=mobile_coverage(target))
        placed[key] = (target, info)
        made[key] = make_vectors(tmp, prefix, key, target, info, source, vocabulary, proving.timeout)
    vectors = [entry for found in made.values() for entry in found.entries]
    expected = next(iter(made.values())).expected_from
    card = source.card if source is not None else None
    calibration = _default_calibration(made, given[0][2])
    if proving.calibration is not None:
        calibration = calibration.joined(proving.calibration)
    variants = [make_variant(name, key, path, tmp, GraphContext(info.io, info.form, info.seq_len, info.cell_family,
                                                                (card or {}).get("prompt"), calibration,
                                                                proving.timeout))
                for key, (path, info) in placed.items() for name in plan.names
                if applies(name, info.form) and not (refused is not None and name == refused.name)]
    variants = [_with_mobile(v, graphs) for v in variants] + ([refused] if refused is not None else [])
    _require(plan, variants)
    shared = _share(tmp, given, graphs, placed) if shared_weights and len(given) > 1 else None
    info = given[0][2]
    write_manifest(tmp, build_manifest(tmp, info, graphs, variants, vectors))
    proof = prove(tmp, build_manifest(tmp, info, graphs, variants, vectors), proving.engines, proving.timeout)
    for key in graphs:
        failed = proof.failures(key)
        if failed:
            raise BundleError(f"the {key} graph fails its test vectors on {failed[0].engine} ({failed[0].reason}); "
                              "run rnnexport verify on it to see where it differs")
        graphs[key] = dataclasses.replace(graphs[key], checked_on=proof.of(key))
    variants = [_proved(v, proof, tmp) for v in variants]
    _require(plan, variants)
    variants = [_with_task(v, placed, tmp, card, proving.timeout) for v in variants]
    manifest = build_manifest(tmp, info, graphs, variants, vectors)
    write_manifest(tmp, manifest)
    assert (tmp / MANIFEST).is_file()
    return manifest, variants, expected, shared


def _with_mobile(variant: VariantEntry, graphs: dict[str, GraphEntry]) -> VariantEntry:
    """An ORT-format variant notes the mobile providers' coverage of the graph it was made from.

    The ORT format is what onnxruntime's mobile builds load, and onnxruntime's usability check
    judges the ONNX graph it was converted from: the figures are the graph's own.
    """
    mobile = graphs[variant.of].mobile
    if variant.name != "ort" or not variant.ok or mobile is None:
        return variant
    return dataclasses.replace(variant, notes=f"{variant.notes}; mobile providers, as judged on the {variant.of} "
                                              f"graph: {mobile.note}")


def _proved(variant: VariantEntry, proof: Proof, root: Path) -> VariantEntry:
    """``variant`` with where it was checked, or left out if an engine that can run it disagrees."""
    if not variant.ok:
        return variant
    failed = proof.failures(variant.of, variant.name)
    if failed:
        return left_out(variant, root, f"fails its test vectors on {failed[0].engine}: {failed[0].reason}")
    return dataclasses.replace(variant, checked_on=proof.of(variant.of, variant.name))


def _with_task(variant: VariantEntry, placed: dict[str, tuple[Path, GraphInfo]], root: Path,
               card: dict[str, Any] | None, timeout: float | None) -> VariantEntry:
    """A lossy variant with what it changes in the model's task: a char model's text, a forecaster's forecasts."""
    if not variant.ok or variant.name in ("ort", STATEFUL_VARIANT):  # float32 computation: the task is unchanged
        return variant
    path, info = placed[variant.of]
    if info.seq_len is not None:
        return variant
    signal = signal_of(card)
    if is_char_model(info.io):
        agreement = text_agreement(path, root / variant.files[0], info.io, (card or {}).get("prompt"), timeout)
        notes = text_notes(agreement)
    elif signal is not None and info.io.x_features == (1,) and info.io.y_features == (1,):
        agreement = forecast_agreement(path, root / variant.files[0], info.io, signal, timeout)
        notes = forecast_notes(agreement)
    else:
        return variant
    return dataclasses.replace(variant, agreement=agreement, notes=f"{variant.notes}; {notes}")


def _require(plan: VariantPlan, variants: Sequence[VariantEntry]) -> None:
    """Fail (one line, nothing written) when a variant that was asked for by name was left out."""
    for variant in variants:
        if not variant.ok and variant.name not in plan.optional:
            raise BundleError(f"variant {variant.name} of the {variant.of} graph was asked for but cannot be made: "
                              f"{variant.reason}; leave it out of --variants, or let it be dropped with "
                              f"--variants-optional {variant.name}")
