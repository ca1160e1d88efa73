"""Helpers for testing exported graphs, public because users want them too.

Inputs come from :mod:`rnnexport.core.inputs` and comparisons go through
the one comparator, :func:`rnnexport.core.compare.compare`, with the same
tolerance rule the product's checks use. Production code never imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rnnexport.core.compare import Tolerance, compare, max_errors, tolerance_for
from rnnexport.core.contract import IOSpec
from rnnexport.core.inputs import random_inputs, random_state

__all__ = ["assert_close", "feeds", "max_errors", "random_inputs", "random_state"]


def feeds(io: IOSpec, x: np.ndarray, state: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The input dict of a graph call: ``{"x": x, "h": ..., "c": ...}`` (:meth:`IOSpec.feeds`)."""
    return io.feeds(x, state)


def assert_close(
    got: Sequence[np.ndarray], want: Sequence[np.ndarray], names: Sequence[str],
    atol: float | None = None, context: str = "", rtol: float | None = None,
    tolerance: Tolerance | None = None,
) -> None:
    """Assert one output per name in ``got`` and ``want``, each matching in shape and within tolerance;
    the message names each miss.

    The rule is verify's (``|got - want| <= atol + rtol * |want|``, NaN only where the
    reference has NaN); by default float32's tolerances (atol 1e-5, rtol 1e-4).
    """
    tol = tolerance or tolerance_for("float32", atol, rtol)
    if not len(names) == len(got) == len(want):
        raise AssertionError(f"{context}: {len(got)} outputs, {len(want)} expected, for {len(names)} names "
                             f"({', '.join(names)})")
    problems = []
    for name, a, b in zip(names, got, want, strict=True):
        figures = compare(np.asarray(a), np.asarray(b), tol)
        if not figures.passed:
            what = f"max abs error {figures.max_abs:.3g}; " if figures.max_abs is not None else ""
            problems.append(f"{name}: {what}{figures.detail} ({tol.describe()})")
    if problems:
        raise AssertionError(f"{context}: " + "; ".join(problems))
