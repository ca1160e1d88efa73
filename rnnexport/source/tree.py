"""A module's state as it holds it, read into a tree of tensor indices and built back.

A state is a tensor, or tuples, lists and dicts (str keys) of states, or an object whose
fields are states: a dataclass, a ``NamedTuple`` or a class registered as a pytree node
(``torch.utils._pytree.register_pytree_node``), as a cache object often is. Reading it
(:func:`read_tree`) gives a tree with each tensor replaced by its index in name order;
:func:`build` makes the module's value from flat tensors, :func:`collect` takes the flat
tensors out of what forward returns, and :func:`named` gives the contract's structure, where
an object becomes a dict of its fields (the runtime, which imports no user code, gives the
state back that way).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

import torch
import torch.utils._pytree as pytree

from rnnexport.core.contract import (
    MAX_NAME,
    MAX_STATE_DEPTH,
    MAX_STATE_TENSORS,
    OUT_SUFFIX,
    X_NAME,
    Y_NAME,
)
from rnnexport.core.errors import SourceError

__all__ = ["Fields", "Path", "Tree", "build", "check_names", "collect", "named", "read_tree", "shown", "state_name"]

#: A dict key or field name that can be part of a state name.
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

#: The values an object may hold beside its tensors, kept as they are (forward must not change them).
_CONSTANTS = (type(None), bool, int, float, str)

#: A state as the module holds it, with each tensor replaced by its index in name order.
Tree = Any
Path = tuple[int | str, ...]


@dataclasses.dataclass(frozen=True)
class Fields:
    """An object in the state: its class, how it is taken apart and rebuilt, its fields' trees.

    ``kind`` is ``"dataclass"``, ``"namedtuple"`` or ``"pytree"``; ``keys`` name the
    children (field names, or for a pytree node its keys, ints where it has none);
    ``constants`` are the fields that hold no tensor, kept from the example; ``context`` is
    a pytree node's flatten context; ``template`` the example object a dataclass is copied from.
    """

    kind: str
    cls: type
    keys: tuple[int | str, ...]
    children: tuple[Tree, ...]
    constants: tuple[tuple[str, Any], ...] = ()
    context: Any = dataclasses.field(default=None, compare=False)
    template: Any = dataclasses.field(default=None, compare=False)


def _where(path: Path) -> str:
    return "the state" + "".join(f"[{step!r}]" for step in path)


def shown(value: Any) -> str:
    """``a tuple of 2``, ``a Tensor``: what a value is, for a message."""
    if isinstance(value, (tuple, list, dict)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(type(value), "_fields")


def _parts(value: Any) -> tuple[str, list[tuple[int | str, Any]], Any] | None:
    """An object's kind, its ``(key, value)`` children and its pytree context; None for anything else."""
    if _is_namedtuple(value):
        return "namedtuple", [(name, getattr(value, name)) for name in type(value)._fields], None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return "dataclass", [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)], None
    node = pytree.SUPPORTED_NODES.get(type(value))
    if node is None or type(value) in (tuple, list, dict):
        return None
    children, context = node.flatten_fn(value)
    keys: list[int | str] = list(range(len(children)))
    if node.flatten_with_keys_fn is not None:
        keyed, _ = node.flatten_with_keys_fn(value)
        keys = [_key_name(key, i) for i, (key, _) in enumerate(keyed)]
    return "pytree", list(zip(keys, children, strict=True)), context


def _key_name(key: Any, index: int) -> int | str:
    for attr in ("name", "key", "idx"):  # GetAttrKey, MappingKey, SequenceKey
        if hasattr(key, attr):
            found = getattr(key, attr)
            return found if isinstance(found, (int, str)) else index
    return index


def read_tree(value: Any, leaves: list[torch.Tensor], paths: list[Path], path: Path = ()) -> Tree:
    """``value``'s tree: its tensors appended to ``leaves`` (their places to ``paths``).

    Raises:
        SourceError: the state holds something else than tensors in the containers above,
            nests too deep, holds too many tensors or has a key that cannot name a tensor.
    """
    where = _where(path)
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
        children = [read_tree(item, leaves, paths, (*path, i)) for i, item in enumerate(value)]
        return children if type(value) is list else tuple(children)
    if type(value) is dict and value:
        _check_keys(list(value), where, "key")
        return {key: read_tree(item, leaves, paths, (*path, key)) for key, item in value.items()}
    parts = _parts(value)
    if parts is not None:
        return _read_object(value, parts, leaves, paths, path)
    held = f"an empty {type(value).__name__}" if type(value) in (tuple, list, dict) else f"of type {type(value).__name__}"
    raise SourceError(f"{where} is {held}; a state is a tensor, or tuples, lists and dicts (str keys) of tensors, "
                      "or a dataclass, NamedTuple or registered pytree class holding them")


def _check_keys(keys: list[Any], where: str, noun: str) -> None:
    bad = [key for key in keys if not isinstance(key, str) or not _KEY.fullmatch(key)]
    if bad:
        what = "dict keys" if noun == "key" else "field names"
        raise SourceError(f"{where} has {noun} {bad[0]!r}; state {what} become tensor names: use letters, "
                          "digits and _ (not first), at most 64")


def _read_object(value: Any, parts: tuple[str, list[tuple[int | str, Any]], Any], leaves: list[torch.Tensor],
                 paths: list[Path], path: Path) -> Fields:
    kind, items, context = parts
    where = _where(path)
    if kind != "pytree":  # fields that hold no tensor stay as they are
        constants = tuple((str(k), v) for k, v in items if isinstance(v, _CONSTANTS))
        items = [(k, v) for k, v in items if not isinstance(v, _CONSTANTS)]
    else:
        constants = ()
    if not items:
        raise SourceError(f"{where} is a {type(value).__name__} that holds no tensor")
    _check_keys([k for k, _ in items if not isinstance(k, int)], where, "field")
    keys = tuple(k for k, _ in items)
    children = tuple(read_tree(v, leaves, paths, (*path, k)) for k, v in items)
    return Fields(kind, type(value), keys, children, constants, context, value if kind == "dataclass" else None)


def build(tree: Tree, flat: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> Any:
    """The module's state from the flat tensors: ``tree`` with each index replaced."""
    if isinstance(tree, int):
        return flat[tree]
    if isinstance(tree, dict):
        return {key: build(child, flat) for key, child in tree.items()}
    if isinstance(tree, Fields):
        return _build_object(tree, [build(child, flat) for child in tree.children])
    children = [build(child, flat) for child in tree]
    return children if isinstance(tree, list) else tuple(children)


def _build_object(tree: Fields, values: list[Any]) -> Any:
    if tree.kind == "pytree":
        node = pytree.SUPPORTED_NODES[tree.cls]
        return node.unflatten_fn(values, tree.context)
    fields = dict(tree.constants)
    fields.update({str(k): v for k, v in zip(tree.keys, values, strict=True)})
    if tree.kind == "namedtuple":
        return tree.cls(**fields)
    made = copy.copy(tree.template)  # a dataclass: its own fields replaced, whatever its __init__ wants
    for key, item in fields.items():
        object.__setattr__(made, key, item)
    return made


def collect(tree: Tree, value: Any, out: list[Any], path: str = "") -> None:
    """Put each tensor of ``value`` (shaped as ``tree``) at its index in ``out``.

    Raises:
        SourceError: ``value`` is not shaped as ``tree`` (forward returned another structure,
            or changed a field that holds no tensor).
    """
    if isinstance(tree, int):
        if not isinstance(value, torch.Tensor):
            raise SourceError(f"forward returned state{path} as {shown(value)}, not a tensor")
        out[tree] = value
    elif isinstance(tree, dict):
        if not isinstance(value, dict) or set(value) != set(tree):
            raise SourceError(f"forward returned state{path} as {shown(value)}, not a dict with keys "
                              f"{', '.join(tree)}")
        for key, child in tree.items():
            collect(child, value[key], out, f"{path}[{key!r}]")
    elif isinstance(tree, Fields):
        _collect_object(tree, value, out, path)
    else:
        if not isinstance(value, (tuple, list)) or len(value) != len(tree):
            raise SourceError(f"forward returned state{path} as {shown(value)}, not a "
                              f"{type(tree).__name__} of {len(tree)}")
        for index, (child, item) in enumerate(zip(tree, value, strict=True)):
            collect(child, item, out, f"{path}[{index}]")


def _collect_object(tree: Fields, value: Any, out: list[Any], path: str) -> None:
    parts = _parts(value) if type(value) is tree.cls else None
    if parts is None:
        raise SourceError(f"forward returned state{path} as {shown(value)}, not a {tree.cls.__name__}")
    items = dict(parts[1])
    for name, constant in tree.constants:
        now = items.get(name)
        if type(now) is not type(constant) or now != constant:
            raise SourceError(f"forward changed field {name!r} of state{path} ({tree.cls.__name__}) from "
                              f"{constant!r:.40} to {now!r:.40}; rnnexport carries tensors only: hold it in a tensor "
                              "or keep it constant")
    for key, child in zip(tree.keys, tree.children, strict=True):
        if key not in items:
            raise SourceError(f"forward returned state{path} ({tree.cls.__name__}) without field {key!r}")
        collect(child, items[key], out, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]")


def named(tree: Tree, names: list[str]) -> Any:
    """``tree`` with names for indices, tuples for lists, dicts for objects: the contract's structure.

    An object whose children have no names (a pytree node without keys) becomes a tuple.
    """
    if isinstance(tree, int):
        return names[tree]
    if isinstance(tree, dict):
        return {key: named(child, names) for key, child in tree.items()}
    if isinstance(tree, Fields):
        children = [named(child, names) for child in tree.children]
        if all(isinstance(key, str) for key in tree.keys):
            return {str(key): child for key, child in zip(tree.keys, children, strict=True)}
        return tuple(children)
    return tuple(named(child, names) for child in tree)


def state_name(path: Path) -> str:
    """The tensor name of the state at ``path``: ``h`` alone, ``s0``, ``s0_1``, ``enc_h``, ..."""
    if not path:
        return "h"
    parts = [f"s{step}" if isinstance(step, int) and depth == 0 else str(step) for depth, step in enumerate(path)]
    return "_".join(parts)


def check_names(names: list[str], owner: str, what: str = "rename the dict key") -> None:
    """Refuse names that repeat, clash with ``x``, ``y`` or a state output, or get too long."""
    taken = {X_NAME: "the data input", Y_NAME: "the data output"}
    taken.update({name + OUT_SUFFIX: f"the output of state {name}" for name in names})
    for index, name in enumerate(names):
        if len(name + OUT_SUFFIX) > MAX_NAME:
            raise SourceError(f"{owner}'s state tensor {name[:40]!r}... would get a name of {len(name)} characters, "
                              f"over {MAX_NAME - len(OUT_SUFFIX)}; use shorter dict keys")
        if name in names[:index]:
            raise SourceError(f"{owner}'s state gives two tensors the name {name!r}; {what}")
        if name in taken:
            raise SourceError(f"{owner}'s state tensor {name!r} would share its name with {taken[name]}; {what}")
