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

from rnnexport.backends.base import EngineFailure, EngineUnavailable, Runner, Unavailable
from rnnexport.backends.registry import EngineSpec, engine_spec, make_runner
from rnnexport.bundle import Bundle, open_bundle
from rnnexport.bundle.vectors import read_set
from rnnexport.ort import CPU, available_providers, start_session
from rnnexport.runtime.engine import LoadOptions, open_engine
from rnnexport.verification.compare import compare, tolerance_for
from rnnexport.verification.contracts import finite
from rnnexport.verification.report import Check, Contract, EngineStatus, Note, Report

__all__ = ["verify_bundle"]


def _default_engines() -> list[EngineSpec]:
    listed = available_providers()
    return [engine_spec(p) for p in [CPU, *(p for p in listed if p != CPU)]]


def _run_sets(bundle: Bundle, runners: dict[str, Runner], engine: str, tol_dtype: str,
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


def verify_bundle(path: str | Path, engines: Sequence[str] | None = None, allow_missing: bool = False) -> Report:
    """Open a bundle (folder or zip) or an ONNX test folder, then run every test set on each engine.

    Args:
        path: the bundle or test folder; its checksums are checked when it is opened.
        engines: engine names (``cpu``, ``cuda``, ``tensorrt``, ``reference``, ``openvino``, ``tract``,
            ``node``, ``wasm``, ``browser``); each named must start unless ``allow_missing``.
            None: every onnxruntime provider this build lists (those that do not start are reported).
        allow_missing: let a requested engine that cannot start pass.

    Raises:
        BundleError: the bundle is unreadable, unsafe, tampered with or malformed.
        VerifyError: an unknown engine name.
    """
    started = time.perf_counter()
    wanted = [engine_spec(p) for p in engines] if engines is not None else _default_engines()
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
    for spec in dict.fromkeys(wanted):
        runners = {key: make_runner(spec, source.model) for key, source in bundle.graphs.items()}
        name = next(iter(runners.values())).name
        try:
            for runner in runners.values():
                runner.activate()
        except EngineUnavailable as e:
            for runner in runners.values():
                runner.deactivate()
            unavailable.append(e.result())
            statuses.append(EngineStatus(name, spec.kind, spec.provider, engines is not None, False, e.reason))
            continue
        begun = time.perf_counter()
        try:
            checks += _run_sets(bundle, runners, name, dtype, unavailable)
        finally:
            for runner in runners.values():
                runner.deactivate()
        statuses.append(EngineStatus(name, spec.kind, spec.provider, engines is not None, True,
                                     seconds=time.perf_counter() - begun, detail=next(iter(runners.values())).detail))
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
        providers_requested=tuple(s.provider or s.kind for s in wanted) if engines is not None else None,
        providers_available=tuple(available_providers()),
        engines=tuple(statuses),
        cases=(),
        checks=tuple(checks),
        unavailable=tuple(unavailable),
        notes=() if manifest else (Note("no_manifest"),),
        seconds=time.perf_counter() - started,
        kind="bundle",
        test_sets=tuple(t.dir for t in bundle.test_vectors),
        allow_missing=allow_missing,
    )
