"""Helpers for testing exported graphs, public because users want them too.

Inputs are generated from a model's I/O contract, so every test and check feeds
the graph exactly what the contract names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rnnexport.model import Form, IOSpec

__all__ = ["assert_close", "feeds", "max_errors", "random_inputs", "random_state"]


def random_state(io: IOSpec, batch: int, rng: np.random.Generator, scale: float = 1.0) -> list[np.ndarray]:
    """A random (non-zero) initial state, one array per state name."""
    return [
        (rng.standard_normal(io.state.shape(i, batch)) * scale).astype(io.state.dtype)
        for i in range(len(io.state.names))
    ]


def random_inputs(
    io: IOSpec, form: Form, batch: int, time: int | None, rng: np.random.Generator,
    scale: float = 1.0, vocabulary: int | None = None,
) -> np.ndarray:
    """Random ``x`` for ``form`` in the input's encoding.

    Real inputs are standard normal times ``scale``; ``one-hot`` inputs are one-hot
    rows over the feature axis; token ids are drawn below ``vocabulary`` (default 2).
    """
    shape = io.inputs(form, time)[0].concrete(batch, time)
    if io.x_dtype == "int64":
        return rng.integers(0, vocabulary or 2, size=shape, dtype=np.int64)
    if io.x_encoding == "one-hot":
        size = io.x_features[0]
        return np.eye(size, dtype=io.x_dtype)[rng.integers(0, size, size=shape[:-1])]
    return (rng.standard_normal(shape) * scale).astype(io.x_dtype)


def feeds(io: IOSpec, x: np.ndarray, state: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The input dict of a graph call: ``{"x": x, "h": ..., "c": ...}``."""
    return {"x": x, **dict(zip(io.state.names, state))}


def max_errors(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """Max absolute and max relative error (relative to ``max(|want|, 1e-6)``)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.size == 0:
        return 0.0, 0.0
    diff = np.abs(got - want)
    return float(diff.max()), float((diff / np.maximum(np.abs(want), 1e-6)).max())


def assert_close(
    got: Sequence[np.ndarray], want: Sequence[np.ndarray], names: Sequence[str],
    atol: float = 1e-5, context: str = "",
) -> None:
    """Assert every output matches in shape and within ``atol``; the message names each miss."""
    problems = []
    for name, a, b in zip(names, got, want):
        if np.shape(a) != np.shape(b):
            problems.append(f"{name}: shape {np.shape(a)} != {np.shape(b)}")
            continue
        err, _ = max_errors(a, b)
        if not np.isfinite(np.asarray(a, dtype=np.float64)).all() or err > atol:
            problems.append(f"{name}: max abs error {err:.3g} > {atol:g}")
    if problems:
        raise AssertionError(f"{context}: " + "; ".join(problems))
