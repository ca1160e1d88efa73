"""``rnnexport package``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from rnnexport.bundle.manifest import DEFAULT_VARIANTS, VARIANT_NAMES
from rnnexport.cli.options import (
    SOURCE_HELP,
    json_option,
    quiet_option,
    source_options,
    source_spec,
    timeout_option,
    verbose_option,
)
from rnnexport.cli.output import check_outputs, document, emit
from rnnexport.verification.options import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from rnnexport.packaging import PackageResult

__all__ = ["package_command", "to_json"]


def _names(value: str | None, option: str, keyword: str) -> list[str] | None:
    """A comma-separated list of variant names (or ``keyword``: none or all); None when not given."""
    if value is None:
        return None
    if value == keyword:
        return [] if keyword == "none" else list(VARIANT_NAMES)
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANT_NAMES]
    if unknown or not names:
        raise click.BadParameter(f"unknown variant {unknown[0] if unknown else value!r}; choose from "
                                 f"{', '.join(VARIANT_NAMES)} or {keyword}", param_hint=option)
    return names


def to_json(result: PackageResult) -> dict[str, Any]:
    """The ``--json`` document (schema docs/package-result.schema.json); the bundle's manifest.json has the rest."""
    manifest = result.manifest
    return document("package-result", {
        "folder": str(result.folder),
        "archive": str(result.archive) if result.archive else None,
        "description": manifest.description,
        "expected_from": result.expected_from,
        "graphs": {name: {"file": g.file, "form": g.form.value, "lowering": g.lowering,
                          "operators": list(g.operators), "weights": g.weights,
                          "checked_on": [c.to_json() for c in g.checked_on]}
                   for name, g in manifest.graphs.items()},
        "test_sets": len(manifest.test_vectors),
        "variants": [v.to_json() for v in result.variants],
        "files": len(manifest.files),
        "total_bytes": sum(f.size or 0 for f in manifest.files),
    })


@click.command("package", epilog=SOURCE_HELP)
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("source", required=False)
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Bundle folder to create.")
@click.option("--step", "step_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A step graph of the same model (rnnexport convert --form step) to include; it gets its own "
                   "test vectors and variants.")
@click.option("--variants", "variant_list", default=None, metavar="LIST",
              help=f"Comma-separated variants to make and verify for every graph: {', '.join(VARIANT_NAMES)} (of "
                   "the step graph only: OpenVINO IR with the state inside; needs openvino); or none. Default: "
                   f"{', '.join(DEFAULT_VARIANTS)}, each left out (with the reason in the manifest) when it cannot be "
                   "made. A variant named here is required: if it cannot be made, nothing is written (exit 2).")
@click.option("--variants-optional", "optional_list", default=None, metavar="LIST",
              help="Variants named in --variants that may be left out with the reason instead of failing; or all.")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE",
              help="Input sequences int8-qdq takes its activation ranges from, each streamed from the zero state: a "
                   ".npy or .npz of x arrays shaped as the sequence graph takes x, or for a model with a vocabulary "
                   "UTF-8 text. Default: the bundle's own test sets.")
@click.option("--engines", "engine_list", default=None, metavar="LIST",
              help="Comma-separated engines every graph and variant runs its test sets on before the bundle is "
                   "written, as verify --engines names them (e.g. cpu,reference,openvino,tract,wasm); one that "
                   "cannot run a graph here is recorded as unavailable. Default: cpu,reference.")
@click.option("--shared-weights/--no-shared-weights", default=True, show_default=True,
              help="With --step, store the weights both graphs hold once, in weights.bin beside model.onnx and "
                   "step.onnx (ONNX external data; bundle schema rnnexport.bundle/2). --no-shared-weights: two "
                   "self-contained graphs (step/model.onnx, schema rnnexport.bundle/1), for apps and readers "
                   "that load a graph as one file.")
@click.option("--zip", "archive", is_flag=True, help="Also write DIR.zip (same inputs, same bytes).")
@click.option("--force", is_flag=True, help="Replace the --output folder (and its .zip) if it is a bundle.")
@timeout_option(DEFAULT_TIMEOUT, "The most one call of a graph may take (a test vector, a variant's check, the proof "
                                 "on each engine); a graph over it is not packaged (exit 2).")
@source_options
@json_option("package-result.schema.json")
@quiet_option("Print only the bundle folder (and the .zip with --zip).")
@verbose_option
def package_command(model: str, source: str | None, out_dir: str, step_path: str | None, variant_list: str | None,
                    optional_list: str | None, calibration: str | None, engine_list: str | None,
                    shared_weights: bool, archive: bool, force: bool, timeout: float, json_path: str | None,
                    quiet: bool, **source_kw: Any) -> None:
    """Bundle MODEL.onnx for embedding: manifest, checksums, test vectors and variants.

    With SOURCE (as for convert), the test vectors' expected outputs come from
    PyTorch; without it, from onnxruntime's CPU provider (recorded in the manifest).
    Every graph and variant runs its test vectors on onnxruntime's CPU provider and
    onnx's ReferenceEvaluator before it is written (openvino-stateful: streamed through
    OpenVINO, with a reset between streams); the manifest records the figures.
    """
    from rnnexport.packaging import package
    from rnnexport.source.sources import load_source

    variants = _names(variant_list, "--variants", "none")
    optional = _names(optional_list, "--variants-optional", "all")
    check_outputs(json_path, [("--output", out_dir), ("--output zip", f"{out_dir.rstrip('/')}.zip")],
                  [("MODEL", model), ("--step", step_path or model)])
    loaded = load_source(source_spec(source, **source_kw)) if source else None
    engines = [e.strip() for e in engine_list.split(",")] if engine_list is not None else None
    result = package(model, out_dir, source=loaded, step_path=step_path, variants=variants, optional=optional,
                     archive=archive, force=force, calibration=calibration, engines=engines, timeout=timeout,
                     shared_weights=shared_weights)
    paths = [str(result.folder), *([str(result.archive)] if result.archive else [])]
    emit(paths if quiet else result.lines(), to_json(result), json_path)
