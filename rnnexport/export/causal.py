"""Refusing what cannot be streamed: a model whose output at a step depends on later steps.

A graph with explicit state is right only for a causal model: running it over a whole
sequence must equal running it over two chunks with the state carried. A module that, say,
normalises over time or attends to the future breaks that, and would convert to a graph that
verify then fails; conversion checks it first, on random inputs (the chunked contract).
"""

from __future__ import annotations

import numpy as np

from rnnexport.core.compare import compare, tolerance_for
from rnnexport.core.contract import Form
from rnnexport.core.errors import ConvertError
from rnnexport.core.inputs import random_inputs, random_state
from rnnexport.export.bidirectional import NO_STEP_FORM
from rnnexport.source.model import RecurrentModel

__all__ = ["check_causal"]

#: Steps of the probe sequence and where it is cut in two.
STEPS, CUT = 6, 3


def _run(model: RecurrentModel, x: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
    """The reference on copies of ``x`` and ``state``, its outputs copied (none shares memory with another run)."""
    outputs = model.run_sequence(np.array(x, copy=True), [np.array(s, copy=True) for s in state])
    return [np.array(o, copy=True) for o in outputs]


def check_causal(model: RecurrentModel, form: Form = Form.SEQUENCE) -> None:
    """Raise :class:`ConvertError` when ``model`` cannot be streamed in ``form``.

    A bidirectional model's sequence form passes; its step form is refused. Any other
    model is refused when run on two chunks it differs from one run.

    Raises:
        ConvertError: naming the difference and why the model cannot be streamed.
    """
    if model.bidirectional():
        if Form(form) is Form.STEP:
            raise ConvertError(f"cannot export {model.description} as a step graph: {NO_STEP_FORM}")
        return
    io = model.io
    rng = np.random.default_rng(1234)
    x = random_inputs(io, Form.SEQUENCE, 2, STEPS, rng, vocabulary=model.vocabulary_size())
    state = random_state(io, 2, rng, 0.5)
    whole = _run(model, x, state)
    head = _run(model, np.take(x, range(CUT), axis=io.time_axis), state)
    tail = _run(model, np.take(x, range(CUT, STEPS), axis=io.time_axis), head[1:])
    chunked = [np.concatenate([head[0], tail[0]], axis=io.time_axis), *tail[1:]]
    tol = tolerance_for("float32", 1e-4, 1e-3)
    for name, got, want in zip([s.name for s in io.outputs(Form.SEQUENCE)], chunked, whole, strict=True):
        figures = compare(got, want, tol)
        if not figures.passed:
            raise ConvertError(
                f"{model.description} is not causal: run over {STEPS} steps at once, its {name} differs from "
                f"{CUT} + {STEPS - CUT} steps with the state carried (max abs {figures.max_abs:.3g}), so its output "
                "at a step depends on later steps (normalising or attending over time?); a graph with explicit "
                "state would stream it wrongly")
