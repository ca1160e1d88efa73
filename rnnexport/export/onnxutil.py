"""Building ONNX graphs: the one node builder (with fresh names), finishing and checking a model."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rnnexport.core.graphs import walk_graphs

__all__ = ["IR_VERSION", "OPSET", "GraphBuilder", "check_model", "finish_model", "names_in"]

#: onnxruntime 1.31 loads models up to IR version 13; onnx 1.23 writes 14 by default.
IR_VERSION = 10
OPSET = 20


def names_in(graph: onnx.GraphProto) -> set[str]:
    """Every value, initializer and node name of ``graph`` and its subgraphs."""
    names: set[str] = set()
    for sub in walk_graphs(graph):
        names.update(v.name for v in [*sub.input, *sub.output, *sub.value_info])
        names.update(t.name for t in sub.initializer)
        for node in sub.node:
            names.add(node.name)
            names.update(node.input)
            names.update(node.output)
    return names


class GraphBuilder:
    """Builds nodes and constants with fresh names; collects them in :attr:`nodes` and :attr:`initializers`.

    Args:
        taken: names :meth:`fresh` must never return (those of the graph the nodes will join).
    """

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._taken = set(taken)

    @classmethod
    def beside(cls, graph: onnx.GraphProto) -> GraphBuilder:
        """A builder for nodes that will join ``graph``: its fresh names are none of ``graph``'s."""
        return cls(names_in(graph))

    def fresh(self, hint: str) -> str:
        """A name no earlier call returned and none of the taken names: ``{hint}_{n}``."""
        while True:
            self._count += 1
            name = f"{hint}_{self._count}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def const(self, hint: str, array: np.ndarray) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def scalar(self, hint: str, value: np.ndarray) -> str:
        """A rank-0 constant (``const`` would give it one axis)."""
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value).reshape(()), name))
        return name

    def ints(self, hint: str, values: list[int]) -> str:
        return self.const(hint, np.asarray(values, dtype=np.int64))

    def make(self, op_type: str, inputs: list[str], outputs: list[str], name_hint: str | None = None,
             **attrs: Any) -> onnx.NodeProto:
        """A node with a fresh name (from ``name_hint``, else ``op_type``), not collected: place it yourself."""
        return helper.make_node(op_type, inputs, outputs, name=self.fresh(name_hint or op_type), **attrs)

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs: Any) -> list[str]:
        """Collect an ``op_type`` node; its outputs (``outputs`` names, or that many fresh ones)."""
        names = outputs if isinstance(outputs, list) else [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(self.make(op_type, inputs, names, **attrs))
        return names

    def one(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        return self.op(op_type, inputs, [output] if output else 1, **attrs)[0]

    def copy(self, node: onnx.NodeProto, prefix: str, renamed: Mapping[str, str]) -> onnx.NodeProto:
        """Collect a copy of ``node`` named ``prefix + node.name`` (a fresh name if that is taken or empty).

        The copy reads and writes ``renamed[v]`` for each of its values ``v`` listed there.
        """
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        name = prefix + node.name
        if not node.name or name in self._taken:
            name = self.fresh(prefix + node.op_type)
        self._taken.add(name)
        copy.name = name
        copy.input[:] = [renamed.get(i, i) for i in node.input]
        copy.output[:] = [renamed.get(o, o) for o in node.output]
        self.nodes.append(copy)
        return copy

    def flush_into(self, graph: onnx.GraphProto) -> None:
        """Append the collected nodes and constants to ``graph`` and forget them."""
        graph.node.extend(self.nodes)
        graph.initializer.extend(self.initializers)
        self.nodes.clear()
        self.initializers.clear()


def finish_model(
    graph: onnx.GraphProto, opset: int = OPSET, extra_opsets: dict[str, int] | None = None
) -> onnx.ModelProto:
    """A model with the project's IR version and opset, ready for metadata and checking."""
    opsets = [helper.make_opsetid("", opset)]
    opsets += [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="rnnexport")
    model.ir_version = IR_VERSION
    return model


def check_model(model: onnx.ModelProto) -> None:
    """``onnx.checker`` with full shape inference; a failure here is a bug of the exporter."""
    onnx.checker.check_model(model, full_check=True)
