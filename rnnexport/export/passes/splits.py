"""Moving elementwise work across ``Split``: one wide op instead of one per gate.

A traced gated cell computes each gate apart: ``x @ W_x`` and ``h @ W_h`` are
split into gates (after :func:`~rnnexport.export.passes.algebra.fuse_matmuls`),
then every gate gets its own bias Add, its own ``x + h`` Add and its own
activation. Each is a node per step. Three exact identities undo that, for a
``Split`` of ``P`` into ``p_1 .. p_n`` along one axis:

- constants: ``op(p_i, c_i)`` for every ``i`` == ``Split(op(P, concat(c_i)))``;
- pairs: ``op(p_i, q_i)`` for a run of outputs of two splits cut alike ==
  ``Split(op(P_run, Q_run))``;
- unary: ``f(p_i)`` for every ``i`` (or a run of at least 3) == ``Split(f(P))``.

They only re-arrange which elements one node computes, so results are equal
bit for bit. A rule applies only when each split output involved is read by that
one node, and split sizes and axes are known.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from rnnexport.core.graphs import attribute, subgraphs
from rnnexport.core.onnxfile import value_dims
from rnnexport.export.onnxutil import GraphBuilder
from rnnexport.export.passes.base import PassResult, fixpoint
from rnnexport.export.passes.graph import (
    Types,
    constant_value,
    constants,
    infer_types,
    readers,
    replace_uses,
    toposort,
)

__all__ = ["fuse_one_split", "fuse_split_gates"]

_UNARY = frozenset({"Sigmoid", "Tanh", "Relu", "Exp", "Neg", "Abs", "Sqrt", "Softsign", "Softplus", "Erf",
                    "Elu", "Selu", "LeakyRelu", "HardSigmoid", "Reciprocal", "Log"})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div"})
_COMMUTATIVE = frozenset({"Add", "Mul"})
_MIN_UNARY_RUN = 3  # a run costs a Split; below 3 outputs it saves no node

#: A unary reader's op and attributes: readers with equal keys compute the same function.
_UnaryKey = tuple[str, tuple[bytes, ...]]


@dataclasses.dataclass(frozen=True)
class _Split:
    node: onnx.NodeProto
    axis: int  # negative: counted from the last axis
    sizes: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class _Context:
    graph: onnx.GraphProto
    users: dict[str, list[onnx.NodeProto]]
    outputs: frozenset[str]
    constants: frozenset[str]
    g: GraphBuilder

    def sole_reader(self, name: str) -> onnx.NodeProto | None:
        """The one node reading ``name`` (once), when ``name`` is not also a graph output."""
        users = self.users.get(name, [])
        if len(users) != 1 or name in self.outputs or subgraphs(users[0]) or users[0].domain:
            return None
        return users[0] if list(users[0].input).count(name) == 1 else None


def fuse_one_split(model: onnx.ModelProto) -> PassResult[onnx.ModelProto]:
    """Apply one of the three identities to one Split, in place (new constants join the graph)."""
    graph = model.graph
    types = infer_types(model)
    splits = [s for s in (_split_info(graph, n, types) for n in graph.node) if s is not None]
    ctx = _Context(graph, readers(graph.node), frozenset(o.name for o in graph.output),
                   frozenset(constants(graph)), GraphBuilder.beside(graph))
    for split in splits:
        if (_drop_single(ctx, split) or _sink_constants(ctx, split) or _sink_unary(ctx, split)
                or _sink_pairs(ctx, split, splits)):
            ctx.g.flush_into(graph)
            toposort(graph)
            return PassResult(model, True)
    return PassResult(model, False)


def fuse_split_gates(model: onnx.ModelProto) -> PassResult[onnx.ModelProto]:
    """Apply the three identities until none applies, in place."""
    return fixpoint(fuse_one_split)(model)


def _split_info(graph: onnx.GraphProto, node: onnx.NodeProto, types: Types) -> _Split | None:
    if node.op_type != "Split" or node.domain or attribute(node, "split") is not None:
        return None
    shape = value_dims(types.get(node.input[0]))
    axis = attribute(node, "axis", 0)
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    axis = axis - len(shape) if axis >= 0 else axis
    if len(node.input) > 1 and node.input[1]:
        given = constant_value(graph, node.input[1])
        sizes = None if given is None else tuple(int(v) for v in given.reshape(-1))
    elif isinstance(shape[axis], int):
        n, total = len(node.output), shape[axis]
        chunk = -(-total // n)
        sizes = tuple(min(chunk, total - i * chunk) for i in range(n))
    else:
        sizes = None
    if sizes is None or len(sizes) != len(node.output) or min(sizes) <= 0:
        return None
    if isinstance(shape[axis], int) and sum(sizes) != shape[axis]:
        return None
    return _Split(node, axis, sizes)


def _set_sizes(ctx: _Context, node: onnx.NodeProto, sizes: list[int]) -> None:
    sizes_name = ctx.g.ints("rw/split", sizes)
    node.input[:] = [node.input[0], sizes_name]
    kept = [a for a in node.attribute if a.name != "num_outputs"]
    del node.attribute[:]
    node.attribute.extend(kept)


def _run_value(ctx: _Context, split: _Split, start: int, length: int) -> str:
    """One value holding outputs ``start .. start+length`` of ``split``, made by that split."""
    if length == len(split.sizes):
        source = split.node.input[0]
        ctx.graph.node.remove(split.node)
        return source
    merged = ctx.g.fresh("rw/gates")
    outs, sizes = list(split.node.output), list(split.sizes)
    split.node.output[:] = [*outs[:start], merged, *outs[start + length:]]
    _set_sizes(ctx, split.node, [*sizes[:start], sum(sizes[start:start + length]), *sizes[start + length:]])
    return merged


def _add_split(ctx: _Context, source: str, sizes: tuple[int, ...], axis: int, outputs: list[str]) -> None:
    ctx.graph.node.append(ctx.g.make("Split", [source, ctx.g.ints("rw/split", list(sizes))], outputs,
                                     name_hint="rw/Split", axis=axis))


def _replace_readers(ctx: _Context, nodes: list[onnx.NodeProto]) -> list[str]:
    """Remove ``nodes`` from the graph; their first outputs, for the node that replaces them."""
    names = [r.output[0] for r in nodes]
    for reader in nodes:
        ctx.graph.node.remove(reader)
    return names


def _unary_key(reader: onnx.NodeProto | None, value: str) -> _UnaryKey | None:
    if reader is None or reader.op_type not in _UNARY or list(reader.input) != [value] or len(reader.output) != 1:
        return None
    return reader.op_type, tuple(a.SerializeToString() for a in reader.attribute)


def _sink_unary(ctx: _Context, split: _Split) -> bool:
    """``f(p_i)`` for all (or a run of >= 3) outputs -> ``Split(f(P_run))``."""
    sole = [ctx.sole_reader(o) for o in split.node.output]
    keys = [_unary_key(r, o) for r, o in zip(sole, split.node.output, strict=True)]
    start, length = _longest_run(keys)
    if length < len(keys) and length < _MIN_UNARY_RUN:
        return False
    run = [r for r in sole[start:start + length] if r is not None]  # all of them: their keys are set
    sizes = split.sizes[start:start + length]
    source = _run_value(ctx, split, start, length)
    activated = ctx.g.fresh("rw/" + run[0].op_type.lower())
    node = ctx.g.make(run[0].op_type, [source], [activated], name_hint="rw/unary")
    node.attribute.extend(run[0].attribute)
    ctx.graph.node.append(node)
    _add_split(ctx, activated, sizes, split.axis, _replace_readers(ctx, run))
    return True


def _longest_run(keys: list[_UnaryKey | None]) -> tuple[int, int]:
    """Start and length of the longest run of equal, non-None keys."""
    best, start = (0, 0), 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start] or keys[i] is None:
            if keys[start] is not None and i - start > best[1]:
                best = (start, i - start)
            start = i
    return best


def _sink_constants(ctx: _Context, split: _Split) -> bool:
    """``op(p_i, c_i)`` for every output, ``c_i`` constant -> ``Split(op(P, concat(c_i)))``."""
    found = [ctx.sole_reader(o) for o in split.node.output]
    nodes = [r for r in found if r is not None]
    if len(nodes) != len(found) or any(r.op_type not in _BINARY or len(r.input) != 2 for r in nodes):
        return False
    if len({r.op_type for r in nodes}) != 1:
        return False
    op = nodes[0].op_type
    sides = [list(r.input).index(o) for r, o in zip(nodes, split.node.output, strict=True)]
    others = [r.input[1 - k] for r, k in zip(nodes, sides, strict=True)]
    if any(o not in ctx.constants for o in others) or (op not in _COMMUTATIVE and len(set(sides)) != 1):
        return False
    joined = _join_constants([constant_value(ctx.graph, o) for o in others], split.sizes, split.axis)
    if joined is None:
        return False
    joined_name = ctx.g.const("rw/joined", joined)
    result = ctx.g.fresh("rw/" + op.lower())
    inputs = [split.node.input[0], joined_name] if op in _COMMUTATIVE or sides[0] == 0 else \
        [joined_name, split.node.input[0]]
    ctx.graph.node.append(ctx.g.make(op, inputs, [result], name_hint="rw/binary"))
    split.node.input[0] = result
    split.node.output[:] = _replace_readers(ctx, nodes)
    return True


def _join_constants(values: list[np.ndarray | None], sizes: tuple[int, ...], axis: int) -> np.ndarray | None:
    """``concat(c_i)`` along ``axis``, each ``c_i`` broadcast to its part's size; None if they differ."""
    arrays = [v for v in values if v is not None]
    if len(arrays) != len(values) or len({v.dtype for v in arrays}) != 1:
        return None
    rank = max(max(v.ndim for v in arrays), -axis)
    at = rank + axis
    parts = []
    for value, size in zip(arrays, sizes, strict=True):
        value = value.reshape((1,) * (rank - value.ndim) + value.shape)
        if value.shape[at] not in (1, size):
            return None
        parts.append(np.broadcast_to(value, (*value.shape[:at], size, *value.shape[at + 1:])))
    if len({p.shape[:at] + p.shape[at + 1:] for p in parts}) != 1:
        return None
    return np.concatenate(parts, axis=at)


@dataclasses.dataclass(frozen=True)
class _Pair:
    i: int  # output of the split at hand
    j: int  # output of the other split
    reader: onnx.NodeProto
    other: _Split
    side: int  # where the split at hand's output sits in ``reader`` (0 for commutative ops)


def _pair_at(ctx: _Context, split: _Split, i: int, where: dict[str, tuple[_Split, int]]) -> _Pair | None:
    out = split.node.output[i]
    reader = ctx.sole_reader(out)
    if reader is None or reader.op_type not in _BINARY or len(reader.input) != 2:
        return None
    side = list(reader.input).index(out)
    partner = reader.input[1 - side]
    if partner not in where or ctx.sole_reader(partner) is not reader:
        return None
    other, j = where[partner]
    if other.axis != split.axis or other.sizes[j] != split.sizes[i]:
        return None
    return _Pair(i, j, reader, other, 0 if reader.op_type in _COMMUTATIVE else side)


def _sink_pairs(ctx: _Context, split: _Split, splits: list[_Split]) -> bool:
    """``op(p_i, q_j)`` for a run of outputs of two splits cut alike -> ``Split(op(P_run, Q_run))``."""
    where = {o: (s, j) for s in splits if s.node is not split.node for j, o in enumerate(s.node.output)}
    groups: dict[tuple[int, str, int], list[_Pair]] = {}
    for i in range(len(split.sizes)):
        pair = _pair_at(ctx, split, i, where)
        if pair is not None:
            groups.setdefault((id(pair.other.node), pair.reader.op_type, pair.side), []).append(pair)
    for pairs in groups.values():
        run = _pair_run(pairs)
        if len(run) >= 2:
            _fuse_pair_run(ctx, split, run)
            return True
    return False


def _pair_run(pairs: list[_Pair]) -> list[_Pair]:
    """The longest run of pairs consecutive in both splits."""
    best: list[_Pair] = []
    current: list[_Pair] = []
    for pair in sorted(pairs, key=lambda p: p.i):
        if current and (pair.i, pair.j) == (current[-1].i + 1, current[-1].j + 1):
            current.append(pair)
        else:
            current = [pair]
        best = current if len(current) > len(best) else best
    return list(best)


def _fuse_pair_run(ctx: _Context, split: _Split, run: list[_Pair]) -> None:
    first = run[0]
    op, sizes = first.reader.op_type, split.sizes[first.i:first.i + len(run)]
    mine = _run_value(ctx, split, first.i, len(run))
    theirs = _run_value(ctx, first.other, first.j, len(run))
    result = ctx.g.fresh("rw/" + op.lower())
    inputs = [mine, theirs] if first.side == 0 else [theirs, mine]
    ctx.graph.node.append(ctx.g.make(op, inputs, [result], name_hint="rw/binary"))
    _add_split(ctx, result, sizes, split.axis, _replace_readers(ctx, [p.reader for p in run]))


def _drop_single(ctx: _Context, split: _Split) -> bool:
    """A Split into one output is the identity."""
    if len(split.sizes) != 1 or split.node.output[0] in ctx.outputs:
        return False
    replace_uses(ctx.graph, split.node.output[0], split.node.input[0])
    ctx.graph.node.remove(split.node)
    return True
