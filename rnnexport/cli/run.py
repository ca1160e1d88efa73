"""``rnnexport run``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rnnexport.cli.options import (
    ONNXRUNTIME_MISSING,
    json_option,
    quiet_option,
    timeout_option,
    verbose_option,
)
from rnnexport.cli.output import check_outputs, document, emit
from rnnexport.core.errors import RnnexportError

if TYPE_CHECKING:
    from rnnexport.runtime.files import RunSummary, StreamsSummary

__all__ = ["run_command", "streams_json", "summary", "to_json"]


def summary(result: RunSummary) -> list[str]:
    what = "1 step" if result.call == "step" else f"{result.steps} steps"
    lines = [f"ran {what} x {result.batch} stream(s) through {result.model} "
             f"({'+'.join(result.forms)} graph) on {result.providers[0]}"]
    if result.state_in:
        lines.append(f"  state in   {result.state_in}")
    if result.lengths:
        lines.append(f"  lengths    {result.lengths}")
    lines.append(f"  y          {list(result.y_shape)}" + (f" -> {result.y_path}" if result.y_path else ""))
    if result.state_out:
        lines.append(f"  state out  {result.state_out}")
    return lines


def to_json(result: RunSummary) -> dict[str, Any]:
    """The ``--json`` document of one stream (schema docs/run-result.schema.json)."""
    return document("run-result", {
        "model": str(result.model), "forms": list(result.forms), "providers": list(result.providers),
        "streams": [{"call": result.call, "steps": result.steps, "batch": result.batch,
                     "y_shape": list(result.y_shape), "y": str(result.y_path) if result.y_path else None}],
        "calls": 1,
        "state_in": str(result.state_in) if result.state_in else None,
        "state_out": str(result.state_out) if result.state_out else None,
    })


def streams_json(result: StreamsSummary) -> dict[str, Any]:
    """The ``--json`` document of several streams run at once (same schema)."""
    ys: list[Path | None] = [*result.y_paths] or [None] * len(result.steps)
    call = result.form  # step: a step call per tick; sequence: one ragged call
    return document("run-result", {
        "model": str(result.model), "forms": [result.form], "providers": list(result.providers),
        "streams": [{"call": call, "steps": steps, "batch": 1, "y_shape": None, "y": str(y) if y else None}
                    for steps, y in zip(result.steps, ys, strict=True)],
        "calls": result.calls, "state_in": None, "state_out": None,
    })


@click.command("run", short_help=ONNXRUNTIME_MISSING)
@click.argument("bundle", type=click.Path())
@click.option("-i", "--input", "x_paths", type=click.Path(dir_okay=False), required=True, multiple=True,
              help="x as .npy: one step (B, ...) or a chunk (T, B, ...) in the graph's layout. Repeat it to "
                   "run several streams at once, one chunk (T, 1, ...) of any T each: in one call when the "
                   "sequence graph takes lengths (--lengths at convert), else one call per step.")
@click.option("--lengths", "lengths_path", type=click.Path(dir_okay=False), default=None,
              help="(B,) integers as .npy: each stream's own number of steps in the chunk, for a sequence graph "
                   "converted with --lengths (y is zero after each stream's end, its state the one at its end).")
@click.option("--state-in", type=click.Path(dir_okay=False), default=None,
              help=".npz of the state to start from (as written by --state-out); default: the initial state "
                   "(zeros, or the module's own).")
@click.option("--state-out", type=click.Path(dir_okay=False), default=None,
              help="Write the state after the call here (.npz, atomically), to resume later.")
@click.option("-o", "--output", "outputs", type=click.Path(dir_okay=False), multiple=True,
              help="Write y here (.npy, atomically); with several --input, one -o per input, in order.")
@click.option("--provider", "providers", multiple=True,
              help="Execution provider, repeatable in priority order (cpu, cuda, tensorrt or a full name); "
                   "default cpu. A provider that does not start is an error, never a silent CPU fallback.")
@timeout_option(None, "The most one graph call may take (a chunk, or a step); a call over it is stopped and the "
                      "command ends with an error (exit 2). Default: no limit.")
@click.option("--allow-nonfinite", is_flag=True,
              help="Feed x and the state even when they hold NaN or Inf (by default such input is refused, "
                   "since not every lowering propagates NaN as PyTorch does).")
@json_option("run-result.schema.json")
@quiet_option("Print nothing but errors (and the JSON asked for).")
@verbose_option
def run_command(bundle: str, x_paths: tuple[str, ...], lengths_path: str | None, state_in: str | None,
                state_out: str | None, outputs: tuple[str, ...], providers: tuple[str, ...], timeout: float | None,
                allow_nonfinite: bool, json_path: str | None, quiet: bool) -> None:
    """Stream x through BUNDLE (a bundle folder, a .zip of one, or a model .onnx).

    The state starts from the initial state (zeros, or the module's own) or --state-in and is
    written to --state-out, so a stream can be resumed by a later call, in another process.
    """
    from rnnexport.runtime.files import (  # onnxruntime: not needed for --help
        run_files,
        run_stream_files,
    )

    written = [("-o", path) for path in outputs] + ([("--state-out", state_out)] if state_out else [])
    check_outputs(json_path, written, [("BUNDLE", bundle), *(("--input", x) for x in x_paths),
                                       *([("--state-in", state_in)] if state_in else []),
                                       *([("--lengths", lengths_path)] if lengths_path else [])])
    if len(x_paths) > 1:
        if state_in or state_out:
            raise RnnexportError("--state-in/--state-out take one stream; with several --input, each stream "
                                 "starts from the initial state")
        if lengths_path:
            raise RnnexportError("--lengths goes with one --input of several streams; with several --input, "
                                 "each file's T is its stream's length")
        streams = run_stream_files(bundle, list(x_paths), list(outputs), providers=list(providers) or None,
                                   check_finite=not allow_nonfinite, timeout=timeout)
        lines = [f"ran {len(streams.steps)} streams ({', '.join(map(str, streams.steps))} steps) through "
                 f"{streams.model} in {streams.calls} call{'s' * (streams.calls != 1)} of the {streams.form} graph "
                 f"on {streams.providers[0]}"]
        emit(lines + [f"  y -> {path}" for path in streams.y_paths], streams_json(streams), json_path, quiet)
        return
    if len(outputs) > 1:
        raise RnnexportError("give one -o for one --input")
    result = run_files(bundle, x_paths[0], state_in=state_in, state_out=state_out,
                       y_path=outputs[0] if outputs else None, providers=list(providers) or None,
                       check_finite=not allow_nonfinite, lengths_path=lengths_path, timeout=timeout)
    emit(summary(result), to_json(result), json_path, quiet)
