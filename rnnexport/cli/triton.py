"""``rnnexport triton``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from rnnexport.cli.options import (
    SOURCE_HELP,
    json_option,
    quiet_option,
    source_options,
    source_spec,
    verbose_option,
)
from rnnexport.cli.output import check_outputs, document, emit

if TYPE_CHECKING:
    from rnnexport.serving.triton import TritonResult

__all__ = ["to_json", "triton_command"]


def to_json(result: TritonResult) -> dict[str, Any]:
    """The ``--json`` document (schema docs/triton-result.schema.json)."""
    o = result.options
    return document("triton-result", {
        "name": result.name, "folder": str(result.folder), "config": str(result.config_path),
        "model": str(result.model_path), "origin": result.origin, "transposed": list(result.transposed),
        "inputs": [s.to_json() for s in result.io.inputs("step")],
        "outputs": [s.to_json() for s in result.io.outputs("step")[: None if o.expose_state else 1]],
        "state": [{"input": spec.name, "output": output} for spec, output in
                  zip(result.io.state.inputs(), result.io.state.output_names, strict=True)],
        "options": {"max_batch_size": o.max_batch_size, "idle_timeout_s": o.idle_timeout_s,
                    "strategy": o.strategy.value, "max_sequences": o.candidates, "instances": o.instances,
                    "kind": o.kind.value, "expose_state": o.expose_state},
        "checks": {"passed": result.report.passed,
                   "problems": [{"check": p.check, "message": p.message} for p in result.report.problems]},
    })


@click.command("triton", epilog=SOURCE_HELP + " SOURCE may also be a bundle folder or zip (rnnexport package "
               "--step) or a step graph .onnx (rnnexport convert --form step). See docs/serving.md.")
@click.argument("source")
@click.option("-o", "--output", "repository", type=click.Path(file_okay=False), required=True, metavar="REPOSITORY",
              help="Triton model repository (created if missing); the model goes in REPOSITORY/NAME.")
@click.option("--name", default=None, metavar="NAME",
              help="Model name, and its folder REPOSITORY/NAME (default: the model's name).")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most requests (one step of one sequence each) stacked into one call.")
@click.option("--idle-timeout", type=click.FloatRange(min=0.001), default=60.0, show_default=True,
              help="Seconds a sequence may go without a request before Triton frees it and its state.")
@click.option("--strategy", type=click.Choice(["oldest", "direct"]), default="oldest", show_default=True,
              help="Sequence batching strategy.")
@click.option("--max-sequences", type=click.IntRange(min=1), default=None,
              help="Oldest strategy: sequences one instance holds at once (default 16 x max batch size); "
                   "more wait in a backlog.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Model instances.")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="Run the instances on CPU or GPU.")
@click.option("--expose-state", is_flag=True, help="Also return a copy of the new state (h_state, ...) to clients.")
@click.option("--force", is_flag=True, help="Replace REPOSITORY/NAME if it is a Triton model folder.")
@source_options
@json_option("triton-result.schema.json")
@quiet_option("Print only the model folder REPOSITORY/NAME.")
@verbose_option
def triton_command(source: str, repository: str, name: str | None, max_batch_size: int, idle_timeout: float,
                   strategy: str, max_sequences: int | None, instances: int, kind: str, expose_state: bool,
                   force: bool, json_path: str | None, quiet: bool, **source_kw: Any) -> None:
    """Write a Triton model (sequence batcher, implicit state) for SOURCE's step graph into REPOSITORY.

    Writes REPOSITORY/NAME/config.pbtxt and REPOSITORY/NAME/1/model.onnx (the step
    graph with every tensor batch-first), atomically, after checking that the
    configuration fits the graph.
    """
    from rnnexport.serving.config import InstanceKind, Strategy, TritonOptions
    from rnnexport.serving.triton import triton_repository

    options = TritonOptions(name=name, max_batch_size=max_batch_size, idle_timeout_s=idle_timeout,
                            strategy=Strategy(strategy), instances=instances, kind=InstanceKind(kind),
                            expose_state=expose_state, max_sequences=max_sequences)
    check_outputs(json_path, [("--output", repository)], [("SOURCE", source)])
    result = triton_repository(source_spec(source, **source_kw), repository, options, force=force)
    emit([str(result.folder)] if quiet else result.lines(), to_json(result), json_path)
