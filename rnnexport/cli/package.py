"""``rnnexport package``."""

from __future__ import annotations

import click

from rnnexport.cli.options import SOURCE_HELP, source_options, source_spec
from rnnexport.packaging import VARIANTS, package

__all__ = ["package_command"]


def _variants(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()] if value != "none" else []
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise click.BadParameter(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)} or none")
    return names


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
    click.echo("\n".join(result.lines()))
