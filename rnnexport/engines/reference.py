"""onnx's ReferenceEvaluator as a runner: an independent, slow, pure-numpy engine.

It does not implement everything rnnexport emits. Known gaps, found by running
each configuration (see ``docs/verify.md``): the ``RNN`` operator with a ``Relu``
activation (torch.nn.RNN(nonlinearity="relu")), and ``Scan`` over any axis but 0
(batch-first models lowered with scan). LSTM and GRU silently ignore a non-default
``activations``, ``clip`` or ``input_forget``, and all three operators their ``sequence_lens``
(a native graph converted with ``--lengths``), so those are refused too. A graph or
input it cannot run is reported unavailable with the reason, not as a failure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnx

from rnnexport.core.errors import describe
from rnnexport.core.graphs import attributes, walk
from rnnexport.engines.base import (
    EngineUnavailable,
    Runner,
    graph_tensors,
    standard_graph,
)

if TYPE_CHECKING:
    from onnx.reference import ReferenceEvaluator

__all__ = ["ReferenceRunner", "reference_limitations"]

_RNN_ACTIVATIONS = {"Tanh", "tanh", "Affine", "affine"}
_DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh")}


def _node_limitation(node: onnx.NodeProto) -> str | None:
    attrs = attributes(node)
    if node.op_type == "RNN":
        acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
        bad = [a for a in acts if a not in _RNN_ACTIVATIONS]
        if bad:
            return f"its RNN operator supports only Tanh/Affine activations, the graph uses {bad[0]}"
    if node.op_type in ("RNN", "LSTM", "GRU") and len(node.input) > 4 and node.input[4]:
        return (f"its {node.op_type} operator ignores sequence_lens (every stream runs to the padded end): "
                "convert with --lowering scan to check a lengths graph here")
    if node.op_type in _DEFAULT_ACTIVATIONS:
        given = tuple(a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", []))
        if given and given[: len(_DEFAULT_ACTIVATIONS[node.op_type])] != _DEFAULT_ACTIVATIONS[node.op_type]:
            return f"its {node.op_type} operator ignores the activations attribute ({', '.join(given)})"
        if attrs.get("clip") is not None or attrs.get("input_forget"):
            return f"its {node.op_type} operator ignores clip and input_forget"
    if node.op_type == "Scan":
        for key in ("scan_input_axes", "scan_output_axes", "scan_input_directions", "scan_output_directions"):
            if any(attrs.get(key) or []):
                return f"its Scan supports only axis 0 and forward direction, the graph sets {key}={list(attrs[key])}"
    return None


def reference_limitations(model: onnx.ModelProto) -> list[str]:
    """Why the ReferenceEvaluator cannot run ``model`` faithfully; empty when it can."""
    found = []
    for node in walk(model.graph):
        reason = _node_limitation(node)
        if reason and reason not in found:
            found.append(reason)
    return found


class ReferenceRunner(Runner):
    """``onnx.reference.ReferenceEvaluator`` over a graph file, its bytes or a ModelProto, in this process.

    A call cannot be stopped here: verify runs it in a child process (:class:`~rnnexport.engines.child.ChildRunner`).
    """

    name = "onnx-reference"

    def __init__(self, model: str | os.PathLike[str] | bytes | onnx.ModelProto) -> None:
        super().__init__()
        self.model = model
        self.evaluator: ReferenceEvaluator | None = None

    @classmethod
    def prepare(cls, model: str | os.PathLike[str] | bytes | onnx.ModelProto) -> onnx.ModelProto:
        """The graph, once the cheap checks pass (also run before a child process is started for it).

        Raises:
            EngineUnavailable: onnxruntime's own operators, or an operator the evaluator gets wrong.
        """
        proto = standard_graph(model, cls.name)  # onnxruntime's own operators (int8) are not ONNX's
        limits = reference_limitations(proto)
        if limits:
            raise EngineUnavailable(cls.name, f"the ReferenceEvaluator cannot run this graph: {limits[0]}")
        return proto

    def _activate(self) -> None:
        from onnx.reference import ReferenceEvaluator

        proto = self.prepare(self.model)
        try:
            self.evaluator = ReferenceEvaluator(proto)
        except Exception as e:  # an operator it lacks makes the engine unavailable
            raise EngineUnavailable(self.name, f"the ReferenceEvaluator cannot load this graph: {describe(e)}") from e
        self.inputs, self.outputs = graph_tensors(proto)

    def _deactivate(self) -> None:
        self.evaluator = None

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.evaluator is not None  # activate() ran: Runner.infer checks
        names = [t.name for t in self.outputs]
        try:
            results = self.evaluator.run(names, dict(feeds))
        except Exception as e:  # the reference's own gaps are not graph failures
            raise EngineUnavailable(self.name, f"the ReferenceEvaluator failed: {describe(e)}") from e
        return {n: np.asarray(r) for n, r in zip(names, results, strict=True)}
