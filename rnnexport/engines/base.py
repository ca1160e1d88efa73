"""The runner lifecycle every engine shares: ``activate``, ``infer``, ``deactivate``.

A runner wraps one engine (PyTorch, onnxruntime on one execution provider, onnx's
ReferenceEvaluator). ``infer`` takes a feed dict named by the I/O contract and
returns the outputs by name. An engine that cannot start, or cannot run a given
input, raises :class:`EngineUnavailable` with the reason: that is a fact about
the machine or the engine, not a parity failure.

A runner may have a time budget (``timeout``, seconds per call): a call over it is
stopped and raises :class:`EngineTimeout`, and the runner takes no further call (a graph
that ran over its budget once would spend it again on every case).
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from rnnexport.core.errors import VerifyError
from rnnexport.core.external import ExternalModel
from rnnexport.core.graphs import walk
from rnnexport.core.onnxfile import load_model, value_dims, value_dtype

__all__ = ["START_ALLOWANCE", "EngineFailure", "EngineKind", "EngineTimeout", "EngineUnavailable", "GraphTensor",
           "Runner", "Unavailable", "check_feeds", "graph_tensors", "standard_graph"]

#: Seconds an engine may take to start (its process, its imports) and load a graph, on top of one
#: call's budget: loading a graph is bounded too, since a hostile graph can hang an engine's compiler.
START_ALLOWANCE = 60.0


class EngineKind(str, enum.Enum):
    """What runs a graph (or, for ``PYTORCH``, the reference); the value is what reports write."""

    PYTORCH = "pytorch"
    ONNXRUNTIME = "onnxruntime"
    REFERENCE = "reference"
    OPENVINO = "openvino"
    TRACT = "tract"
    NODE = "node"
    WASM = "wasm"
    BROWSER = "browser"


@dataclasses.dataclass(frozen=True)
class Unavailable:
    """An engine (or one case on it) that could not run, and why."""

    engine: str
    reason: str
    case: str | None = None
    #: A bundle's variant (``int8``, ...) the engine could not run; not part of the JSON report.
    variant: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "reason": self.reason, "case": self.case}


class EngineFailure(Exception):
    """An engine that started raised while running valid feeds: the graph fails on it."""


class EngineTimeout(EngineFailure):
    """A call ran over the runner's time budget and was stopped: the graph fails on that engine."""

    def __init__(self, engine: str, seconds: float, what: str = "a call") -> None:
        super().__init__(f"{engine} did not finish {what} within its time budget of {seconds:g} s (--timeout) and was "
                         "stopped: the graph may loop without end")
        self.engine = engine
        self.seconds = seconds


class EngineUnavailable(Exception):
    """Raised by a runner whose engine cannot start or cannot run this input."""

    def __init__(self, engine: str, reason: str) -> None:
        super().__init__(f"{engine}: {reason}")
        self.engine = engine
        self.reason = reason

    def result(self, case: str | None = None) -> Unavailable:
        return Unavailable(self.engine, self.reason, case)


@dataclasses.dataclass(frozen=True)
class GraphTensor:
    """A declared graph input or output: name, numpy dtype name, dims (int, symbol or None)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...] | None

    def resolve(self, sizes: Mapping[str, int]) -> tuple[int | str | None, ...] | None:
        """The declared shape with known symbols (``B``, ``T``) replaced by numbers."""
        if self.shape is None:
            return None
        return tuple(sizes.get(d, d) if isinstance(d, str) else d for d in self.shape)

    def describe(self) -> str:
        dims = "?" if self.shape is None else ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} {self.dtype}[{dims}]"


def _tensor(value: onnx.ValueInfoProto) -> GraphTensor:
    dtype = value_dtype(value)
    if dtype is None:
        return GraphTensor(value.name, value.type.WhichOneof("value") or "unknown", None)
    dims = value_dims(value)
    return GraphTensor(value.name, dtype, None if dims is None else tuple(dims))


def standard_graph(model: str | os.PathLike[str] | bytes | ExternalModel | onnx.ModelProto, engine: str,
                   allow_foreign: bool = False) -> onnx.ModelProto:
    """The ONNX model an engine other than onnxruntime runs (with all its weights), or why it cannot.

    Raises:
        EngineUnavailable: the model uses operators outside the standard domain
            (onnxruntime's ``com.microsoft`` ones, e.g. the int8 variant's
            DynamicQuantizeLSTM), unless ``allow_foreign``.
    """
    if isinstance(model, onnx.ModelProto):
        proto = model
    elif isinstance(model, ExternalModel):
        proto = load_model(model, "the graph")  # the weights from the checked files in memory
    else:
        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(os.fspath(model))
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in walk(proto.graph) if n.domain not in ("", "ai.onnx")})
    if foreign and not allow_foreign:
        raise EngineUnavailable(engine, f"{', '.join(foreign)} is an onnxruntime-only operator")
    return proto


def graph_tensors(model: onnx.ModelProto) -> tuple[tuple[GraphTensor, ...], tuple[GraphTensor, ...]]:
    """The graph's declared inputs (initializers excluded) and outputs."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(_tensor(v) for v in model.graph.input if v.name not in initializers)
    return inputs, tuple(_tensor(v) for v in model.graph.output)


@functools.lru_cache(maxsize=64)
def _dtype(name: str) -> np.dtype | None:
    try:
        return np.dtype(name)
    except TypeError:
        return None


def check_feeds(engine: str, declared: Sequence[GraphTensor], feeds: Mapping[str, np.ndarray]) -> None:
    """Raise :class:`VerifyError` when ``feeds`` do not fit the declared inputs (names, dtypes, ranks, fixed dims)."""
    names = [t.name for t in declared]
    missing = [n for n in names if n not in feeds]
    extra = [n for n in feeds if n not in names]
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"has {extra[0]!r}, which the graph does not take"
        raise VerifyError(f"{engine}: feed {what} (graph inputs: {', '.join(names)})")
    for tensor in declared:
        array = feeds[tensor.name]
        if array.dtype != _dtype(tensor.dtype):
            raise VerifyError(f"{engine}: feed {tensor.name!r} is {array.dtype.name}, "
                              f"the graph declares {tensor.describe()}")
        if tensor.shape is None:
            continue
        if array.ndim != len(tensor.shape) or not all(
                d is None or isinstance(d, str) or d == n for d, n in zip(tensor.shape, array.shape, strict=True)):
            raise VerifyError(f"{engine}: feed {tensor.name!r} has shape {tuple(array.shape)}, "
                              f"the graph declares {tensor.describe()}")


class Runner(abc.ABC):
    """One engine behind ``activate() / infer(feeds) -> dict / deactivate()``; also a context manager.

    Subclasses implement ``_activate``, ``_infer`` and ``_deactivate``; :meth:`infer` checks the
    feeds against the declared ``inputs`` once, for every engine, before ``_infer`` runs.
    """

    #: Short engine name used in reports, e.g. ``"onnxruntime:cpu"``.
    name: str = "runner"
    #: What a report should say about how the engine ran (e.g. OpenVINO's inference precision).
    detail: str = ""
    #: The graph's declared inputs and outputs, once active (graph engines; empty for PyTorch).
    inputs: tuple[GraphTensor, ...] = ()
    outputs: tuple[GraphTensor, ...] = ()

    def __init__(self, timeout: float | None = None) -> None:
        self.is_active = False
        #: Seconds one call may take (None: no bound); runners that run in this process without a
        #: way to stop a call (the ReferenceEvaluator, OpenVINO, tract) take none: ChildRunner bounds them.
        self.timeout = timeout
        #: Set when a call ran over ``timeout``: the runner takes no further call.
        self.timed_out: EngineTimeout | None = None

    def activate(self) -> None:
        """Start the engine; raise :class:`EngineUnavailable` if it cannot start."""
        if not self.is_active:
            self._activate()
            self.is_active = True

    def deactivate(self) -> None:
        """Release the engine; safe to call twice."""
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; outputs by name, in the graph's output order.

        Raises:
            VerifyError: ``feeds`` do not fit the graph's declared inputs (:func:`check_feeds`).
            EngineFailure: the engine raised on valid feeds.
            EngineTimeout: the call ran over ``timeout`` and was stopped (then every later call
                raises :class:`EngineUnavailable`).
            EngineUnavailable: the engine cannot run this input.
        """
        if not self.is_active:
            raise RuntimeError(f"{self.name} is not active; call activate() first")
        if self.timed_out is not None:
            raise EngineUnavailable(self.name, f"not run: an earlier call ran over its time budget of "
                                               f"{self.timed_out.seconds:g} s")
        if self.inputs:
            check_feeds(self.name, self.inputs, feeds)
        try:
            return self._infer(feeds)
        except EngineTimeout as e:
            self.timed_out = e
            raise

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _deactivate(self) -> None:
        return None

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()
