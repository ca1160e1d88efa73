"""What a command prints: a summary for people on stdout, and ``--json PATH`` for programs.

``--json -`` writes the JSON to stdout and moves the summary to stderr, so stdout holds only
the JSON document. Non-finite numbers are the strings "inf", "-inf" and "nan", as in
the verify report. Every document names its schema in ``format`` (``rnnexport.NAME/1``); the
schemas ship with the package as ``rnnexport/schemas/NAME.schema.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click

from rnnexport.core.io import atomic_write, check_writable, refuse_overwrite

__all__ = ["STDOUT", "check_outputs", "document", "emit", "strict"]

#: The ``--json`` path that means stdout.
STDOUT = "-"


def document(name: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as the JSON document of schema ``rnnexport.NAME/1``."""
    return {"format": f"rnnexport.{name}/1", **body}


def check_outputs(json_path: str | None, outputs: Iterable[tuple[str, str | Path]] = (),
                  inputs: Iterable[tuple[str, str | Path]] = ()) -> None:
    """Before any slow work: ``--json`` can be written, and is none of the command's inputs or outputs."""
    if json_path is None or json_path == STDOUT:
        return
    check_writable(json_path, "--json output")
    refuse_overwrite([*outputs, ("--json", json_path)], inputs)


def strict(value: Any) -> Any:
    """``value`` as strict JSON: a non-finite float becomes the string ``"inf"``, ``"-inf"`` or ``"nan"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def emit(lines: Sequence[str], doc: dict[str, Any] | None, json_path: str | None, quiet: bool = False) -> None:
    """Print ``lines`` (unless ``quiet``) and write ``doc`` where ``--json`` says."""
    to_stdout = json_path == STDOUT
    if lines and not quiet:
        click.echo("\n".join(lines), err=to_stdout)
    if json_path is None or doc is None:
        return
    text = json.dumps(strict(doc), indent=2, sort_keys=True, allow_nan=False) + "\n"
    if to_stdout:
        click.echo(text, nl=False)
    else:
        atomic_write(json_path, text.encode(), "--json output")
