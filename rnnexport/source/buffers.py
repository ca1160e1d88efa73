"""State a module keeps in its buffers, lifted to explicit state inputs and outputs.

A streaming module often holds its state in ``register_buffer`` tensors that ``forward(x)``
reads and updates, in place (``self.cache.copy_(...)``) or by assigning a new tensor
(``self.cache = x[..., -k:]``). Traced as it is, such a buffer becomes a constant and the
state is lost. Here the buffers that ``forward(x)`` changes are the state:
:class:`BufferSequence` swaps them in from explicit state tensors, calls the module and reads
them back (``forward(x, *state) -> (y, *state_out)``), restoring the module's own buffers
after. Each state buffer is named after its place in the module (``conv.cache`` ->
``conv_cache``) and must be float32 with one axis holding the streams: either forward
allocates it for the batch, or it is registered for one stream (size 1 on that axis, the
first such axis) and widened to the batch. A buffer that mixes the streams, changes its
shape from call to call, or is not float32 is refused, by name.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch

from rnnexport.core.contract import Layout
from rnnexport.core.errors import SourceError, describe
from rnnexport.source.probe import PROBE_BATCHES, InputGuess, example_x, forward_failed
from rnnexport.source.tree import shown

__all__ = ["BufferSequence", "BufferState", "kept_buffers", "state_buffers"]

#: The seed of the example inputs that show which buffers forward changes.
_SEED = 1234


def _slot(module: torch.nn.Module, path: str) -> tuple[torch.nn.Module, str]:
    owner, _, leaf = path.rpartition(".")
    return module.get_submodule(owner), leaf


@contextlib.contextmanager
def kept_buffers(module: torch.nn.Module) -> Iterator[None]:
    """Run a probe of ``module`` and leave its buffers as they were, whatever forward does to them."""
    saved = [(owner, leaf, tensor, tensor.clone())
             for owner in module.modules() for leaf, tensor in owner._buffers.items() if tensor is not None]
    try:
        yield
    finally:
        for owner, leaf, tensor, value in saved:
            owner._buffers[leaf] = tensor
            if tensor.shape == value.shape:
                with torch.no_grad():
                    tensor.copy_(value)


class BufferSequence(torch.nn.Module):
    """A module whose state is in its buffers as ``forward(x, *state) -> (y, *state_out)``.

    ``paths`` name the state buffers (``conv.cache``), in state-name order; with ``axes``,
    state tensors come and go batch first and are moved to where each buffer has its batch.
    """

    def __init__(self, module: torch.nn.Module, paths: tuple[str, ...], axes: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.user = module
        self.paths = paths
        self.axes = axes

    def forward(self, x: torch.Tensor, *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.axes is not None:
            flat = tuple(t.movedim(0, axis) for t, axis in zip(flat, self.axes, strict=True))
        slots = [_slot(self.user, path) for path in self.paths]
        saved = [owner._buffers[leaf] for owner, leaf in slots]
        try:
            for (owner, leaf), value in zip(slots, flat, strict=True):
                owner._buffers[leaf] = value.clone()  # forward may update it in place: never the caller's tensor
            y = self.user(x)
            out = [owner._buffers[leaf] for owner, leaf in slots]
        finally:
            for (owner, leaf), tensor in zip(slots, saved, strict=True):
                owner._buffers[leaf] = tensor
        if not isinstance(y, torch.Tensor):
            raise SourceError(f"forward(x) returned {shown(y)}; a module with its state in buffers returns y alone")
        gone = [path for path, value in zip(self.paths, out, strict=True) if not isinstance(value, torch.Tensor)]
        if gone:
            raise SourceError(f"forward(x) set state buffer {gone[0]!r} to {shown(out[self.paths.index(gone[0])])}; "
                              "a state buffer must stay a tensor")
        states = [value for value in out if isinstance(value, torch.Tensor)]  # all of them: checked above
        if self.axes is not None:
            states = [t.movedim(axis, 0) for t, axis in zip(states, self.axes, strict=True)]
        return (y, *states)


@dataclasses.dataclass(frozen=True)
class BufferState:
    """The buffers ``forward(x)`` updates: their paths, and their values after a call per probe batch."""

    paths: tuple[str, ...]
    examples: dict[int, dict[str, torch.Tensor]]

    def key(self, path: str) -> str:
        """The buffer's key in the state's dict (and its tensor name): ``conv.cache`` -> ``conv_cache``."""
        return path.replace(".", "_")

    def example(self, batch: int) -> dict[str, torch.Tensor]:
        """The state for ``batch`` streams as a dict by key, buffers in module order."""
        return {self.key(path): self.examples[batch][path] for path in self.paths}


def _buffers_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(module.named_buffers())


@torch.no_grad()
def _changed(module: torch.nn.Module, guess: InputGuess, layout: Layout) -> list[str]:
    """The buffers one call of ``forward(x)`` (one stream) replaces, resizes or changes in value."""
    before = {name: (t, t.clone()) for name, t in _buffers_of(module).items()}
    x = example_x(guess.features, guess.dtype, layout, 1, seed=_SEED)
    with kept_buffers(module):
        try:
            module(x)
        except Exception as e:  # the user's forward failing is a user error
            raise forward_failed("forward(x)", x, e) from e
        after = _buffers_of(module)
        return [name for name, (tensor, value) in before.items()
                if after.get(name) is not tensor or after[name].shape != value.shape
                or not torch.equal(after[name], value)]


@torch.no_grad()
def _after(module: torch.nn.Module, paths: list[str], guess: InputGuess, layout: Layout, batch: int, time: int,
           start: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The state buffers after one call on ``batch`` streams of ``time`` steps, from ``start`` if given."""
    x = example_x(guess.features, guess.dtype, layout, batch, time, seed=_SEED + batch)
    with kept_buffers(module):
        for path, value in (start or {}).items():
            owner, leaf = _slot(module, path)
            owner._buffers[leaf] = value.clone()
        module(x)
        found = _buffers_of(module)
        return {path: found[path].clone() for path in paths if path in found}


def _widened(module: torch.nn.Module, paths: list[str], batch: int, owner: str, error: Exception) -> dict[str, torch.Tensor]:
    """Each state buffer widened to ``batch`` streams along its first axis of size 1."""
    buffers = _buffers_of(module)
    widened = {}
    for path in paths:
        tensor = buffers[path]
        ones = [axis for axis, size in enumerate(tensor.shape) if size == 1]
        if not ones:
            raise SourceError(f"{owner}'s forward(x) failed on {batch} streams ({describe(error)}), and its state buffer "
                              f"{path!r} of shape {tuple(tensor.shape)} has no axis of size 1 to widen to the batch; "
                              "register it for one stream (size 1 on the batch axis) or allocate it in forward")
        sizes = list(tensor.shape)
        sizes[ones[0]] = batch
        widened[path] = tensor.expand(sizes).clone()
    return widened


def _at_batch(module: torch.nn.Module, paths: list[str], guess: InputGuess, layout: Layout, batch: int,
              owner: str) -> dict[str, torch.Tensor]:
    """The state buffers after a call on ``batch`` streams: as registered, else widened to the batch."""
    try:
        return _after(module, paths, guess, layout, batch, 2)
    except Exception as first:  # noqa: BLE001 - a buffer registered for one stream: widen it and retry
        start = _widened(module, paths, batch, owner, first)
        try:
            return _after(module, paths, guess, layout, batch, 2, start)
        except Exception as e:  # the user's forward failing is a user error
            raise SourceError(f"{owner}'s forward(x) failed on {batch} streams with its state buffers as registered "
                              f"({describe(first)}) and widened to the batch ({describe(e)}); allocate them for the "
                              "batch in forward") from e


def _check(paths: list[str], examples: dict[int, dict[str, torch.Tensor]], owner: str) -> None:
    small, large = (examples[b] for b in PROBE_BATCHES)
    for path in paths:
        if path not in small or path not in large:
            raise SourceError(f"{owner}'s forward(x) removes its buffer {path!r}; a state buffer must stay a tensor")
        a, b = small[path], large[path]
        if a.dtype != torch.float32:
            raise SourceError(f"{owner}'s forward(x) updates buffer {path!r}, which is "
                              f"{str(a.dtype).removeprefix('torch.')}; rnnexport carries float32 state: keep it "
                              "float32, or out of the buffers if it is not per-stream state")
        differ = [i for i, (p, q) in enumerate(zip(a.shape, b.shape, strict=True)) if p != q] if a.dim() == b.dim() else []
        if len(differ) != 1 or (a.shape[differ[0]], b.shape[differ[0]]) != PROBE_BATCHES:
            raise SourceError(f"{owner}'s forward(x) updates buffer {path!r}, of shape {tuple(a.shape)} after a call "
                              f"on {PROBE_BATCHES[0]} streams and {tuple(b.shape)} on {PROBE_BATCHES[1]}: a state "
                              "buffer needs exactly one axis that follows the streams (this one mixes them, or does "
                              "not hold one row per stream)")


def _check_shape_kept(module: torch.nn.Module, paths: list[str], guess: InputGuess, layout: Layout,
                      examples: dict[int, dict[str, torch.Tensor]], owner: str) -> None:
    """A second call (of one step) from the state after the first must leave every buffer its shape."""
    batch = PROBE_BATCHES[0]
    again = _after(module, paths, guess, layout, batch, 1, examples[batch])
    for path in paths:
        was, now = tuple(examples[batch][path].shape), tuple(again[path].shape) if path in again else None
        if was != now:
            raise SourceError(f"{owner}'s forward(x) changes the shape of buffer {path!r} from call to call ({was} "
                              f"after 2 steps, {now} after 1 more): a state keeps its shape; keep a fixed window "
                              "(e.g. the last k frames)")


def state_buffers(module: torch.nn.Module, guess: InputGuess, layout: Layout, owner: str) -> BufferState | None:
    """The buffers ``forward(x)`` keeps its state in, with example values per probe batch; None if none changes.

    Raises:
        ForwardFailed: forward raised on one stream.
        SourceError: a changed buffer cannot be carried as state (says which and why).
    """
    paths = _changed(module, guess, layout)
    if not paths:
        return None
    examples = {batch: _at_batch(module, paths, guess, layout, batch, owner) for batch in PROBE_BATCHES}
    _check(paths, examples, owner)
    _check_shape_kept(module, paths, guess, layout, examples, owner)
    return BufferState(tuple(paths), examples)
