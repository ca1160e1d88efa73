"""onnxruntime on one execution provider, resolved loudly.

``OrtRunner(path, "cuda")`` asks for the CUDA provider alone. onnxruntime quietly
falls back to the CPU provider when the one asked for cannot start (and
onnxruntime-gpu lists CUDA and TensorRT as available even on machines without a
GPU), so after creating the session the runner checks ``session.get_providers()``:
a session whose first provider is not the one asked for fell back, and the
runner reports the provider unavailable with the reason instead of running it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from rnnexport.backends.base import EngineUnavailable, GraphTensor, Runner, check_feeds
from rnnexport.errors import VerifyError, describe

__all__ = ["PROVIDERS", "EngineFailure", "OrtRunner", "available_providers", "resolve_provider"]

#: Short provider names accepted on the command line.
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LIBRARY = re.compile(r"/\S*/(lib[^/\s]+\.so[.\d]*)")


class EngineFailure(Exception):
    """An engine that started raised while running valid feeds: the graph fails on it."""


def short_name(provider: str) -> str:
    """``"CUDAExecutionProvider"`` -> ``"cuda"``."""
    for short, full in PROVIDERS.items():
        if full == provider:
            return short
    return provider.removesuffix("ExecutionProvider").lower()


def resolve_provider(name: str) -> str:
    """The full provider name for ``cpu``, ``cuda``, ``tensorrt`` (or a full name).

    Raises:
        VerifyError: for a name onnxruntime does not know, listing the valid ones.
    """
    key = name.strip()
    if key.lower() in PROVIDERS:
        return PROVIDERS[key.lower()]
    known = ort.get_all_providers()
    for full in known:
        if key in (full, short_name(full)):
            return full
    raise VerifyError(f"unknown execution provider {name!r}; valid names: {', '.join(PROVIDERS)} or a "
                      f"full onnxruntime name (this build lists {', '.join(available_providers())})")


def available_providers() -> list[str]:
    """What this onnxruntime build lists, in its preference order (not all of them may start)."""
    return list(ort.get_available_providers())


@contextlib.contextmanager
def _captured() -> Iterator[io.StringIO]:
    """Collect what onnxruntime prints while a session starts (Python prints and native stderr)."""
    text = io.StringIO()
    try:
        os.fstat(2)  # native code writes to file descriptor 2, whatever sys.stderr is
        fd: int | None = 2
    except OSError:
        fd = None
    with tempfile.TemporaryFile(mode="w+b") as native, contextlib.redirect_stdout(text):
        saved = os.dup(fd) if fd is not None else None
        if saved is not None:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(native.fileno(), fd)
        try:
            yield text
        finally:
            if saved is not None:
                os.dup2(saved, fd)
                os.close(saved)
            native.seek(0)
            text.write(native.read().decode(errors="replace"))


def _reason(log: str, fallback: str) -> str:
    """The most telling line of a provider's start-up log (library folders left out)."""
    lines = [_LIBRARY.sub(r"\1", _ANSI.sub("", line)).strip() for line in log.splitlines()]
    for marker in ("Failed to load library", "EP Error", "Failed to create", "Please install"):
        for line in lines:
            if marker in line:
                return line[line.index(marker):][:300]
    return fallback


class OrtRunner(Runner):
    """An onnxruntime session on exactly one execution provider.

    Args:
        model: path of the ``.onnx`` file, or its serialized bytes.
        provider: ``cpu``, ``cuda``, ``tensorrt`` or a full provider name.
    """

    def __init__(self, model: str | os.PathLike | bytes, provider: str = "cpu") -> None:
        super().__init__()
        self.model = model if isinstance(model, bytes) else os.fspath(model)
        self.provider = resolve_provider(provider)
        self.name = f"onnxruntime:{short_name(self.provider)}"
        self.session: ort.InferenceSession | None = None
        self.inputs: tuple[GraphTensor, ...] = ()
        self.outputs: tuple[GraphTensor, ...] = ()

    def _activate(self) -> None:
        available = available_providers()
        if self.provider not in available:
            raise EngineUnavailable(self.name, f"{self.provider} is not in this onnxruntime build "
                                               f"(available: {', '.join(available)})")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: shape warnings are the verifier's to report
        with _captured() as log:
            try:
                session = ort.InferenceSession(self.model, sess_options=options, providers=[self.provider])
            except Exception as e:  # noqa: BLE001 - any start failure makes the provider unavailable
                raise EngineUnavailable(self.name, f"session did not start: {describe(e)}") from e
        used = session.get_providers()
        if not used or used[0] != self.provider:
            reason = _reason(log.getvalue(), "no reason given by onnxruntime")
            raise EngineUnavailable(self.name, f"{self.provider} did not start, the session fell back to "
                                               f"{', '.join(used) or 'nothing'} ({reason})")
        self.session = session
        self.inputs = tuple(_tensor(a) for a in session.get_inputs())
        self.outputs = tuple(_tensor(a) for a in session.get_outputs())

    def _deactivate(self) -> None:
        self.session = None

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.name, self.inputs, feeds)
        names = [t.name for t in self.outputs]
        try:
            results = self.session.run(names, dict(feeds))
        except Exception as e:  # noqa: BLE001 - the graph failing on valid feeds is a finding
            raise EngineFailure(f"{self.name} raised {describe(e)}") from e
        return dict(zip(names, results))


def _tensor(arg) -> GraphTensor:
    shape = arg.shape if isinstance(arg.shape, Sequence) else None
    dims = None if shape is None else tuple(d if isinstance(d, (int, str)) else None for d in shape)
    return GraphTensor(arg.name, _ORT_TYPES.get(arg.type, arg.type), dims)

