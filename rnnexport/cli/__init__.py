"""The ``rnnexport`` command: thin click wrappers over the library.

Each command parses its options, calls one library function and prints its
result's summary. User-facing errors become one line on stderr and exit 2.
Commands are imported when they run, so ``rnnexport run`` never loads torch.
"""

from __future__ import annotations

import importlib
import sys

import click

from rnnexport import __version__
from rnnexport.errors import RnnexportError

__all__ = ["main"]

COMMANDS = {
    "convert": ("rnnexport.cli.convert", "convert_command"),
    "verify": ("rnnexport.cli.verify", "verify_command"),
    "package": ("rnnexport.cli.package", "package_command"),
    "inspect": ("rnnexport.cli.inspect", "inspect_command"),
    "run": ("rnnexport.cli.run", "run_command"),
    "triton": ("rnnexport.cli.triton", "triton_command"),
}


class _Group(click.Group):
    """Loads commands on demand; turns :class:`RnnexportError` into one line and exit 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RnnexportError as e:
            message = " ".join(str(e).split())  # one line, whatever the message held
            click.echo(f"error: {message}", err=True)
            sys.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rnnexport")
def main() -> None:
    """Export recurrent PyTorch networks to ONNX with explicit state, verify and package them."""
