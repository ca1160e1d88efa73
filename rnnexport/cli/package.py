"""``rnnexport package``."""

from __future__ import annotations

import click

from rnnexport.bundler import VARIANTS, PackageResult, package
from rnnexport.cli.options import SOURCE_HELP, source_options, source_spec

__all__ = ["package_command"]


def _variants(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()] if value != "none" else []
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise click.BadParameter(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)} or none")
    return names


def summary(result: PackageResult) -> list[str]:
    manifest = result.manifest
    lines = [f"packaged {manifest['model']['description']} -> {result.folder}"]
    for name, graph in manifest["graphs"].items():
        lines.append(f"  graph     {name}: {graph['file']} ({graph['lowering']}, "
                     f"operators {', '.join(graph['operators'])})")
    lines.append(f"  vectors   {len(manifest['test_vectors'])} test sets, expected outputs from "
                 f"{result.expected_from}")
    for variant in result.variants:
        if variant.ok:
            worst = max(f["max_abs"] for f in variant.figures.values())
            lines.append(f"  variant   {variant.name}: {', '.join(variant.files)} ({variant.size_bytes / 1e3:.0f} kB, "
                         f"max abs error {worst:.2g} vs float32)")
        else:
            lines.append(f"  variant   {variant.name}: left out: {variant.reason}")
    total = sum(f["size"] for f in manifest["files"])
    lines.append(f"  files     {len(manifest['files'])} files, {total / 1e6:.2f} MB, SHA-256 in manifest.json")
    if result.archive:
        lines.append(f"  archive   {result.archive}")
    return lines


@click.command("package", epilog=SOURCE_HELP)
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("source", required=False)
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Bundle folder to create.")
@click.option("--step", "step_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A step graph of the same model (rnnexport convert --form step) to include.")
@click.option("--variants", "variant_list", default=",".join(VARIANTS), show_default=True,
              help="Comma-separated variants to make and verify: ort, int8, fp16; or none.")
@click.option("--zip", "archive", is_flag=True, help="Also write DIR.zip (same inputs, same bytes).")
@click.option("--force", is_flag=True, help="Replace DIR if it exists.")
@source_options
def package_command(model, source, out_dir, step_path, variant_list, archive, force, **source_kw) -> None:
    """Bundle MODEL.onnx for embedding: manifest, checksums, test vectors and variants.

    With SOURCE (as for convert), the test vectors' expected outputs come from
    PyTorch; without it, from onnxruntime's CPU provider (recorded in the manifest).
    """
    from rnnexport.sources import load_source

    loaded = load_source(source_spec(source, **source_kw)) if source else None
    result = package(model, out_dir, source=loaded, step_path=step_path, variants=_variants(variant_list),
                     archive=archive, force=force)
    click.echo("\n".join(summary(result)))
