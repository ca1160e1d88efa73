"""``rnnexport verify``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from rnnexport.cli.options import ONNXRUNTIME_MISSING, SOURCE_HELP, source_options, source_spec
from rnnexport.core.errors import VerifyError

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

__all__ = ["verify_command"]


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


class _Bar:
    """Progress on stderr: a bar on a terminal, else a line at every tenth of the cases (CI logs)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.bar: ProgressBar[int] | None = None
        self.started = time.perf_counter()

    def __call__(self, done: int, total: int, label: str) -> None:
        if not self.enabled:
            return
        if not self.tty:
            if done == total or done % max(1, total // 10) == 0:
                click.echo(f"verifying: {done}/{total} cases, {time.perf_counter() - self.started:.0f} s "
                           f"(last {label})", err=True)
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="verifying", file=sys.stderr, show_pos=True)
            self.bar.__enter__()
        # click types current_item as the item type, int for a length-only bar; any value is accepted
        self.bar.update(1, label)  # type: ignore[arg-type]
        if done == total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


#: Options that shape the case grid or the PyTorch side: a bundle carries its own test sets.
_GRAPH_ONLY = {"step_model": "--step", "batch_sizes": "--batch-sizes", "seq_lens": "--seq-lens",
               "case_seed": "--case-seed", "plot_path": "--plot", "reference_evaluator": "--no-reference-evaluator"}


def _verify_bundle(path: str, options: object, json_path: str | None, quiet: bool) -> int:
    """Checksums (when the bundle is opened), then every test vector set and variant; the exit status."""
    from rnnexport.verification.bundle import BundleOptions, verify_bundle
    from rnnexport.verification.render import check_writable, render_text, write_json

    assert isinstance(options, BundleOptions)
    if json_path:
        check_writable(json_path, "report")
    report = verify_bundle(path, options=options)
    click.echo(render_text(report, quiet=quiet))
    if json_path:
        write_json(report, json_path)
    return 0 if report.passed else 1


@click.command("verify", short_help=ONNXRUNTIME_MISSING,
               epilog=SOURCE_HELP + " Without SOURCE, it is rebuilt from the graph's metadata "
               "(built-in cells and trained models). Exit status: 0 all checks pass, 1 a parity failure "
               "(or no engine ran), 2 bad usage or input.")
@click.argument("model", metavar="MODEL|DIR|ZIP")
@click.argument("source", required=False)
@click.option("--step", "step_model", default=None, metavar="STEP.onnx",
              help="A step graph of the same model: stream it and compare with MODEL (contract 3).")
@click.option("--engines", default=None, metavar="LIST",
              help="Engines, comma-separated: cpu, cuda, tensorrt (onnxruntime's providers), reference, openvino, "
                   "tract, node, wasm, browser. Each one named must start (else exit 1, unless --allow-missing). "
                   "Default: every onnxruntime provider this build lists, and the ReferenceEvaluator; those that "
                   "do not start are reported unavailable.")
@click.option("--providers", default=None, metavar="LIST",
              help="The older spelling of --engines, for onnxruntime providers (the ReferenceEvaluator runs too).")
@click.option("--allow-missing", is_flag=True,
              help="A requested engine that cannot start is reported, not a failure.")
@click.option("--reference-evaluator/--no-reference-evaluator", default=True, show_default=True,
              help="Also run onnx's ReferenceEvaluator (on cases with T*B <= 512).")
@click.option("--batch-sizes", default=None, metavar="LIST", help="Batch sizes of the grid (default 1,4,16).")
@click.option("--seq-lens", default=None, metavar="LIST",
              help="Sequence lengths of the grid (default 1,2,17,256,2048; unrolled graphs: their fixed T).")
@click.option("--case-seed", type=int, default=0, show_default=True,
              help="Seed of the generated inputs and initial states (--seed seeds built-in weights).")
@click.option("--atol", type=click.FloatRange(min=0), default=None,
              help="Absolute tolerance (default by dtype: float32 1e-5, float16 1e-2, int8 5e-2).")
@click.option("--rtol", type=click.FloatRange(min=0), default=None,
              help="Relative tolerance (default by dtype: float32 1e-4, float16 1e-2, int8 1e-1).")
@click.option("--json", "json_path", default=None, metavar="FILE", help="Write the full report as JSON.")
@click.option("--plot", "plot_path", default=None, metavar="FILE.png",
              help="Plot error vs time step per engine (needs pip install 'rnnexport[plot]').")
@source_options
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for PyTorch's reference and onnxruntime (default: theirs; 1 leaves cores to other jobs).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the PASS/FAIL line.")
def verify_command(model, source, step_model, engines, providers, allow_missing, reference_evaluator, batch_sizes,
                   seq_lens, case_seed, atol, rtol, json_path, plot_path, threads, quiet, **source_kw) -> None:
    """Verify that ONNX graph MODEL computes what its PyTorch SOURCE computes.

    MODEL may also be a bundle folder or zip (rnnexport package), or an ONNX test
    folder (model.onnx beside test_data_set_*): then no PyTorch is needed; every
    file's SHA-256 is checked, then every test vector set runs on each engine, and
    every variant on its graph's test sets.

    Six contracts, each with figures per engine and case: graph == PyTorch; chunked
    calls with carried state == one call; step graph streamed == sequence; declared
    == actual output shapes; no NaN/Inf; every execution provider == the CPU one.
    """
    if Path(model).is_dir() or model.endswith(".zip"):
        from rnnexport.verification.bundle import BundleOptions

        given = {"step_model": step_model, "batch_sizes": batch_sizes, "seq_lens": seq_lens,
                 "case_seed": case_seed or None, "plot_path": plot_path,
                 "reference_evaluator": None if reference_evaluator else False}
        refused = [_GRAPH_ONLY[k] for k, v in given.items() if v is not None]
        if source is not None or refused or any(v not in (None, 0) for v in source_kw.values()):
            what = ", ".join(refused) or "SOURCE and its options"
            raise VerifyError(f"a bundle carries its own graphs, test sets and expected outputs: {what} does not "
                              "apply to DIR or ZIP (it takes --engines, --allow-missing, --atol, --rtol, --threads, "
                              "--json, --quiet)")
        if engines and providers:
            raise VerifyError("give --engines or --providers (its older spelling), not both")
        listed = engines or providers
        names = tuple(p.strip() for p in listed.split(",") if p.strip()) if listed else None
        options = BundleOptions(names, allow_missing, atol, rtol, threads=threads)
        sys.exit(_verify_bundle(model, options, json_path, quiet))
    from rnnexport.verification import VerifyOptions, verify
    from rnnexport.verification.render import (
        check_writable,
        plot,
        render_text,
        require_matplotlib,
        write_json,
    )

    if source is None and any(v not in (None, 0) for v in source_kw.values()):
        raise VerifyError("--input-size/--hidden-size/--output-size/--weights/--seed describe a SOURCE; give it, "
                          "e.g. rnnexport verify MODEL.onnx lstm --hidden-size 256")
    options = VerifyOptions(
        providers=tuple(p for p in providers.split(",") if p.strip()) if providers is not None else None,
        engines=tuple(p for p in engines.split(",") if p.strip()) if engines is not None else None,
        allow_missing=allow_missing,
        reference_evaluator=reference_evaluator,
        batch_sizes=_ints(batch_sizes, "--batch-sizes") or VerifyOptions.batch_sizes,
        seq_lens=_ints(seq_lens, "--seq-lens") or VerifyOptions.seq_lens,
        seed=case_seed,
        atol=atol,
        rtol=rtol,
        step_model=step_model,
        threads=threads,
    )
    if plot_path:
        require_matplotlib(plot_path)
    if json_path:
        check_writable(json_path, "report")
    spec = source_spec(source, **source_kw) if source is not None else None
    bar = _Bar(enabled=not quiet)
    try:
        report = verify(model, spec, options=options, progress=bar)
    finally:
        bar.close()
    click.echo(render_text(report, quiet=quiet))
    if json_path:
        write_json(report, json_path)
    if plot_path:
        plot(report, plot_path)
    sys.exit(0 if report.passed else 1)
