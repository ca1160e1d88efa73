"""What a lossy variant changes in a forecaster's forecasts, as figures on its held-out series.

A trained forecaster's card (``lstm-forecaster``) records the synthetic signal it learned
(``training.signal``: periods, amplitude range, noise, length, held-out count) and its seed;
:func:`held_out_series` generates the same held-out series the training script scored it on
(seed + 1), with the same generator. The float32 graph and the variant then forecast every
series from the zero state, as an app streams one, and :func:`forecast_agreement` reports

- ``mae_float`` and ``mae_variant``: mean absolute error of each against the next value,
  over the time steps from ``warmup`` on (the card's, as its metric is scored);
- ``mae_ratio``: ``mae_variant / mae_float``;
- ``mae_between``: mean absolute difference of the two forecasts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rnnexport.core.contract import IOSpec
from rnnexport.runtime import StatefulSession

__all__ = ["forecast_agreement", "forecast_notes", "held_out_series", "signal_of"]

#: At most this many held-out series are forecast (the card's count, bounded).
MAX_SERIES = 1024


def signal_of(card: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The card's synthetic signal with its seed, when the card describes a forecaster trained on one."""
    training = (card or {}).get("training")
    if not isinstance(training, Mapping):
        return None
    signal = training.get("signal")
    if not isinstance(signal, Mapping) or not isinstance(training.get("seed"), int):
        return None
    keys = ("periods", "amplitude_range", "noise_std", "length", "valid_series", "warmup")
    if not all(k in signal for k in keys):
        return None
    return {**{k: signal[k] for k in keys}, "seed": training["seed"]}


def held_out_series(signal: Mapping[str, Any], seed: int, count: int) -> np.ndarray:
    """``(length, count, 1)`` float32: noisy sums of sines, drawn exactly as the training script draws them.

    ``x[t] = sum_k a_k sin(2 pi t / P_k + phi_k) + noise_std * e_t`` with ``a_k`` uniform in
    ``amplitude_range``, ``phi_k`` uniform in ``[0, 2 pi)`` and ``e_t`` standard normal, per series,
    from one torch generator seeded ``seed`` (amplitudes, then phases, then noise).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    periods = torch.tensor([float(p) for p in signal["periods"]], dtype=torch.float64)
    low, high = (float(v) for v in signal["amplitude_range"])
    amplitudes = low + (high - low) * torch.rand(count, len(periods), generator=generator, dtype=torch.float64)
    phases = 2 * math.pi * torch.rand(count, len(periods), generator=generator, dtype=torch.float64)
    t = torch.arange(int(signal["length"]), dtype=torch.float64)[:, None, None]
    clean = (amplitudes * torch.sin(2 * math.pi * t / periods + phases)).sum(-1)
    noise = float(signal["noise_std"]) * torch.randn(int(signal["length"]), count, generator=generator,
                                                     dtype=torch.float64)
    return (clean + noise).to(torch.float32)[..., None].numpy()


def _forecast(path: Path, x: np.ndarray, timeout: float | None) -> np.ndarray:
    session = StatefulSession.load(path, threads=1, batch=x.shape[1], timeout=timeout)
    return session.run(x)


def forecast_agreement(reference: Path, variant: Path, io: IOSpec, signal: Mapping[str, Any],
                       timeout: float | None = None) -> dict[str, Any]:
    """The figures above for the graph file ``variant`` against the float32 graph ``reference``. Each call within ``timeout`` seconds."""
    count = min(int(signal["valid_series"]), MAX_SERIES)
    series = held_out_series(signal, int(signal["seed"]) + 1, count)
    x, target = series[:-1], series[1:]
    if io.time_axis == 1:
        x, target = np.swapaxes(x, 0, 1), np.swapaxes(target, 0, 1)
    warmup = int(signal["warmup"])
    window = (slice(None), slice(warmup, None)) if io.time_axis == 1 else (slice(warmup, None),)
    want, got = _forecast(reference, x, timeout), _forecast(variant, x, timeout)
    mae_float = float(np.abs(want - target)[window].mean())
    mae_variant = float(np.abs(got - target)[window].mean())
    return {"series": count, "steps": int(x.shape[io.time_axis]), "warmup": warmup,
            "mae_float": round(mae_float, 6), "mae_variant": round(mae_variant, 6),
            "mae_ratio": round(mae_variant / mae_float, 4) if mae_float > 0 else 0.0,
            "mae_between": round(float(np.abs(got - want)[window].mean()), 6)}


def forecast_notes(agreement: Mapping[str, Any]) -> str:
    """The figures as a sentence for the variant's notes."""
    change = agreement["mae_ratio"] - 1
    return (f"forecasts of {agreement['series']} held-out series: mean absolute error {agreement['mae_variant']:.4g} "
            f"against float32's {agreement['mae_float']:.4g} ({change:+.1%}); the forecasts differ by "
            f"{agreement['mae_between']:.3g} on average")
