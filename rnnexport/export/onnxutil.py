"""Small ONNX helpers shared by the lowerings: typed values, constants, finishing, checking."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["IR_VERSION", "OPSET", "GraphBuilder", "finish_model"]

#: onnxruntime 1.31 loads models up to IR version 13; onnx 1.23 writes 14 by default.
IR_VERSION = 10
OPSET = 20

class GraphBuilder:
    """Collects nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

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

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs) -> list[str]:
        names = outputs if isinstance(outputs, list) else [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.fresh(op_type), **attrs))
        return names

    def one(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        return self.op(op_type, inputs, [output] if output else 1, **attrs)[0]


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
