"""``rnnexport inspect``."""

from __future__ import annotations

import click

from rnnexport.cli.options import ONNX_MISSING, json_option, quiet_option, verbose_option
from rnnexport.cli.output import check_outputs, document, emit

__all__ = ["inspect_command"]


@click.command("inspect", short_help=ONNX_MISSING)
@click.argument("path", type=click.Path(exists=True))
@json_option("inspect-result.schema.json", bare=True)
@quiet_option("Print nothing but errors (and the JSON asked for): the exit status says whether PATH reads.")
@verbose_option
def inspect_command(path: str, json_path: str | None, quiet: bool) -> None:
    """Show the I/O contract, state, operators, sizes, metadata and variants of MODEL.onnx, DIR or ZIP."""
    from rnnexport.bundle.inspect import inspect  # onnx: not needed for --help

    check_outputs(json_path, inputs=[("PATH", path)])
    found = inspect(path)
    emit(found.lines(), document("inspect-result", found.to_json()), json_path, quiet)
