"""Where a bundle was proved: its test vectors run on engines before it is shipped.

The bundle, complete but for this record, is checked exactly as ``rnnexport verify
BUNDLE`` checks it (:func:`rnnexport.verification.run.verify`: the runners of
:mod:`rnnexport.engines.registry`, the one comparator, each set's recorded tolerance,
each variant's own). A bundle has no case grid: its proof is its own test sets. Its
checks are summed up per graph, variant and engine into
:class:`~rnnexport.bundle.EngineCheck` records for the manifest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from rnnexport.bundle import CheckStatus, EngineCheck, Manifest
from rnnexport.verification.options import DEFAULT_TIMEOUT, VerifyOptions
from rnnexport.verification.report import Check, Contract, Report
from rnnexport.verification.run import verify

__all__ = ["PROOF_ENGINES", "Proof", "prove"]

#: The engines every bundle is checked on when it is made: present wherever rnnexport is.
PROOF_ENGINES = ("cpu", "reference")

#: What a proof is about: ``(graph, None)`` for a graph, ``(graph, variant name)`` for a variant.
Key = tuple[str, str | None]


@dataclasses.dataclass(frozen=True)
class Proof:
    """Per graph and variant, what each engine gave on the test vectors."""

    checks: dict[Key, tuple[EngineCheck, ...]]

    def of(self, graph: str, variant: str | None = None) -> tuple[EngineCheck, ...]:
        return self.checks.get((graph, variant), ())

    def failures(self, graph: str, variant: str | None = None) -> list[EngineCheck]:
        return [c for c in self.of(graph, variant) if c.status is CheckStatus.FAILED]


def _key(check: Check, graph_of: dict[str, str]) -> Key | None:
    graph = graph_of.get(check.case)
    if graph is None:
        return None
    return graph, check.bundle_variant


def _summary(engine: str, checks: Sequence[Check]) -> EngineCheck:
    figures = [c.max_abs for c in checks if c.contract is Contract.VECTORS and c.max_abs is not None]
    failed = next((c for c in checks if not c.passed), None)
    sets = len({c.case for c in checks})
    worst = max(figures, default=None)
    if failed is not None:
        reason = f"{failed.case} {failed.output}: {failed.detail or 'out of tolerance'}"
        return EngineCheck(engine, CheckStatus.FAILED, worst, sets, reason)
    return EngineCheck(engine, CheckStatus.PASSED, worst, sets)


def _unavailable(report: Report, keys: list[Key], done: set[tuple[Key, str]]) -> dict[Key, list[EngineCheck]]:
    found: dict[Key, list[EngineCheck]] = {}

    def add(key: Key, engine: str, reason: str) -> None:
        if (key, engine) not in done:
            done.add((key, engine))
            found.setdefault(key, []).append(EngineCheck(engine, CheckStatus.UNAVAILABLE, reason=reason))

    for status in report.engines:
        if not status.available:
            for key in keys:
                add(key, status.name, status.reason)
    for missing in report.unavailable:
        for key in keys:
            if missing.case is None or (missing.variant is not None and missing.variant == key[1]):
                add(key, missing.engine, missing.reason)
    return found


def prove(folder: Path, manifest: Manifest, engines: Sequence[str] = PROOF_ENGINES,
          timeout: float | None = DEFAULT_TIMEOUT) -> Proof:
    """Run the test vectors of the bundle ``folder`` (its manifest written) on ``engines``, each call
    within ``timeout`` seconds (one over it fails the check, naming the engine and the budget).

    An engine that cannot run a graph here is recorded as unavailable with the reason.
    """
    report = verify(folder, options=VerifyOptions(engines=tuple(engines), allow_missing=True, timeout=timeout))
    graph_of = {t.dir: t.graph for t in manifest.test_vectors}
    keys: list[Key] = [(g, None) for g in manifest.graphs] + [(v.of, v.name) for v in manifest.variants if v.ok]
    grouped: dict[tuple[Key, str], list[Check]] = {}
    for check in report.checks:
        key = _key(check, graph_of)
        if key is not None:
            grouped.setdefault((key, check.engine), []).append(check)
    proofs: dict[Key, list[EngineCheck]] = {}
    for (key, engine), checks in grouped.items():
        proofs.setdefault(key, []).append(_summary(engine, checks))
    for key, more in _unavailable(report, keys, set(grouped)).items():
        proofs.setdefault(key, []).extend(more)
    return Proof({key: tuple(sorted(found, key=lambda c: c.engine)) for key, found in proofs.items()})
