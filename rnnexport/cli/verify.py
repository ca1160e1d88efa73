"""``rnnexport verify``: parse the options, call :func:`rnnexport.verification.run.verify`, render the report."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from rnnexport.cli.options import (
    ONNXRUNTIME_MISSING,
    SOURCE_HELP,
    json_option,
    quiet_option,
    source_options,
    source_spec,
    timeout_option,
    verbose_option,
)
from rnnexport.cli.output import STDOUT, check_outputs
from rnnexport.core.errors import VerifyError
from rnnexport.verification.options import DEFAULT_TIMEOUT, Grid, VerifyOptions, describe

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

    from rnnexport.source.sources import SourceSpec
    from rnnexport.verification.options import Tick
    from rnnexport.verification.report import Report

__all__ = ["verify_command"]

#: The options of a built-in SOURCE (rnnexport.cli.options.source_options).
_SOURCE_OPTIONS = ("input_size", "hidden_size", "output_size", "weights", "param_seed")
#: Lines a log gets while cases run (one per tenth of the grid's weight).
_LOG_LINES = 10


def _ints(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise VerifyError(f"{option} takes comma-separated positive integers, e.g. 1,4,16; got {text!r}") from e
    if not values or min(values) < 1:
        raise VerifyError(f"{option} takes comma-separated positive integers, e.g. 1,4,16; got {text!r}")
    return values


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(n.strip() for n in text.split(",") if n.strip())


class _Progress:
    """Progress on stderr, weighted by each case's batch x time steps: a bar with an ETA on a
    terminal, else a line at every tenth of the weight (CI logs)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.bar: ProgressBar[int] | None = None
        self.logged = 0

    def __call__(self, tick: Tick) -> None:
        if not self.enabled:
            return
        if self.tty:
            self._bar(tick)
        elif tick.done == tick.total or int(tick.fraction * _LOG_LINES) > self.logged:
            self.logged = int(tick.fraction * _LOG_LINES)
            left = "" if tick.done == tick.total else f", about {tick.eta:.0f} s left"
            click.echo(f"verifying: {tick.done}/{tick.total} ({tick.fraction:.0%} of the work), "
                       f"{tick.seconds:.0f} s{left} (last {tick.label})", err=True)

    def _bar(self, tick: Tick) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=tick.cost_total, label="verifying", file=sys.stderr,
                                         show_percent=True, show_eta=True)
            self.bar.__enter__()
        # click types current_item as the item type, int for a length-only bar; any value is accepted
        self.bar.update(tick.cost_done - self.bar.pos, tick.label)  # type: ignore[arg-type]
        if tick.done == tick.total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _options(given: dict[str, Any]) -> VerifyOptions:
    """The library's options from the command line's (lists parsed, sizes checked)."""
    return VerifyOptions(
        engines=_names(given["engines"]),
        allow_missing=given["allow_missing"],
        reference_evaluator=given["reference_evaluator"],
        grid=given["grid"],
        batch_sizes=_ints(given["batch_sizes"], "--batch-sizes"),
        seq_lens=_ints(given["seq_lens"], "--seq-lens"),
        seed=given["case_seed"],
        atol=given["atol"],
        rtol=given["rtol"],
        step_model=given["step_model"],
        threads=given["threads"],
        diagnose=given["diagnose"],
        timeout=given["timeout"],
    )


def _source(model: str, source: str | None, given: dict[str, Any]) -> SourceSpec | str | None:
    """The SOURCE with its options; as given for a bundle, which refuses it without importing torch."""
    from rnnexport.verification.run import is_bundle_path

    sizes = {name: given[name] for name in _SOURCE_OPTIONS}
    if source is None:
        if any(v not in (None, 0) for v in sizes.values()):
            raise VerifyError("--input-size/--hidden-size/--output-size/--weights/--seed describe a SOURCE; give it, "
                              "e.g. rnnexport verify MODEL.onnx lstm --hidden-size 256")
        return None
    return source if is_bundle_path(model) else source_spec(source, **sizes)


def _check_outputs(model: str, given: dict[str, Any], json_path: str | None, plot_path: str | None) -> None:
    """Fail before a long run when an output cannot be written or would write over an input."""
    from rnnexport.core.io import refuse_overwrite
    from rnnexport.verification.render import require_matplotlib
    from rnnexport.verification.render_html import check_report_path
    from rnnexport.verification.run import is_bundle_path

    if plot_path and is_bundle_path(model):
        raise VerifyError("--plot does not apply to DIR or ZIP: a bundle's test sets have no error-vs-time curves")
    if plot_path:
        require_matplotlib(plot_path)
    inputs = [("MODEL", model), *([("--step", given["step_model"])] if given["step_model"] else [])]
    outputs = [*([("--plot", plot_path)] if plot_path else []),
               *([("--report", given["report_path"])] if given["report_path"] else [])]
    if given["report_path"]:
        check_report_path(given["report_path"])
        refuse_overwrite(outputs, inputs, VerifyError)
    check_outputs(json_path, outputs, inputs)


def _render(report: Report, json_path: str | None, plot_path: str | None, report_path: str | None,
            quiet: bool) -> None:
    """The text report (on stderr when the JSON goes to stdout), the JSON file, the plot and the page."""
    from rnnexport.verification.render import json_text, plot, render_text, write_json
    from rnnexport.verification.render_html import write_report

    click.echo(render_text(report, quiet=quiet), err=json_path == STDOUT)
    if json_path == STDOUT:
        click.echo(json_text(report), nl=False)
    elif json_path:
        write_json(report, json_path)
    if plot_path:
        plot(report, plot_path)
    if report_path:
        write_report(report, report_path)


@click.command("verify", short_help=ONNXRUNTIME_MISSING,
               epilog=SOURCE_HELP + " Without SOURCE, it is rebuilt from the graph's metadata "
               "(built-in cells and trained models). Exit status: 0 all checks pass, 1 a parity failure, "
               "a requested engine that did not start, or no engine ran, 2 bad usage or input.")
@click.argument("model", metavar="MODEL|DIR|ZIP")
@click.argument("source", required=False)
@click.option("--step", "step_model", default=None, metavar="STEP.onnx",
              help="A step graph of the same model: stream it and compare with MODEL (contract 3).")
@click.option("--grid", type=click.Choice([g.value for g in Grid]), default=Grid.QUICK.value, show_default=True,
              help=f"The case grid: quick proves every contract in seconds ({describe(Grid.QUICK)}); full is the "
                   f"release check ({describe(Grid.FULL)}), minutes per graph.")
@click.option("--engines", default=None, metavar="LIST",
              help="Engines, comma-separated: cpu, cuda, tensorrt (onnxruntime's providers), reference, openvino, "
                   "tract, node, wasm, browser. All start before the first case; one named that cannot start "
                   "ends verify there (exit 1, unless --allow-missing). Default: cpu, the cuda and tensorrt "
                   "providers this onnxruntime lists, and the ReferenceEvaluator; those that do not start "
                   "are noted, not failed.")
@click.option("--allow-missing", is_flag=True,
              help="A requested engine that cannot start is reported, not a failure.")
@click.option("--reference-evaluator/--no-reference-evaluator", default=True, show_default=True,
              help="Include onnx's ReferenceEvaluator in the default engines (it takes cases with T*B <= 512).")
@click.option("--batch-sizes", default=None, metavar="LIST", help="Batch sizes, in place of the grid's.")
@click.option("--seq-lens", default=None, metavar="LIST",
              help="Sequence lengths, in place of the grid's (unrolled graphs: their fixed T).")
@click.option("--case-seed", type=int, default=0, show_default=True,
              help="Seed of the generated inputs and initial states (--seed seeds built-in weights).")
@click.option("--atol", type=click.FloatRange(min=0), default=None,
              help="Absolute tolerance (default by dtype: float32 1e-5, float16 1e-2, int8 5e-2).")
@click.option("--rtol", type=click.FloatRange(min=0), default=None,
              help="Relative tolerance (default by dtype: float32 1e-4, float16 1e-2, int8 1e-1).")
@click.option("--plot", "plot_path", default=None, metavar="FILE.png",
              help="Plot error vs time step per engine (needs pip install 'rnnexport[plot]').")
@click.option("--report", "report_path", default=None, metavar="FILE.html|FILE.md",
              help="Write the report as a page to open (.html: self-contained, loads nothing) or as markdown "
                   "(.md, for CI logs): verdict, diagnosis, contract x engine table, error curves and histograms, "
                   "engines, environment.")
@click.option("--diagnose/--no-diagnose", default=None,
              help="Where contract 1 fails, name the first graph value that diverges from PyTorch (its operator, "
                   "its inputs' error, where it sits) and the known mistake it matches. Default: on a contract-1 "
                   "failure, within 30 s; --diagnose: within 120 s; --no-diagnose: never.")
@source_options
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Threads for PyTorch's reference and onnxruntime (more mostly wait for each other on small cases).")
@timeout_option(DEFAULT_TIMEOUT, "The most one engine call may take (a case, a chunk, a streamed step, a test set); "
                "loading a graph may take a minute more. A call over it is stopped, the check fails naming the "
                "engine and the budget (exit 1), and that engine runs no further case.")
@json_option("verify-report.schema.json")
@quiet_option("Print only the PASS/FAIL line, and no progress.")
@verbose_option
def verify_command(model: str, source: str | None, json_path: str | None, plot_path: str | None, quiet: bool,
                   **given: Any) -> None:
    """Verify that ONNX graph MODEL computes what its PyTorch SOURCE computes.

    MODEL may also be a bundle folder or zip (rnnexport package), or an ONNX test
    folder (model.onnx beside test_data_set_*): then no PyTorch is needed; every
    file's SHA-256 is checked, then every test vector set runs on each engine, and
    every variant on its graph's test sets.

    Six contracts, each with figures per engine and case: graph == PyTorch; chunked
    calls with carried state == one call; step graph streamed == sequence; declared
    == actual output shapes; no NaN/Inf; every execution provider == the CPU one.
    """
    from rnnexport.verification.run import verify

    options, spec = _options(given), _source(model, source, given)
    _check_outputs(model, given, json_path, plot_path)
    progress = _Progress(enabled=not quiet)
    try:
        report = verify(model, spec, options=options, progress=progress)
    finally:
        progress.close()
    _render(report, json_path, plot_path, given["report_path"], quiet)
    sys.exit(0 if report.passed else 1)
