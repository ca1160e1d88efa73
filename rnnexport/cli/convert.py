"""``rnnexport convert``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rnnexport.cli.options import (
    SOURCE_HELP,
    json_option,
    quiet_option,
    source_options,
    source_spec,
    verbose_option,
)
from rnnexport.cli.output import check_outputs, document, emit
from rnnexport.core.contract import Form, Lowering, NanPolicy, TensorSpec
from rnnexport.core.errors import ConvertError
from rnnexport.core.io import check_replaceable, check_writable

if TYPE_CHECKING:
    from rnnexport.export.convert import ConvertResult

__all__ = ["convert_command", "default_output", "format_spec", "to_json"]


def format_spec(spec: TensorSpec) -> str:
    return f"{spec.name} {spec.dtype}[{', '.join(str(d) for d in spec.shape)}]"


def default_output(source: str, form: str) -> Path:
    """``NAME.onnx`` (``NAME.step.onnx`` for the step form) in the working folder.

    NAME is the cell or model name, a model folder's name, the file of ``file.py:factory``
    (``my_models.py:make`` gives ``my_models.onnx``) or the factory of ``package.module:factory``.
    """
    where, _, factory = source.rpartition(":")
    if where.endswith(".py"):
        stem = Path(where).stem
    else:
        stem = Path(factory if where else source.rstrip("/")).name.removesuffix(".json")
    stem = stem or "model"
    return Path(f"{stem}.onnx" if form == "sequence" else f"{stem}.step.onnx")


def summary(result: ConvertResult) -> list[str]:
    lines = [f"converted {result.description}"]
    lines.append(f"  form      {result.form.value}" + (f" (fixed T={result.seq_len})" if result.seq_len else ""))
    lines.append(f"  lowering  {result.lowering.value}")
    lines.append(f"  nan       {result.info.nan.value}" + (" (no guards: rnnexport.runtime refuses NaN and Inf input)"
                                                         if result.info.nan is NanPolicy.REFUSE else ""))
    for attempt in result.attempts:
        if not attempt.ok:
            lines.append(f"            {attempt.lowering.value} skipped: {attempt.reason}")
    lines.append(f"  inputs    {'; '.join(format_spec(s) for s in result.inputs)}")
    lines.append(f"  outputs   {'; '.join(format_spec(s) for s in result.outputs)}")
    lines.append(f"  graph     {result.nodes} nodes, {result.size_bytes / 1e6:.2f} MB -> {result.path}")
    return lines


def to_json(result: ConvertResult) -> dict[str, Any]:
    """The ``--json`` document (schema docs/convert-result.schema.json)."""
    return document("convert-result", {
        "path": str(result.path),
        "description": result.description,
        "form": result.form.value,
        "lowering": result.lowering.value,
        "nan": result.info.nan.value,
        "seq_len": result.seq_len,
        "attempts": [{"lowering": a.lowering.value, "chosen": a.ok, "reason": a.reason or None}
                     for a in result.attempts],
        "inputs": [s.to_json() for s in result.inputs],
        "outputs": [s.to_json() for s in result.outputs],
        "nodes": result.nodes,
        "size_bytes": result.size_bytes,
        "params_sha256": result.info.params_sha256,
    })


@click.command("convert", epilog=SOURCE_HELP)
@click.argument("source")
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Output .onnx file (default: SOURCE.onnx, or SOURCE.step.onnx for --form step).")
@click.option("--form", type=click.Choice([f.value for f in Form]), default="sequence", show_default=True,
              help="sequence: x (T, B, I) for any T; step: one time step, x (B, I).")
@click.option("--lowering", type=click.Choice([lw.value for lw in Lowering]), default="auto",
              show_default=True,
              help="native: ONNX RNN/LSTM/GRU operators (recognised cells); scan: a traced step in ONNX Scan "
                   "(any cell); unrolled: a trace at fixed T (--seq-len), or one traced step for --form step; "
                   "auto: native, else scan (plain-RNN sequences: scan first; step form: native, else one traced "
                   "step).")
@click.option("--seq-len", type=click.IntRange(min=1), default=None,
              help="Fixed T of an unrolled sequence graph (default 35); only with --lowering unrolled.")
@click.option("--lengths", is_flag=True,
              help="Give the sequence graph a lengths (B,) int64 input after the state, for batches of "
                   "sequences of different lengths: stream b stops after lengths[b] steps (y zero after, "
                   "its state the one after its own last step), as PyTorch's packed sequences.")
@click.option("--nan", type=click.Choice([p.value for p in NanPolicy]), default=NanPolicy.CARRY.value,
              show_default=True,
              help="carry: the graph gives NaN wherever PyTorch does, on every engine (a guard per layer; what "
                   "verify compares). refuse: no guards (leaner, faster; a 2-layer nn.LSTM 11 nodes, not 49); the "
                   "graph records it and rnnexport.runtime refuses NaN or Inf input to it.")
@source_options
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@json_option("convert-result.schema.json")
@quiet_option("Print only the output path.")
@verbose_option
def convert_command(source: str, output: str | None, form: str, lowering: str, seq_len: int | None, lengths: bool,
                    nan: str, force: bool, json_path: str | None, quiet: bool, **source_kw: Any) -> None:
    """Convert a recurrent model SOURCE to an ONNX graph with explicit state.

    State goes in and comes out: inputs x, h (and c for LSTMs); outputs y, h_out
    (and c_out). The graph is checked with onnx.checker and written atomically;
    an existing output is replaced only with --force.
    """
    from rnnexport.export.convert import convert

    spec = source_spec(source, **source_kw)
    path = Path(output) if output else default_output(source, form)
    check_writable(path, "output", ConvertError)
    check_replaceable(path, force, Path.is_file, "a file", ConvertError)
    check_outputs(json_path, [("output path", path)])
    progress = None if quiet else (lambda line: click.echo(f"{line}...", err=True))
    result = convert(spec, path, form=form, lowering=lowering, seq_len=seq_len, progress=progress, lengths=lengths,
                     nan=nan)
    emit([str(result.path)] if quiet else summary(result), to_json(result), json_path)
