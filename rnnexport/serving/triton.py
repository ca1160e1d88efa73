"""``rnnexport triton``: a model for Triton's sequence batcher with implicit state, written atomically.

From a bundle (its step graph), a step graph, or any source ``rnnexport convert``
takes (converted to a step graph first), :func:`triton_repository` writes
``REPOSITORY/NAME/config.pbtxt`` and ``REPOSITORY/NAME/1/model.onnx``: the graph in
its batch-first serving form, and a configuration that keeps each sequence's state
in the server, starting from zeros or, when the contract records the module's own
initial state, from those values (``REPOSITORY/NAME/initial_state/<state>.bin``). The
folder is built beside its target and moved into place, after it has passed
:func:`~rnnexport.serving.checks.check_config` against the graph it serves (initial-state
files included), so nothing half-written or inconsistent is left. A source that
must be converted first is converted in a work folder beside the repository, which a later
run removes if this one was killed (:func:`rnnexport.core.io.remove_stale`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from rnnexport.bundle import MANIFEST, GraphSource, open_bundle
from rnnexport.core.contract import GraphInfo, IOSpec
from rnnexport.core.errors import ConvertError, OutputError
from rnnexport.core.io import (
    atomic_write,
    check_replaceable,
    refuse_overwrite,
    swap_in,
    temp_folder,
)
from rnnexport.core.onnxfile import load_with_info
from rnnexport.serving.checks import CONFIG, CheckReport, check_config
from rnnexport.serving.config import (
    INITIAL_STATE_FOLDER,
    Strategy,
    TritonOptions,
    initial_state_file,
    initial_state_files,
    model_config,
    parse_config,
    preferred_batch_sizes,
    render_config,
    schema,
    sort_pairing_problems,
    sortable_names,
)
from rnnexport.serving.form import ServingForm, batch_first, expose_state, rename_state
from rnnexport.source.sources import SourceSpec

__all__ = ["StepGraph", "TritonResult", "load_step_graph", "triton_repository"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
MODEL_FILE = "model.onnx"
VERSION = "1"


@dataclasses.dataclass(frozen=True)
class StepGraph:
    """A step graph to serve: the model, its contract, where it came from and a name for it."""

    model: onnx.ModelProto
    info: GraphInfo
    origin: str
    name: str


@dataclasses.dataclass(frozen=True)
class TritonResult:
    """What :func:`triton_repository` wrote."""

    folder: Path
    config_path: Path
    model_path: Path
    origin: str
    io: IOSpec
    transposed: tuple[str, ...]
    options: TritonOptions
    report: CheckReport
    exposed: tuple[str, ...] = ()
    renamed: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return self.folder.name

    def lines(self) -> list[str]:
        """A summary for people: graph, tensors, batching, idle timeout, checks, how to serve."""
        o, state = self.options, self.io.state
        wrapped = (f"{', '.join(self.transposed)} transposed to batch-first" if self.transposed
                   else "state batch-first already")
        lines = [f"wrote Triton model {self.name} -> {self.folder}",
                 f"  graph     {VERSION}/{MODEL_FILE}: {self.origin} ({wrapped})",
                 f"  input     {self.io.inputs('step')[0].describe()}"]
        for index, (spec, output) in enumerate(zip(state.inputs(), state.output_names, strict=True)):
            start = "zeros" if state.initial is None else \
                f"the module's initial state ({INITIAL_STATE_FOLDER}/{initial_state_file(state, index)})"
            lines.append(f"  state     {spec.describe()} -> {output}: implicit (kept in the server), {start} at "
                         "sequence start")
        if self.renamed:
            lines.append(f"  renamed   {_few([f'{old} -> {new}' for old, new in self.renamed])}: Triton pairs states "
                         "by sorted names, so numbers are zero-padded (the served contract has the new names)")
        lines.append(f"  output    {self.io.outputs('step')[0].describe()}")
        if self.exposed:
            lines.append(f"  output    {_few(self.exposed)}: copies of {_few(state.output_names)} for clients to "
                         "read (a state output itself cannot be returned: docs/serving.md)")
        batching = f"{o.strategy.value} strategy, max_batch_size {o.max_batch_size}"
        if o.strategy is Strategy.OLDEST:
            sizes = ", ".join(map(str, preferred_batch_sizes(o.max_batch_size)))
            batching += f" (preferred {sizes}), up to {o.candidates} sequences per instance"
        lines += [f"  batching  sequence batcher, {batching}",
                  f"  idle      a sequence idle over {o.idle_timeout_s:g} s loses its state; the client starts "
                  "it again with sequence_start",
                  f"  instances {o.instances} x {o.kind.value}",
                  f"  checks    {self.report.lines()[0]}",
                  f"  serve     tritonserver --model-repository {self.folder.parent} (Triton >= 24.04 for opset 20, "
                  "IR 10)"]
        return lines


def _few(items: Sequence[str]) -> str:
    """At most four of ``items``, comma-separated, then ``...``."""
    return ", ".join(items[:4]) + (", ..." if len(items) > 4 else "")


# --- the step graph ----------------------------------------------------------------------------

def _is_graph_path(path: Path) -> bool:
    """A bundle folder, a bundle zip or an ONNX file (anything else goes to convert)."""
    if path.is_dir():
        return (path / MANIFEST).is_file()
    return path.is_file() and (path.suffix == ".onnx" or zipfile.is_zipfile(path))


def _load(graph: GraphSource, where: str) -> tuple[onnx.ModelProto, GraphInfo]:
    model, info = load_with_info(graph.model, where, ConvertError,
                                 "convert it with rnnexport convert SOURCE --form step, or give the SOURCE itself")
    assert info is not None  # a graph without metadata was refused
    return model, info


def _from_path(path: Path) -> StepGraph:
    bundle = open_bundle(path)
    if bundle.kind == "model":
        model, info = _load(bundle.graphs[path.name], str(path))
        return StepGraph(model, info, f"graph {path}", path.stem)
    if bundle.kind == "test-folder" or "step" not in bundle.graphs:
        raise ConvertError(f"{path} holds no step graph: package it with --step STEP.onnx (rnnexport convert "
                           "SOURCE --form step), or give the step graph or the SOURCE itself")
    graph = bundle.graphs["step"]
    model, info = _load(graph, f"{graph.name} of bundle {path}")
    return StepGraph(model, info, f"step graph of bundle {path}", path.stem if path.is_file() else path.name)


def _converted(source: Any, workdir: Path) -> StepGraph:
    from rnnexport.export.convert import convert

    result = convert(source, workdir / "step.onnx", form="step")
    model, info = _load(GraphSource(None, "step.onnx", str(result.path)), "the converted step graph")
    hint = source.name if isinstance(source, SourceSpec) else source if isinstance(source, str) \
        else type(source).__name__.lower()
    return StepGraph(model, info, f"{hint}, converted to a step graph", str(hint).rpartition(":")[2].rpartition("/")[2])


def _spec_options_given(spec: SourceSpec) -> bool:
    return any(v not in (None, 0) for v in (spec.input_size, spec.hidden_size, spec.output_size, spec.weights,
                                            spec.seed))


def load_step_graph(source: Any, workdir: str | os.PathLike[str]) -> StepGraph:
    """The step graph to serve from ``source``: a bundle, a step graph, or anything ``convert`` takes.

    Args:
        source: a bundle folder or zip (its step graph), a step graph ``.onnx``, or a
            source for :func:`rnnexport.convert` (a name, ``file.py:factory``, a
            :class:`SourceSpec`, a torch.nn module), converted into ``workdir``.
        workdir: where a converted step graph is written.

    Raises:
        RnnexportError: no step graph, a graph without a contract, a bad source.
    """
    name = source.name if isinstance(source, SourceSpec) else source
    if isinstance(name, (str, os.PathLike)) and _is_graph_path(Path(name)):
        if isinstance(source, SourceSpec) and _spec_options_given(source):
            raise ConvertError("--input-size/--hidden-size/--output-size/--weights/--seed describe a SOURCE to "
                               f"convert; {name} carries its own graph: leave them out")
        return _from_path(Path(name))
    return _converted(source, Path(workdir))


# --- the model folder --------------------------------------------------------------------------

def _model_name(step: StepGraph, given: str | None) -> str:
    if given is not None:
        if not _NAME.fullmatch(given):
            raise ConvertError(f"--name {given!r:.80} is not a model name: use letters, digits, '_', '-' and '.', "
                               "starting with a letter or digit")
        return given
    name = _UNSAFE.sub("_", str(step.info.origin.get("model") or step.name)).strip("._-")[:128]
    return name or "model"


def _check_repository(repository: Path) -> None:
    if repository.exists() and not repository.is_dir():
        raise OutputError(f"model repository {repository} exists and is not a folder; choose another path")
    parent = repository.parent if str(repository.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot create model repository {repository}: folder {parent} does not exist")


def _target(repository: Path, name: str, force: bool) -> Path:
    _check_repository(repository)
    target = repository / name
    check_replaceable(target, force, lambda path: (path / CONFIG).is_file(), f"a Triton model folder (with {CONFIG})")
    return target


def _spare_inputs(source: Any, target: Path) -> None:
    name = source.name if isinstance(source, SourceSpec) else source
    if isinstance(name, (str, os.PathLike)):
        refuse_overwrite([("model folder", target)], [("an input", name)])


def _self_check(config_text: str, model: onnx.ModelProto, folder: Path) -> None:
    """The written folder's configuration parses back and fits its graph and initial-state files."""
    problems = check_config(parse_config(config_text), model, folder)
    if problems:  # the generator and the checks disagree: a bug, not a user error
        raise RuntimeError(f"generated Triton configuration fails its own check: {problems[0].message}")


def _write(target: Path, config_text: str, served: ServingForm) -> None:
    """Build the model folder beside ``target``: config, graph, initial-state files; check it, then swap it in."""
    try:
        target.parent.mkdir(exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create model repository {target.parent}: {e.strerror}") from e
    built = temp_folder(target)
    try:
        atomic_write(built / CONFIG, config_text.encode(), "Triton configuration")
        (built / VERSION).mkdir()
        atomic_write(built / VERSION / MODEL_FILE, served.model.SerializeToString(), "served graph")
        files = initial_state_files(served.info.io.state)
        if files:
            (built / INITIAL_STATE_FOLDER).mkdir()
        for name, data in files.items():
            atomic_write(built / INITIAL_STATE_FOLDER / name, data, "initial state")
        _self_check(config_text, served.model, built)
        swap_in(built, target)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise


def _header(origin: str, recorded_start: bool) -> str:
    from rnnexport import __version__

    start = f"the module's initial state ({INITIAL_STATE_FOLDER}/)" if recorded_start else "zero initial state"
    return (f"Written by rnnexport {__version__} (rnnexport triton) from {origin}.\n"
            f"Implicit state, batch axis first, {start}: see docs/serving.md. Triton >= 24.04.")


def _sortable(served: ServingForm, origin: str) -> ServingForm:
    """``served``, its state renamed if Triton's sorted pairing would break its names (numbers zero-padded).

    Raises:
        ConvertError: names that padding does not fix (``a``, ``a_b``): the user renames them.
    """
    state = served.info.io.state
    broken = sort_pairing_problems(list(zip(state.names, state.output_names, strict=True)))
    if not broken:
        return served
    names = sortable_names(state.names)
    if names is None:
        raise ConvertError(f"{origin}: {broken[0]}; rename the state so that no name is the start of another "
                           "(rnnexport.from_cell(..., state_names=...), or the keys of the module's state dict)")
    return rename_state(served, names, origin)


def _configure(served: ServingForm, name: str, options: TritonOptions, origin: str) -> str:
    """``config.pbtxt``'s text (checked against the written folder in :func:`_write`)."""
    io = served.info.io
    return render_config(model_config(io, name, options), _header(origin, io.state.initial is not None))


def triton_repository(source: Any, repository: str | os.PathLike[str], options: TritonOptions | None = None,
                      force: bool = False) -> TritonResult:
    """Write ``REPOSITORY/NAME/config.pbtxt`` and ``REPOSITORY/NAME/1/model.onnx`` for Triton.

    Args:
        source: a bundle folder or zip, a step graph ``.onnx``, or anything
            :func:`rnnexport.convert` takes (see :func:`load_step_graph`).
        repository: the Triton model repository (created if missing; other models in it are left alone).
        options: the configuration (:class:`TritonOptions`; default: its defaults).
        force: replace ``REPOSITORY/NAME`` if it is a Triton model folder already.

    Returns:
        A :class:`TritonResult` with the paths, the served contract and the checks' report.

    Raises:
        RnnexportError: a source without a step graph, state names that break Triton's
            sorted pairing, a graph that cannot be made batch-first, a bad option, or
            an unwritable repository; nothing is written then.
    """
    options = (options or TritonOptions()).checked()
    schema()  # before any slow work: say what to install if tritonclient is missing
    repository = Path(repository)
    _check_repository(repository)
    workdir = temp_folder(repository)  # beside it, named after this process: see the module's doc
    try:
        step = load_step_graph(source, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    name = _model_name(step, options.name)
    target = _target(repository, name, force)
    _spare_inputs(source, target)
    served = _sortable(batch_first(step.model, step.info, step.origin), step.origin)
    if options.expose_state:
        served = expose_state(served, step.origin)
    text = _configure(served, name, options, step.origin)
    _write(target, text, served)
    report = CheckReport(target, ())
    return TritonResult(target, target / CONFIG, target / VERSION / MODEL_FILE, step.origin, served.info.io,
                        served.transposed, options, report, served.exposed, served.renamed)
