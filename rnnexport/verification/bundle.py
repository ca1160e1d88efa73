"""Re-checking a bundle with no PyTorch: the one reader checks every checksum, then every test set runs.

Returns the same :class:`~rnnexport.verification.report.Report` as a graph's verification,
with one ``test_vectors`` check per test set, engine and output, compared by the one
comparator, and a ``finite`` check per output. Every variant the manifest lists as made is
re-checked on the test sets of its graph, with the tolerance it was packaged with; the
``openvino-stateful`` variant, which only OpenVINO runs, is streamed through OpenVINO with its
state inside (:mod:`rnnexport.verification.stateful`) wherever openvino is installed, whatever
the engines asked for (unavailable, with the reason, where it is not). The
streaming pair runs as a stream: a later call's state inputs are the earlier call's state
outputs as this engine computed them, not the stored ones. Engines are planned and started as
for a graph (:mod:`rnnexport.verification.engines`), without the CPU baseline of contract 6.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from rnnexport.bundle import Bundle, GraphSource, VariantEntry, VectorEntry, open_bundle
from rnnexport.bundle.proven import cpu_difference
from rnnexport.bundle.vectors import Tensors, read_set
from rnnexport.core.compare import VARIANT_TOLERANCES, Tolerance, compare, tolerance_for
from rnnexport.core.errors import BundleError
from rnnexport.core.ort import available_providers, start_session
from rnnexport.engines.base import EngineFailure, EngineUnavailable, Runner, Unavailable
from rnnexport.engines.registry import running
from rnnexport.runtime.engine import LoadOptions, open_engine
from rnnexport.verification.contracts import finite, prepare
from rnnexport.verification.engines import Engine, Lineup, plan
from rnnexport.verification.options import Progress, Tick, VerifyOptions
from rnnexport.verification.report import Check, Contract, Note, Report, ReportKind
from rnnexport.verification.stateful import check_stateful, stateful_variants

__all__ = ["verify_bundle"]


def _vector_tolerance(entry: VectorEntry, options: VerifyOptions) -> Tolerance:
    recorded = entry.tolerance or {}
    atol = options.atol if options.atol is not None else recorded.get("atol")
    rtol = options.rtol if options.rtol is not None else recorded.get("rtol")
    return tolerance_for("float32", atol, rtol)


def _variant_tolerance(variant: VariantEntry) -> Tolerance:
    """rnnexport's own tolerance of the variant, or the manifest's where it is stricter: a manifest can
    tighten a check, never loosen it into a pass."""
    atol, range_atol, rtol = variant.tolerance
    own = VARIANT_TOLERANCES.get(variant.name)
    if own is None:
        return Tolerance("float32", atol, rtol, range_atol)
    stricter = [min(given, limit) if given > 0 else limit
                for given, limit in ((atol, own.atol), (rtol, own.rtol), (range_atol, own.range_atol))]
    return dataclasses.replace(own, atol=stricter[0], rtol=stricter[1], range_atol=stricter[2])


def _cpu_notes(bundle: Bundle) -> list[Note]:
    """Where a made variant was proven on another CPU than this one (its kernels may differ here)."""
    if bundle.manifest is None:
        return []
    notes = []
    for variant in bundle.manifest.variants:
        difference = cpu_difference(variant.cpu) if variant.ok and variant.cpu is not None else None
        if difference:
            notes.append(Note("variant_cpu", {"variant": variant.name, "difference": difference}))
    return notes


class _Sets:
    """The test sets of one bundle on one engine at a time: the checks and what could not run."""

    def __init__(self, bundle: Bundle, options: VerifyOptions) -> None:
        self.bundle, self.options = bundle, options
        self.checks: list[Check] = []
        self.unavailable: list[Unavailable] = []

    def engine(self, engine: Engine) -> None:
        """Every graph's test sets on ``engine``, then every made variant's."""
        started = time.perf_counter()
        for key in self.bundle.graphs:
            self.run(engine.runners[_label(key)], key)
        if self.options.variants:
            for variant, source in _variant_sources(self.bundle):
                if not engine.stopped:  # a call ran over the time budget: no further call on this engine
                    self._variant(engine, variant, source)
        engine.seconds += time.perf_counter() - started

    def _variant(self, engine: Engine, variant: VariantEntry, source: GraphSource) -> None:
        label = f"variant {variant.name}"
        with running(engine.spec, {label: source.model}, self.options.threads, self.options.timeout) as runners:
            if isinstance(runners, EngineUnavailable):
                self.unavailable.append(Unavailable(runners.engine, runners.reason, label, variant.name))
            else:
                self.run(runners[label], variant.of, variant)

    def run(self, runner: Runner, graph: str, variant: VariantEntry | None = None) -> None:
        """Every test set of ``graph`` on ``runner`` (a variant's file, when ``variant`` is given)."""
        carried: dict[int, list[np.ndarray]] = {}
        for entry in (e for e in self.bundle.test_vectors if e.graph == graph):
            if runner.timed_out is not None:  # a call ran over the time budget: its failure is recorded once
                return
            inputs, outputs = read_set(self.bundle, entry.dir)
            _check_counts(self.bundle, entry.dir, runner, inputs, outputs)
            arrays = [a for _, a in inputs]
            if entry.kind == "stream" and (entry.call or 0) > 0 and (entry.stream or 0) in carried:
                state = carried[entry.stream or 0]  # the state inputs; x before them, a lengths input after
                arrays = [arrays[0], *state, *arrays[1 + len(state):]]
            label = f"variant {variant.name}" if variant else entry.kind
            name = variant.name if variant else None
            try:
                got = runner.infer(prepare(runner, {t.name: a for t, a in zip(runner.inputs, arrays, strict=True)}))
            except EngineFailure as e:
                self.checks.append(Check(Contract.VECTORS, runner.name, entry.dir, "*", False, label, detail=str(e),
                                         bundle_variant=name))
                continue
            except EngineUnavailable as e:
                self.unavailable.append(Unavailable(e.engine, e.reason, entry.dir, name))
                continue
            values = [np.asarray(v, np.float32) if v.dtype == np.float16 else v for v in got.values()]
            if entry.kind == "stream":
                carried[entry.stream or 0] = list(got.values())[1:]
            found = finite(runner.name, entry.dir, dict(zip(got, values, strict=True)), label)
            tol = _variant_tolerance(variant) if variant else _vector_tolerance(entry, self.options)
            found += [Check.of(Contract.VECTORS, runner.name, entry.dir, out, compare(value, want, tol), label)
                      for (out, want), value in zip(outputs, values, strict=True)]
            self.checks += [dataclasses.replace(c, bundle_variant=name) for c in found]


def _check_counts(bundle: Bundle, folder: str, runner: Runner, inputs: Tensors, outputs: Tensors) -> None:
    """Raise :class:`BundleError` unless the test set holds one file per graph input and per graph output.

    A file left out would leave an output unchecked; one added would be fed to nothing.
    """
    for what, files, declared in (("input", inputs, runner.inputs), ("output", outputs, runner.outputs)):
        if len(files) != len(declared):
            raise BundleError(f"test set {folder} of {bundle.path} has {len(files)} {what} files; its graph has "
                              f"{len(declared)} {what}s ({', '.join(t.name for t in declared)}), one file each")


def _label(key: str) -> str:
    return f"{key} graph"


def _variant_sources(bundle: Bundle) -> list[tuple[VariantEntry, GraphSource]]:
    """Each made variant's graph file."""
    if bundle.manifest is None:
        return []
    found = []
    stateful = stateful_variants(bundle.manifest.variants)
    for variant in bundle.manifest.variants:
        if variant.ok and variant.files and variant.of in bundle.graphs and variant not in stateful:
            main = variant.files[0]
            # the checked bytes, as the reader hands out every graph: what runs is what the checksum covered,
            # and a variant holds all its weights (it reads no external data)
            model = bundle.graph(main, ort_format=variant.name == "ort")
            found.append((variant, GraphSource(bundle.graphs[variant.of].form, main, model)))
    return found


def _open(path: str | os.PathLike[str]) -> Bundle:
    """The bundle, its checksums checked and each graph loaded as an app loads it (bad input: BundleError)."""
    bundle = open_bundle(path)
    if bundle.manifest is not None:
        open_engine(bundle, LoadOptions())  # each graph loads and its metadata matches the manifest
    else:
        for source in bundle.graphs.values():
            start_session(source.model, "cpu", name=f"{source.name} of {path}")  # a damaged graph is bad input
    return bundle


def verify_bundle(path: str | os.PathLike[str], options: VerifyOptions, progress: Progress | None = None) -> Report:
    """A bundle's test sets on every engine: see :func:`rnnexport.verification.run.verify`."""
    started = time.perf_counter()
    planned, notes = plan(options, baseline=False)  # validates engine names before any slow work
    bundle = _open(path)
    sets = _Sets(bundle, options)
    models = {_label(key): source.model for key, source in bundle.graphs.items()}
    with Lineup(planned, models, options.threads, options.allow_missing, options.timeout) as lineup:
        engines = [] if lineup.stopped else lineup.engines
        for number, engine in enumerate(engines, 1):
            sets.engine(engine)
            if progress is not None:
                progress(Tick(number, len(engines), number, len(engines), engine.name, time.perf_counter() - started))
        if options.variants and not lineup.stopped and bundle.manifest is not None:
            for variant in stateful_variants(bundle.manifest.variants):
                checks, unavailable = check_stateful(bundle, variant, _variant_tolerance(variant), options.timeout)
                sets.checks += checks
                sets.unavailable += unavailable
    manifest = bundle.manifest
    notes += [*lineup.notes(), *([] if manifest else [Note("no_manifest")])]
    if options.variants:
        notes += _cpu_notes(bundle)
    first = next(iter(manifest.graphs.values())) if manifest else None
    return Report(
        model=str(path),
        step_model=None,
        source=manifest.description if manifest else "ONNX test folder",
        form=first.form.value if first else "",
        lowering=first.lowering if first else "",
        seq_len=None,
        seed=0,
        tolerance=tolerance_for("float32", options.atol, options.rtol),
        providers_requested=lineup.requested(),
        providers_available=tuple(available_providers()),
        engines=lineup.final_statuses(),
        cases=(),
        checks=tuple(sets.checks),
        unavailable=(*lineup.unavailable, *sets.unavailable),
        notes=tuple(notes),
        seconds=time.perf_counter() - started,
        kind=ReportKind.BUNDLE,
        test_sets=tuple(t.dir for t in bundle.test_vectors),
        allow_missing=options.allow_missing,
    )

