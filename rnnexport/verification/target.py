"""What is verified: the graph file, its I/O contract, and the PyTorch source it must match.

Without a source, the source is rebuilt from what the graph's metadata records
(a built-in cell's sizes, weights file and seed, or a trained model's name), and
its parameter hash must equal the one the graph records.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import onnx
import torch

from rnnexport.core.contract import Form, GraphInfo, IOSpec, Lowering, TensorSpec
from rnnexport.core.errors import RnnexportError, VerifyError
from rnnexport.core.onnxfile import load_with_info
from rnnexport.engines.base import GraphTensor, graph_tensors
from rnnexport.source.model import RecurrentModel
from rnnexport.source.sources import SourceSpec, builtin, load_source, models_dir

__all__ = ["Target", "load_graph", "load_target"]

#: A trained model's name: one folder name of the models folder, never a path or a factory.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

SourceLike = SourceSpec | str | torch.nn.Module | RecurrentModel


@dataclasses.dataclass(frozen=True)
class Target:
    """A graph ready to verify against its PyTorch reference."""

    path: Path
    proto: onnx.ModelProto
    info: GraphInfo | None
    model: RecurrentModel
    form: Form
    lowering: str
    seq_len: int | None
    inputs: tuple[GraphTensor, ...]
    outputs: tuple[GraphTensor, ...]

    @property
    def io(self) -> IOSpec:
        return self.model.io

    @property
    def bidirectional(self) -> bool:
        """Whether a layer reads the sequence backwards: then chunks cannot carry its state."""
        if self.model.bidirectional():
            return True
        for node in self.proto.graph.node:
            if node.op_type in ("RNN", "LSTM", "GRU"):
                for attr in node.attribute:
                    if attr.name == "direction" and attr.s in (b"bidirectional", b"reverse"):
                        return True
        return False


def load_graph(path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, GraphInfo | None]:
    """The ONNX model at ``path`` and its rnnexport metadata (None when it has none)."""
    return load_with_info(Path(path), str(path), VerifyError, None)


def _check_names(path: Path, kind: str, want: list[str], declared: tuple[GraphTensor, ...]) -> None:
    have = [t.name for t in declared]
    for name in want:
        if name not in have:
            raise VerifyError(f"{path} has no {kind} {name!r} of the I/O contract (the contract needs "
                              f"{kind}s {', '.join(want)}; the graph has {', '.join(have) or 'none'})")


def _form_of(io: IOSpec, x: GraphTensor, path: Path) -> tuple[Form, int | None]:
    """The form (and fixed T) of a graph without metadata, from the rank of its ``x``."""
    rank = None if x.shape is None else len(x.shape)
    if rank == len(io.inputs(Form.STEP)[0].shape):
        return Form.STEP, None
    if rank == len(io.inputs(Form.SEQUENCE)[0].shape):
        assert x.shape is not None  # rank matched, so the shape is known
        time = x.shape[io.time_axis]
        return Form.SEQUENCE, time if isinstance(time, int) else None
    raise VerifyError(f"{path}: input {x.describe()} fits neither the step nor the sequence form of SOURCE")


def _check_inputs(path: Path, io: IOSpec, form: Form, seq_len: int | None,
                  inputs: tuple[GraphTensor, ...]) -> None:
    """SOURCE's inputs must fit the graph's declared inputs (outputs are contract 4's business)."""
    declared = {t.name: t for t in inputs}
    float_kinds = {"float32", "float16", "float64", "bfloat16"}
    for spec in io.inputs(form, seq_len):
        tensor = declared[spec.name]
        if tensor.shape is None:
            continue
        same_rank = len(tensor.shape) == len(spec.shape)
        fits = same_rank and all(isinstance(g, str) or g is None or g == s for g, s in zip(tensor.shape, spec.shape, strict=True))
        dtype_ok = tensor.dtype == spec.dtype or {tensor.dtype, spec.dtype} <= float_kinds
        if not fits or not dtype_ok:
            raise VerifyError(f"SOURCE does not match {path}: the graph declares input {tensor.describe()}, "
                              f"SOURCE gives {_spec(spec)}; pass the SOURCE (and sizes) the graph was converted from")


def _spec(spec: TensorSpec) -> str:
    return f"{spec.name} {spec.dtype}[{', '.join(str(d) for d in spec.shape)}]"


def _check_contract(path: Path, graph: IOSpec, source: IOSpec) -> None:
    """The parts of the recorded contract that running depends on, beyond the shapes."""
    pairs = {
        "layout": (graph.layout.value, source.layout.value),
        "state names": (graph.state.names, source.state.names),
        "state batch axis": (graph.state.batch_axis, source.state.batch_axis),
        "state structure": ((graph.state.structure, graph.state.nested_axes),
                            (source.state.structure, source.state.nested_axes)),
        "x dtype": (graph.x_dtype, source.x_dtype),
    }
    for what, (recorded, given) in pairs.items():
        if recorded != given:
            raise VerifyError(f"SOURCE does not match {path}: the graph records {what} {recorded}, "
                              f"SOURCE has {given}; pass the SOURCE the graph was converted from")
    if not _same_initial(graph.state.initial, source.state.initial):  # where a runtime's streams start
        raise VerifyError(f"SOURCE does not match {path}: {_initials(graph, source)}; pass the SOURCE the graph "
                          "was converted from, or convert it again")
    # the same state names: the same outputs, y and one per state tensor
    for recorded_out, given_out in zip(graph.outputs(Form.SEQUENCE), source.outputs(Form.SEQUENCE), strict=True):
        if recorded_out.shape != given_out.shape:
            raise VerifyError(f"SOURCE does not match {path}: the graph records output {_spec(recorded_out)}, "
                              f"SOURCE gives {_spec(given_out)}; pass the SOURCE the graph was converted from")


def _same_initial(a: tuple[np.ndarray, ...] | None, b: tuple[np.ndarray, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _initials(graph: IOSpec, source: IOSpec) -> str:
    """How the recorded initial state and SOURCE's differ."""
    def said(io: IOSpec) -> str:
        return "zeros" if io.state.initial is None else "values other than zeros"

    if graph.state.initial is not None and source.state.initial is not None:
        return "the graph records other initial-state values than SOURCE's initial-state method gives"
    return f"the graph records {said(graph)} as the initial state, SOURCE's initial state is {said(source)}"


def _rebuild(path: Path, info: GraphInfo) -> RecurrentModel:
    origin = info.origin or {}
    how = "pass SOURCE as you passed it to convert (e.g. lstm --hidden-size 256 --weights w.safetensors, " \
          "a model name, or file.py:factory)"
    try:
        if "builtin" in origin:
            weights = origin.get("weights")
            if weights and not Path(weights).is_file():
                raise VerifyError(f"{path} records weights file {weights}, which does not exist; {how}")
            return builtin(origin["builtin"], origin.get("input_size"), origin.get("hidden_size"),
                           origin.get("output_size"), weights=weights, seed=origin.get("seed") or 0)
        if "model" in origin:
            return load_source(str(_trained_model(path, origin["model"], how)))
    except VerifyError:
        raise
    except RnnexportError as e:
        raise VerifyError(f"cannot rebuild the source of {path} from its metadata ({e}); {how}") from e
    what = info.description or info.source_kind or "an unknown source"
    raise VerifyError(f"{path} was converted from {what}, which cannot be rebuilt from the graph's metadata; {how}")


def _trained_model(path: Path, name: object, how: str) -> Path:
    """The folder of a trained model of the models folder named in a graph's metadata.

    A graph is data: a name that is a path, a ``file.py:factory`` or anything but a
    folder of :func:`rnnexport.source.sources.models_dir` is refused, never imported.
    """
    folder = models_dir() / name if isinstance(name, str) and _MODEL_NAME.fullmatch(name) else None
    if folder is None or not (folder / "card.json").is_file():
        raise VerifyError(f"{path} records model {str(name)[:60]!r}, which is not a model of the models folder "
                          f"{models_dir()}; verify never imports what a graph's metadata names: {how}")
    return folder


def _check_hash(path: Path, info: GraphInfo, model: RecurrentModel, given: bool) -> None:
    if not info.params_sha256:
        return
    digest = model.params_sha256()
    if digest == info.params_sha256:
        return
    who = f"SOURCE ({model.description})" if given else f"the source rebuilt from its metadata ({model.description})"
    raise VerifyError(f"the parameters of {who} do not match {path}: parameter sha256 {digest[:12]} != the "
                      f"graph's {info.params_sha256[:12]}; pass the SOURCE and --weights the graph was converted from")


def load_target(path: str | os.PathLike[str], source: SourceLike | None = None) -> Target:
    """The graph at ``path`` with its reference model, every contract and hash checked.

    Raises:
        VerifyError: not an ONNX file, no I/O contract, a source that does not
            match (shapes, parameter hash), or no way to rebuild the source.
    """
    path = Path(path)
    proto, info = load_graph(path)
    if info is None and source is None:
        raise VerifyError(f"{path} has no rnnexport metadata (rnnexport.io); pass the SOURCE it was converted "
                          "from, e.g. rnnexport verify MODEL.onnx lstm --hidden-size 256")
    if source is not None:
        model = load_source(source)
    else:
        assert info is not None  # checked above: no metadata needs a SOURCE
        model = _rebuild(path, info)
    if info is not None and info.io.lengths is not None and model.io.lengths is None:
        model = model.with_lengths()  # a graph converted with --lengths: the reference takes them too
    inputs, outputs = graph_tensors(proto)
    io = model.io if source is not None or info is None else info.io
    if info is not None:
        form, seq_len, lowering = info.form, info.seq_len, info.lowering.value
    else:
        _check_names(path, "input", [s.name for s in io.inputs(Form.SEQUENCE)], inputs)
        form, seq_len = _form_of(io, next(t for t in inputs if t.name == io.inputs(Form.SEQUENCE)[0].name), path)
        lowering = Lowering.UNROLLED.value if seq_len else "unknown"
    _check_names(path, "input", [s.name for s in io.inputs(form, seq_len)], inputs)
    _check_names(path, "output", [s.name for s in io.outputs(form, seq_len)], outputs)
    _check_inputs(path, model.io, form, seq_len, inputs)
    if info is not None:
        _check_contract(path, info.io, model.io)
        _check_hash(path, info, model, given=source is not None)
    return Target(path, proto, info, model, form, lowering, seq_len, inputs, outputs)
