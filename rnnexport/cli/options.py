"""Options shared by commands: a model source's, ``--json`` and ``-v``/``-q``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from rnnexport.source.sources import SourceSpec

__all__ = ["ONNXRUNTIME_MISSING", "ONNX_MISSING", "json_option", "quiet_option", "source_options", "source_spec",
           "timeout_option", "verbose_option"]

F = TypeVar("F", bound=Callable[..., Any])


def _missing(module: str) -> str | None:
    from rnnexport.core.errors import missing_extra

    missing = missing_extra(ModuleNotFoundError(name=module))
    return f"(needs pip install 'rnnexport[{missing.extra}]')" if missing else None


#: The command list's line for a command that imports onnxruntime when it runs, when it is not
#: installed (None when it is): ``--help`` works either way.
ONNXRUNTIME_MISSING = _missing("onnxruntime")
#: The same for a command that reads graphs with onnx.
ONNX_MISSING = _missing("onnx")


def json_option(schema: str, bare: bool = False) -> Callable[[F], F]:
    """``--json PATH``: the command's result as JSON (``-``: stdout), described by ``schema`` (a file name).

    With ``bare``, ``--json`` given last with no PATH means stdout too.
    """
    return click.option("--json", "json_path", default=None, metavar="PATH", is_flag=False,
                        flag_value="-" if bare else None,
                        help=f"Also write the result as JSON to PATH; - writes it to stdout, and the summary to "
                             f"stderr{' (so does --json given last with no PATH)' if bare else ''}. Schema: "
                             f"rnnexport/schemas/{schema}.")


def _verbosity(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Set the log level from -v and -q as each is parsed (the later one sees both)."""
    from rnnexport.cli import configure_logging

    ctx.meta[f"rnnexport.{param.name}"] = value
    quiet, verbose = ctx.meta.get("rnnexport.quiet"), ctx.meta.get("rnnexport.verbose")
    configure_logging(-1 if quiet else int(verbose or 0))
    return value


#: The longest ``--timeout`` (a week).
_MAX_SECONDS = 7 * 86400.0


def _seconds(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not 0 < value <= _MAX_SECONDS:  # also refuses nan, which a FloatRange lets through
        raise click.BadParameter(f"{value} is not seconds above 0 (at most a week)", ctx, param)
    return value


def timeout_option(default: float | None, help_text: str) -> Callable[[F], F]:
    """``--timeout SECONDS`` (passed as ``timeout``): the budget of one graph call; ``help_text`` says which."""
    return click.option("--timeout", type=float, default=default, show_default=default is not None,
                        metavar="SECONDS", callback=_seconds, help=help_text)


def verbose_option(fn: F) -> F:
    """``-v``/``--verbose`` (repeatable); sets the log level, passes nothing to the command."""
    return click.option("-v", "--verbose", count=True, expose_value=False, callback=_verbosity,
                        help="Say more on stderr: -v adds notes and other libraries' warnings, -vv debug logs.")(fn)


def quiet_option(help_text: str) -> Callable[[F], F]:
    """``-q``/``--quiet`` (passed as ``quiet``): prints less, as ``help_text`` says, and logs errors only."""
    return click.option("-q", "--quiet", is_flag=True, callback=_verbosity, help=help_text)

SOURCE_HELP = (
    "SOURCE is a built-in seed cell (rnn, lstm, gru), a trained model in models/ "
    "(e.g. lstm-charlm) or its folder, or path/to/file.py:factory or package.module:factory "
    "where factory() returns a torch.nn.Module or rnnexport.from_cell(...)."
)


def source_options(fn: F) -> F:
    """The size, weights and seed options of a built-in cell."""
    options = [
        click.option("--input-size", type=click.IntRange(min=1), default=None,
                     help="Built-in cells: input size I (default 28, or read from --weights). "
                          "file.py:factory: the module's input features (default: found from its layers)."),
        click.option("--hidden-size", type=click.IntRange(min=1), default=None,
                     help="Built-in cells: hidden size H (default 256, or read from --weights)."),
        click.option("--output-size", type=click.IntRange(min=1), default=None,
                     help="Built-in cells: output size Q (default: the input size)."),
        click.option("--weights", type=click.Path(dir_okay=False), default=None,
                     help="Built-in cells: weights as .safetensors or a torch file of named tensors "
                          "(the seed's names, e.g. W_xh); loaded with weights_only=True."),
        click.option("--seed", "param_seed", type=int, default=0, show_default=True,
                     help="Built-in cells without --weights: seed of the generated weights."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def source_spec(source: str, input_size: int | None, hidden_size: int | None, output_size: int | None,
                weights: str | None, param_seed: int) -> SourceSpec:
    """The source the options name (imports the torch side only now, when a source is given)."""
    from rnnexport.source.sources import SourceSpec

    return SourceSpec(source, input_size, hidden_size, output_size, weights, param_seed)
