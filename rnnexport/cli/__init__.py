"""The ``rnnexport`` command: thin click wrappers over the library.

Each command parses its options, calls one library function and prints its
result's summary. User-facing errors, usage errors and a missing optional
package become one line ``error: ...`` on stderr and exit 2, with no traceback.
Commands import the library when they run, so ``rnnexport --help``, ``run``,
``inspect`` and ``verify BUNDLE`` never load torch, and ``--help`` loads no onnx.

Logs and warnings go to stderr as one line each (``warning: ...``), through
:mod:`logging`: rnnexport's own warnings always, other libraries' warnings (a numpy
RuntimeWarning inside onnx's ReferenceEvaluator, say) and notes with ``-v``, debug
logs with ``-vv``, errors only with ``-q``.
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import click

from rnnexport import __version__
from rnnexport.core.data import printable
from rnnexport.core.errors import MissingExtraError, RnnexportError, missing_extra

__all__ = ["configure_logging", "main"]

COMMANDS = {
    "convert": ("rnnexport.cli.convert", "convert_command"),
    "verify": ("rnnexport.cli.verify", "verify_command"),
    "package": ("rnnexport.cli.package", "package_command"),
    "inspect": ("rnnexport.cli.inspect", "inspect_command"),
    "run": ("rnnexport.cli.run", "run_command"),
    "triton": ("rnnexport.cli.triton", "triton_command"),
}


_PACKAGE = str(Path(__file__).resolve().parent.parent)
#: -q, the default, -v, -vv: the level of rnnexport's loggers and of every other library's.
_LEVELS = {-1: (logging.ERROR, logging.ERROR), 0: (logging.WARNING, logging.ERROR),
           1: (logging.INFO, logging.WARNING), 2: (logging.DEBUG, logging.INFO)}


class _OneLine(logging.Handler):
    """A log record as one line on stderr: ``warning: message``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = printable(" ".join(record.getMessage().split()))
        except Exception:  # noqa: BLE001 - a malformed record must not end the command
            self.handleError(record)
            return
        click.echo(f"{record.levelname.lower()}: {message}", err=True)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """A Python warning as a log record: rnnexport's on the ``rnnexport`` logger, others' on ``py.warnings``."""
    ours = str(Path(filename).resolve()).startswith(_PACKAGE)
    logger = logging.getLogger("rnnexport" if ours else "py.warnings")
    logger.warning("%s: %s (%s:%d)", category.__name__, message, filename, lineno)


def configure_logging(verbosity: int = 0) -> None:
    """Route logs and warnings to stderr, one line each, at ``verbosity`` (-1 quiet ... 2 debug)."""
    ours, others = _LEVELS[max(-1, min(2, verbosity))]
    root = logging.getLogger()
    if not any(isinstance(h, _OneLine) for h in root.handlers):
        root.addHandler(_OneLine())
    root.setLevel(others)
    logging.getLogger("rnnexport").setLevel(ours)
    warnings.showwarning = _show_warning


def _fail(message: str, code: int = 2) -> NoReturn:
    # one line, whatever the message held (a name quoted from a file may hold controls)
    click.echo(f"error: {printable(' '.join(message.split()))}", err=True)
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
    """Export recurrent PyTorch networks to ONNX with explicit state, verify and package them.

    Shell completion of commands, options and files: add to ~/.bashrc

    \b
        eval "$(_RNNEXPORT_COMPLETE=bash_source rnnexport)"

    (zsh: zsh_source in ~/.zshrc; fish: fish_source in ~/.config/fish/completions/rnnexport.fish).
    """
    configure_logging()
