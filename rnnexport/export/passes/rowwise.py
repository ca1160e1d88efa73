"""Whether nodes treat batch rows independently, so they can run on ``T * B`` rows at once.

Hoisting work out of a Scan runs nodes of the step graph on every step's rows
stacked into one batch. That is only right when no node mixes rows: row ``b`` of
every output must depend on row ``b`` of the inputs alone. ONNX has no such
property, so this is a list of ops known to keep rows apart, each with the
condition under which it does (its axis is not the batch axis, a reshape keeps
the blocks before and after the batch, ...). Anything else is refused.

Batch axes come from shape inference: the one axis of each value whose size is
the symbolic batch ``B``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import onnx

from rnnexport.core.graphs import attribute, subgraphs
from rnnexport.core.onnxfile import value_dims
from rnnexport.export.passes.graph import Types, batch_axis, constant_value
from rnnexport.export.passes.views import VIEW_OPS

__all__ = ["rowwise"]

_ELEMENTWISE = frozenset({
    "Abs", "Acos", "Add", "And", "Asin", "Atan", "BitShift", "Cast", "Ceil", "Celu", "Clip", "Cos", "Cosh",
    "Div", "Elu", "Equal", "Erf", "Exp", "Floor", "Gelu", "Greater", "GreaterOrEqual", "HardSigmoid",
    "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu", "Less", "LessOrEqual", "Log", "Max", "Mean",
    "Min", "Mish", "Mod", "Mul", "Neg", "Not", "Or", "Pow", "PRelu", "Reciprocal", "Relu", "Round", "Selu",
    "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Softsign", "Sqrt", "Sub", "Sum", "Tan", "Tanh",
    "ThresholdedRelu", "Where", "Xor",
})
#: The view ops checked as reshapes; ``Identity`` is checked as the elementwise op it also is.
_RESHAPES = VIEW_OPS - {"Identity"}
_ALONG_AXIS = frozenset({"Softmax", "LogSoftmax", "Hardmax", "ArgMax", "ArgMin", "CumSum", "Split"})
_REDUCTIONS = frozenset({"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                         "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare"})


class _View:
    """What one node's check needs: the graph, the inferred types and which values are constant."""

    def __init__(self, graph: onnx.GraphProto, types: Types, constant: set[str]) -> None:
        self.graph, self.types, self.constant = graph, types, constant

    def axis(self, name: str) -> int | None:
        return batch_axis(self.types.get(name))

    def known_axis(self, name: str) -> int:
        """The batch axis of a value :func:`_node_rowwise` found one for (a batched input, an output)."""
        axis = self.axis(name)
        if axis is None:
            raise ValueError(f"{name!r} has no known batch axis")
        return axis

    def rank(self, name: str) -> int:
        shape = value_dims(self.types.get(name))
        return -1 if shape is None else len(shape)

    def batched(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i and i not in self.constant]


#: A check of one node: ``(view, node, its batched inputs, its output's batch axis) -> keeps rows apart``.
_Check = Callable[[_View, onnx.NodeProto, list[str], int], bool]


def rowwise(graph: onnx.GraphProto, nodes: Iterable[onnx.NodeProto], types: Types, constant: set[str]) -> bool:
    """Whether every node of ``nodes`` keeps batch rows apart.

    Args:
        graph: the graph holding the nodes (for constant inputs such as axes).
        nodes: the nodes to run on stacked rows.
        types: inferred types of every value involved.
        constant: values that are the same for every row (weights, constants).
    """
    view = _View(graph, types, constant)
    return all(_node_rowwise(view, n) for n in nodes)


def _node_rowwise(view: _View, node: onnx.NodeProto) -> bool:
    if node.domain or subgraphs(node):
        return False
    batched = view.batched(node)
    axes = [view.axis(o) for o in node.output if o]
    outs = [a for a in axes if a is not None]
    if not batched or any(view.axis(i) is None for i in batched) or len(outs) != len(axes):
        return False
    check = _CHECKS.get(node.op_type) or _family_check(node.op_type)
    return check is not None and check(view, node, batched, outs[0])


def _family_check(op: str) -> _Check | None:
    if op in _ELEMENTWISE:
        return _elementwise
    if op in _RESHAPES:
        return _reshape
    if op in _ALONG_AXIS:
        return _along_axis
    return _reduction if op in _REDUCTIONS else None


def _aligned(view: _View, name: str, out_rank: int) -> int:
    """Where ``name``'s batch axis lands in a broadcast result of rank ``out_rank``."""
    return out_rank - view.rank(name) + view.known_axis(name)


def _elementwise(view: _View, node: onnx.NodeProto, batched: list[str], out_axis: int) -> bool:
    out_rank = view.rank(node.output[0])
    return all(_aligned(view, i, out_rank) == out_axis for i in batched)


def _matmul(view: _View, node: onnx.NodeProto, batched: list[str], out_axis: int) -> bool:
    out_rank = view.rank(node.output[0])
    for position, name in enumerate(node.input[:2]):
        if name not in batched:
            continue
        rank, axis = view.rank(name), view.axis(name)
        contracted, kept = (rank - 1, rank - 2) if position == 0 else (rank - 2, rank - 1)
        if rank < 2 or axis == contracted:
            return False
        expected = out_rank - 2 + position if axis == kept else _aligned(view, name, out_rank)
        if expected != out_axis:
            return False
    return True


def _gemm(view: _View, node: onnx.NodeProto, batched: list[str], out_axis: int) -> bool:
    a, b = node.input[0], node.input[1]
    rows = 1 if attribute(node, "transA", 0) else 0
    cols = 0 if attribute(node, "transB", 0) else 1
    if a in batched and (view.axis(a) != rows or out_axis != 0):
        return False
    if b in batched and (view.axis(b) != cols or out_axis != 1):
        return False
    c = node.input[2] if len(node.input) > 2 else ""
    return c not in batched or _aligned(view, c, 2) == out_axis


def _reshape(view: _View, node: onnx.NodeProto, batched: list[str], out_axis: int) -> bool:
    """A reshape keeps rows apart when the blocks before and after the batch keep their sizes."""
    data, out = node.input[0], node.output[0]
    if batched != [data]:
        return False
    before, after = _blocks(view, data), _blocks(view, out)
    return before is not None and before == after


def _blocks(view: _View, name: str) -> tuple[int, int] | None:
    shape, axis = value_dims(view.types.get(name)), view.known_axis(name)
    if shape is None:
        return None  # not reached: a value with a batch axis has a known shape
    rest = shape[:axis] + shape[axis + 1:]
    sizes = [d for d in rest if isinstance(d, int)]
    if len(sizes) != len(rest):
        return None
    return math.prod(sizes[:axis]), math.prod(sizes[axis:])


def _transpose(view: _View, node: onnx.NodeProto, batched: list[str], out_axis: int) -> bool:
    rank = view.rank(node.input[0])
    perm = list(attribute(node, "perm", list(range(rank))[::-1]))
    return view.axis(node.input[0]) in perm and perm.index(view.axis(node.input[0])) == out_axis


def _along_axis(view: _View, node: onnx.NodeProto, batched: list[str], out_axis: int) -> bool:
    """Ops that work along one axis: fine along any axis but the batch."""
    data = node.input[0]
    if batched != [data]:
        return False
    if node.op_type == "CumSum":
        value = constant_value(view.graph, node.input[1])
        axis = None if value is None else int(value)
    else:
        axis = attribute(node, "axis", -1 if node.op_type in {"Softmax", "LogSoftmax", "Hardmax"} else 0)
    return axis is not None and axis % view.rank(data) != view.axis(data)


def _reduction(view: _View, node: onnx.NodeProto, batched: list[str], out_axis: int) -> bool:
    data = node.input[0]
    axes = attribute(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = constant_value(view.graph, node.input[1])
        axes = None if value is None else [int(v) for v in value.reshape(-1)]
    if batched != [data] or not axes:
        return False  # no axes: a reduction over every axis, the batch included
    return all(a % view.rank(data) != view.axis(data) for a in axes)


def _concat(view: _View, node: onnx.NodeProto, batched: list[str], out_axis: int) -> bool:
    rank = view.rank(node.output[0])
    if len(batched) != len([i for i in node.input if i]) or attribute(node, "axis") % rank == out_axis:
        return False
    return all(view.axis(i) == out_axis for i in batched)


def _slice(view: _View, node: onnx.NodeProto, batched: list[str], out_axis: int) -> bool:
    data = node.input[0]
    if batched != [data]:
        return False
    starts = constant_value(view.graph, node.input[1])
    given = constant_value(view.graph, node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if starts is None or (len(node.input) > 3 and node.input[3] and given is None):
        return False
    axes = range(len(starts)) if given is None else [int(a) for a in given.reshape(-1)]
    return all(a % view.rank(data) != view.axis(data) for a in axes)


def _gather(view: _View, node: onnx.NodeProto, batched: list[str], out_axis: int) -> bool:
    data, indices = node.input[0], node.input[1]
    if batched == [indices]:
        return True  # a table lookup: row b of the result reads row b of the indices
    return batched == [data] and attribute(node, "axis", 0) % view.rank(data) != view.axis(data)


def _layer_norm(view: _View, node: onnx.NodeProto, batched: list[str], out_axis: int) -> bool:
    data = node.input[0]
    return batched == [data] and attribute(node, "axis", -1) % view.rank(data) > view.axis(data)


_CHECKS: dict[str, _Check] = {
    "MatMul": _matmul, "Gemm": _gemm, "Transpose": _transpose, "Concat": _concat, "Slice": _slice,
    "Gather": _gather, "LayerNormalization": _layer_norm,
}
