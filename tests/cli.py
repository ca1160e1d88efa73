"""Running the ``rnnexport`` command in tests, and what its failures must look like.

``invoke`` runs the click group in this process, as the console script's ``main`` does (one
``error:`` line and exit 2 for user-facing errors); any other exception is raised again, since
the real command would end in a traceback. ``rnnexport`` starts the real ``python -m rnnexport``
process, for the tests whose point is the process itself (imports, environment, signals).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from click.testing import CliRunner

from rnnexport.cli import main


class Outcome(NamedTuple):
    """What a run of the command left: its exit code, stdout and stderr."""

    code: int
    out: str
    err: str


def invoke(*args: object, cwd: Path | None = None) -> Outcome:
    """``rnnexport ARGS`` in-process (in ``cwd`` if given); an exception the CLI let through is raised."""
    old = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        result = CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Outcome(result.exit_code, result.stdout, result.stderr)


def rnnexport(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 300) -> Outcome:
    """``python -m rnnexport ARGS`` as a real process (``env``: added to this process's environment)."""
    proc = subprocess.run([sys.executable, "-m", "rnnexport", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(outcome: Outcome, *fragments: str, code: int = 2) -> str:
    """The run exited ``code`` with exactly one stderr line, ``error: ...`` holding every fragment."""
    assert outcome.code == code, outcome
    assert "Traceback" not in outcome.err, outcome.err
    lines = outcome.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), outcome.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _digest(path: Path) -> str:
    if path.is_dir():
        return "folder"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except PermissionError:
        return "unreadable"


def snapshot(folder: Path) -> dict[str, str]:
    """Everything under ``folder`` with its SHA-256: to show that nothing was written, changed or lost."""
    return {p.relative_to(folder).as_posix(): _digest(p) for p in sorted(folder.rglob("*"))}
