"""What a graph, bundle folder, bundle zip or ONNX test folder holds: data, and its text rendering.

Reads through the one bundle reader and parses graph metadata with
:class:`~rnnexport.core.contract.GraphInfo`; needs onnx (for graph files), not torch. Every
text line escapes the control characters of what it quotes (:func:`~rnnexport.core.data.printable`):
a description or a name cannot add a line of its own, nor move the terminal's cursor.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import onnx

from rnnexport.bundle.manifest import GraphEntry
from rnnexport.bundle.reader import GraphSource, open_bundle
from rnnexport.core.contract import GraphInfo
from rnnexport.core.data import printable
from rnnexport.core.errors import BundleError
from rnnexport.core.graphs import operators
from rnnexport.core.onnxfile import load_with_info

__all__ = ["Inspection", "graph_entry", "inspect"]


def graph_entry(file: str, model: onnx.ModelProto, info: GraphInfo) -> GraphEntry:
    """The manifest's record of one graph: form, lowering, versions, operators, declared I/O."""
    return GraphEntry(
        file=file,
        form=info.form,
        lowering=info.lowering.value,
        seq_len=info.seq_len,
        ir_version=model.ir_version,
        opset={o.domain or "ai.onnx": o.version for o in model.opset_import},
        operators=tuple(sorted(operators(model.graph))),
        inputs=tuple(s.to_json() for s in info.io.inputs(info.form, info.seq_len)),
        outputs=tuple(s.to_json() for s in info.io.outputs(info.form, info.seq_len)),
        nan=info.nan,
    )


@dataclasses.dataclass(frozen=True)
class Inspection:
    """A summary of what was inspected: ``kind`` (graph, bundle, onnx-test-folder) and its data."""

    kind: str
    path: str
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, **self.data}

    def lines(self) -> list[str]:
        """The summary as text, one fact a line (control characters escaped)."""
        lines = _bundle_lines(self) if self.kind == "bundle" else _graph_summary(self)
        return [printable(line) for line in lines]


def _graph(source: GraphSource, size: int) -> dict[str, Any]:
    model, info = load_with_info(source.model, source.name, BundleError, None)
    data: dict[str, Any] = {"size_bytes": size}
    if info is None:
        data.update(contract=None, operators=sorted(operators(model.graph)),
                    inputs=[i.name for i in model.graph.input], outputs=[o.name for o in model.graph.output])
        return data
    data.update(graph_entry(source.name, model, info).to_json())
    data.update(description=info.description, state=info.io.state.to_json(),
                metadata={p.key: p.value for p in model.metadata_props})
    return data


def inspect(path: str | os.PathLike[str]) -> Inspection:
    """A summary of a ``.onnx`` graph, a bundle folder or zip, or an ONNX test folder.

    Raises:
        BundleError: not readable, unsafe, or damaged (checksums are checked first).
    """
    bundle = open_bundle(path)
    where = str(path)
    if bundle.manifest is None:
        source = next(iter(bundle.graphs.values()))
        model = source.model
        size = os.path.getsize(model) if isinstance(model, str) else len(model) if isinstance(model, bytes) \
            else model.size
        data = _graph(source, size)
        if bundle.kind == "test-folder":
            data["test_sets"] = [t.dir for t in bundle.test_vectors]
            return Inspection("onnx-test-folder", where, data)
        return Inspection("graph", where, data)
    manifest = bundle.manifest
    sizes = {f.path: f.size or 0 for f in manifest.files}
    body = manifest.to_json()
    body["graphs"] = {k: {**g.to_json(), "size_bytes": sizes.get(g.file),
                          **({"weights_bytes": sizes.get(g.weights)} if g.weights else {})}
                      for k, g in manifest.graphs.items()}
    body["total_bytes"] = sum(sizes.values())
    return Inspection("bundle", where, body)


def _specs(specs: list[dict[str, Any]]) -> str:
    return "; ".join(f"{s['name']} {s['dtype']}[{', '.join(str(d) for d in s['shape'])}]" for s in specs)


def _graph_lines(name: str, graph: dict[str, Any]) -> list[str]:
    nan = graph.get("nan", "carry")
    lines = [f"graph {name}: {graph['file']} ({graph.get('size_bytes') or 0:,} bytes)",
             f"  form {graph['form']}, lowering {graph['lowering']}"
             + (f", fixed T={graph['seq_len']}" if graph.get("seq_len") else "")
             + (", NaN refused (no guards: refuse NaN and Inf input)" if nan == "refuse" else ", NaN carried"),
             f"  inputs   {_specs(graph['inputs'])}",
             f"  outputs  {_specs(graph['outputs'])}",
             f"  opset {graph['opset']}, IR {graph['ir_version']}, operators {', '.join(graph['operators'])}"]
    if graph.get("weights"):
        lines.append(f"  weights  {graph['weights']} ({graph.get('weights_bytes') or 0:,} bytes, external data it "
                     "shares with the bundle's other graphs)")
    mobile = graph.get("mobile")
    if mobile:  # the note gives each provider's nodes as exported and with fixed shapes, and what blocks the rest
        lines.append(f"  mobile   {mobile['note'] or mobile['eps']} ({mobile['checker']})")
    return lines


def _graph_summary(found: Inspection) -> list[str]:
    data = found.data
    if data.get("contract", True) is None:
        return [f"{found.path}: not an rnnexport graph ({data['size_bytes']:,} bytes)",
                f"  inputs {', '.join(data['inputs'])}; outputs {', '.join(data['outputs'])}",
                f"  operators {', '.join(data['operators'])}"]
    lines = [f"{found.path}: {data['description']}"]
    lines += _graph_lines("", {**data, "file": found.path})[1:]
    state = data["state"]
    lines.append(f"  state    {', '.join(state['names'])} -> {', '.join(state['output_names'])}, "
                 f"initial {_initial(state)}, batch axis {state['batch_axis']}")
    if data.get("test_sets"):
        lines.append(f"  test sets {', '.join(data['test_sets'])}")
    return lines


def _initial(state: dict[str, Any]) -> str:
    """``zeros``, or how many recorded values a new stream starts from."""
    initial = state.get("initial", "zeros")
    if not isinstance(initial, dict):
        return str(initial)
    return f"the module's ({sum(len(v) for v in initial.get('values', []))} values per stream)"


def _bundle_lines(found: Inspection) -> list[str]:
    data = found.data
    made_by = data["created_by"]
    lines = [f"{found.path}: bundle {data['schema']} of {data['model'].get('description', '')}",
             f"  made by rnnexport {made_by.get('rnnexport', '?')}, onnxruntime {made_by.get('onnxruntime', '?')}",
             f"  parameters SHA-256 {data['model'].get('params_sha256', '?')}"]
    state = data["state"]
    lines.append(f"  state {', '.join(state['names'])}: shapes {state['shapes']}, initial {_initial(state)}")
    io = data["io"]
    vocabulary = io.get("vocabulary")
    lines.append(f"  x encoding {io.get('x_encoding', 'real')}"
                 + (f", vocabulary of {len(vocabulary)}: {''.join(vocabulary)!r:.80}" if vocabulary else ""))
    for name, graph in data["graphs"].items():
        lines += ["  " + line for line in _graph_lines(name, graph)]
        if graph.get("checked_on"):
            lines.append(f"    checked on {_checked(graph['checked_on'])}")
    for variant in data["variants"]:
        what = f"{variant['name']} of {variant.get('of') or 'the graph'}"
        if variant["status"] == "ok":
            figures = ", ".join(f"{k} {v['max_abs']:.2g}" for k, v in variant["figures"].items())
            only = f"; runs on {', '.join(variant['engines'])} only" if variant.get("engines") else ""
            lines.append(f"  variant {what}: {', '.join(variant['files'])} "
                         f"({variant['size_bytes']:,} bytes); max abs error vs float32: {figures}{only}")
            if variant.get("checked_on"):
                lines.append(f"    checked on {_checked(variant['checked_on'])}")
        else:
            lines.append(f"  variant {what}: left out: {variant['reason']}")
    lines.append("  test vectors: " + ", ".join(f"{t['dir']} ({t['kind']})" for t in data["test_vectors"]))
    lines.append(f"  {len(data['files'])} files, {data['total_bytes']:,} bytes")
    return lines


def _checked(checks: list[dict[str, Any]]) -> str:
    return ", ".join(f"{c['engine']} {c['status']}" + (f" (max abs {c['max_abs']:.2g}, {c['sets']} sets)"
                                                      if c.get("max_abs") is not None else "")
                     for c in checks)
