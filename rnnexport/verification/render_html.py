"""A report to open: one self-contained HTML page of a :class:`~rnnexport.verification.report.Report`.

The verdict first; then the diagnosis, the contract x engine table, the error along time per
engine and the error histograms (inline SVG, drawn here: no plotting library), the
failures, the engines, the notes and the environment. The page loads nothing: no scripts,
fonts, styles or images from anywhere, and its Content-Security-Policy forbids them. The
markdown form of the same report (for CI logs) is :func:`rnnexport.verification.render.markdown_text`;
:func:`write_report` writes either, by the file's suffix.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rnnexport.core import io
from rnnexport.core.errors import VerifyError
from rnnexport.verification.findings import Diagnosis
from rnnexport.verification.render import (
    check_writable,
    curves,
    engine_table,
    histogram,
    markdown_text,
    summary_line,
    verdict,
)
from rnnexport.verification.report import CONTRACT_TITLES, Contract, Report

__all__ = ["REPORT_SUFFIXES", "check_report_path", "html_text", "write_report"]

#: What ``--report`` writes, by the file's suffix.
REPORT_SUFFIXES = {".html": "html", ".htm": "html", ".md": "markdown", ".markdown": "markdown"}
#: Line colours of the engines in the curves, in order (distinct in colour and in lightness).
PALETTE = ("#1f5fbf", "#d9480f", "#2b8a3e", "#7048e8", "#c2255c", "#0b7285", "#5c940d", "#495057")
#: At most this many points per curve in the page (steps are binned, max per bin).
MAX_POINTS = 400
_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#212529}
main{max-width:1100px;margin:0 auto;padding:0 20px 40px}
.verdict{padding:18px 20px;color:#fff}
.verdict .word{font-size:44px;font-weight:700;letter-spacing:1px;margin-right:16px}
.verdict.pass{background:#1b7f3b}.verdict.fail{background:#b00020}
.verdict .line{font-size:17px}.verdict .what{opacity:.9;font-size:14px;margin-top:4px}
h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #dee2e6;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #dee2e6;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f1f3f5}td.ok{background:#e6f4ea}td.bad{background:#fde2e1;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.hint{border-left:4px solid #d9480f;background:#fff4e6;padding:6px 10px;margin:8px 0}
.finding{border-left:4px solid #b00020;background:#fff5f5;padding:6px 10px;margin:8px 0}
pre{background:#f8f9fa;padding:8px;overflow-x:auto;font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0;max-width:440px}
figcaption{font-size:13px;color:#495057}
.muted{color:#6c757d;font-size:13px}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


# --- drawings -------------------------------------------------------------------------------------------

def _binned(curve: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Steps (1-based) and values of ``curve``, at most :data:`MAX_POINTS` (max per bin)."""
    stride = max(1, math.ceil(len(curve) / MAX_POINTS))
    steps = np.arange(1, len(curve) + 1, stride)
    values = np.array([curve[i:i + stride].max() for i in range(0, len(curve), stride)])
    return steps, values


def _log_range(values: Sequence[float], tolerance: float) -> tuple[float, float]:
    positive = [v for v in values if v > 0 and math.isfinite(v)] + [tolerance]
    low = math.floor(math.log10(min(positive)))
    high = math.ceil(math.log10(max(positive)))
    return float(low), float(max(high, low + 1))


def curve_svg(series: dict[str, tuple[str, np.ndarray]], tolerance: float, title: str) -> str:
    """Error vs time step per engine, log scale, with the tolerance's atol dashed: one inline SVG."""
    width, left, right, top, bottom = 440, 58, 12, 24, 36
    inner_w, inner_h = width - left - right, 190
    height = top + inner_h + bottom + 14 * len(series)
    finite = [float(v) for _, c in series.values() for v in c if math.isfinite(v)]
    low, high = _log_range(finite, tolerance)
    longest = max(len(c) for _, c in series.values())

    def y_of(value: float) -> float:
        level = math.log10(max(value, 10 ** low)) if math.isfinite(value) else high
        return top + inner_h * (1 - (min(level, high) - low) / (high - low))

    def x_of(step: float) -> float:
        return left + inner_w * ((step - 1) / max(longest - 1, 1))

    parts = [f'<svg width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
             f'<rect x="{left}" y="{top}" width="{inner_w}" height="{inner_h}" fill="#fff" stroke="#adb5bd"/>']
    for level in range(int(low), int(high) + 1):
        y = y_of(10.0 ** level)
        parts.append(f'<line x1="{left}" x2="{left + inner_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#f1f3f5"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">1e{level}</text>')
    for step in sorted({1, (longest + 1) // 2, longest}):
        parts.append(f'<text x="{x_of(step):.1f}" y="{top + inner_h + 14}" font-size="10" '
                     f'text-anchor="middle">{step}</text>')
    parts.append(f'<text x="{left + inner_w / 2}" y="{top + inner_h + 28}" font-size="11" '
                 'text-anchor="middle">time step</text>')
    y_tol = y_of(tolerance)
    parts.append(f'<line class="tolerance" x1="{left}" x2="{left + inner_w}" y1="{y_tol:.1f}" y2="{y_tol:.1f}" '
                 'stroke="#868e96" stroke-dasharray="5,4"/>')
    for index, (engine, (label, curve)) in enumerate(series.items()):
        steps, values = _binned(curve)
        points = " ".join(f"{x_of(s):.1f},{y_of(float(v)):.1f}" for s, v in zip(steps, values, strict=True))
        colour = PALETTE[index % len(PALETTE)]
        parts.append(f'<polyline class="curve" data-engine="{_e(engine)}" fill="none" stroke="{colour}" '
                     f'stroke-width="1.5" points="{points}"><title>{_e(label)}</title></polyline>')
        legend = top + inner_h + bottom + 14 * index
        parts.append(f'<rect x="{left}" y="{legend + 2}" width="14" height="3" fill="{colour}"/>'
                     f'<text x="{left + 20}" y="{legend + 7}" font-size="10">{_e(label)}</text>')
    parts.append(f'<text x="{left}" y="14" font-size="12" font-weight="600">{_e(title)}</text></svg>')
    return "".join(parts)


def histogram_svg(counts: Sequence[int], edges: Sequence[float], tolerance: float, title: str) -> str:
    """Counts per log10 bin of error as bars, the tolerance's atol marked: one inline SVG."""
    width, height, left, bottom, top = 360, 200, 40, 34, 24
    inner_w, inner_h = width - left - 10, height - top - bottom
    tallest = max(max(counts, default=0), 1)
    bar = inner_w / max(len(counts), 1)
    parts = [f'<svg width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
             f'<rect x="{left}" y="{top}" width="{inner_w}" height="{inner_h}" fill="#fff" stroke="#adb5bd"/>']
    for i, count in enumerate(counts):
        h = inner_h * count / tallest
        parts.append(f'<rect class="bar" x="{left + i * bar + 1:.1f}" y="{top + inner_h - h:.1f}" '
                     f'width="{max(bar - 2, 1):.1f}" height="{h:.1f}" fill="#4c6ef5"><title>'
                     f'1e{edges[i]:g} to 1e{edges[i + 1]:g}: {count}</title></rect>')
    for i in range(0, len(edges), max(1, len(edges) // 6)):
        parts.append(f'<text x="{left + i * bar:.1f}" y="{top + inner_h + 13}" font-size="10" '
                     f'text-anchor="middle">1e{edges[i]:g}</text>')
    if tolerance > 0 and edges:
        level = math.log10(tolerance)
        x = left + inner_w * (level - edges[0]) / max(edges[-1] - edges[0], 1e-9)
        if left <= x <= left + inner_w:
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + inner_h}" stroke="#b00020" '
                         'stroke-dasharray="4,3"/>')
    parts.append(f'<text x="{left + inner_w / 2}" y="{height - 4}" font-size="11" text-anchor="middle">'
                 f'max abs error (log10 bins); {tallest} at most</text>')
    parts.append(f'<text x="{left}" y="14" font-size="12" font-weight="600">{_e(title)}</text></svg>')
    return "".join(parts)


# --- sections ---------------------------------------------------------------------------------------------

def _header(report: Report) -> str:
    word = verdict(report)
    shape = (f"{report.form}, {report.lowering}" + (f", fixed T={report.seq_len}" if report.seq_len else "")
             if report.form else "bundle")
    return (f'<header class="verdict {word.lower()}" id="verdict"><span class="word">{word}</span>'
            f'<span class="line">{_e(summary_line(report)[6:])}</span>'
            f'<div class="what">{_e(report.model)} &middot; {_e(report.source)} &middot; {_e(shape)} &middot; '
            f'tolerance {_e(report.tolerance.describe())}</div></header>')


def _contract_table(report: Report) -> str:
    table = engine_table(report)
    if not table.rows:
        return "<p>No checks ran.</p>"
    head = "".join(f"<th>{_e(e)}</th>" for e in table.engines)
    rows = []
    for contract, cells in table.rows:
        tds = []
        for cell in cells:
            if cell is None:
                tds.append('<td class="muted">-</td>')
                continue
            css = "bad" if cell.failed else "ok"
            word = f"FAIL {cell.failed}/{cell.count}" if cell.failed else f"pass {cell.count}"
            figure = "" if cell.worst.max_abs is None else \
                f'<br><span class="muted">max abs {_num(cell.worst.max_abs)}</span>'
            tds.append(f'<td class="{css}" title="{_e(cell.worst.case)} {_e(cell.worst.output)}">{word}{figure}</td>')
        rows.append(f"<tr><th>{_e(CONTRACT_TITLES[contract])}</th>{''.join(tds)}</tr>")
    return f'<table id="contract-table"><tr><th>contract</th>{head}</tr>{"".join(rows)}</table>'


def _curves(report: Report) -> str:
    figures = []
    for contract in (Contract.PYTORCH, Contract.STEP, Contract.CHUNKED, Contract.VECTORS):
        series = curves(report, contract)
        if series:
            figures.append(f"<figure>{curve_svg(series, report.tolerance.atol, CONTRACT_TITLES[contract])}"
                           f"<figcaption>max abs error of y at each step (the longest case, max over its checks); "
                           f"dashed: atol {report.tolerance.atol:g}</figcaption></figure>")
    if not figures:
        return '<p class="muted">No output with a time axis was compared.</p>'
    return f'<div class="plots" id="curves">{"".join(figures)}</div>'


def _histograms(report: Report) -> str:
    figures = []
    for engine in sorted({c.engine for c in report.checks if c.contract is Contract.PYTORCH}):
        counts, edges, total = histogram(report, Contract.PYTORCH, engine)
        if total:
            title = f"{CONTRACT_TITLES[Contract.PYTORCH]}: {engine}"
            figures.append(f"<figure>{histogram_svg(counts, edges, report.tolerance.atol, title)}"
                           f"<figcaption>{total} errors: each step of y, and each state output</figcaption></figure>")
    if not figures:
        return '<p class="muted">No errors to count.</p>'
    return f'<div class="plots" id="histograms">{"".join(figures)}</div>'


def _diagnosis(diagnosis: Diagnosis | None) -> str:
    if diagnosis is None:
        return ""
    parts = [f'<section id="diagnosis"><h2>Diagnosis: {_e(diagnosis.case)} ({_e(diagnosis.engine)})</h2>']
    if diagnosis.first is not None:
        first = diagnosis.first
        inputs = "".join(f"<li>{_e(i.describe())}</li>" for i in first.inputs)
        details = "".join(f"<li>{_e(d)}</li>" for d in first.details)
        error = (f"<br>the nearest value PyTorch computed of its size is {first.error:.2e} off"
                 if first.error is not None else "")
        parts.append(f'<div class="finding"><b>{_e(first.title)}:</b> {_e(first.location.describe())}{error}'
                     f"<ul>{inputs}{details}</ul></div>")
    for hint in diagnosis.hints:
        parts.append(f'<div class="hint"><b>{_e(hint.title)}</b>: {_e(hint.text)}<br>'
                     f'<span class="muted">evidence: {_e(hint.evidence)}</span></div>')
    rows = "".join(
        f'<tr><td>{_e(d.output)}</td><td class="num">{_num(d.max_abs)}</td>'
        f'<td class="num">{"-" if d.first_step is None else d.first_step}</td>'
        f'<td>{_e(", ".join(map(str, d.streams)) or "-")}</td><td>{_e(d.detail[:200])}</td></tr>'
        for d in diagnosis.outputs)
    if rows:
        parts.append("<table><tr><th>output</th><th>max abs</th><th>first step out of tolerance</th>"
                     f"<th>streams</th><th>detail</th></tr>{rows}</table>")
    extra = [*([f"method: {diagnosis.method}"] if diagnosis.method else []), *diagnosis.notes,
             f"graph values read on {diagnosis.ran_on} in {diagnosis.seconds:.1f} s"
             + ("" if diagnosis.complete else ", stopped at its time bound")]
    parts.append(f'<p class="muted">{"<br>".join(_e(x) for x in extra)}</p></section>')
    return "".join(parts)


def _failures(report: Report, limit: int = 20) -> str:
    failures = report.failures
    if not failures:
        return ""
    rows = "".join(
        f"<tr><td>{_e(CONTRACT_TITLES[c.contract])}</td><td>{_e(c.engine)}</td><td>{_e(c.case)} {_e(c.variant)}</td>"
        f'<td>{_e(c.output)}</td><td class="num">{_num(c.max_abs)}</td><td>{_e(c.detail[:300])}</td></tr>'
        for c in failures[:limit])
    more = f'<p class="muted">... and {len(failures) - limit} more (see --json)</p>' if len(failures) > limit else ""
    return (f'<section id="failures"><h2>Failures ({len(failures)})</h2><table><tr><th>contract</th><th>engine</th>'
            f"<th>case</th><th>output</th><th>max abs</th><th>detail</th></tr>{rows}</table>{more}</section>")


def _engines(report: Report) -> str:
    rows = "".join(
        f"<tr><td>{_e(e.name)}</td><td>{_e(e.kind.value)}</td><td>{_e(e.provider or '')}</td>"
        f"<td>{'yes' if e.available else 'no'}</td><td class=\"num\">{e.seconds:.2f}</td>"
        f"<td>{_e(e.reason or e.detail)}</td></tr>" for e in report.engines)
    return (f'<section id="engines"><h2>Engines</h2><table><tr><th>engine</th><th>kind</th><th>provider</th>'
            f"<th>ran</th><th>seconds</th><th>reason / detail</th></tr>{rows}</table></section>")


def _environment(report: Report) -> str:
    items = [f"providers listed by onnxruntime: {', '.join(report.providers_available) or 'none'}"]
    if report.environment is not None:
        items = [*report.environment.lines(), *items]
    notes = "".join(f"<li>{_e(n.text())}</li>" for n in report.notes)
    notes_html = f'<section id="notes"><h2>Notes</h2><ul>{notes}</ul></section>' if notes else ""
    return (f'{notes_html}<section id="environment"><h2>Environment</h2><ul>'
            f'{"".join(f"<li>{_e(i)}</li>" for i in items)}</ul>'
            f'<p class="muted">{len(report.cases)} cases, seed {report.seed}, {report.seconds:.1f} s</p></section>')


def html_text(report: Report) -> str:
    """The report as one self-contained HTML page (no script, no external resource of any kind)."""
    title = f"rnnexport verify: {verdict(report)} {Path(report.model).name}"
    body = "".join([
        _header(report), "<main>", _diagnosis(report.diagnosis),
        f'<section id="contracts"><h2>Contracts &times; engines</h2>{_contract_table(report)}</section>',
        f'<section><h2>Error along time</h2>{_curves(report)}</section>',
        f'<section><h2>Error histograms</h2>{_histograms(report)}</section>',
        _failures(report), _engines(report), _environment(report), "</main>",
    ])
    policy = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n")


def check_report_path(path: str | os.PathLike[str]) -> Path:
    """``path`` when it names an ``.html`` or ``.md`` file that can be written (before a long run)."""
    if Path(path).suffix.lower() not in REPORT_SUFFIXES:
        raise VerifyError(f"--report {path}: give a file ending in .html (a page to open) or .md (markdown)")
    return check_writable(path, "report")


def write_report(report: Report, path: str | os.PathLike[str]) -> Path:
    """The report as an HTML page or markdown, by ``path``'s suffix, written atomically."""
    check_report_path(path)
    kind = REPORT_SUFFIXES[Path(path).suffix.lower()]
    text = html_text(report) if kind == "html" else markdown_text(report)
    io.atomic_write(path, text.encode(), "report", VerifyError)
    return Path(path)
