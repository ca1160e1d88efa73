"""Causal modules that carry their own state, turned into a :class:`~rnnexport.source.model.RecurrentModel`.

:func:`rnnexport.from_module` sends here every module that is not a torch.nn RNN/LSTM/GRU
or a module wrapped around one in torch's state convention: an ``nn.LSTMCell`` or
``nn.GRUCell`` loop written in ``forward``, two recurrent layers in a row, a cell in plain
torch ops. Such a module has ``forward(x, state) -> (y, state)``, its state a tensor or
tuples, lists and dicts (str keys) of tensors, and is read in three steps:

1. the structure: ``module.initial_state(batch)`` when it has one, else the state that
   ``forward(x)`` returns (state omitted, then ``None``);
2. each tensor's batch axis: the one axis whose size follows the batch (probed with 3 and
   5 streams). One axis shared by all is kept; otherwise every state input and output has
   the batch first and :class:`NestedSequence` moves it where the module wants it;
3. names from each tensor's place: ``h`` for a lone tensor, ``s0``, ``s1`` for the items of
   a tuple or list, the key for a dict entry, joined with ``_`` below the top
   (``((h1, c1), h2)`` gives ``s0_0``, ``s0_1``, ``s1``).

The structure is recorded in the contract (:attr:`rnnexport.core.contract.StateSpec.structure`),
so the runtime gives the state back nested (``StatefulSession.nested_state()``).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from rnnexport.core.contract import (
    MAX_NAME,
    MAX_STATE_DEPTH,
    MAX_STATE_TENSORS,
    OUT_SUFFIX,
    X_NAME,
    Y_NAME,
    IOSpec,
    Layout,
    StateSpec,
)
from rnnexport.core.errors import SourceError, describe
from rnnexport.source.explicit import explicit_copy
from rnnexport.source.model import RecurrentModel, SourceKind
from rnnexport.source.probe import PROBE_BATCHES, example_x, probe_output
from rnnexport.source.torchnn import is_bidirectional, recurrent_layers

__all__ = ["BIDIRECTIONAL_SCAN_REASON", "NestedSequence", "from_loop_module", "input_features", "state_name"]

#: Why a model holding a bidirectional torch.nn layer has no scan lowering.
BIDIRECTIONAL_SCAN_REASON = ("a bidirectional layer needs the whole sequence before its first output, "
                             "so it cannot be scanned step by step")

#: The two batch sizes whose state shapes reveal each tensor's batch axis.

#: A dict key that can be part of a state name.
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

#: A state as the module holds it, with each tensor replaced by its index in name order.
Tree = Any
Path = tuple[int | str, ...]


# --------------------------------------------------------------------------- the state's tree


def _read_tree(value: Any, leaves: list[torch.Tensor], paths: list[Path], path: Path = ()) -> Tree:
    """``value``'s tree: its tensors appended to ``leaves`` (their places to ``paths``)."""
    where = "the state" + "".join(f"[{step!r}]" for step in path)
    if isinstance(value, torch.Tensor):
        if len(leaves) == MAX_STATE_TENSORS:
            raise SourceError(f"the state holds more than {MAX_STATE_TENSORS} tensors; rnnexport carries at most "
                              f"{MAX_STATE_TENSORS} (stack some into one tensor)")
        leaves.append(value)
        paths.append(path)
        return len(leaves) - 1
    if len(path) == MAX_STATE_DEPTH:
        raise SourceError(f"{where} nests deeper than {MAX_STATE_DEPTH} levels; flatten part of it")
    if type(value) in (tuple, list) and value:
        children = [_read_tree(item, leaves, paths, (*path, i)) for i, item in enumerate(value)]
        return children if type(value) is list else tuple(children)
    if type(value) is dict and value:
        bad = [key for key in value if not isinstance(key, str) or not _KEY.fullmatch(key)]
        if bad:
            raise SourceError(f"{where} has key {bad[0]!r}; state dict keys become tensor names: use letters, "
                              "digits and _ (not first), at most 64")
        return {key: _read_tree(item, leaves, paths, (*path, key)) for key, item in value.items()}
    held = f"an empty {type(value).__name__}" if type(value) in (tuple, list, dict) else f"of type {type(value).__name__}"
    raise SourceError(f"{where} is {held}; a state is a tensor, or tuples, lists and dicts (str keys) of tensors")


def _build(tree: Tree, flat: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> Any:
    """The module's state from the flat tensors: ``tree`` with each index replaced."""
    if isinstance(tree, int):
        return flat[tree]
    if isinstance(tree, dict):
        return {key: _build(child, flat) for key, child in tree.items()}
    children = [_build(child, flat) for child in tree]
    return children if isinstance(tree, list) else tuple(children)


def _collect(tree: Tree, value: Any, out: list[Any], path: str = "") -> None:
    """Put each tensor of ``value`` (shaped as ``tree``) at its index in ``out``."""
    if isinstance(tree, int):
        if not isinstance(value, torch.Tensor):
            raise SourceError(f"forward returned state{path} as a {type(value).__name__}, not a tensor")
        out[tree] = value
    elif isinstance(tree, dict):
        if not isinstance(value, dict) or set(value) != set(tree):
            raise SourceError(f"forward returned state{path} as {_shown(value)}, not a dict with keys "
                              f"{', '.join(tree)}")
        for key, child in tree.items():
            _collect(child, value[key], out, f"{path}[{key!r}]")
    else:
        if not isinstance(value, (tuple, list)) or len(value) != len(tree):
            raise SourceError(f"forward returned state{path} as {_shown(value)}, not a "
                              f"{type(tree).__name__} of {len(tree)}")
        for index, (child, item) in enumerate(zip(tree, value)):
            _collect(child, item, out, f"{path}[{index}]")


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list, dict)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _named(tree: Tree, names: list[str]) -> Any:
    """``tree`` with names for indices, tuples for lists: the contract's structure."""
    if isinstance(tree, int):
        return names[tree]
    if isinstance(tree, dict):
        return {key: _named(child, names) for key, child in tree.items()}
    return tuple(_named(child, names) for child in tree)


def state_name(path: Path) -> str:
    """The tensor name of the state at ``path``: ``h`` alone, ``s0``, ``s0_1``, ``enc_h``, ..."""
    if not path:
        return "h"
    parts = [f"s{step}" if isinstance(step, int) and depth == 0 else str(step) for depth, step in enumerate(path)]
    return "_".join(parts)


def _check_names(names: list[str], owner: str) -> None:
    taken = {X_NAME: "the data input", Y_NAME: "the data output"}
    taken.update({name + OUT_SUFFIX: f"the output of state {name}" for name in names})
    for index, name in enumerate(names):
        if len(name + OUT_SUFFIX) > MAX_NAME:
            raise SourceError(f"{owner}'s state tensor {name[:40]!r}... would get a name of {len(name)} characters, "
                              f"over {MAX_NAME - len(OUT_SUFFIX)}; use shorter dict keys")
        if name in names[:index]:
            raise SourceError(f"{owner}'s state gives two tensors the name {name!r}; rename a dict key")
        if name in taken:
            raise SourceError(f"{owner}'s state tensor {name!r} would share its name with {taken[name]}; "
                              "rename the dict key")


# --------------------------------------------------------------------------- the reference module


class NestedSequence(torch.nn.Module):
    """A module with nested state as ``forward(x, *flat_state) -> (y, *flat_state_out)``.

    Unflattens the state for the module, calls it, flattens what it returns in name
    order; with ``axes``, state tensors come and go batch first and are moved to and from
    the axes the module holds them on.
    """

    def __init__(self, module: torch.nn.Module, tree: Tree, axes: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.user = module
        self.tree = tree
        self.axes = axes

    def forward(self, x: torch.Tensor, *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.axes is not None:
            flat = tuple(t.movedim(0, axis) for t, axis in zip(flat, self.axes))
        result = self.user(x, _build(self.tree, flat))
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise SourceError(f"forward(x, state) returned {_shown(result)}, not (y, state)")
        y, state = result
        out: list[Any] = [None] * len(flat)
        _collect(self.tree, state, out)
        if self.axes is not None:
            out = [t.movedim(axis, 0) for t, axis in zip(out, self.axes)]
        return (y, *out)


# --------------------------------------------------------------------------- reading the module


def input_features(module: torch.nn.Module, input_size: int | None, owner: str) -> tuple[tuple[int, ...], str]:
    """``x``'s features and dtype: token ids after an Embedding, else the first layer's input size."""
    if input_size is not None:
        return (input_size,), "float32"
    for child in module.modules():
        if isinstance(child, torch.nn.Embedding):
            return (), "int64"
        if isinstance(child, torch.nn.Linear):
            return (child.in_features,), "float32"
        if isinstance(child, (torch.nn.RNNBase, torch.nn.RNNCellBase)):
            return (child.input_size,), "float32"
    raise SourceError(f"cannot tell the input size of {owner}: it has no Linear, Embedding or torch.nn recurrent "
                      "layer to read it from; pass from_module(module, input_size=...)")


def _layout(module: torch.nn.Module, owner: str) -> Layout:
    """Batch-major when the module's ``batch_first`` says so, else when its torch.nn RNN layers are."""
    flag = getattr(module, "batch_first", None)
    if not isinstance(flag, bool):
        flags = {rnn.batch_first for rnn in recurrent_layers(module)}
        if len(flags) > 1:
            raise SourceError(f"{owner} holds batch_first and time-major torch.nn RNN layers; give it a bool "
                              "attribute batch_first saying how its x is laid out")
        flag = flags.pop() if flags else False
    return Layout.BATCH_MAJOR if flag else Layout.TIME_MAJOR


def _no_state(owner: str, module: torch.nn.Module, problem: str) -> SourceError:
    count = len(recurrent_layers(module))
    return SourceError(f"{owner} holds {count} torch.nn RNN/LSTM/GRU layers, so rnnexport reads its state from "
                       f"the module, but {problem}; give it forward(x, state) -> (y, state) and a method "
                       "initial_state(batch) returning the zero state (or let forward take state=None)")


@torch.no_grad()
def _example_state(module: torch.nn.Module, x: torch.Tensor, batch: int, owner: str,
                   layer_error: SourceError | None) -> Any:
    """The state for ``batch`` streams: ``initial_state(batch)``, else what ``forward(x)`` returns."""
    initial = getattr(module, "initial_state", None)
    if callable(initial):
        try:
            return initial(batch)
        except Exception as e:  # noqa: BLE001 - the user's method failing is a user error
            raise SourceError(f"{owner}.initial_state({batch}) failed: {describe(e)}") from e
    failure: Exception | None = None
    for args in ((x,), (x, None)):
        try:
            result = module(*args)
        except Exception as e:  # noqa: BLE001 - tried the next way; reported below if none works
            failure = e
            continue
        if isinstance(result, (tuple, list)) and len(result) == 2:
            return result[1]
        if layer_error is not None:
            raise layer_error
        raise _no_state(owner, module, f"its forward(x) returned {_shown(result)}, not (y, state)")
    if layer_error is not None:
        raise layer_error
    assert failure is not None  # both calls failed
    raise _no_state(owner, module, f"forward(x) without a state failed ({describe(failure)})")


def _batch_axes(names: list[str], small: list[torch.Tensor], large: list[torch.Tensor], owner: str) -> list[int]:
    """Per state tensor, the one axis whose size is the batch (``PROBE_BATCHES`` of them)."""
    axes = []
    for name, a, b in zip(names, small, large):
        differ = [i for i, (p, q) in enumerate(zip(a.shape, b.shape)) if p != q]
        if a.dim() != b.dim() or len(differ) != 1 or (a.shape[differ[0]], b.shape[differ[0]]) != PROBE_BATCHES:
            raise SourceError(f"{owner}'s state {name} has shape {tuple(a.shape)} for {PROBE_BATCHES[0]} streams "
                              f"and {tuple(b.shape)} for {PROBE_BATCHES[1]}: every state tensor needs exactly one "
                              "batch axis")
        if a.dtype != torch.float32:
            raise SourceError(f"{owner}'s state {name} is {str(a.dtype).removeprefix('torch.')}; rnnexport "
                              "carries float32 state")
        axes.append(differ[0])
    return axes


def _state_spec(module: torch.nn.Module, x_features: tuple[int, ...], x_dtype: str, layout: Layout, owner: str,
                layer_error: SourceError | None) -> tuple[StateSpec, Tree, tuple[int, ...] | None]:
    """The state contract, the module's tree and (when the batch axes differ) each tensor's batch axis."""
    trees, leaves = [], []
    paths: list[Path] = []
    for batch in PROBE_BATCHES:
        x = example_x(x_features, x_dtype, layout, batch)
        found: list[torch.Tensor] = []
        paths = []
        trees.append(_read_tree(_example_state(module, x, batch, owner, layer_error), found, paths))
        leaves.append(found)
    if trees[0] != trees[1]:
        raise SourceError(f"{owner} gives its state different structures for {PROBE_BATCHES[0]} and "
                          f"{PROBE_BATCHES[1]} streams")
    names = [state_name(path) for path in paths]
    _check_names(names, owner)
    axes = _batch_axes(names, leaves[0], leaves[1], owner)
    shared = len(set(axes)) == 1
    batch_axis = axes[0] if shared else 0
    dims = tuple(tuple(d for i, d in enumerate(t.shape) if i != axis) for t, axis in zip(leaves[0], axes))
    structure = None if isinstance(trees[0], int) else _named(trees[0], names)
    spec = StateSpec(tuple(names), dims, batch_axis, structure=structure, nested_axes=None if shared else tuple(axes))
    return spec, trees[0], None if shared else tuple(axes)


def _describe(owner: str, names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"{owner} with its own state ({len(names)} tensor{'s' if len(names) > 1 else ''}: {shown})"


def from_loop_module(module: torch.nn.Module, input_size: int | None = None,
                     layer_error: SourceError | None = None) -> RecurrentModel:
    """A causal module with ``forward(x, state) -> (y, state)`` and any nested state.

    Args:
        module: the module; ``initial_state(batch)`` (if it has one) gives the zero state,
            else ``forward(x)`` (state omitted or None) must return one.
        input_size: the input's features; default: the first Linear's or recurrent
            layer's input size (token ids when an ``nn.Embedding`` comes first).
        layer_error: what reading the module in torch's one-layer convention raised;
            raised instead when the module shows no state of its own either.

    Raises:
        SourceError: no state structure could be found, or it holds something other
            than float32 tensors with one batch axis each.
    """

    owner = type(module).__name__
    module = module.eval()
    x_features, x_dtype = input_features(module, input_size, owner)
    layout = _layout(module, owner)
    state, tree, axes = _state_spec(module, x_features, x_dtype, layout, owner, layer_error)
    sequence = NestedSequence(module, tree, axes)
    y_features = probe_output(sequence, x_features, x_dtype, state, layout)
    io = IOSpec(x_features, x_dtype, y_features, state, layout,
                x_encoding="token-ids" if x_dtype == "int64" else "real")
    bidirectional = is_bidirectional(module)
    return RecurrentModel(
        kind=SourceKind.MODULE,
        family=None,
        io=io,
        sequence_module=sequence,
        params=[(n, p.detach()) for n, p in module.state_dict().items()],
        native=None,
        native_reason=f"native covers bare torch.nn RNN/LSTM/GRU modules; {owner} carries its own state",
        scan_reason=BIDIRECTIONAL_SCAN_REASON if bidirectional else None,
        origin={"module": type(module).__qualname__},
        description=_describe(owner, state.names),
        trace_module=NestedSequence(explicit_copy(module), tree, axes),
    )
