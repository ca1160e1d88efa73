"""The engines verify can run, by the names ``--engines`` takes: the one table of them.

``cpu``, ``cuda``, ``tensorrt`` (or any full onnxruntime provider name) are onnxruntime's
execution providers; ``reference`` is onnx's ReferenceEvaluator; ``openvino`` and ``tract``
come from the ``engines`` extra; ``node``, ``wasm`` and ``browser`` are onnxruntime's
JavaScript builds (npm packages from ``rnnexport/engines/js``, Chromium from Debian).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np
import onnx

from rnnexport.core.errors import ProviderError, VerifyError
from rnnexport.core.ort import ALIASES, full_name, short_name
from rnnexport.engines.base import EngineUnavailable, Runner

__all__ = ["ENGINES", "SLOW", "EngineSpec", "engine_spec", "is_ort_format", "make_runner"]

#: Every engine name, in the order reports list them.
ENGINES = ("cpu", "cuda", "tensorrt", "reference", "openvino", "tract", "node", "wasm", "browser")
#: Engines whose every call is slow (pure numpy, or a round trip to another process or a page):
#: they take only the cases up to ``VerifyOptions.reference_max_elements`` batch x time steps.
SLOW = frozenset({"reference", "node", "wasm", "browser"})
_OTHERS = frozenset(ENGINES) - set(ALIASES)


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """One engine to run: its report name, kind, and onnxruntime provider (for kind ``onnxruntime``)."""

    name: str
    kind: str
    provider: str | None = None

    @property
    def slow(self) -> bool:
        return self.kind in SLOW


def engine_spec(name: str) -> EngineSpec:
    """The engine a name stands for.

    Raises:
        VerifyError: a name that is neither an engine nor an onnxruntime provider.
    """
    key = name.strip().lower()
    if key in _OTHERS:
        return EngineSpec("onnx-reference" if key == "reference" else key, key)
    try:
        provider = full_name(name.strip())
    except ProviderError as e:
        raise VerifyError(f"unknown engine {name.strip()!r}; engines are {', '.join(ENGINES)} (or a full "
                          f"onnxruntime provider name)") from e
    return EngineSpec(f"onnxruntime:{short_name(provider)}", "onnxruntime", provider)


def is_ort_format(model: str | os.PathLike | bytes | onnx.ModelProto) -> bool:
    """Whether ``model`` is in onnxruntime's ORT format (a flatbuffer tagged ``ORTM``), not ONNX."""
    if isinstance(model, onnx.ModelProto):
        return False
    if isinstance(model, bytes):
        return model[4:8] == b"ORTM"
    try:
        with open(model, "rb") as f:
            return f.read(8)[4:8] == b"ORTM"
    except OSError:
        return False


class _Refused(Runner):
    """An engine that cannot take this model at all: it never starts, with the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__()
        self.name, self.reason = name, reason

    def _activate(self) -> None:
        raise EngineUnavailable(self.name, self.reason)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise EngineUnavailable(self.name, self.reason)


def make_runner(spec: EngineSpec, model: str | os.PathLike | bytes | onnx.ModelProto,
                threads: int | None = None) -> Runner:
    """A runner of ``spec`` over a graph file, its bytes, or (for the reference) a ModelProto.

    ``threads`` sets onnxruntime's intra-op threads; the other engines run on one thread.
    """
    if spec.kind != "onnxruntime" and is_ort_format(model):
        return _Refused(spec.name, "the ORT format is onnxruntime's own: only onnxruntime reads it")
    if spec.kind == "reference":
        from rnnexport.engines.reference import ReferenceRunner

        if isinstance(model, bytes):
            model = onnx.load_from_string(model)
        return ReferenceRunner(model)
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    if spec.kind == "onnxruntime":
        from rnnexport.engines.onnxrt import OrtRunner

        return OrtRunner(model, spec.provider or "cpu", threads)
    if spec.kind == "openvino":
        from rnnexport.engines.openvino import OpenVinoRunner

        return OpenVinoRunner(model)
    if spec.kind == "tract":
        from rnnexport.engines.tract import TractRunner

        return TractRunner(model)
    from rnnexport.engines.js import BrowserRunner, NodeRunner

    return BrowserRunner(model) if spec.kind == "browser" else NodeRunner(model, spec.kind)
