"""``rnnexport.convert``: a source in, one checked ONNX file with explicit state out."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from onnx import helper

from rnnexport.core.contract import Form, GraphInfo, Lowering, NanPolicy, TensorSpec
from rnnexport.core.errors import ContractError, ConvertError
from rnnexport.core.graphs import walk
from rnnexport.core.io import atomic_write, check_writable, refuse_overwrite
from rnnexport.core.onnxfile import value_info
from rnnexport.export.causal import check_causal
from rnnexport.export.lowerings import Attempt, lower
from rnnexport.export.metadata import write_info
from rnnexport.export.onnxutil import check_model
from rnnexport.export.passes.lengths import mask_sequence
from rnnexport.source.model import RecurrentModel
from rnnexport.source.sources import SourceSpec, load_source, models_dir, source_files

__all__ = ["ConvertResult", "convert", "to_onnx"]


@dataclasses.dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert` wrote."""

    path: Path
    form: Form
    lowering: Lowering
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    attempts: tuple[Attempt, ...]
    nodes: int
    size_bytes: int
    info: GraphInfo
    description: str

    @property
    def seq_len(self) -> int | None:
        return self.info.seq_len


def _declare(onnx_model: onnx.ModelProto, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """Make the graph's declared inputs and outputs exactly the contract's."""
    graph = onnx_model.graph
    if [v.name for v in graph.input] != [s.name for s in inputs] or \
            [v.name for v in graph.output] != [s.name for s in outputs]:
        raise RuntimeError(f"lowering produced I/O {[v.name for v in graph.input]} -> "
                           f"{[v.name for v in graph.output]}, not the contract's")
    for field, specs in ((graph.input, inputs), (graph.output, outputs)):
        for value, spec in zip(field, specs, strict=True):
            value.CopyFrom(value_info(spec))
    _name_producers(graph)


def _name_producers(graph: onnx.GraphProto) -> None:
    """Make each graph output the only output of a node named after it (tract names outputs by node).

    A single-output producer is renamed; an output of a multi-output node (Scan, LSTM) gets
    an Identity of its own.
    """
    outputs = [v.name for v in graph.output]
    names = {n.name for n in graph.node}
    for name in outputs:
        producer = next((n for n in graph.node if name in n.output), None)
        if producer is None or producer.name == name:
            continue
        if len(producer.output) == 1 and name not in names:
            producer.name = name
        else:
            inner = f"{name}__value"
            producer.output[list(producer.output).index(name)] = inner
            graph.node.append(helper.make_node("Identity", [inner], [name], name=name))
        names.add(name)


def count_nodes(graph: onnx.GraphProto) -> int:
    """Nodes in ``graph`` and every subgraph (a Scan body counts once)."""
    return sum(1 for _ in walk(graph))


def to_onnx(
    model: RecurrentModel, form: Form | str = Form.SEQUENCE, lowering: Lowering | str = Lowering.AUTO,
    seq_len: int | None = None, progress: Callable[[str], None] | None = None, lengths: bool = False,
    nan: NanPolicy | str = NanPolicy.CARRY,
) -> tuple[onnx.ModelProto, Lowering, list[Attempt], GraphInfo]:
    """The checked ONNX model in memory, without writing it (``lengths``, ``nan``: see :func:`convert`)."""
    form, lowering, nan = Form(form), Lowering(lowering), _nan_policy(nan)
    if lengths and form is Form.STEP:
        raise ConvertError("--lengths adds a lengths input to sequence graphs; a step graph advances every "
                           "stream one step: drop --lengths, or convert with --form sequence")
    if lengths:
        try:
            model = model.with_lengths()
        except ContractError as e:
            raise ConvertError(f"--lengths: {e}") from e
    if seq_len is not None and seq_len < 1:
        raise ConvertError(f"--seq-len must be at least 1, got {seq_len}")
    if seq_len is not None and (lowering is not Lowering.UNROLLED or form is Form.STEP):
        if form is Form.STEP:
            raise ConvertError("--seq-len sets T of an unrolled sequence graph, but a step graph is one step: "
                               "drop --seq-len")
        raise ConvertError(f"--seq-len sets T of an unrolled sequence graph; --lowering {lowering.value} writes a "
                           "graph that takes any T: drop --seq-len, or add --lowering unrolled")
    check_causal(model, form)
    with torch.no_grad():
        onnx_model, used, attempts = lower(model, form, lowering, seq_len, progress, nan)
    fixed = (seq_len or 35) if used is Lowering.UNROLLED and form is Form.SEQUENCE else None
    if model.io.lengths is not None:
        mask_sequence(onnx_model, model.io)
    _declare(onnx_model, model.io.inputs(form, fixed), model.io.outputs(form, fixed))
    info = write_info(onnx_model, model, form, used, fixed, nan)
    check_model(onnx_model)
    return onnx_model, used, attempts, info


def _nan_policy(value: NanPolicy | str) -> NanPolicy:
    try:
        return NanPolicy(value)
    except ValueError:
        raise ConvertError(f"nan must be one of {', '.join(p.value for p in NanPolicy)}, got {value!r:.40}") from None


def _spare_inputs(path: Path, inputs: list[Path]) -> None:
    """Refuse an output path that is one of the inputs (or inside an input folder, or the models folder)."""
    refuse_overwrite([("output path", path)],
                     [*(("an input of this conversion", given) for given in inputs), ("the models folder", models_dir())],
                     ConvertError)


def convert(
    source: SourceSpec | str | torch.nn.Module | RecurrentModel,
    path: str | os.PathLike[str],
    form: Form | str = Form.SEQUENCE,
    lowering: Lowering | str = Lowering.AUTO,
    seq_len: int | None = None,
    progress: Callable[[str], None] | None = None,
    lengths: bool = False,
    nan: NanPolicy | str = NanPolicy.CARRY,
) -> ConvertResult:
    """Export a recurrent model to an ONNX file whose state is explicit.

    Args:
        source: a built-in cell name (``"lstm"``), a :class:`SourceSpec`, a model
            name or folder, ``"file.py:factory"``, a torch.nn module, or a model
            from :func:`rnnexport.from_cell` / :func:`rnnexport.from_module`.
        path: the output file; written atomically.
        form: ``"sequence"`` (any T) or ``"step"`` (one time step).
        lowering: ``"auto"``, ``"native"``, ``"scan"`` or ``"unrolled"``.
        seq_len: the fixed T of an unrolled sequence graph (default 35).
        progress: called with a line of text before each slow step (tracing).
        lengths: give the sequence graph a ``lengths (B,)`` int64 input after the state, for
            ragged batches with PyTorch's packed-sequence semantics: in stream ``b`` the steps
            from ``lengths[b]`` on give zeros in ``y`` and leave the state unchanged, so each
            state output is the stream's state after its own last step.
        nan: ``"carry"`` (the default): the graph gives NaN exactly where PyTorch does,
            whatever an engine's activations do with NaN (a guard per layer). ``"refuse"``:
            no guards (a leaner, faster graph: a 2-layer nn.LSTM sequence graph has 11 nodes,
            not 49); the graph records the policy and ``rnnexport.runtime`` refuses NaN or
            Inf input to it.

    Returns:
        A :class:`ConvertResult` with the path, the lowering used and the I/O contract.

    Raises:
        RnnexportError: for a bad source, a lowering that does not apply, or an
            unwritable path; nothing is written then.
    """
    path = Path(path)
    check_writable(path, "output", ConvertError)
    _spare_inputs(path, source_files(source))
    model = load_source(source)
    onnx_model, used, attempts, info = to_onnx(model, form, lowering, seq_len, progress, lengths, nan)
    size = atomic_write(path, onnx_model.SerializeToString(), "output", ConvertError)
    return ConvertResult(
        path=path,
        form=Form(form),
        lowering=used,
        inputs=tuple(info.io.inputs(Form(form), info.seq_len)),
        outputs=tuple(info.io.outputs(Form(form), info.seq_len)),
        attempts=tuple(attempts),
        nodes=count_nodes(onnx_model.graph),
        size_bytes=size,
        info=info,
        description=model.description,
    )
