"""What a pass is: a callable that takes a model and returns it with whether it changed.

As onnx-ir's ``PassResult(model, modified)``: a pass edits the model it is given in place
and returns that same object, so a list of passes is run by handing each the previous
result. A lowering names its passes as one ordered list; nothing else decides which run.
The model is whatever the passes of one stage act on: an ``onnx.ModelProto`` (a traced
step, a finished graph) or the scan lowering's :class:`~rnnexport.export.passes.loop.Loop`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

__all__ = ["Pass", "PassResult", "fixpoint", "run_passes"]

M = TypeVar("M")

#: How often :func:`fixpoint` re-runs a pass at most: a bound, never reached by a real graph.
MAX_ROUNDS = 256


@dataclasses.dataclass(frozen=True)
class PassResult(Generic[M]):
    """A pass's result: the model (the object it was given, edited in place) and whether it changed."""

    model: M
    modified: bool


class Pass(Protocol[M]):
    """A graph rewrite: ``pass_(model) -> PassResult(model, modified)``, editing ``model`` in place.

    A pass keeps every result the model computes equal (bit for bit, or within an ulp or two
    where it re-associates float arithmetic, as its docstring says) and does nothing where
    it cannot prove that.
    """

    def __call__(self, model: M, /) -> PassResult[M]: ...


def run_passes(passes: Iterable[Pass[M]], model: M) -> PassResult[M]:
    """Run ``passes`` in order on ``model``; modified if any of them changed it."""
    modified = False
    for pass_ in passes:
        result = pass_(model)
        model, modified = result.model, modified or result.modified
    return PassResult(model, modified)


def fixpoint(once: Pass[M]) -> Pass[M]:
    """The pass that runs ``once`` again until it changes nothing (at most :data:`MAX_ROUNDS` times)."""
    def run(model: M, /) -> PassResult[M]:
        modified = False
        for _ in range(MAX_ROUNDS):
            result = once(model)
            if not result.modified:
                break
            model, modified = result.model, True
        return PassResult(model, modified)

    return run
