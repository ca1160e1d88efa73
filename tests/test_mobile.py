"""``package`` records how much of each graph the mobile execution providers (NNAPI, CoreML) would take.

The reference is onnxruntime's own tool run as users run it,
``python -m onnxruntime.tools.check_onnx_model_mobile_usability GRAPH``: its log lines give each
provider's nodes as the graph is and with fixed shapes, which the manifest must repeat.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rnnexport
from rnnexport.bundle import Manifest
from rnnexport.bundle.inspect import inspect
from rnnexport.bundle.manifest import MobileCoverage
from rnnexport.core.errors import BundleError
from rnnexport.packaging import package
from tests.cli import invoke

#: The providers as onnxruntime's tool names them, as the manifest does.
TOOL_NAMES = {"NNAPI": "nnapi", "CoreML NeuralNetwork": "coreml_neuralnetwork", "CoreML MLProgram": "coreml_mlprogram"}
LINE = re.compile(r"(\d+) partitions with a total of (\d+)/(\d+) nodes can be handled by the (.+) EP\.")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """lstm-charlm packaged twice, carrying NaN and lean, each with its step graph."""
    root = tmp_path_factory.mktemp("mobile")
    made = {}
    for nan in ("carry", "refuse"):
        sequence = rnnexport.convert("lstm-charlm", root / f"{nan}.onnx", nan=nan).path
        step = rnnexport.convert("lstm-charlm", root / f"{nan}.step.onnx", form="step", nan=nan).path
        made[nan] = package(sequence, root / f"{nan}-bundle", step_path=step, variants=[]).folder
    return made


def tool_figures(graph: Path) -> dict[str, list[tuple[int, int]]]:
    """Per provider, (supported, nodes) as onnxruntime's tool logs them: as is, then with fixed shapes."""
    proc = subprocess.run([sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability", str(graph)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found: dict[str, list[tuple[int, int]]] = {}
    for match in LINE.finditer(proc.stdout + proc.stderr):
        found.setdefault(TOOL_NAMES[match.group(4)], []).append((int(match.group(2)), int(match.group(3))))
    return found


def manifest_of(folder: Path) -> Manifest:
    return Manifest.from_json(json.loads((folder / "manifest.json").read_text()))


@pytest.mark.parametrize("nan", ["carry", "refuse"])
@pytest.mark.parametrize("form", ["sequence", "step"])
def test_manifest_repeats_onnxruntimes_own_check(bundles, nan, form):
    folder = bundles[nan]
    entry = manifest_of(folder).graphs[form]
    assert entry.mobile is not None and set(entry.mobile.eps) == set(TOOL_NAMES.values())
    assert entry.mobile.checker.startswith("onnxruntime ")
    tool = tool_figures(folder / entry.file)
    for ep, coverage in entry.mobile.eps.items():
        as_is, *fixed = tool[ep]
        assert (coverage.as_is, coverage.nodes) == as_is
        # the tool checks fixed shapes only when the graph as it is would not do
        assert (coverage.fixed, coverage.nodes) == (fixed[0] if fixed else as_is)
        assert 0 <= coverage.as_is <= coverage.fixed <= coverage.nodes


def test_lean_graphs_leave_only_the_recurrent_operator_unassigned(bundles):
    """With the guards gone, what keeps NNAPI and CoreML MLProgram from the whole graph is the LSTM operator
    alone (in neither list), as the note says; the carrying graph's guard operators block more."""
    for form in ("sequence", "step"):
        lean = manifest_of(bundles["refuse"]).graphs[form].mobile
        carry = manifest_of(bundles["carry"]).graphs[form].mobile
        assert lean is not None and carry is not None
        for ep in ("nnapi", "coreml_mlprogram"):
            assert lean.eps[ep].blocked_by == ("LSTM",), lean.eps[ep]
            assert "IsNaN" in carry.eps[ep].blocked_by
            assert lean.eps[ep].nodes < carry.eps[ep].nodes
            assert lean.eps[ep].nodes - lean.eps[ep].fixed < carry.eps[ep].nodes - carry.eps[ep].fixed
        assert "LSTM (all)" in lean.note and "IsNaN" not in lean.note


def test_inspect_shows_coverage_and_policy(bundles):
    found = inspect(bundles["refuse"])
    text = "\n".join(found.lines())
    assert "NaN refused" in text and "mobile   as exported" in text
    code, out, err = invoke("inspect", bundles["refuse"], "--json", "-")
    assert code == 0, err
    document = json.loads(out)
    graphs = document["graphs"]
    assert graphs["step"]["nan"] == "refuse" and graphs["step"]["mobile"] == found.to_json()["graphs"]["step"]["mobile"]
    import jsonschema

    schema = json.loads((Path(__file__).resolve().parent.parent / "docs" / "inspect-result.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(document)


def test_old_manifests_load_and_malformed_coverage_is_refused(bundles):
    data = json.loads((bundles["refuse"] / "manifest.json").read_text())
    old = copy.deepcopy(data)
    for graph in old["graphs"].values():
        del graph["mobile"], graph["nan"]
    parsed = Manifest.from_json(old)
    assert all(g.mobile is None and g.nan.value == "carry" for g in parsed.graphs.values())

    def broken(change) -> dict:
        bad = copy.deepcopy(data)
        change(bad["graphs"]["step"])
        return bad

    nodes = data["graphs"]["step"]["mobile"]["eps"]["nnapi"]["nodes"]
    for change, message in [
        (lambda g: g["mobile"]["eps"]["nnapi"].update(fixed=nodes + 1), "fixed"),
        (lambda g: g["mobile"]["eps"]["nnapi"].update(as_is="all"), "as_is"),
        (lambda g: g["mobile"]["eps"].update({f"ep{i}": g["mobile"]["eps"]["nnapi"] for i in range(9)}), "at most"),
        (lambda g: g["mobile"]["eps"]["nnapi"].update(blocked_by=["X"] * 65), "blocked_by"),
        (lambda g: g["mobile"].update(eps={"../x": {}}), "provider names"),
        (lambda g: g.update(nan="maybe"), "nan"),
    ]:
        with pytest.raises(BundleError, match=message):
            Manifest.from_json(broken(change))
    assert MobileCoverage.from_json(data["graphs"]["step"]["mobile"]).to_json() == data["graphs"]["step"]["mobile"]


def test_ort_format_variant_notes_the_graphs_coverage(tmp_path):
    """The ORT-format variant, what onnxruntime's mobile builds load, carries the coverage note of the graph
    it was made from (the usability check judges ONNX graphs)."""
    graph = rnnexport.convert("lstm-charlm", tmp_path / "lean.step.onnx", form="step", nan="refuse").path
    manifest = manifest_of(package(graph, tmp_path / "bundle", variants=["ort"]).folder)
    (variant,) = [v for v in manifest.variants if v.name == "ort"]
    coverage = manifest.graphs["step"].mobile
    assert variant.ok and coverage is not None
    assert variant.notes.endswith(f"mobile providers, as judged on the step graph: {coverage.note}")
