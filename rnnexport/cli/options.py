"""Options shared by commands that take a model source."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from rnnexport.source.sources import SourceSpec

__all__ = ["ONNXRUNTIME_MISSING", "source_options", "source_spec"]


def _onnxruntime_missing() -> str | None:
    from rnnexport.core.errors import missing_extra

    missing = missing_extra(ModuleNotFoundError(name="onnxruntime"))
    return f"(needs pip install 'rnnexport[{missing.extra}]')" if missing else None


#: The command list's line for a command that imports onnxruntime when it runs, when it is not
#: installed (None when it is): ``--help`` works either way.
ONNXRUNTIME_MISSING = _onnxruntime_missing()

SOURCE_HELP = (
    "SOURCE is a built-in seed cell (rnn, lstm, gru), a trained model in models/ "
    "(e.g. lstm-charlm) or its folder, or path/to/file.py:factory or package.module:factory "
    "where factory() returns a torch.nn.Module or rnnexport.from_cell(...)."
)


def source_options(fn: Callable) -> Callable:
    """The size, weights and seed options of a built-in cell."""
    options = [
        click.option("--input-size", type=click.IntRange(min=1), default=None,
                     help="Built-in cells: input size I (default 28, or read from --weights)."),
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


def source_spec(source: str, input_size, hidden_size, output_size, weights, param_seed) -> SourceSpec:
    """The source the options name (imports the torch side only now, when a source is given)."""
    from rnnexport.source.sources import SourceSpec

    return SourceSpec(source, input_size, hidden_size, output_size, weights, param_seed)
