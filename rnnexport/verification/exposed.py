"""A graph with its intermediate values exposed, run once on onnxruntime's CPU provider.

As Polygraphy marks every tensor as an output: a copy of the graph gets every value of
the top graph as an output, and every value of each top-level Scan body (its inputs
and every node's outputs) as an extra scan output, stacked over the iterations. One
run then returns each value the graph computed on a case, and each body value at
every step. Loop and If nodes stay closed: their outputs are values, their bodies are not.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper

from rnnexport.core.errors import describe
from rnnexport.core.graphs import attribute, subgraphs
from rnnexport.core.ort import CPU, start_session, time_limit
from rnnexport.export.passes.graph import free_names, producers

__all__ = ["EXPOSED", "ExposedRun", "RunFailure", "body", "expose", "iterations_reversed", "node_inputs_at_failure",
           "run_exposed", "run_graph", "scan_value", "upstream"]

#: The prefix of the names the exposed copy gives its added outputs.
EXPOSED = "diagnose/"
#: onnxruntime's message for a node that failed at run time names the node.
_FAILED_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")
#: Seconds one run of a diagnosis may take: no more than the longest diagnosis (a graph that loops
#: is stopped, and the run is a failure).
RUN_SECONDS = 120.0


def body(node: onnx.NodeProto) -> onnx.GraphProto:
    """A Scan node's body."""
    return subgraphs(node)[0]


def scan_value(index: int, value: str) -> str:
    """The exposed output that stacks body value ``value`` of the Scan node at ``index`` of the top graph."""
    return f"{EXPOSED}{index}/{value}"


def _body_values(graph: onnx.GraphProto) -> list[str]:
    return [*(v.name for v in graph.input), *(o for n in graph.node for o in n.output if o)]


def expose(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are every value of its top graph and of its Scan bodies."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    present = {o.name for o in graph.output}
    for name in [o for n in graph.node for o in n.output if o]:
        if name not in present:
            graph.output.append(helper.make_empty_tensor_value_info(name))
            present.add(name)
    for index, node in enumerate(graph.node):
        if node.op_type != "Scan" or node.domain not in ("", "ai.onnx"):
            continue
        inner = body(node)
        values = _body_values(inner)
        for value in values:
            inner.node.append(helper.make_node("Identity", [value], [EXPOSED + value]))
            inner.output.append(helper.make_empty_tensor_value_info(EXPOSED + value))
            node.output.append(scan_value(index, value))
            graph.output.append(helper.make_empty_tensor_value_info(scan_value(index, value)))
        for attr in node.attribute:
            if attr.name in ("scan_output_axes", "scan_output_directions"):
                attr.ints.extend([0] * len(values))
    return copy


@dataclasses.dataclass(frozen=True)
class RunFailure:
    """onnxruntime could not run the graph on the case: its message, and the node it names."""

    message: str
    op: str | None = None
    node: str | None = None


@dataclasses.dataclass(frozen=True)
class ExposedRun:
    """Every value one run computed, by name (Scan body values stacked under :func:`scan_value` names)."""

    values: Mapping[str, np.ndarray]


def run_graph(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], threads: int = 1) -> dict[str, np.ndarray] | RunFailure:
    """``model`` run on onnxruntime's CPU provider: every output by name, or why it failed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # the failure is reported, not logged
    options.intra_op_num_threads = threads
    try:
        session = start_session(model.SerializeToString(), CPU, options, name="the graph").session
        names = [o.name for o in session.get_outputs()]
        wanted = {i.name for i in session.get_inputs()}
        with time_limit(RUN_SECONDS) as limit:
            outputs = session.run(names, {k: v for k, v in feeds.items() if k in wanted}, limit.options)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors (and LoadError)
        text = describe(e)
        found = _FAILED_NODE.search(str(e))
        return RunFailure(text, *(found.groups() if found else (None, None)))
    return {n: np.asarray(o) for n, o in zip(names, outputs, strict=True)}


def run_exposed(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], threads: int = 1) -> ExposedRun | RunFailure:
    """Every value of ``model`` (top graph, Scan bodies per step) computed on ``feeds``."""
    result = run_graph(expose(model), feeds, threads)
    return result if isinstance(result, RunFailure) else ExposedRun(result)


def upstream(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that computes only ``outputs`` (the nodes they need, nothing after)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    made = producers(graph)
    needed: set[str] = set()
    stack = [made[o] for o in outputs if o in made]
    keep: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in keep:
            continue
        keep.add(id(node))
        names = [*node.input, *(n for g in subgraphs(node) for n in free_names(g))]
        needed.update(names)
        stack.extend(made[n] for n in names if n in made)
    nodes = [n for n in graph.node if id(n) in keep]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend(helper.make_empty_tensor_value_info(o) for o in outputs)
    return copy


def node_inputs_at_failure(model: onnx.ModelProto, failure: RunFailure,
                           feeds: Mapping[str, np.ndarray]) -> tuple[onnx.NodeProto | None, dict[str, np.ndarray]]:
    """The top-level node a run failed at (by the name onnxruntime gave), and its inputs computed on ``feeds``."""
    node = next((n for n in model.graph.node if failure.node and n.name == failure.node), None)
    if node is None:
        return None, {}
    inputs = [i for i in node.input if i]
    values = run_graph(upstream(model, inputs), feeds)
    known = {} if isinstance(values, RunFailure) else values
    for name in inputs:
        if name in feeds:
            known[name] = np.asarray(feeds[name])
    return node, known


def iterations_reversed(node: onnx.NodeProto) -> bool:
    """Whether a Scan node reads its scan inputs from the last step to the first."""
    directions = attribute(node, "scan_input_directions") or []
    return bool(directions) and all(d == 1 for d in directions)
