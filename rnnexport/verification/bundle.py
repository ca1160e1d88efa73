"""Re-checking a bundle with no PyTorch: the one reader checks every checksum, then every test set runs.

Returns the same :class:`~rnnexport.verification.report.Report` as :func:`verify`,
with one ``test_vectors`` check per test set, engine and output, compared by the
one comparator, and a ``finite`` check per output. Every variant the manifest lists as
made is re-checked on the test sets of its graph, with the tolerance it was packaged with.
The streaming pair runs as a stream: a later call's state inputs are the earlier call's
state outputs as this engine computed them, not the stored ones.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rnnexport.bundle import Bundle, GraphSource, VariantEntry, VectorEntry, open_bundle
from rnnexport.bundle.vectors import read_set
from rnnexport.core.compare import Tolerance, compare, tolerance_for
from rnnexport.core.errors import VerifyError
from rnnexport.core.ort import CPU, available_providers, start_session
from rnnexport.engines.base import EngineFailure, EngineUnavailable, Runner, Unavailable
from rnnexport.engines.registry import EngineSpec, engine_spec, make_runner
from rnnexport.runtime.engine import LoadOptions, open_engine
from rnnexport.verification.contracts import finite
from rnnexport.verification.report import Check, Contract, EngineStatus, Note, Report

__all__ = ["BundleOptions", "verify_bundle"]


@dataclasses.dataclass(frozen=True)
class BundleOptions:
    """How to re-check a bundle.

    Attributes:
        engines: engine names (``cpu``, ``cuda``, ``tensorrt``, ``reference``, ``openvino``,
            ``tract``, ``node``, ``wasm``, ``browser``); each named must start unless
            ``allow_missing``. None: every onnxruntime provider this build lists (those
            that do not start are reported).
        allow_missing: let a requested engine that cannot start pass.
        atol, rtol: override the tolerance of the float32 test sets (default: what each
            test set records, else 1e-5 and 1e-4).
        variants: also re-check every variant the manifest lists as made.
        threads: onnxruntime intra-op threads (None: its default).
    """

    engines: tuple[str, ...] | None = None
    allow_missing: bool = False
    atol: float | None = None
    rtol: float | None = None
    variants: bool = True
    threads: int | None = None


def _default_engines() -> list[EngineSpec]:
    listed = available_providers()
    return [engine_spec(p) for p in [CPU, *(p for p in listed if p != CPU)]]


def _vector_tolerance(entry: VectorEntry, options: BundleOptions) -> Tolerance:
    recorded = getattr(entry, "tolerance", None) or {}
    atol = options.atol if options.atol is not None else recorded.get("atol")
    rtol = options.rtol if options.rtol is not None else recorded.get("rtol")
    return tolerance_for("float32", atol, rtol)


def _variant_tolerance(variant: VariantEntry) -> Tolerance:
    atol, range_atol, rtol = variant.tolerance
    return Tolerance({"int8": "int8", "fp16": "float16"}.get(variant.name, "float32"), atol, rtol, range_atol)


def _run_sets(bundle: Bundle, runner: Runner, graph: str, label: str, tolerance: Tolerance | None,
              options: BundleOptions, unavailable: list[Unavailable]) -> list[Check]:
    """Every test set of ``graph`` on ``runner`` (``label``: the variant, or the set's kind)."""
    checks: list[Check] = []
    carried: dict[int, list[np.ndarray]] = {}
    for entry in (e for e in bundle.test_vectors if e.graph == graph):
        inputs, outputs = read_set(bundle, entry.dir)
        arrays = [a for _, a in inputs]
        if entry.kind == "stream" and (entry.call or 0) > 0 and (entry.stream or 0) in carried:
            arrays = [arrays[0], *carried[entry.stream or 0]]
        feeds = {t.name: _as(a, t.dtype) for t, a in zip(runner.inputs, arrays)}
        variant = label or entry.kind
        try:
            got = runner.infer(feeds)
        except EngineFailure as e:
            checks.append(Check(Contract.VECTORS, runner.name, entry.dir, "*", False, variant, detail=str(e)))
            continue
        except EngineUnavailable as e:
            unavailable.append(e.result(entry.dir))
            continue
        values = [np.asarray(v, np.float32) if v.dtype == np.float16 else v for v in got.values()]
        if entry.kind == "stream":
            carried[entry.stream or 0] = list(got.values())[1:]
        checks += finite(runner.name, entry.dir, dict(zip(got, values)), variant)
        tol = tolerance or _vector_tolerance(entry, options)
        for (name, want), value in zip(outputs, values):
            checks.append(Check.of(Contract.VECTORS, runner.name, entry.dir, name, compare(value, want, tol), variant))
    return checks


def _as(array: np.ndarray, dtype: str) -> np.ndarray:
    """A float feed in the float type the graph declares (a float16 variant's inputs)."""
    if array.dtype.kind == "f" and dtype in ("float16", "float32") and array.dtype.name != dtype:
        return array.astype(dtype)
    return array


def _variant_sources(bundle: Bundle) -> list[tuple[VariantEntry, GraphSource]]:
    """Each made variant's graph file, as the reader hands it out (path or bytes)."""
    if bundle.manifest is None:
        return []
    found = []
    for variant in bundle.manifest.variants:
        if variant.ok and variant.files and variant.of in bundle.graphs:
            main = variant.files[0]
            found.append((variant, GraphSource(bundle.graphs[variant.of].form, main, _model(bundle, main))))
    return found


def _model(bundle: Bundle, name: str) -> str | bytes:
    return str(bundle.path / name) if bundle.kind == "folder" else bundle.read(name)


def _engine(spec: EngineSpec, bundle: Bundle, options: BundleOptions, requested: bool,
            unavailable: list[Unavailable]) -> tuple[list[Check], EngineStatus]:
    runners = {key: make_runner(spec, source.model, options.threads) for key, source in bundle.graphs.items()}
    name = next(iter(runners.values())).name
    try:
        for runner in runners.values():
            runner.activate()
    except EngineUnavailable as e:
        for runner in runners.values():
            runner.deactivate()
        unavailable.append(e.result())
        return [], EngineStatus(name, spec.kind, spec.provider, requested, False, e.reason)
    begun = time.perf_counter()
    checks: list[Check] = []
    try:
        for key, runner in runners.items():
            checks += _run_sets(bundle, runner, key, "", None, options, unavailable)
    finally:
        for runner in runners.values():
            runner.deactivate()
    if options.variants:
        checks += _variants(spec, bundle, options, unavailable)
    detail = next(iter(runners.values())).detail
    return checks, EngineStatus(name, spec.kind, spec.provider, requested, True,
                                seconds=time.perf_counter() - begun, detail=detail)


def _variants(spec: EngineSpec, bundle: Bundle, options: BundleOptions, unavailable: list[Unavailable]) -> list[Check]:
    checks: list[Check] = []
    for variant, source in _variant_sources(bundle):
        runner = make_runner(spec, source.model, options.threads)
        label = f"variant {variant.name}"
        try:
            runner.activate()
        except EngineUnavailable as e:
            unavailable.append(Unavailable(e.engine, e.reason, label))
            continue
        try:
            checks += _run_sets(bundle, runner, variant.of, label, _variant_tolerance(variant), options, unavailable)
        finally:
            runner.deactivate()
    return checks


def verify_bundle(path: str | Path, engines: Sequence[str] | None = None, allow_missing: bool = False,
                  options: BundleOptions | None = None) -> Report:
    """Open a bundle (folder or zip) or an ONNX test folder, then run every test set on each engine.

    Args:
        path: the bundle or test folder; its checksums are checked when it is opened.
        engines, allow_missing: as :class:`BundleOptions` has them (kept for callers of old).
        options: everything else; its ``engines`` and ``allow_missing`` win when given.

    Raises:
        BundleError: the bundle is unreadable, unsafe, tampered with or malformed.
        VerifyError: an unknown engine name or a bad option.
    """
    opts = options or BundleOptions(tuple(engines) if engines is not None else None, allow_missing)
    if opts.threads is not None and opts.threads < 1:
        raise VerifyError(f"--threads must be at least 1, got {opts.threads}")
    started = time.perf_counter()
    wanted = [engine_spec(p) for p in opts.engines] if opts.engines is not None else _default_engines()
    bundle = open_bundle(path)
    manifest = bundle.manifest
    if manifest is not None:
        open_engine(bundle, LoadOptions())  # each graph loads and its metadata matches the manifest, as an app sees it
    else:
        for source in bundle.graphs.values():
            start_session(source.model, "cpu", name=f"{source.name} of {path}")  # a damaged graph is bad input
    checks: list[Check] = []
    unavailable: list[Unavailable] = []
    statuses: list[EngineStatus] = []
    for spec in dict.fromkeys(wanted):
        found, status = _engine(spec, bundle, opts, opts.engines is not None, unavailable)
        checks += found
        statuses.append(status)
    first = next(iter(manifest.graphs.values())) if manifest else None
    return Report(
        model=str(path),
        step_model=None,
        source=manifest.description if manifest else "ONNX test folder",
        form=first.form.value if first else "",
        lowering=first.lowering if first else "",
        seq_len=None,
        seed=0,
        tolerance=tolerance_for("float32", opts.atol, opts.rtol),
        providers_requested=tuple(s.provider or s.kind for s in wanted) if opts.engines is not None else None,
        providers_available=tuple(available_providers()),
        engines=tuple(statuses),
        cases=(),
        checks=tuple(checks),
        unavailable=tuple(unavailable),
        notes=() if manifest else (Note("no_manifest"),),
        seconds=time.perf_counter() - started,
        kind="bundle",
        test_sets=tuple(t.dir for t in bundle.test_vectors),
        allow_missing=opts.allow_missing,
    )
