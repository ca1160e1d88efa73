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
    "MissingExtraError",
    "OutputError",
    "ProviderError",
    "RnnexportError",
    "RunError",
    "RunTimeout",
    "RuntimeContractError",
    "SourceError",
    "VerifyError",
    "WeightsError",
    "describe",
    "missing_extra",
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


class RunError(RnnexportError):
    """Running a graph failed inside the engine (out of memory, an operator's own error): not a bug of the caller's."""


class RunTimeout(RunError):
    """A graph call ran over its time budget and was stopped (a graph that loops without end, or a budget too small)."""


class OutputError(RnnexportError):
    """An output path cannot be written (missing folder, a directory, no permission)."""


class MissingExtraError(RnnexportError, ImportError):
    """A package that an optional part of rnnexport needs is not installed: the message names the extra."""

    def __init__(self, message: str, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


#: Which install extra brings each optional top-level module (the base install has click and numpy; onnx
#: comes with either onnxruntime extra and with export).
EXTRAS = {
    "torch": "export", "onnxscript": "export", "safetensors": "export",
    "onnxruntime": "onnxruntime", "onnx": "onnxruntime", "matplotlib": "plot", "tritonclient": "triton", "grpc": "triton",
    "openvino": "engines", "tract": "engines",
}
_ONNXRUNTIME = ("pip install 'rnnexport[onnxruntime]' (the CPU package) or 'rnnexport[onnxruntime-gpu]' "
                "(CUDA and TensorRT), never both")


def missing_extra(error: ModuleNotFoundError, what: str = "this") -> MissingExtraError | None:
    """The one-line error for ``error`` when it is an optional package that is not installed, else None.

    Only a module that is truly absent counts: a module that fails inside its own imports is a bug.
    """
    import importlib.util

    top = (error.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    try:
        if importlib.util.find_spec(top) is not None:
            return None
    except (ImportError, ValueError):
        pass
    how = _ONNXRUNTIME if extra == "onnxruntime" else f"pip install 'rnnexport[{extra}]'"
    return MissingExtraError(f"{what} needs {top}, which is not installed: {how}", extra)


def describe(error: BaseException) -> str:
    """``Type: first line of the message``: a foreign exception fit for a one-line error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
