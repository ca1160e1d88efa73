"""Re-checking a bundle with no PyTorch: checksums, then every test vector set on each provider.

The streaming pair is run as a stream: the second call's state inputs are the
first call's state outputs as this engine computed them, not the stored ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from rnnexport.bundler.bundle import Bundle, checksum_problems
from rnnexport.bundler.vectors import read_set
from rnnexport.errors import describe
from rnnexport.testing import max_errors

__all__ = ["BundleCheck", "VectorResult", "check_bundle"]

ATOL, RTOL = 1e-5, 1e-4
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}


@dataclasses.dataclass(frozen=True)
class VectorResult:
    """One output of one test vector set on one engine."""

    test_set: str
    kind: str
    engine: str
    output: str
    max_abs: float
    max_rel: float
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class BundleCheck:
    """Checksum problems, per-output vector results, and engines that could not start."""

    source: str
    checksum_problems: tuple[str, ...]
    results: tuple[VectorResult, ...]
    unavailable: dict[str, str]

    @property
    def passed(self) -> bool:
        return not self.checksum_problems and bool(self.results) and all(r.passed for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "passed": self.passed,
            "checksum_problems": list(self.checksum_problems),
            "results": [r.to_json() for r in self.results],
            "unavailable": self.unavailable,
        }


def _session(path, provider: str) -> tuple[ort.InferenceSession | None, str]:
    wanted = PROVIDERS[provider]
    if wanted not in ort.get_available_providers():
        return None, f"{wanted} is not in this onnxruntime build"
    if provider != "cpu":
        ort.set_default_logger_severity(4)  # a missing CUDA library is reported below, not logged
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime prints its fallback notice
            session = ort.InferenceSession(str(path), providers=[wanted])
    except Exception as e:  # noqa: BLE001 - a provider that cannot start is reported, not fatal
        return None, f"{wanted} could not start: {describe(e)}"
    finally:
        ort.set_default_logger_severity(2)
    if session.get_providers()[0] != wanted:
        return None, f"{wanted} fell back to {session.get_providers()[0]}"
    return session, ""


def _compare(test_set, kind, engine, names, got, want) -> list[VectorResult]:
    results = []
    for name, a, b in zip(names, got, want):
        abs_err, rel_err = max_errors(a, b)
        ok = (np.shape(a) == np.shape(b) and bool(np.isfinite(a).all())
              and bool(np.all(np.abs(np.asarray(a, np.float64) - b) <= ATOL + RTOL * np.abs(b))))
        results.append(VectorResult(test_set, kind, engine, name, abs_err, rel_err, ok))
    return results


def check_bundle(bundle: Bundle, providers: Sequence[str] = ("cpu",)) -> BundleCheck:
    """Checksums first; then each test set on each provider (a failed checksum stops there)."""
    problems = tuple(checksum_problems(bundle))
    if problems:
        return BundleCheck(str(bundle.source), problems, (), {})
    results: list[VectorResult] = []
    unavailable: dict[str, str] = {}
    sets = bundle.test_sets
    for provider in providers:
        sessions: dict[str, ort.InferenceSession] = {}
        carried: dict[tuple[str, int], list[np.ndarray]] = {}
        for entry in sets:
            graph = entry["graph"]
            if graph not in sessions:
                session, reason = _session(bundle.graph_file(graph) if bundle.manifest else bundle.root / graph,
                                           provider)
                if session is None:
                    unavailable[provider] = reason
                    break
                sessions[graph] = session
            session = sessions[graph]
            inputs, outputs = read_set(bundle.root / entry["dir"])
            arrays = [a for _, a in inputs]
            stream = (graph, entry.get("stream", 0))
            if entry["kind"] == "stream" and entry.get("call", 0) > 0 and stream in carried:
                arrays = [arrays[0], *carried[stream]]
            feed = {i.name: a for i, a in zip(session.get_inputs(), arrays)}
            names = [o.name for o in session.get_outputs()]
            got = session.run(names, feed)
            if entry["kind"] == "stream":
                carried[stream] = got[1:]
            results += _compare(entry["dir"], entry["kind"], provider, names, got, [b for _, b in outputs])
    return BundleCheck(str(bundle.source), (), tuple(results), unavailable)
