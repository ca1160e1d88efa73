"""Inputs generated from an I/O contract: random ``x`` in the input's encoding, random state.

Verification, packaging (test vectors, variant checks) and the test helpers all
draw their inputs here, so every check feeds the graph exactly what the contract names.
"""

from __future__ import annotations

from typing import cast

import numpy as np

from rnnexport.core.contract import Form, IOSpec, StateDomain

__all__ = ["random_inputs", "random_state"]


def random_state(io: IOSpec, batch: int, rng: np.random.Generator, scale: float = 1.0) -> list[np.ndarray]:
    """A random (non-zero) initial state, one array per state name.

    Standard normal times ``scale``, or inside the tensor's declared domain
    (:attr:`~rnnexport.core.contract.StateSpec.domains`): uniform in ``[low, high]``,
    ``low + exp(scale * N(0, 1))`` above a lone lower bound (so a denominator is seldom near
    it), ``high - exp(scale * N(0, 1))`` below a lone upper bound.
    """
    domains = io.state.domains or (None,) * len(io.state.names)
    # an int batch makes every dim an int; StateSpec.shape is typed for the symbolic "B" too
    shapes = [cast("tuple[int, ...]", io.state.shape(i, batch)) for i in range(len(io.state.names))]
    return [_draw(rng, shape, scale, domain).astype(io.state.dtype) for shape, domain in zip(shapes, domains, strict=True)]


def _draw(rng: np.random.Generator, shape: tuple[int, ...], scale: float, domain: StateDomain | None) -> np.ndarray:
    if domain is None or (domain.low is None and domain.high is None):
        return rng.standard_normal(shape) * scale
    if domain.low is not None and domain.high is not None:
        return rng.uniform(domain.low, domain.high, shape)
    spread = np.exp(rng.standard_normal(shape) * scale)
    return domain.low + spread if domain.low is not None else cast(float, domain.high) - spread


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
