"""The checks, one function per contract, each returning :class:`~rnnexport.verification.report.Check` rows.

1. :func:`against` a reference (graph == PyTorch; also 2, 3 and 6 compare this way),
2. :func:`chunked` calls with carried state, compared with one call,
3. :func:`stream` a step graph T times, compared with a sequence,
4. :func:`declared_shapes` == actual shapes and dtypes,
5. :func:`finite`: no NaN or Inf (for a graph converted with ``--nan refuse``, :func:`refused`:
   the runtime refuses the NaN cases' input),
6. every execution provider against the CPU provider (:func:`against` again).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from rnnexport.core.compare import Tolerance, compare, count_nonfinite
from rnnexport.core.contract import BATCH, TIME, Form, IOSpec
from rnnexport.core.errors import RuntimeContractError
from rnnexport.engines.base import GraphTensor, Runner
from rnnexport.verification.cases import Case
from rnnexport.verification.report import Check, Contract

__all__ = ["RUNTIME", "against", "chunked", "declared_shapes", "finite", "past_end", "prepare", "refused", "stream",
           "time_axes"]

#: The engine name of :func:`refused`'s checks: rnnexport's own runtime on onnxruntime's CPU provider.
RUNTIME = "runtime"

Outputs = Mapping[str, np.ndarray]
_FLOATS = {name: np.dtype(name) for name in ("float16", "float32", "float64")}


def time_axes(io: IOSpec, form: Form) -> dict[str, int | None]:
    """Per output name, its time axis (``y`` of a sequence), or None (the state, a step's ``y``)."""
    names = [s.name for s in io.outputs(form)]
    return {name: (io.time_axis if form is Form.SEQUENCE and i == 0 else None) for i, name in enumerate(names)}


def prepare(runner: Runner, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast float feeds to the float type the runner's graph declares (float16 variants); leave the rest."""
    return _caster(runner)(feeds)


def _caster(runner: Runner) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """:func:`prepare` for ``runner``, its declared types read once (for the many calls of a chunked or streamed run)."""
    declared = {t.name: _FLOATS[t.dtype] for t in getattr(runner, "inputs", ()) if t.dtype in _FLOATS}
    floats = set(_FLOATS.values())

    def cast(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ready = dict(feeds)
        for name, dtype in declared.items():
            array = ready.get(name)
            if array is not None and array.dtype != dtype and array.dtype in floats:
                ready[name] = array.astype(dtype)
        return ready

    return cast


def against(contract: Contract, engine: str, case: Case, got: Outputs, want: Outputs, tol: Tolerance,
            axes: Mapping[str, int | None], variant: str = "") -> list[Check]:
    """One check per reference output: figures of ``got`` against ``want``."""
    checks = []
    for name, reference in want.items():
        if name not in got:
            checks.append(Check(contract, engine, case.id, name, False, variant,
                                detail=f"the graph returned no output {name!r}"))
            continue
        figures = compare(got[name], reference, tol, axes.get(name))
        checks.append(Check.of(contract, engine, case.id, name, figures, variant))
    return checks


def _describe(dtype: str, shape: Sequence[object] | None) -> str:
    dims = "?" if shape is None else ", ".join("?" if d is None else str(d) for d in shape)
    return f"{dtype}[{dims}]"


def declared_shapes(engine: str, case: Case, declared: Sequence[GraphTensor], got: Outputs,
                    form: Form) -> list[Check]:
    """Contract 4: each declared output's dtype and shape (``B``/``T`` resolved) against what came back."""
    sizes = {BATCH: case.batch} if form is Form.STEP else {BATCH: case.batch, TIME: case.time}
    checks = []
    for tensor in declared:
        if tensor.name not in got:
            checks.append(Check(Contract.SHAPES, engine, case.id, tensor.name, False,
                                detail=f"declared output {tensor.describe()} was not returned"))
            continue
        actual = np.asarray(got[tensor.name])
        expected = tensor.resolve(sizes)
        ok = actual.dtype.name == tensor.dtype
        if expected is not None:
            ok = ok and len(expected) == actual.ndim and all(
                not isinstance(d, int) or d == n for d, n in zip(expected, actual.shape, strict=True))
        detail = (f"declared {tensor.describe()} = {_describe(tensor.dtype, expected)}, "
                  f"got {_describe(actual.dtype.name, actual.shape)}")
        checks.append(Check(Contract.SHAPES, engine, case.id, tensor.name, ok, detail=detail))
    return checks


def finite(engine: str, case: Case | str, got: Outputs, variant: str = "") -> list[Check]:
    """Contract 5: every output free of NaN and Inf (``case``: a grid case, or a bundle's test set)."""
    case_id = case if isinstance(case, str) else case.id
    checks = []
    for name, array in got.items():
        nans, infs = count_nonfinite(array)
        detail = f"{nans} NaN, {infs} Inf in {np.size(array)} values" if nans or infs else ""
        checks.append(Check(Contract.FINITE, engine, case_id, name, not (nans or infs), variant, detail=detail))
    return checks


def past_end(engine: str, case: Case, got: Outputs, io: IOSpec, lengths: np.ndarray) -> list[Check]:
    """Contract 1 on a ragged case: ``y`` exactly zero at every step past each stream's length."""
    y_name = io.outputs(Form.SEQUENCE)[0].name
    if y_name not in got:
        return []  # against() reports the missing output
    y = np.moveaxis(np.asarray(got[y_name]), (io.time_axis, io.batch_axis), (0, 1))
    padding = np.arange(y.shape[0])[:, None] >= lengths[None, :]  # (T, B)
    values = np.abs(y[padding]).astype(np.float64)
    worst = float(values.max(initial=0.0)) if not np.isnan(values).any() else float("nan")
    steps = int(padding.sum())
    ok = worst == 0.0
    detail = "" if ok else f"y is not zero past each stream's end: max |y| {worst:.3g} over {steps} padded steps"
    return [Check(Contract.PYTORCH, engine, case.id, y_name, ok, "zero past each end", max_abs=worst, detail=detail)]


def refused(path: str | os.PathLike[str], io: IOSpec, form: Form, case: Case, x: np.ndarray,
            state: Sequence[np.ndarray], label: str = "") -> list[Check]:
    """Contract 5 on a NaN case of a graph converted with ``--nan refuse``: the runtime must refuse it.

    Such a graph has no NaN guards, so an engine may turn NaN into plausible finite values;
    what keeps them out is :mod:`rnnexport.runtime`, which refuses non-finite input to it
    even with ``check_finite`` off. The case is fed as an app would: the state set, then
    ``x`` in one ``run`` (a sequence graph) or step by step (a step graph, refused at the
    step that holds NaN). One check, passed when the runtime refused before running NaN.
    """
    from rnnexport.runtime import StatefulSession

    session = StatefulSession.load(path, batch=case.batch, threads=1, check_finite=False)
    variant = label or "refused"
    fed, where = "state", "the initial state"
    try:
        session.state = dict(zip(io.state.names, state, strict=True))
        fed = "x"
        if form is Form.SEQUENCE:
            where = "x"
            session.run(x)
        else:
            for t in range(x.shape[io.time_axis]):
                where = f"x at step {t}"
                session.step(np.take(x, t, axis=io.time_axis))
    except RuntimeContractError as e:
        return [Check(Contract.FINITE, RUNTIME, case.id, fed, True, variant, detail=f"refused {where}: {e}")]
    return [Check(Contract.FINITE, RUNTIME, case.id, fed, False, variant,
                  detail="rnnexport.runtime ran NaN input through a graph converted with --nan refuse "
                         "(it has no NaN guards: its output may hide the NaN)")]


def _state_out(io: IOSpec, out: Outputs) -> list[np.ndarray]:
    return [out[name] for name in io.state.output_names]


def _steps(x: np.ndarray, axis: int, steps: slice | int) -> np.ndarray:
    """``x``'s ``steps`` along ``axis``: a view, copied only where it is not contiguous (a batch-first ``x``)."""
    return np.ascontiguousarray(x[(slice(None),) * axis + (steps,)])


def chunked(runner: Runner, io: IOSpec, x: np.ndarray, state: Sequence[np.ndarray], chunk: int) -> dict[str, np.ndarray]:
    """Contract 2: ``x`` fed in chunks of ``chunk`` steps (the last one ragged), state carried across calls."""
    axis, cast = io.time_axis, _caster(runner)
    y_name = io.outputs(Form.SEQUENCE)[0].name
    ys, carried = [], list(state)
    for start in range(0, x.shape[axis], chunk):
        out = runner.infer(cast(io.feeds(_steps(x, axis, slice(start, start + chunk)), carried)))
        ys.append(out[y_name])
        carried = _state_out(io, out)
    return {y_name: np.concatenate(ys, axis=axis), **dict(zip(io.state.output_names, carried, strict=True))}


def stream(runner: Runner, io: IOSpec, x: np.ndarray, state: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Contract 3: a step graph fed ``x`` one step at a time; ``y`` stacked along the sequence's time axis."""
    axis, cast = io.time_axis, _caster(runner)
    y_name = io.outputs(Form.STEP)[0].name
    ys, carried = [], list(state)
    for t in range(x.shape[axis]):
        out = runner.infer(cast(io.feeds(_steps(x, axis, t), carried)))
        ys.append(out[y_name])
        carried = _state_out(io, out)
    return {y_name: np.stack(ys, axis=axis), **dict(zip(io.state.output_names, carried, strict=True))}
