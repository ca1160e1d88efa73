"""Causal modules that carry their own state, turned into a :class:`~rnnexport.source.model.RecurrentModel`.

:func:`rnnexport.from_module` sends here every module that is not a torch.nn RNN/LSTM/GRU
or a module wrapped around one in torch's state convention: an ``nn.LSTMCell`` or
``nn.GRUCell`` loop written in ``forward``, two recurrent layers in a row, a cell in plain
torch ops, a module that keeps its state in buffers. Such a module has
``forward(x, state) -> (y, state)``, its state a tensor or tuples, lists and dicts (str keys)
of tensors, or objects holding them (a dataclass, a NamedTuple, a registered pytree class:
:mod:`rnnexport.source.tree`), or ``forward(x) -> y`` with its state in buffers it updates
(:mod:`rnnexport.source.buffers`). It is read in three steps:

1. the structure: from the first of :data:`INITIAL_STATE_METHODS` the module has
   (``initial_state(batch)``, ``init_state``, ``init_hidden``, ``begin_state``, ``zero_state``),
   else the state that ``forward(x)`` returns (state omitted, then ``None``), else the buffers
   ``forward(x)`` updates;
2. each tensor's batch axis: the one axis whose size follows the batch (probed with 3 and
   5 streams). One axis shared by all is kept; otherwise every state input and output has
   the batch first and the reference module moves it where the module wants it;
3. names from each tensor's place: ``h`` for a lone tensor, ``s0``, ``s1`` for the items of
   a tuple or list, the key or field name for a dict entry or an object's field, joined with
   ``_`` below the top (``((h1, c1), h2)`` gives ``s0_0``, ``s0_1``, ``s1``); a buffer's
   path in the module (``conv.cache`` gives ``conv_cache``).

The input is whatever the module's forward accepts of what its layers suggest
(:func:`rnnexport.source.probe.input_guesses`), unless ``input_size`` is given. The structure
is recorded in the contract (:attr:`rnnexport.core.contract.StateSpec.structure`), so the
runtime gives the state back nested (``StatefulSession.nested_state()``); objects and
buffers come back as dicts by field or buffer name.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import torch

from rnnexport.core.contract import IOSpec, Layout, StateSpec
from rnnexport.core.errors import ContractError, SourceError, describe
from rnnexport.source.buffers import BufferSequence, kept_buffers, state_buffers
from rnnexport.source.domains import state_domains
from rnnexport.source.explicit import explicit_copy
from rnnexport.source.model import RecurrentModel, SourceKind
from rnnexport.source.probe import (
    PROBE_BATCHES,
    ForwardFailed,
    InputGuess,
    example_x,
    first_fitting,
    input_guesses,
    probe_output,
)
from rnnexport.source.torchnn import recurrent_layers
from rnnexport.source.tree import (
    Path,
    Tree,
    build,
    check_names,
    collect,
    named,
    read_tree,
    shown,
    state_name,
)

__all__ = ["INITIAL_STATE_METHODS", "NestedSequence", "call_initial_state", "from_loop_module", "state_name",
           "with_initial_state"]

#: The methods whose ``method(batch)`` gives a module's zero state, in the order they are looked for
#: (``init_hidden`` as in PyTorch's examples, ``begin_state`` as in d2l).
INITIAL_STATE_METHODS = ("initial_state", "init_state", "init_hidden", "begin_state", "zero_state")

#: Parameter names of an initial-state method that mean the batch size.
_BATCH_NAMES = frozenset({"batch", "batch_size", "batchsize", "bsz", "b", "n", "num_streams", "streams"})


# --------------------------------------------------------------------------- the reference module


class NestedSequence(torch.nn.Module):
    """A module with nested state as ``forward(x, *flat_state) -> (y, *flat_state_out)``.

    Unflattens the state for the module (copies: a module may update its state in place),
    calls it, flattens what it returns in name order; with ``axes``, state tensors come and
    go batch first and are moved to and from the axes the module holds them on.
    """

    def __init__(self, module: torch.nn.Module, tree: Tree, axes: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.user = module
        self.tree = tree
        self.axes = axes

    def forward(self, x: torch.Tensor, *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        flat = tuple(t.clone() for t in flat)
        if self.axes is not None:
            flat = tuple(t.movedim(0, axis) for t, axis in zip(flat, self.axes, strict=True))
        result = self.user(x, build(self.tree, flat))
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise SourceError(f"forward(x, state) returned {shown(result)}, not (y, state)")
        y, state = result
        out: list[Any] = [None] * len(flat)
        collect(self.tree, state, out)
        if self.axes is not None:
            out = [t.movedim(axis, 0) for t, axis in zip(out, self.axes, strict=True)]
        return (y, *out)


# --------------------------------------------------------------------------- reading the module


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
                       f"initial_state(batch) returning the zero state (looked for {', '.join(INITIAL_STATE_METHODS)}), "
                       "let forward take state=None, or keep the state in buffers that forward(x) updates")


def _initial_method(module: torch.nn.Module) -> tuple[str, Callable[..., Any]] | None:
    for name in INITIAL_STATE_METHODS:
        method = getattr(module, name, None)
        if callable(method):
            return name, method
    return None


def call_initial_state(module: torch.nn.Module, batch: int) -> Any:
    """The module's zero state for ``batch`` streams from its initial-state method, or None if it has none.

    The method is called with the batch size for its batch parameter (by name, else its first
    parameter without a default), the CPU for a ``device`` and float32 for a ``dtype`` parameter.

    Raises:
        SourceError: the method needs an argument rnnexport cannot give, or fails.
    """
    found = _initial_method(module)
    if found is None:
        return None
    name, method = found
    owner = type(module).__name__
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    try:
        parameters = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: give it the batch alone
        parameters = []
        positional = [batch]
    placed = bool(positional)
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        lowered = parameter.name.lower()
        if "device" in lowered:
            value: Any = torch.device("cpu")
        elif "dtype" in lowered:
            value = torch.float32
        elif not placed and (lowered in _BATCH_NAMES or "batch" in lowered or parameter.default is parameter.empty):
            value, placed = batch, True
        elif parameter.default is parameter.empty:
            raise SourceError(f"{owner}.{name}() needs argument {parameter.name!r}, which rnnexport cannot give; "
                              f"let {name} take only the batch size")
        else:
            continue
        if parameter.kind is parameter.POSITIONAL_ONLY:
            positional.append(value)
        else:
            keywords[parameter.name] = value
    try:
        with torch.no_grad():
            return method(*positional, **keywords)
    except Exception as e:  # the user's method failing is a user error
        raise SourceError(f"{owner}.{name}({batch}) failed: {describe(e)}") from e


@dataclasses.dataclass(frozen=True)
class _Reader:
    """Where a module's state comes from: ``"method"``, ``"forward"`` (what it returns) or ``"buffers"``."""

    kind: str
    example: Callable[[int], Any]
    paths: tuple[str, ...] = ()
    method: str = ""  # the initial-state method's name, for a "method" reader

    def sequence(self, module: torch.nn.Module, tree: Tree, axes: tuple[int, ...] | None) -> torch.nn.Module:
        """The reference ``forward(x, *state)`` around ``module``."""
        if self.kind == "buffers":
            return BufferSequence(module, self.paths, axes)
        return NestedSequence(module, tree, axes)


def _forward_result(module: torch.nn.Module, guess: InputGuess, layout: Layout, batch: int, owner: str) -> Any:
    """What ``forward(x)`` (or ``forward(x, None)``) returns for ``batch`` streams, buffers left as they were."""
    x = example_x(guess.features, guess.dtype, layout, batch)
    failure: Exception | None = None
    for args in ((x,), (x, None)):
        try:
            with kept_buffers(module), torch.no_grad():
                return module(*args)
        except Exception as e:  # noqa: BLE001 - tried the next way; reported below if none works
            failure = failure or e
    assert failure is not None  # both calls failed
    problem = f"forward(x) without a state failed ({describe(failure)})"
    raise ForwardFailed(str(_no_state(owner, module, problem)), describe(failure)) from failure


def _is_pair(result: Any) -> bool:
    return isinstance(result, (tuple, list)) and len(result) == 2


def _forward_state(module: torch.nn.Module, guess: InputGuess, layout: Layout, batch: int, owner: str) -> Any:
    result = _forward_result(module, guess, layout, batch, owner)
    if not _is_pair(result):
        raise SourceError(f"{owner}'s forward(x) returned {shown(result)} for {batch} streams, not (y, state)")
    return result[1]


def _reader(module: torch.nn.Module, guess: InputGuess, layout: Layout, owner: str,
            layer_error: SourceError | None) -> _Reader:
    """How to read ``module``'s state, found with inputs as ``guess`` says."""
    found = _initial_method(module)
    if found is not None:
        return _Reader("method", lambda batch: call_initial_state(module, batch), method=found[0])
    try:
        returned = _forward_result(module, guess, layout, PROBE_BATCHES[0], owner)
    except ForwardFailed as failed:
        try:  # a module whose state buffers are registered for one stream runs on one stream
            returned = _forward_result(module, guess, layout, 1, owner)
        except ForwardFailed:
            returned = None
        if not isinstance(returned, torch.Tensor):
            if layer_error is not None:
                raise layer_error from None
            raise failed
    if _is_pair(returned):
        return _Reader("forward", lambda batch: _forward_state(module, guess, layout, batch, owner))
    buffers = state_buffers(module, guess, layout, owner) if isinstance(returned, torch.Tensor) else None
    if buffers is not None:
        return _Reader("buffers", buffers.example, buffers.paths)
    if layer_error is not None:
        raise layer_error
    problem = ("its forward(x) returned a tensor alone and updated no buffer" if isinstance(returned, torch.Tensor)
               else f"its forward(x) returned {shown(returned)}, not (y, state)")
    raise _no_state(owner, module, problem)


def _batch_axes(names: list[str], small: list[torch.Tensor], large: list[torch.Tensor], owner: str) -> list[int]:
    """Per state tensor, the one axis whose size is the batch (``PROBE_BATCHES`` of them)."""
    axes = []
    for name, a, b in zip(names, small, large, strict=True):
        differ = [i for i, (p, q) in enumerate(zip(a.shape, b.shape, strict=True)) if p != q] if a.dim() == b.dim() else []
        if len(differ) != 1 or (a.shape[differ[0]], b.shape[differ[0]]) != PROBE_BATCHES:
            raise SourceError(f"{owner}'s state {name} has shape {tuple(a.shape)} for {PROBE_BATCHES[0]} streams "
                              f"and {tuple(b.shape)} for {PROBE_BATCHES[1]}: every state tensor needs exactly one "
                              "batch axis")
        if a.dtype != torch.float32:
            raise SourceError(f"{owner}'s state {name} is {str(a.dtype).removeprefix('torch.')}; rnnexport "
                              "carries float32 state")
        axes.append(differ[0])
    return axes


def _state_spec(reader: _Reader, owner: str) -> tuple[StateSpec, Tree, tuple[int, ...] | None]:
    """The state contract, the module's tree and (when the batch axes differ) each tensor's batch axis."""
    trees, leaves = [], []
    paths: list[Path] = []
    for batch in PROBE_BATCHES:
        found: list[torch.Tensor] = []
        paths = []
        trees.append(read_tree(reader.example(batch), found, paths))
        leaves.append(found)
    if trees[0] != trees[1]:
        raise SourceError(f"{owner} gives its state different structures for {PROBE_BATCHES[0]} and "
                          f"{PROBE_BATCHES[1]} streams")
    names = [state_name(path) for path in paths]
    check_names(names, owner, "rename the buffer" if reader.kind == "buffers" else "rename the dict key")
    axes = _batch_axes(names, leaves[0], leaves[1], owner)
    shared = len(set(axes)) == 1
    batch_axis = axes[0] if shared else 0
    dims = tuple(tuple(d for i, d in enumerate(t.shape) if i != axis) for t, axis in zip(leaves[0], axes, strict=True))
    structure = None if isinstance(trees[0], int) else named(trees[0], names)
    spec = StateSpec(tuple(names), dims, batch_axis, structure=structure, nested_axes=None if shared else tuple(axes))
    if reader.kind == "method":  # the module's own initial state: what a new stream starts from
        spec = _with_initial(spec, names, leaves, axes, f"{owner}.{reader.method}")
    return spec, trees[0], None if shared else tuple(axes)


def with_initial_state(module: torch.nn.Module, spec: StateSpec) -> StateSpec:
    """``spec`` (a module around one torch.nn layer, state in torch's convention) with the values of the
    module's initial-state method, when it has one: a learned ``h0`` is where a stream starts.

    Raises:
        SourceError: the method's state is not the layer's ``h`` (``(h, c)`` for an LSTM) in
            ``spec``'s shapes, or :func:`_with_initial` refuses its values.
    """
    found = _initial_method(module)
    if found is None:
        return spec
    method = f"{type(module).__name__}.{found[0]}"
    leaves = []
    for batch in PROBE_BATCHES:
        value = call_initial_state(module, batch)
        tensors = [value] if isinstance(value, torch.Tensor) else list(value) if isinstance(value, (tuple, list)) else []
        shapes = [spec.shape(i, batch) for i in range(len(spec.names))]
        if len(tensors) != len(shapes) or not all(
                isinstance(t, torch.Tensor) and tuple(t.shape) == shape for t, shape in zip(tensors, shapes, strict=False)):
            if all(isinstance(t, torch.Tensor) and not t.any() for t in tensors):
                return spec  # zeros in its own layout: the state starts from zeros, as recorded without it
            want = " and ".join(str(shape) for shape in shapes)
            raise SourceError(f"{method}({batch}) returned {shown(value)}; the state of its torch.nn layer is "
                              f"{', '.join(spec.names)} of shape {want}: return that")
        leaves.append(tensors)
    return _with_initial(spec, list(spec.names), leaves, [spec.batch_axis] * len(spec.names), method)


def _with_initial(spec: StateSpec, names: list[str], leaves: list[list[torch.Tensor]], axes: list[int],
                  method: str) -> StateSpec:
    """``spec`` with the initial-state method's values of one stream (:attr:`StateSpec.initial`).

    Raises:
        SourceError: the method gives streams (or the two probes) different values, holds NaN or
            Inf, or more values than a contract records.
    """
    ones = []
    for name, small, large, axis in zip(names, *leaves, axes, strict=True):
        rows = [t.movedim(axis, 0) for t in (small, large)]
        one = rows[0][0]
        if not all(bool((r == one).all()) for r in rows):
            raise SourceError(f"{method}(batch) gives streams different values of state {name}; a new "
                              "stream starts from one stream's initial state, the same for every stream: return "
                              "that (a learned initial state expanded over the batch, or zeros)")
        ones.append(one.detach().cpu().numpy())
    try:
        return dataclasses.replace(spec, initial=tuple(ones))
    except ContractError as e:
        raise SourceError(f"{method}(batch): {e}") from e


@dataclasses.dataclass(frozen=True)
class _Read:
    """What reading a module with one input guess found."""

    reader: _Reader
    state: StateSpec
    tree: Tree
    axes: tuple[int, ...] | None
    y_features: tuple[int, ...]


def _read(module: torch.nn.Module, guess: InputGuess, layout: Layout, owner: str,
          layer_error: SourceError | None) -> _Read:
    reader = _reader(module, guess, layout, owner, layer_error)
    state, tree, axes = _state_spec(reader, owner)
    y_features = probe_output(reader.sequence(module, tree, axes), guess.features, guess.dtype, state, layout)
    return _Read(reader, state, tree, axes, y_features)


def _describe(owner: str, names: tuple[str, ...], kind: str) -> str:
    shown_names = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    where = "in buffers" if kind == "buffers" else "its own state"
    return f"{owner} with {where} ({len(names)} tensor{'s' if len(names) > 1 else ''}: {shown_names})"


def from_loop_module(module: torch.nn.Module, input_size: int | None = None,
                     layer_error: SourceError | None = None) -> RecurrentModel:
    """A causal module with ``forward(x, state) -> (y, state)`` and any nested state, or state in buffers.

    The module's ``state_domain`` (:mod:`rnnexport.source.domains`), when it has one, says where
    its state's values lie: random initial states are drawn there.

    Args:
        module: the module; its initial-state method (:data:`INITIAL_STATE_METHODS`) gives the
            zero state, else ``forward(x)`` (state omitted or None) must return one, else the
            buffers ``forward(x)`` updates are the state.
        input_size: the input's features; default: the first size the module's layers suggest
            that its forward accepts (token ids when an ``nn.Embedding`` comes first).
        layer_error: what reading the module in torch's one-layer convention raised;
            raised instead when the module shows no state of its own either.

    Raises:
        SourceError: no state structure could be found, or it holds something other
            than float32 tensors with one batch axis each.
    """
    owner = type(module).__name__
    module = module.eval()
    layout = _layout(module, owner)
    guess, read = first_fitting(input_guesses(module, input_size, owner),
                                lambda g: _read(module, g, layout, owner, layer_error), owner)
    state = dataclasses.replace(read.state, domains=state_domains(module, read.state, owner))
    io = IOSpec(guess.features, guess.dtype, read.y_features, state, layout,
                x_encoding="token-ids" if guess.dtype == "int64" else "real")
    return RecurrentModel(
        kind=SourceKind.MODULE,
        family=None,
        io=io,
        sequence_module=read.reader.sequence(module, read.tree, read.axes),
        params=[(n, p.detach()) for n, p in module.state_dict().items()],
        native=None,
        native_reason=f"native covers bare torch.nn RNN/LSTM/GRU modules; {owner} carries its own state",
        origin={"module": type(module).__qualname__},
        description=_describe(owner, state.names, read.reader.kind),
        trace_module=read.reader.sequence(explicit_copy(module), read.tree, read.axes),
    )
