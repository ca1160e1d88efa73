"""Errors.

:class:`RnnexportError` and its subclasses are user-facing: they carry a message
that says what is wrong and what to do, and the CLI prints them as one line
with a non-zero exit. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "ContractError",
    "ConvertError",
    "OutputError",
    "ProviderError",
    "RnnexportError",
    "RuntimeContractError",
    "SourceError",
    "VerifyError",
    "WeightsError",
    "describe",
]


class RnnexportError(Exception):
    """Base of every error a user can act on."""

    exit_code = 2


class SourceError(RnnexportError):
    """The model source (built-in name, file.py:factory, module) is unusable."""


class WeightsError(SourceError):
    """A weights file is missing, unreadable, or does not fit the cell's layout."""


class ConvertError(RnnexportError):
    """A model cannot be exported in the requested form or lowering, or not written."""


class VerifyError(RnnexportError):
    """Verification cannot run: bad model file, missing contract, mismatched source."""


class BundleError(RnnexportError):
    """A bundle is malformed, tampered with, or unsafe to extract."""


class RuntimeContractError(RnnexportError):
    """An I/O contract is malformed, or inputs do not fit it (a runtime session's, a graph's, a manifest's)."""


#: The contract error under its general name: raised wherever a contract is read or checked.
ContractError = RuntimeContractError


class ProviderError(RnnexportError):
    """An execution provider that was asked for is not available or did not start."""


class OutputError(RnnexportError):
    """An output path cannot be written (missing folder, a directory, no permission)."""


def describe(error: BaseException) -> str:
    """``Type: first line of the message``: a foreign exception fit for a one-line error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
