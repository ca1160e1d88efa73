"""The batch-first serving form of a step graph: what a batching server can stack on axis 0.

Triton (with ``max_batch_size > 0``) stacks the requests of different sequences on
the first axis of every tensor, implicit state included. rnnexport's torch.nn graphs
hold their state as ``(layers * directions, B, H)`` (batch axis 1); fed
``(B, layers * directions, H)`` they fail at run time or, when the batch equals the
layer count, run and mix streams. :func:`batch_first` wraps such a graph with a
Transpose after each state input and before each state output, so every served
tensor has the batch axis first, and records the new contract in the graph's
metadata. A graph whose state is batch-first already is served as it is.
:func:`expose_state` adds the outputs ``--expose-state`` serves: a copy of each
new state tensor (``h_state = Identity(h_out)``). Torch-free (onnx only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import onnx
from onnx import helper

from rnnexport.core.contract import OUT_SUFFIX, Dim, Form, GraphInfo, Structure, TensorSpec
from rnnexport.core.errors import ConvertError
from rnnexport.core.graphs import walk, walk_graphs
from rnnexport.core.onnxfile import value_dims, value_info, write_info
from rnnexport.export.onnxutil import check_model, names_in
from rnnexport.export.passes.graph import rename_values
from rnnexport.serving.config import exposed_names

__all__ = ["ServingForm", "batch_first", "declared_shape", "expose_state", "rename_state"]

_STEP_LAYOUT = "_step_layout"


@dataclasses.dataclass(frozen=True)
class ServingForm:
    """A step graph as a batching server runs it.

    Attributes:
        model: the graph, every input and output batch-first, checked by onnx.checker.
        info: its contract (state ``batch_axis`` 0), also written into its metadata.
        transposed: the state names wrapped with Transpose nodes (empty when none needed).
        exposed: the outputs that copy the new state (:func:`expose_state`; empty when none).
        renamed: ``(old, new)`` per state tensor renamed (:func:`rename_state`; empty when none).
    """

    model: onnx.ModelProto
    info: GraphInfo
    transposed: tuple[str, ...]
    exposed: tuple[str, ...] = ()
    renamed: tuple[tuple[str, str], ...] = ()


def declared_shape(value: onnx.ValueInfoProto) -> tuple[Dim, ...] | None:
    """A graph input's or output's declared shape (a symbolic size by name, ``"?"`` if unnamed); None if unknown."""
    dims = value_dims(value)
    return None if dims is None else tuple("?" if d is None else d for d in dims)


def _check_declared(graph: onnx.GraphProto, info: GraphInfo, where: str) -> None:
    """The graph's inputs and outputs are exactly its contract's, names and shapes."""
    io = info.io
    for field, specs in ((graph.input, io.inputs(Form.STEP)), (graph.output, io.outputs(Form.STEP))):
        names = [v.name for v in field]
        if names != [s.name for s in specs]:
            raise ConvertError(f"{where} declares {', '.join(names)}, its contract says "
                               f"{', '.join(s.name for s in specs)}; convert it again with rnnexport convert --form step")
        for value, spec in zip(field, specs, strict=True):
            if declared_shape(value) != spec.shape:
                raise ConvertError(f"{where}: {value.name} is declared {declared_shape(value)}, its contract says "
                                   f"{spec.shape}; it cannot be made batch-first: convert it again")


def _fresh(used: set[str], hint: str) -> str:
    name, count = hint, 0
    while name in used:
        count += 1
        name = f"{hint}_{count}"
    used.add(name)
    return name


def _rename(graph: onnx.GraphProto, old: str, new: str, where: str) -> None:
    """Rename value ``old`` to ``new`` wherever nodes read or write it, subgraphs included."""
    for sub in list(walk_graphs(graph))[1:]:
        declared = {v.name for v in sub.input} | {t.name for t in sub.initializer} | \
            {o for n in sub.node for o in n.output}
        if old in declared:
            raise ConvertError(f"{where}: a subgraph declares its own {old!r}, so it cannot be made batch-first; "
                               "convert it again with another lowering (--lowering native or scan)")
    for node in walk(graph):
        rename_values(node, {old: new})
    for value in graph.value_info:
        if value.name == old:
            value.name = new


def _perm_in(axis: int, rank: int) -> list[int]:
    """Transpose a served ``(B, ...)`` tensor to the graph's layout (batch at ``axis``)."""
    return [0 if i == axis else (i + 1 if i < axis else i) for i in range(rank)]


def _perm_out(axis: int, rank: int) -> list[int]:
    """Transpose a tensor in the graph's layout (batch at ``axis``) to the served ``(B, ...)``."""
    return [axis] + [j - 1 if j - 1 < axis else j for j in range(1, rank)]


def _wrap(graph: onnx.GraphProto, info: GraphInfo, where: str) -> tuple[str, ...]:
    state = info.io.state
    served = dataclasses.replace(state, batch_axis=0)
    used = names_in(graph)
    heads, tails = [], []
    for index, (name, output) in enumerate(zip(state.names, state.output_names, strict=True)):
        inner_in, inner_out = _fresh(used, name + _STEP_LAYOUT), _fresh(used, output + _STEP_LAYOUT)
        _rename(graph, name, inner_in, where)
        _rename(graph, output, inner_out, where)
        rank = len(state.dims[index]) + 1
        heads.append(helper.make_node("Transpose", [name], [inner_in], name=_fresh(used, f"serve_{name}"),
                                      perm=_perm_in(state.batch_axis, rank)))
        tails.append(helper.make_node("Transpose", [inner_out], [output], name=_fresh(used, f"serve_{output}"),
                                      perm=_perm_out(state.batch_axis, rank)))
    nodes = [*heads, *graph.node, *tails]
    del graph.node[:]
    graph.node.extend(nodes)
    _declare(graph.input, served.inputs())
    _declare(graph.output, served.outputs())
    return state.names


def _declare(field: Iterable[onnx.ValueInfoProto], specs: list[TensorSpec]) -> None:
    by_name = {s.name: s for s in specs}
    for value in field:
        if value.name in by_name:
            value.CopyFrom(value_info(by_name[value.name]))


def batch_first(model: onnx.ModelProto, info: GraphInfo, where: str = "the graph") -> ServingForm:
    """The serving form of step graph ``model``: every input and output with the batch axis first.

    Args:
        model: a step graph written by ``rnnexport convert --form step`` (not changed).
        info: its contract, as read from its metadata.
        where: how messages name the graph.

    Raises:
        ConvertError: not a step graph, inputs or outputs that differ from the
            contract, or a state name that a subgraph redeclares.
    """
    if info.form is not Form.STEP:
        raise ConvertError(f"{where} is a {info.form.value} graph, not a step graph; a sequence batcher sends one "
                           "step per request: give a step graph (rnnexport convert SOURCE --form step) or the "
                           "SOURCE itself")
    _check_declared(model.graph, info, where)
    served = onnx.ModelProto()
    served.CopyFrom(model)
    if info.io.state.batch_axis == 0:
        return ServingForm(served, info, ())
    transposed = _wrap(served.graph, info, where)
    state = dataclasses.replace(info.io.state, batch_axis=0)
    served_info = dataclasses.replace(info, io=dataclasses.replace(info.io, state=state))
    write_info(served, served_info)
    served.doc_string = (model.doc_string + "; " if model.doc_string else "") + \
        "served batch-first: a Transpose after each state input and before each state output"
    check_model(served)
    return ServingForm(served, served_info, transposed)


def expose_state(form: ServingForm, where: str = "the graph") -> ServingForm:
    """``form`` with one more output per state tensor: its new value, copied (``h_state = Identity(h_out)``).

    Triton's ONNX Runtime backend cannot return a state output itself to clients
    (rnnexport.serving.config explains why); it returns these copies. They follow the
    contract's outputs, batch-first like them; the contract itself is unchanged, so
    ``rnnexport.runtime``, which wants exactly the contract's outputs, does not load
    the result.

    Raises:
        ConvertError: a copy's name (``h_state``) is a graph input, output or initializer already.
    """
    served = onnx.ModelProto()
    served.CopyFrom(form.model)
    graph = served.graph
    state = form.info.io.state
    names = exposed_names(state)
    taken = {v.name for v in (*graph.input, *graph.output)} | {t.name for t in graph.initializer}
    for name in names:
        if name in taken:
            raise ConvertError(f"{where}: --expose-state would name a state copy {name!r}, which the graph uses "
                               "for an input or output already: rename the state, or serve it without --expose-state")
    used = names_in(graph)
    for name in names:
        if name in used:  # an inner value of that name: it gets another one
            _rename(graph, name, _fresh(used, name), where)
    for output, name, spec in zip(state.output_names, names, state.outputs(), strict=True):
        graph.node.append(helper.make_node("Identity", [output], [name], name=_fresh(used, f"expose_{output}")))
        graph.output.append(value_info(dataclasses.replace(spec, name=name)))
    served.doc_string = (served.doc_string + "; " if served.doc_string else "") + \
        f"state copied to outputs {', '.join(names)} (rnnexport triton --expose-state)"
    check_model(served)
    return dataclasses.replace(form, model=served, exposed=names)


def _renamed_structure(node: Structure, names: dict[str, str]) -> Structure:
    if isinstance(node, str):
        return names[node]
    if isinstance(node, dict):
        return {key: _renamed_structure(child, names) for key, child in node.items()}
    return tuple(_renamed_structure(child, names) for child in node)


def _rename_value(graph: onnx.GraphProto, old: str, new: str, where: str) -> None:
    """Rename a graph input or output ``old`` to ``new``: its declaration and every node that reads or writes it."""
    _rename(graph, old, new, where)
    for value in (*graph.input, *graph.output):
        if value.name == old:
            value.name = new


def rename_state(form: ServingForm, names: tuple[str, ...], where: str = "the graph") -> ServingForm:
    """``form`` with its state tensors named ``names`` (and ``<name>_out``), in the contract's order.

    The contract in the graph's metadata is renamed with them (its nested ``structure``
    too), so ``rnnexport.runtime`` still loads the graph.

    Raises:
        ConvertError: a subgraph declares a value of a state's name (see :func:`batch_first`).
    """
    state = form.info.io.state
    if len(names) != len(state.names):
        raise ValueError(f"{len(names)} names for {len(state.names)} state tensors")
    served = onnx.ModelProto()
    served.CopyFrom(form.model)
    graph = served.graph
    used = names_in(graph) | set(names) | {n + OUT_SUFFIX for n in names}
    pairs = [(old, new) for old, new in zip(state.names, names, strict=True) if old != new]
    moves = [(old, new) for o, n in pairs for old, new in ((o, n), (o + OUT_SUFFIX, n + OUT_SUFFIX))]
    parked = [(_fresh(used, f"{old}_renamed"), new) for old, new in moves]
    for (old, _), (temp, _) in zip(moves, parked, strict=True):  # through unused names: no rename can meet another
        _rename_value(graph, old, temp, where)
    inner = names_in(graph) - {temp for temp, _ in parked}
    for temp, new in parked:
        if new in inner:  # an inner value has the name: it gets another one
            _rename(graph, new, _fresh(used, new), where)
        _rename_value(graph, temp, new, where)
    mapping = dict(zip(state.names, names, strict=True))
    structure = None if state.structure is None else _renamed_structure(state.structure, mapping)
    renamed_state = dataclasses.replace(state, names=names, structure=structure)
    info = dataclasses.replace(form.info, io=dataclasses.replace(form.info.io, state=renamed_state))
    write_info(served, info)
    served.doc_string = (served.doc_string + "; " if served.doc_string else "") + \
        "state renamed " + ", ".join(f"{old} -> {new}" for old, new in pairs)
    check_model(served)
    return dataclasses.replace(form, model=served, info=info, renamed=tuple(pairs))
