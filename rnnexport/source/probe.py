"""The one probe of a module against its contract: example inputs, and what forward returns for them.

A module rarely says what its input is. :func:`input_guesses` lists what its layers suggest
(an Embedding: token ids; else a Linear's, recurrent layer's, Conv1d's or LayerNorm's size,
in the order the module holds them), then the sizes of its own parameters, and
:func:`first_fitting` keeps the first one the module's forward accepts, naming every size
tried when none does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar, cast

import torch

from rnnexport.core.contract import Layout, StateSpec
from rnnexport.core.errors import SourceError, describe

__all__ = ["PROBE_BATCHES", "PROBE_TIME", "ForwardFailed", "InputGuess", "example_x", "first_fitting",
           "forward_failed", "input_guesses", "probe_output"]

#: Two batch sizes (a state axis that follows them is the batch axis) and the steps of an example input.
PROBE_BATCHES = (3, 5)
PROBE_TIME = 2
#: The most input sizes tried on a module that does not say which it takes.
MAX_GUESSES = 8

T = TypeVar("T")


class ForwardFailed(SourceError):
    """The module's forward raised on an example input: perhaps the input size was guessed wrong.

    ``cause`` is the error forward raised, in one line.
    """

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


@dataclasses.dataclass(frozen=True)
class InputGuess:
    """An input the module may take: features per step, dtype, and where the guess came from."""

    features: tuple[int, ...]
    dtype: str
    source: str

    def __str__(self) -> str:
        what = "token ids" if self.dtype == "int64" else f"{self.features[0] if self.features else 0} features"
        return f"{what} ({self.source})"


def _guess(child: torch.nn.Module) -> InputGuess | None:
    name = type(child).__name__
    if isinstance(child, torch.nn.Embedding):
        return InputGuess((), "int64", f"the {name} comes first")
    if isinstance(child, torch.nn.Linear):
        return InputGuess((child.in_features,), "float32", f"a {name}'s in_features")
    if isinstance(child, (torch.nn.RNNBase, torch.nn.RNNCellBase)):
        return InputGuess((child.input_size,), "float32", f"a {name}'s input_size")
    if isinstance(child, torch.nn.Conv1d):
        return InputGuess((child.in_channels,), "float32", f"a {name}'s in_channels")
    if isinstance(child, torch.nn.LayerNorm) and len(child.normalized_shape) == 1:
        return InputGuess((child.normalized_shape[0],), "float32", f"a {name}'s size")
    return None


def input_guesses(module: torch.nn.Module, input_size: int | None, owner: str) -> list[InputGuess]:
    """The inputs to try: ``input_size`` when given, else what the module's layers suggest, in their order.

    Raises:
        SourceError: no size given and no layer suggests one.
    """
    if input_size is not None:
        return [InputGuess((input_size,), "float32", "given")]
    guesses: list[InputGuess] = []
    for child in module.modules():
        guess = _guess(child)
        if guess is not None and all((g.features, g.dtype) != (guess.features, guess.dtype) for g in guesses):
            guesses.append(guess)
        if len(guesses) == MAX_GUESSES:
            break
    for name, parameter in module.named_parameters():  # then the sizes its own weights have
        for size in dict.fromkeys(parameter.shape[:1] + parameter.shape[-1:]):
            guess = InputGuess((size,), "float32", f"a size of parameter {name!r}")
            if size > 1 and len(guesses) < MAX_GUESSES and all(g.features != guess.features for g in guesses):
                guesses.append(guess)
    if not guesses:
        raise SourceError(f"cannot tell the input size of {owner}: it has no Linear, Embedding, Conv1d, LayerNorm or "
                          "torch.nn recurrent layer, nor a parameter, to read it from; pass "
                          "from_module(module, input_size=...) (--input-size)")
    return guesses


def first_fitting(guesses: list[InputGuess], attempt: Callable[[InputGuess], T], owner: str) -> tuple[InputGuess, T]:
    """The first guess ``attempt`` accepts (does not raise :class:`ForwardFailed` for), and its result.

    Raises:
        SourceError: every guess failed; the first one's error when all failed alike, else one naming each.
    """
    failures: list[tuple[InputGuess, ForwardFailed]] = []
    for guess in guesses:
        try:
            return guess, attempt(guess)
        except ForwardFailed as e:
            failures.append((guess, e))
    if len({error.cause for _, error in failures}) == 1:  # the same error whatever the size: not the size's fault
        raise failures[0][1]
    tried = "; ".join(f"{guess}: {str(error.cause)[:160]}" for guess, error in failures)
    raise SourceError(f"{owner}'s forward failed on every input rnnexport tried: {tried}; pass "
                      "from_module(module, input_size=...) (--input-size) if the size is right, else fix forward")


def example_x(x_features: tuple[int, ...], x_dtype: str, layout: Layout, batch: int,
              time: int = PROBE_TIME, seed: int | None = None) -> torch.Tensor:
    """``time`` steps of ``batch`` streams of the contract's input: zeros, or random with ``seed``."""
    lead = (time, batch) if layout is Layout.TIME_MAJOR else (batch, time)
    shape = (*lead, *x_features)
    if x_dtype == "int64":
        return torch.zeros(shape, dtype=torch.int64)
    if seed is None:
        return torch.zeros(shape)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def forward_failed(what: str, x: torch.Tensor, error: Exception, hint: str = "") -> ForwardFailed:
    """The error for a forward that raised on example ``x``, its cause kept for :func:`first_fitting`."""
    cause = describe(error)
    return ForwardFailed(f"the module's {what} failed on an example x of shape {tuple(x.shape)}: {cause}{hint}", cause)


def probe_output(sequence: torch.nn.Module, x_features: tuple[int, ...], x_dtype: str, state: StateSpec,
                 layout: Layout) -> tuple[int, ...]:
    """Run ``sequence`` once on zeros and return its ``y`` features; refuse what breaks the contract.

    Raises:
        ForwardFailed: forward raised.
        SourceError: forward returns something other than ``(y, *state)`` of the shapes
            ``state`` declares.
    """
    batch = PROBE_BATCHES[0]
    x = example_x(x_features, x_dtype, layout, batch)
    # an int batch makes every dim an int; StateSpec.shape is typed for the symbolic "B" too
    states = [torch.zeros(cast("tuple[int, ...]", state.shape(i, batch))) for i in range(len(state.names))]
    try:
        with torch.no_grad():
            y, *state_out = sequence(x, *states)
    except SourceError:  # the adapter's own refusal of what forward returned
        raise
    except Exception as e:  # the user's forward failing is a user error
        raise forward_failed("forward(x, state)", x, e, "; it must take (x, state) and return (y, state)") from e
    if not isinstance(y, torch.Tensor) or len(state_out) != len(state.names) \
            or not all(isinstance(s, torch.Tensor) for s in state_out):
        kinds = ", ".join(type(s).__name__ for s in state_out)
        raise SourceError(f"the module returned y as a {type(y).__name__} and a state of {kinds}, "
                          f"expected a tensor y and state tensors {', '.join(state.names)}")
    for i, s in enumerate(state_out):
        if tuple(s.shape) != state.shape(i, batch):
            raise SourceError(f"the module returned state {state.names[i]} of shape {tuple(s.shape)}, "
                              f"expected {state.shape(i, batch)}")
    return tuple(y.shape[2:])
