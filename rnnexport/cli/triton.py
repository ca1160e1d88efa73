"""``rnnexport triton``."""

from __future__ import annotations

import click

from rnnexport.cli.options import SOURCE_HELP, source_options, source_spec

__all__ = ["triton_command"]


@click.command("triton", epilog=SOURCE_HELP + " SOURCE may also be a bundle folder or zip (rnnexport package "
               "--step) or a step graph .onnx (rnnexport convert --form step). See docs/serving.md.")
@click.argument("source")
@click.option("-o", "--output", "repository", type=click.Path(file_okay=False), required=True,
              help="Triton model repository (created if missing); the model goes in REPOSITORY/NAME.")
@click.option("--name", default=None, help="Model name and folder (default: the model's name).")
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
@click.option("--expose-state", is_flag=True, help="Also return the state outputs (h_out, ...) to clients.")
@click.option("--force", is_flag=True, help="Replace REPOSITORY/NAME if it is a Triton model folder.")
@source_options
def triton_command(source, repository, name, max_batch_size, idle_timeout, strategy, max_sequences, instances,
                   kind, expose_state, force, **source_kw) -> None:
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
    result = triton_repository(source_spec(source, **source_kw), repository, options, force=force)
    click.echo("\n".join(result.lines()))
