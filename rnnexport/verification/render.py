"""Renderers of a :class:`~rnnexport.verification.report.Report`: a text table, JSON, and a plot.

The report is data; these only format it. ``plot`` needs matplotlib, the optional
``plot`` extra (``pip install 'rnnexport[plot]'``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from pathlib import Path

import numpy as np

from rnnexport.core import io
from rnnexport.core.data import printable
from rnnexport.core.errors import VerifyError
from rnnexport.verification.findings import Diagnosis, OutputDivergence
from rnnexport.verification.options import Grid
from rnnexport.verification.report import CONTRACT_TITLES, Check, Contract, Report, ReportKind

__all__ = ["EngineTable", "check_writable", "curves", "diagnosis_lines", "engine_table", "histogram", "json_text",
           "markdown_text", "plot", "render_text", "require_matplotlib", "summary_line", "verdict", "write_json"]

PLOT_HINT = "pip install 'rnnexport[plot]'"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def _drift(check: Check) -> str:
    if check.first_step is None:
        return "-"
    return f"{check.first_step:.1e} -> {check.last_step:.1e}"


def verdict(report: Report) -> str:
    """``PASS`` or ``FAIL``."""
    return "PASS" if report.passed else "FAIL"


def summary_line(report: Report) -> str:
    """``PASS ...`` or ``FAIL ...``: one line with the counts and the first failure."""
    engines = sorted({c.engine for c in report.checks if c.engine != "pytorch"})
    missing = sorted({e.name for e in report.engines if e.requested and not e.available})
    tail = f"; unavailable: {', '.join(missing)}" if missing else ""
    grid = (f"{len(report.test_sets)} test sets" if report.kind is ReportKind.BUNDLE else f"{len(report.cases)} cases")
    what = (f"{len(report.contracts())} contracts x {len(engines)} engines x {grid}, "
            f"{len(report.checks)} checks in {report.seconds:.1f} s{tail}")
    if report.missing and not report.allow_missing:
        gone = report.missing[0]
        return (f"FAIL  {len(report.missing)} requested engine(s) did not start; first: {gone.name}: {gone.reason} "
                f"(--allow-missing lets them pass) ({what})")
    if not report.ran:
        return f"FAIL  no graph engine ran ({what})"
    failures = report.failures
    if not failures:
        return f"PASS  {what}"
    first = failures[0]
    where = f"{CONTRACT_TITLES[first.contract]} on {first.engine}, {first.case} {first.output}"
    figures = f"max abs {first.max_abs:.3g}" if first.max_abs is not None else first.detail
    return f"FAIL  {len(failures)} of {len(report.checks)} checks failed; first: {where}: {figures}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def render_text(report: Report, quiet: bool = False) -> str:
    """The worst case per contract and engine, engines that did not run, notes, then PASS/FAIL.

    Control characters that a bundle's description or an engine's message holds are escaped
    (:func:`~rnnexport.core.data.printable`): each line is one line of the report.
    """
    if quiet:
        return printable(summary_line(report))
    lines = [f"verify {report.model}: {report.source}", *_header(report),
             f"  tolerance  {report.tolerance.dtype}: {report.tolerance.describe()}", ""]
    rows = [["contract", "engine", "checks", "failed", "worst case", "output", "max abs", "max rel",
             "step 1 -> last", "result"]]
    for (contract, engine), (worst, count, failed) in report.worst().items():
        case = worst.case + (f" {worst.variant}" if worst.variant else "")
        rows.append([CONTRACT_TITLES[contract], engine, str(count), str(failed), case, worst.output,
                     _num(worst.max_abs), _num(worst.max_rel), _drift(worst), "FAIL" if failed else "pass"])
    lines += _table(rows) if len(rows) > 1 else ["(no checks ran)"]
    failures = report.failures
    for check in failures[:10]:
        figures = f"max abs {_num(check.max_abs)}, max rel {_num(check.max_rel)}; " if check.max_abs is not None else ""
        variant = f" {check.variant}" if check.variant else ""
        lines.append(f"  FAIL {CONTRACT_TITLES[check.contract]} {check.engine} {check.case}{variant} "
                     f"{check.output}: {figures}{check.detail}")
    if len(failures) > 10:
        lines.append(f"  ... and {len(failures) - 10} more failures (see --json)")
    lines += _unavailable(report)
    lines += [f"note  {note.text()}" for note in report.notes]
    if report.diagnosis is not None:
        lines += diagnosis_lines(report.diagnosis)
    lines.append(summary_line(report))
    return "\n".join(printable(line) for line in lines)


def _output_line(divergence: OutputDivergence) -> str:
    if divergence.max_abs is None:
        return divergence.detail
    if divergence.first_step is None and not divergence.streams:
        return f"max abs {divergence.max_abs:.2e}" + ("" if divergence.detail else ", within tolerance")
    streams = f" in stream(s) {', '.join(map(str, divergence.streams))}" if divergence.streams else ""
    step = f" from step {divergence.first_step}" if divergence.first_step is not None else ""
    return f"out of tolerance{step}{streams}; max abs {divergence.max_abs:.2e}"


def diagnosis_lines(diagnosis: Diagnosis) -> list[str]:
    """The diagnosis as text: per output where it leaves the tolerance, the first diverging value, the hints."""
    lines = [f"diagnosis  {diagnosis.case} ({diagnosis.engine}), graph values read on {diagnosis.ran_on}, "
             f"{diagnosis.seconds:.1f} s" + ("" if diagnosis.complete else " (stopped at its time bound)")]
    lines += [f"  {d.output:<8} {_output_line(d)}" for d in diagnosis.outputs]
    first = diagnosis.first
    if first is not None:
        lines.append(f"  {first.title}: {first.location.describe()}")
        if first.error is not None:
            lines.append(f"    the nearest value PyTorch computed of its size is {first.error:.2e} off")
        lines += [f"    input {i.describe()}" for i in first.inputs]
        lines += [f"    {detail}" for detail in first.details]
    for hint in diagnosis.hints:
        lines.append(f"  hint  {hint.title}: {hint.text}")
        lines.append(f"        evidence: {hint.evidence}")
    if diagnosis.method:
        lines.append(f"  method: {diagnosis.method}")
    lines += [f"  note: {note}" for note in diagnosis.notes]
    return lines


def _unavailable(report: Report) -> list[str]:
    """One line per engine (and reason) that could not run; an engine not asked for that did not start
    at all is left to the ``not_started`` note, without onnxruntime's library errors."""
    unasked = {e.name for e in report.engines if not e.requested and not e.available}
    lines, seen = [], set()
    for item in report.unavailable:
        key = (item.engine, item.reason)
        if key in seen or (item.case is None and item.engine in unasked):
            continue
        seen.add(key)
        cases = sorted({u.case for u in report.unavailable if (u.engine, u.reason) == key and u.case})
        scope = "" if not item.case else (f" ({len(cases)} cases)" if item.variant is None else f" ({', '.join(cases)})")
        lines.append(f"unavailable  {item.engine}{scope}: {item.reason}")
    return lines


def _header(report: Report) -> list[str]:
    if report.kind is ReportKind.BUNDLE:
        checked = not any(n.kind == "no_manifest" for n in report.notes)
        return ["  checksums  " + ("every file matches its size and SHA-256 in the manifest" if checked else "none"),
                f"  test sets  {len(report.test_sets)}: {', '.join(report.test_sets)}"]
    batches = sorted({c.batch for c in report.cases})
    times = sorted({c.time for c in report.cases})
    inputs = list(dict.fromkeys(c.inputs.value for c in report.cases))
    return [f"  graph      {report.form}" + (f" (fixed T={report.seq_len})" if report.seq_len else "")
            + f", {report.lowering}" + (f"; step graph {report.step_model}" if report.step_model else ""),
            f"  cases      {len(report.cases)}{_grid(report)}: batch {', '.join(map(str, batches))} x T "
            f"{', '.join(map(str, times))} x inputs {', '.join(inputs)} x state zero, random; seed {report.seed}"]


def _grid(report: Report) -> str:
    if report.grid is Grid.QUICK:
        return " (quick grid; --grid full for every size)"
    return f" ({report.grid.value} grid)" if report.grid is not None else ""


def check_writable(path: str | os.PathLike[str], what: str) -> Path:
    """Fail early (before a long run) when ``path`` cannot be written: :func:`rnnexport.io.check_writable`."""
    return io.check_writable(path, what, VerifyError)


def json_text(report: Report) -> str:
    """The full report as strict JSON text (schema: ``docs/verify-report.schema.json``)."""
    return json.dumps(report.to_json(), indent=1, allow_nan=False) + "\n"


def write_json(report: Report, path: str | os.PathLike[str]) -> Path:
    """The full report as strict JSON, written atomically to the file ``path``."""
    io.atomic_write(path, json_text(report).encode(), "report", VerifyError)
    return Path(path)


PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def require_matplotlib(path: str | os.PathLike[str] | None = None) -> None:
    """Raise :class:`VerifyError` when matplotlib is missing (with the install hint) or ``path`` cannot be a plot."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise VerifyError(f"--plot needs matplotlib, which is not installed: {PLOT_HINT}") from e
    if path is not None:
        if Path(path).suffix.lower().lstrip(".") not in PLOT_FORMATS:
            raise VerifyError(f"plot file {path} must end in one of .{', .'.join(PLOT_FORMATS)}")
        check_writable(path, "plot")


def _curve(check: Check) -> np.ndarray:
    assert check.curve is not None  # curves() keeps only checks with a curve
    return check.curve


def curves(report: Report, contract: Contract) -> dict[str, tuple[str, np.ndarray]]:
    """Per engine: the longest case's per-step max abs error of ``y``, maxed over such cases."""
    by_engine: dict[str, list[Check]] = {}
    for check in report.checks:
        if check.contract is contract and check.curve is not None:
            by_engine.setdefault(check.engine, []).append(check)
    curves = {}
    for engine, checks in by_engine.items():
        longest = max(len(_curve(c)) for c in checks)
        mine = [c for c in checks if len(_curve(c)) == longest]
        curve = np.max(np.stack([_curve(c) for c in mine]), axis=0)
        curves[engine] = (f"{engine} (T={longest}, max over {len(mine)} checks)", curve)
    return curves


def plot(report: Report, path: str | os.PathLike[str]) -> Path:
    """Error vs time step, per engine, for contract 1 (and 3 when it ran), saved as an image."""
    require_matplotlib(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contracts = [c for c in (Contract.PYTORCH, Contract.STEP, Contract.CHUNKED) if curves(report, c)]
    fig, axes = plt.subplots(1, max(1, len(contracts)), figsize=(6 * max(1, len(contracts)), 4), squeeze=False)
    floor = 1e-12
    for ax, contract in zip(axes[0], contracts, strict=False):  # no contract to draw: one empty axes
        for label, curve in curves(report, contract).values():
            steps = np.arange(1, len(curve) + 1)
            ax.plot(steps, np.maximum(curve, floor), label=label, linewidth=1)
        ax.axhline(report.tolerance.atol, color="grey", linestyle="--", linewidth=0.8, label="atol")
        ax.set_yscale("log")
        ax.set_xlabel("time step")
        ax.set_ylabel("max abs error of y")
        ax.set_title(CONTRACT_TITLES[contract])
        ax.legend(fontsize=7)
    if not contracts:
        axes[0][0].text(0.5, 0.5, "no output with a time axis was compared", ha="center", va="center")
    fig.suptitle(f"{Path(report.model).name}: {report.source}", fontsize=9)
    fig.tight_layout()

    try:
        io.atomic_write(path, lambda f: fig.savefig(f, dpi=110, format=Path(path).suffix.lower().lstrip(".")),
                        "plot", VerifyError)
        return Path(path)
    finally:
        plt.close(fig)


# --- the contract x engine table, histograms and markdown (also used by render_html) -----------------------

@dataclasses.dataclass(frozen=True)
class Cell:
    """One contract on one engine: its worst check, and how many checks ran and failed."""

    worst: Check
    count: int
    failed: int


@dataclasses.dataclass(frozen=True)
class EngineTable:
    """Contracts (rows) x engines (columns); None where a contract did not run on an engine."""

    engines: tuple[str, ...]
    rows: tuple[tuple[Contract, tuple[Cell | None, ...]], ...]


def engine_table(report: Report) -> EngineTable:
    """The contract x engine table of ``report``: PyTorch first, then the engines in the order they ran."""
    worst = report.worst()
    engines = tuple(dict.fromkeys(["pytorch", *(e for _, e in worst)] if any(e == "pytorch" for _, e in worst)
                                  else [e for _, e in worst]))
    rows = []
    for contract in report.contracts():
        cells = tuple(Cell(*worst[(contract, e)]) if (contract, e) in worst else None for e in engines)
        rows.append((contract, cells))
    return EngineTable(engines, tuple(rows))


#: The error histograms' bins: half decades from 1e-12 up.
HISTOGRAM_FLOOR = -12.0


def histogram(report: Report, contract: Contract, engine: str) -> tuple[list[int], list[float], int]:
    """Counts of the errors of ``engine``'s checks of ``contract`` in half-decade log10 bins, the edges, the total.

    The errors are each time step of every curve (``y``) and the max abs of each check without one
    (the state outputs); exact zeros count in the lowest bin.
    """
    values: list[float] = []
    for check in report.checks:
        if check.contract is contract and check.engine == engine:
            if check.curve is not None:
                values.extend(float(v) for v in check.curve)
            elif check.max_abs is not None:
                values.append(check.max_abs)
    finite = np.array([v for v in values if np.isfinite(v)], np.float64)
    if finite.size == 0:
        return [], [], 0
    levels = np.log10(np.maximum(finite, 10.0 ** HISTOGRAM_FLOOR))
    top = max(float(np.ceil(levels.max() * 2) / 2), HISTOGRAM_FLOOR + 0.5)
    low = min(float(np.floor(levels.min() * 2) / 2), top - 0.5)
    edges = [float(v) for v in np.arange(low, top + 0.25, 0.5)]
    counts, _ = np.histogram(levels, bins=edges)
    return [int(c) for c in counts], edges, int(finite.size)


_SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(curve: np.ndarray, width: int = 48) -> str:
    """A curve as one line of block characters (log scale), at most ``width`` wide."""
    stride = max(1, -(-len(curve) // width))
    bins = np.array([curve[i:i + stride].max() for i in range(0, len(curve), stride)], np.float64)
    levels = np.log10(np.maximum(bins, 1e-12))
    low, high = float(levels.min()), float(levels.max())
    scale = (levels - low) / (high - low) if high > low else np.zeros_like(levels)
    return "".join(_SPARKS[int(round(v * (len(_SPARKS) - 1)))] for v in scale)


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_text(report: Report) -> str:
    """The report as markdown for CI logs: verdict, diagnosis, contract x engine table, curves as sparklines."""
    lines = [f"# rnnexport verify: {verdict(report)}", "", f"**{summary_line(report)}**", "",
             f"- model: `{report.model}` ({report.form or 'bundle'}, {report.lowering})",
             f"- source: {_md(report.source)}", f"- tolerance: {report.tolerance.dtype}: `{report.tolerance.describe()}`"]
    if report.diagnosis is not None:
        lines += ["", "## Diagnosis", "", "```text", *diagnosis_lines(report.diagnosis), "```"]
    table = engine_table(report)
    lines += ["", "## Contracts x engines", ""]
    if table.rows:
        lines += ["| contract | " + " | ".join(table.engines) + " |", "|---" * (len(table.engines) + 1) + "|"]
        for contract, cells in table.rows:
            words = ["-" if c is None else (f"**FAIL {c.failed}/{c.count}**" if c.failed else f"pass {c.count}")
                     + ("" if c is None or c.worst.max_abs is None else f" ({_num(c.worst.max_abs)})")
                     for c in cells]
            lines.append(f"| {CONTRACT_TITLES[contract]} | " + " | ".join(words) + " |")
    else:
        lines.append("No checks ran.")
    series = [(contract, curves(report, contract)) for contract in (Contract.PYTORCH, Contract.STEP, Contract.CHUNKED)]
    if any(s for _, s in series):
        lines += ["", "## Error along time (max abs of y per step, log scale)", "", "```text"]
        for contract, found in series:
            for label, curve in found.values():
                lines.append(f"{CONTRACT_TITLES[contract]:<28} {sparkline(curve)}  "
                             f"{curve[0]:.1e} -> {curve[-1]:.1e}  {label}")
        lines.append("```")
    engines = sorted({c.engine for c in report.checks if c.contract is Contract.PYTORCH})
    hist = [(e, histogram(report, Contract.PYTORCH, e)) for e in engines]
    if any(total for _, (_, _, total) in hist):
        lines += ["", "## Error histograms (contract 1, errors per half decade)", "", "```text"]
        for engine, (counts, edges, total) in hist:
            lines.append(f"{engine} ({total} errors)")
            for count, (low, high) in zip(counts, itertools.pairwise(edges), strict=True):
                bar = "#" * max(1 if count else 0, round(40 * count / max(counts)))
                lines.append(f"  1e{low:<5g} .. 1e{high:<5g} {bar} {count}")
        lines.append("```")
    failures = report.failures
    if failures:
        lines += ["", f"## Failures ({len(failures)})", ""]
        lines += [f"- {CONTRACT_TITLES[c.contract]} {c.engine} {c.case} {c.variant} {c.output}: "
                  f"max abs {_num(c.max_abs)} {_md(c.detail[:200])}" for c in failures[:20]]
    lines += ["", "## Engines", "", "| engine | ran | seconds | reason / detail |", "|---|---|---|---|"]
    lines += [f"| {e.name} | {'yes' if e.available else 'no'} | {e.seconds:.2f} | {_md(e.reason or e.detail)} |"
              for e in report.engines]
    if report.notes:
        lines += ["", "## Notes", "", *[f"- {_md(n.text())}" for n in report.notes]]
    lines += ["", "## Environment", ""]
    if report.environment is not None:
        lines += [f"- {item}" for item in report.environment.lines()]
    lines.append(f"- providers listed by onnxruntime: {', '.join(report.providers_available) or 'none'}")
    return "\n".join(lines) + "\n"
