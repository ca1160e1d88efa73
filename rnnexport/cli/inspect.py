"""``rnnexport inspect``."""

from __future__ import annotations

import json

import click

from rnnexport.bundler.inspect import inspect

__all__ = ["inspect_command"]


def _specs(specs) -> str:
    return "; ".join(f"{s['name']} {s['dtype']}[{', '.join(str(d) for d in s['shape'])}]" for s in specs)


def _graph_lines(name: str, graph: dict) -> list[str]:
    lines = [f"graph {name}: {graph['file']} ({graph.get('size_bytes') or 0:,} bytes)",
             f"  form {graph['form']}, lowering {graph['lowering']}"
             + (f", fixed T={graph['seq_len']}" if graph.get("seq_len") else ""),
             f"  inputs   {_specs(graph['inputs'])}",
             f"  outputs  {_specs(graph['outputs'])}",
             f"  opset {graph['opset']}, IR {graph['ir_version']}, operators {', '.join(graph['operators'])}"]
    return lines


def render(data: dict) -> list[str]:
    if data["kind"] != "bundle":
        if data.get("contract", True) is None:
            return [f"{data['path']}: not an rnnexport graph ({data['size_bytes']:,} bytes)",
                    f"  inputs {', '.join(data['inputs'])}; outputs {', '.join(data['outputs'])}",
                    f"  operators {', '.join(data['operators'])}"]
        lines = [f"{data['path']}: {data['description']}"]
        lines += _graph_lines("", {**data, "file": data["path"]})[1:]
        state = data["state"]
        lines.append(f"  state    {', '.join(state['names'])} -> {', '.join(state['output_names'])}, "
                     f"initial {state['initial']}, batch axis {state['batch_axis']}")
        if data.get("test_sets"):
            lines.append(f"  test sets {', '.join(data['test_sets'])}")
        return lines
    lines = [f"{data['path']}: bundle {data['schema']} of {data['model']['description']}",
             f"  made by rnnexport {data['created_by']['rnnexport']}, onnxruntime {data['created_by']['onnxruntime']}",
             f"  parameters SHA-256 {data['model']['params_sha256']}"]
    state = data["state"]
    lines.append(f"  state {', '.join(state['names'])}: shapes {state['shapes']}, initial {state['initial']}")
    for name, graph in data["graphs"].items():
        lines += ["  " + line for line in _graph_lines(name, graph)]
    for variant in data["variants"]:
        if variant["status"] == "ok":
            figures = ", ".join(f"{k} {v['max_abs']:.2g}" for k, v in variant["figures"].items())
            lines.append(f"  variant {variant['name']}: {', '.join(variant['files'])} "
                         f"({variant['size_bytes']:,} bytes); max abs error vs float32: {figures}")
        else:
            lines.append(f"  variant {variant['name']}: left out: {variant['reason']}")
    lines.append("  test vectors: " + ", ".join(f"{t['dir']} ({t['kind']})" for t in data["test_vectors"]))
    lines.append(f"  {len(data['files'])} files, {data['total_bytes']:,} bytes")
    return lines


@click.command("inspect")
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect_command(path, as_json) -> None:
    """Show the I/O contract, state, operators, sizes, metadata and variants of MODEL.onnx, DIR or ZIP."""
    data = inspect(path)
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else "\n".join(render(data)))
