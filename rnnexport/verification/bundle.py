"""Re-checking a bundle with no PyTorch: the one reader checks every checksum, then every test set runs.

Returns the same :class:`~rnnexport.verification.report.Report` as :func:`verify`,
with one ``test_vectors`` check per test set, engine and output, compared by the
one comparator. The streaming pair runs as a stream: a later call's state inputs
are the earlier call's state outputs as this engine computed them, not the stored ones.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rnnexport.backends.base import EngineUnavailable, Unavailable
from rnnexport.backends.onnxrt import EngineFailure, OrtRunner
from rnnexport.bundle import Bundle, open_bundle
from rnnexport.bundle.vectors import read_set
from rnnexport.ort import CPU, available_providers, full_name, start_session
from rnnexport.runtime.engine import LoadOptions, open_engine
from rnnexport.verification.compare import compare, tolerance_for
from rnnexport.verification.contracts import finite
from rnnexport.verification.report import Check, Contract, EngineStatus, Note, Report

__all__ = ["verify_bundle"]


def _default_providers() -> list[str]:
    listed = available_providers()
    return [CPU, *(p for p in listed if p != CPU)]


def _run_sets(bundle: Bundle, runners: dict[str, OrtRunner], engine: str, tol_dtype: str,
              unavailable: list[Unavailable]) -> list[Check]:
    tol = tolerance_for(tol_dtype)
    checks: list[Check] = []
    carried: dict[tuple[str, int], list[np.ndarray]] = {}
    for entry in bundle.test_vectors:
        runner = runners[entry.graph]
        inputs, outputs = read_set(bundle, entry.dir)
        arrays = [a for _, a in inputs]
        stream = (entry.graph, entry.stream or 0)
        if entry.kind == "stream" and (entry.call or 0) > 0 and stream in carried:
            arrays = [arrays[0], *carried[stream]]
        feeds = {t.name: a for t, a in zip(runner.inputs, arrays)}
        try:
            got = runner.infer(feeds)
        except EngineFailure as e:
            checks.append(Check(Contract.VECTORS, engine, entry.dir, "*", False, detail=str(e)))
            continue
        except EngineUnavailable as e:
            unavailable.append(e.result(entry.dir))
            continue
        values = list(got.values())
        if entry.kind == "stream":
            carried[stream] = values[1:]
        checks += finite(engine, entry.dir, got, entry.kind)
        for (name, want), value in zip(outputs, values):
            figures = compare(value, want, tol)
            checks.append(Check.of(Contract.VECTORS, engine, entry.dir, name, figures, entry.kind))
    return checks


def verify_bundle(path: str | Path, providers: Sequence[str] | None = None) -> Report:
    """Open a bundle (folder or zip) or an ONNX test folder, then run every test set on each provider.

    Args:
        path: the bundle or test folder; its checksums are checked when it is opened.
        providers: onnxruntime providers (``cpu``, ``cuda``, ``tensorrt`` or full names);
            None: every one this build lists (those that do not start are reported unavailable).

    Raises:
        BundleError: the bundle is unreadable, unsafe, tampered with or malformed.
        ProviderError: an unknown provider name.
    """
    started = time.perf_counter()
    wanted = [full_name(p) for p in providers] if providers is not None else _default_providers()
    bundle = open_bundle(path)
    manifest = bundle.manifest
    if manifest is not None:
        open_engine(bundle, LoadOptions())  # each graph loads and its metadata matches the manifest, as an app sees it
    else:
        for source in bundle.graphs.values():
            start_session(source.model, "cpu", name=f"{source.name} of {path}")  # a damaged graph is bad input
    dtype = "float32"
    checks: list[Check] = []
    unavailable: list[Unavailable] = []
    statuses: list[EngineStatus] = []
    for provider in dict.fromkeys(wanted):
        runners = {key: OrtRunner(source.model, provider) for key, source in bundle.graphs.items()}
        name = next(iter(runners.values())).name
        try:
            for runner in runners.values():
                runner.activate()
        except EngineUnavailable as e:
            unavailable.append(e.result())
            statuses.append(EngineStatus(name, "onnxruntime", provider, providers is not None, False, e.reason))
            continue
        begun = time.perf_counter()
        try:
            checks += _run_sets(bundle, runners, name, dtype, unavailable)
        finally:
            for runner in runners.values():
                runner.deactivate()
        statuses.append(EngineStatus(name, "onnxruntime", provider, providers is not None, True,
                                     seconds=time.perf_counter() - begun))
    first = next(iter(manifest.graphs.values())) if manifest else None
    return Report(
        model=str(path),
        step_model=None,
        source=manifest.description if manifest else "ONNX test folder",
        form=first.form.value if first else "",
        lowering=first.lowering if first else "",
        seq_len=None,
        seed=0,
        tolerance=tolerance_for(dtype),
        providers_requested=tuple(wanted) if providers is not None else None,
        providers_available=tuple(available_providers()),
        engines=tuple(statuses),
        cases=(),
        checks=tuple(checks),
        unavailable=tuple(unavailable),
        notes=() if manifest else (Note("no_manifest"),),
        seconds=time.perf_counter() - started,
        kind="bundle",
        test_sets=tuple(t.dir for t in bundle.test_vectors),
    )
