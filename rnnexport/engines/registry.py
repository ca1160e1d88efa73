"""The engines verify can run, by the names ``--engines`` takes: the one table of them, and their lifecycle.

``cpu``, ``cuda``, ``tensorrt`` are onnxruntime's execution providers (their full onnxruntime
names are accepted too); ``reference`` is onnx's ReferenceEvaluator; ``openvino`` and ``tract``
come from the ``engines`` extra; ``node``, ``wasm`` and ``browser`` are onnxruntime's JavaScript
builds (npm packages from ``rnnexport/engines/js``, Chromium from Debian). Only these: a provider
that this onnxruntime build happens to list (``AzureExecutionProvider``, ...) is no engine.

:func:`running` is the one place an engine is started, and stopped again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping

import numpy as np
import onnx

from rnnexport.core.errors import VerifyError
from rnnexport.core.external import ExternalModel
from rnnexport.core.ort import ALIASES, available_providers, short_name
from rnnexport.engines.base import EngineKind, EngineUnavailable, Runner
from rnnexport.engines.child import CHILD_KINDS, ChildRunner

__all__ = ["ENGINES", "ONNXRUNTIME_ENGINES", "SLOW", "EngineSpec", "GraphModel", "engine_spec", "is_ort_format",
           "listed_engines", "make_runner", "running"]

#: onnxruntime's execution providers that rnnexport runs, by short name.
ONNXRUNTIME_ENGINES = ("cpu", "cuda", "tensorrt")
#: Every engine name, in the order reports list them.
ENGINES = (*ONNXRUNTIME_ENGINES, "reference", "openvino", "tract", "node", "wasm", "browser")
#: Engines whose every call is slow (pure numpy, or a round trip to another process or a page):
#: they take only the cases up to ``VerifyOptions.reference_max_elements`` batch x time steps.
SLOW = frozenset({EngineKind.REFERENCE, EngineKind.NODE, EngineKind.WASM, EngineKind.BROWSER})
_OTHERS = {name: EngineKind(name) for name in ENGINES if name not in ONNXRUNTIME_ENGINES}

#: What a runner runs: a graph file, its bytes, those with the external data files it reads (a bundle's
#: graph and its shared weights), or a ModelProto.
GraphModel = str | os.PathLike[str] | bytes | ExternalModel | onnx.ModelProto


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """One engine to run: its report name, kind, and onnxruntime provider (for kind ``onnxruntime``)."""

    name: str
    kind: EngineKind
    provider: str | None = None

    @property
    def slow(self) -> bool:
        return self.kind in SLOW


def engine_spec(name: str) -> EngineSpec:
    """The engine a name stands for: one of :data:`ENGINES`, or the full name of one of onnxruntime's.

    Raises:
        VerifyError: any other name, listing the valid ones.
    """
    key = name.strip()
    if key.lower() in _OTHERS:
        kind = _OTHERS[key.lower()]
        return EngineSpec("onnx-reference" if kind is EngineKind.REFERENCE else kind.value, kind)
    provider = ALIASES.get(key.lower(), key)
    if provider not in ALIASES.values():
        raise VerifyError(f"unknown engine {key!r}; engines are {', '.join(ENGINES)}")
    return EngineSpec(f"onnxruntime:{short_name(provider)}", EngineKind.ONNXRUNTIME, provider)


def listed_engines() -> tuple[str, ...]:
    """The onnxruntime engines this onnxruntime build lists (listed is not the same as able to start)."""
    listed = available_providers()
    return tuple(name for name in ONNXRUNTIME_ENGINES if ALIASES[name] in listed)


def is_ort_format(model: GraphModel) -> bool:
    """Whether ``model`` is in onnxruntime's ORT format (a flatbuffer tagged ``ORTM``), not ONNX."""
    if isinstance(model, onnx.ModelProto):
        return False
    if isinstance(model, (bytes, ExternalModel)):
        return (model if isinstance(model, bytes) else model.model)[4:8] == b"ORTM"
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


def make_runner(spec: EngineSpec, model: GraphModel, threads: int | None = None,
                timeout: float | None = None) -> Runner:
    """A runner of ``spec`` over a graph file, its bytes (with its external data), or a ModelProto (not started).

    ``threads`` sets onnxruntime's intra-op threads; the other engines run on one thread.
    ``timeout``: seconds one call may take (None: no bound, but for the JavaScript engines'
    own limit); a call over it is stopped (:class:`~rnnexport.engines.base.EngineTimeout`).
    The ReferenceEvaluator, OpenVINO and tract run in a child process
    (:class:`~rnnexport.engines.child.ChildRunner`), which can be stopped.
    """
    if spec.kind is not EngineKind.ONNXRUNTIME and is_ort_format(model):
        return _Refused(spec.name, "the ORT format is onnxruntime's own: only onnxruntime reads it")
    if spec.kind in CHILD_KINDS:
        return ChildRunner(spec.kind, model, timeout)
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    if spec.kind is EngineKind.ONNXRUNTIME:
        from rnnexport.engines.onnxrt import OrtRunner

        return OrtRunner(model, spec.provider or "cpu", threads, timeout)
    from rnnexport.engines.js import BrowserRunner, NodeRunner

    if spec.kind is EngineKind.BROWSER:
        return BrowserRunner(model, timeout)
    return NodeRunner(model, spec.kind.value, timeout)


@contextlib.contextmanager
def running(spec: EngineSpec, models: Mapping[str, GraphModel], threads: int | None = None,
            timeout: float | None = None) -> Iterator[dict[str, Runner] | EngineUnavailable]:
    """``spec`` started on every model (by label), then stopped: the one home of an engine's lifecycle.

    Yields the started runners by label, or, when the engine cannot start on one of the models,
    the :class:`EngineUnavailable` that says why (naming the model when there are several); the
    runners already started are stopped first. Every runner is stopped when the block ends.
    ``threads`` and ``timeout`` are :func:`make_runner`'s.

    Example::

        with running(spec, {"graph": path}) as runners:
            if isinstance(runners, EngineUnavailable):
                ...  # record runners.reason
            else:
                outputs = runners["graph"].infer(feeds)
    """
    with contextlib.ExitStack() as stack:
        runners: dict[str, Runner] = {}
        failed: EngineUnavailable | None = None
        for label, model in models.items():
            try:
                runners[label] = stack.enter_context(make_runner(spec, model, threads, timeout))
            except EngineUnavailable as e:
                failed = e if len(models) == 1 else EngineUnavailable(e.engine, f"{label}: {e.reason}")
                break
        if failed is not None:
            stack.close()
            yield failed
        else:
            yield runners
