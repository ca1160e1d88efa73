"""``rnnexport inspect``."""

from __future__ import annotations

import json

import click

from rnnexport.bundle.inspect import inspect

__all__ = ["inspect_command"]


@click.command("inspect")
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect_command(path: str, as_json: bool) -> None:
    """Show the I/O contract, state, operators, sizes, metadata and variants of MODEL.onnx, DIR or ZIP."""
    found = inspect(path)
    click.echo(json.dumps(found.to_json(), indent=2, sort_keys=True) if as_json else "\n".join(found.lines()))
