"""The ``rnnexport`` command: thin click wrappers over the library.

Each command parses its options, calls one library function and prints its
result's summary. User-facing errors become one line on stderr and exit 2.
"""

from __future__ import annotations

import sys

import click

from rnnexport import __version__
from rnnexport.errors import RnnexportError

__all__ = ["main"]


class _Group(click.Group):
    """Turns :class:`RnnexportError` into one line and a non-zero exit, no traceback."""

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


def _register() -> None:
    from rnnexport.cli.convert import convert_command

    main.add_command(convert_command)
    for module, name in (("verify", "verify_command"), ("package", "package_command"),
                         ("inspect", "inspect_command"), ("run", "run_command")):
        try:
            imported = __import__(f"rnnexport.cli.{module}", fromlist=[name])
        except ModuleNotFoundError as e:
            if e.name != f"rnnexport.cli.{module}":
                raise
            continue
        main.add_command(getattr(imported, name))


_register()
