"""How the module itself carries NaN, read from PyTorch at conversion: where the NaN guard may go.

The NaN guard (:class:`~rnnexport.export.passes.nan.CarryNan`) makes an output NaN for a
whole stream from the step a NaN enters it on. That is what a classic cell computes (a
matmul spreads one NaN over the whole state), and it keeps engines whose fast activations
turn NaN into numbers (tract's) right. It is wrong for a module that keeps NaN in one
element (an element-wise or diagonal recurrence: minGRU, IndRNN, a diagonal SSM), flushes
it out of a window (a convolution cache), or removes it (``torch.nan_to_num``, ``where``):
there the graph's own operators, which carry NaN as PyTorch does, must decide.

:func:`nan_sources` runs the PyTorch reference with one NaN in the input (float inputs)
and then one in each state tensor, and keeps the guard from that source to the outputs whose
NaN pattern is then the guard's. (An LSTM's NaN in ``h`` spreads everywhere through the
recurrent matmul; one in ``c`` stays in its element of ``c`` and ``h`` and spreads to ``y``
through the head only.)
"""

from __future__ import annotations

import numpy as np

from rnnexport.core.contract import Form
from rnnexport.core.inputs import random_inputs, random_state
from rnnexport.export.passes.nan import Sources
from rnnexport.source.model import RecurrentModel

__all__ = ["nan_sources"]

#: Streams, steps of a sequence probe, and the step its input NaN is on.
BATCH, STEPS, NAN_STEP = 2, 4, 1


def _run(model: RecurrentModel, form: Form, x: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
    if form is Form.SEQUENCE:
        return model.run_sequence(x, state)
    return model.run_step(x, state)


def _stream_mask(shape: tuple[int, ...], axis: int) -> np.ndarray:
    """True on stream 0 (index 0 along ``axis``), False elsewhere."""
    mask = np.zeros(shape, bool)
    index: list[slice | int] = [slice(None)] * len(shape)
    index[axis] = 0
    mask[tuple(index)] = True
    return mask


def _expected(model: RecurrentModel, form: Form, outputs: list[np.ndarray], from_step: int | None) -> list[np.ndarray]:
    """The guard's NaN pattern: stream 0 of every output, ``y`` only from ``from_step`` on (None: all steps)."""
    io = model.io
    y = outputs[0]
    batch_axis = io.batch_axis if form is Form.SEQUENCE else 0
    y_mask = _stream_mask(y.shape, batch_axis)
    if form is Form.SEQUENCE and from_step is not None:
        steps = np.arange(y.shape[io.time_axis]) >= from_step
        shape = [1] * y.ndim
        shape[io.time_axis] = -1
        y_mask &= steps.reshape(shape)
    return [y_mask, *(_stream_mask(s.shape, io.state.batch_axis) for s in outputs[1:])]


def nan_sources(model: RecurrentModel, form: Form) -> Sources:
    """Per output (``y``, then each state output), per source (``x``, then each state): whether PyTorch
    makes the output NaN exactly where the guard would, for a NaN in that source (stream 0 only).

    A sequence is probed at 1 and :data:`STEPS` steps (a NaN that spreads only over several
    steps is not the guard's, which spreads it at once), its input's NaN at step
    :data:`NAN_STEP` (0 for one step). An integer input has no NaN: its column is False.
    """
    form = Form(form)
    found: list[list[bool]] | None = None
    for steps in ((1, STEPS) if form is Form.SEQUENCE else (None,)):
        matrix = _probe(model, form, steps)
        found = matrix if found is None else [[a and b for a, b in zip(r, q, strict=True)] for r, q in zip(found, matrix, strict=True)]
    assert found is not None  # at least one length is probed
    return tuple(tuple(row) for row in found)


def _probe(model: RecurrentModel, form: Form, steps: int | None) -> list[list[bool]]:
    """:func:`nan_sources` at one length (``steps`` None for a step graph): rows are outputs, columns sources."""
    io = model.io
    rng = np.random.default_rng(4321)
    x = random_inputs(io, form, BATCH, steps, rng, vocabulary=model.vocabulary_size())
    state = random_state(io, BATCH, rng, 0.5)
    columns: list[list[bool]] = []
    if np.issubdtype(x.dtype, np.floating):
        nan_x = x.copy()
        where = [0] * x.ndim
        at = min(NAN_STEP, steps - 1) if steps is not None else None
        if at is not None:
            where[io.time_axis] = at
        nan_x[tuple(where)] = np.nan
        columns.append(_matches(model, form, nan_x, state, at))
    else:
        columns.append([False] * (1 + len(state)))
    for k in range(len(state)):
        nan_state = [s.copy() for s in state]
        nan_state[k][(0,) * nan_state[k].ndim] = np.nan  # stream 0, whatever the batch axis
        columns.append(_matches(model, form, x, nan_state, None))
    return [[column[i] for column in columns] for i in range(1 + len(state))]


def _matches(model: RecurrentModel, form: Form, x: np.ndarray, state: list[np.ndarray],
             from_step: int | None) -> list[bool]:
    """Per output, whether PyTorch's NaN pattern on this probe is the guard's."""
    outputs = _run(model, form, x, [s.copy() for s in state])
    return [bool(np.array_equal(np.isnan(got), want)) for got, want in zip(outputs, _expected(model, form, outputs, from_step), strict=True)]
