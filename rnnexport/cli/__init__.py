"""The ``rnnexport`` command: thin click wrappers over the library.

Each command parses its options, calls one library function and prints its
result's summary. User-facing errors, usage errors and a missing optional
package become one line ``error: ...`` on stderr and exit 2, with no traceback.
Commands import the library when they run, so ``rnnexport --help``, ``run``,
``inspect`` and ``verify BUNDLE`` never load torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from rnnexport import __version__
from rnnexport.core.errors import MissingExtraError, RnnexportError, missing_extra

__all__ = ["main"]

COMMANDS = {
    "convert": ("rnnexport.cli.convert", "convert_command"),
    "verify": ("rnnexport.cli.verify", "verify_command"),
    "package": ("rnnexport.cli.package", "package_command"),
    "inspect": ("rnnexport.cli.inspect", "inspect_command"),
    "run": ("rnnexport.cli.run", "run_command"),
    "triton": ("rnnexport.cli.triton", "triton_command"),
}


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {' '.join(message.split())}", err=True)  # one line, whatever the message held
    sys.exit(code)


def _usage(error: click.ClickException) -> str:
    """A click error as one line, with where to read the usage."""
    message = error.format_message().rstrip(".")
    ctx = getattr(error, "ctx", None)
    return f"{message} (see '{ctx.command_path} --help')" if ctx is not None else message


class _Group(click.Group):
    """Loads commands on demand; turns user-facing errors into one line and exit 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as e:
            missing = missing_extra(e, f"rnnexport {name}")
            if missing is None:
                raise
            raise missing from e

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list; a command whose optional package is missing says which extra brings it."""
        rows = []
        for name in self.list_commands(ctx):
            try:
                command = self.get_command(ctx, name)
            except MissingExtraError as e:
                rows.append((name, f"(needs pip install 'rnnexport[{e.extra}]')"))
                continue
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RnnexportError as e:
            _fail(str(e), e.exit_code)
        except ModuleNotFoundError as e:
            missing = missing_extra(e, f"rnnexport {ctx.invoked_subcommand or ''}".strip())
            if missing is None:
                raise
            _fail(str(missing), missing.exit_code)

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        """As click's, but a usage error is one line ``error: ...`` and exit 2, as the tool's own errors are."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            _fail(_usage(e), e.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rnnexport")
def main() -> None:
    """Export recurrent PyTorch networks to ONNX with explicit state, verify and package them."""
