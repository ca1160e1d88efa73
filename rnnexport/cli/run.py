"""``rnnexport run``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from rnnexport.cli.options import ONNXRUNTIME_MISSING
from rnnexport.core.errors import RnnexportError

if TYPE_CHECKING:
    from rnnexport.runtime.files import RunSummary

__all__ = ["run_command", "summary"]


def summary(result: RunSummary) -> list[str]:
    what = "1 step" if result.call == "step" else f"{result.steps} steps"
    lines = [f"ran {what} x {result.batch} stream(s) through {result.model} "
             f"({'+'.join(result.forms)} graph) on {result.providers[0]}"]
    if result.state_in:
        lines.append(f"  state in   {result.state_in}")
    lines.append(f"  y          {list(result.y_shape)}" + (f" -> {result.y_path}" if result.y_path else ""))
    if result.state_out:
        lines.append(f"  state out  {result.state_out}")
    return lines


@click.command("run", short_help=ONNXRUNTIME_MISSING)
@click.argument("bundle", type=click.Path())
@click.option("-i", "--input", "x_paths", type=click.Path(dir_okay=False), required=True, multiple=True,
              help="x as .npy: one step (B, ...) or a chunk (T, B, ...) in the graph's layout. Repeat it to "
                   "run several streams at once, one chunk (T, 1, ...) of any T each, through one call per step.")
@click.option("--state-in", type=click.Path(dir_okay=False), default=None,
              help=".npz of the state to start from (as written by --state-out); default: zeros.")
@click.option("--state-out", type=click.Path(dir_okay=False), default=None,
              help="Write the state after the call here (.npz, atomically), to resume later.")
@click.option("-o", "--output", "outputs", type=click.Path(dir_okay=False), multiple=True,
              help="Write y here (.npy, atomically); with several --input, one -o per input, in order.")
@click.option("--provider", "providers", multiple=True,
              help="Execution provider, repeatable in priority order (cpu, cuda, tensorrt or a full name); "
                   "default cpu. A provider that does not start is an error, never a silent CPU fallback.")
@click.option("--allow-nonfinite", is_flag=True,
              help="Feed x and the state even when they hold NaN or Inf (by default such input is refused, "
                   "since not every lowering propagates NaN as PyTorch does).")
def run_command(bundle, x_paths, state_in, state_out, outputs, providers, allow_nonfinite) -> None:
    """Stream x through BUNDLE (a bundle folder, a .zip of one, or a model .onnx).

    The state starts from zeros or --state-in and is written to --state-out, so
    a stream can be resumed by a later call, in another process.
    """
    from rnnexport.runtime.files import (  # onnxruntime: not needed for --help
        run_files,
        run_stream_files,
    )

    if len(x_paths) > 1:
        if state_in or state_out:
            raise RnnexportError("--state-in/--state-out take one stream; with several --input, each stream "
                                 "starts from zeros")
        streams = run_stream_files(bundle, list(x_paths), list(outputs), providers=list(providers) or None,
                                   check_finite=not allow_nonfinite)
        click.echo(f"ran {len(streams.steps)} streams ({', '.join(map(str, streams.steps))} steps) through "
                   f"{streams.model} in {streams.calls} calls on {streams.providers[0]}")
        for path in streams.y_paths:
            click.echo(f"  y -> {path}")
        return
    if len(outputs) > 1:
        raise RnnexportError("give one -o for one --input")
    result = run_files(bundle, x_paths[0], state_in=state_in, state_out=state_out,
                       y_path=outputs[0] if outputs else None, providers=list(providers) or None,
                       check_finite=not allow_nonfinite)
    click.echo("\n".join(summary(result)))
