"""``--json PATH`` (``-``: stdout) on convert, package, run, triton and inspect, checked against the shipped schemas.

Each document is validated with jsonschema against ``docs/NAME.schema.json`` (shipped as
``rnnexport/schemas``), and its figures are compared with what the command wrote, read back
independently (onnx, numpy, the bundle's manifest.json). Also: ``-v``/``-q`` on every command,
and warnings routed through logging.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import onnx
import pytest

from rnnexport.cli import COMMANDS
from tests.cli import Outcome, assert_one_line_error, invoke
from tests.schemas import schema, validate

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["gru", "--input-size", "4", "--hidden-size", "8"]
DOCUMENTS = ["convert-result", "package-result", "run-result", "triton-result", "inspect-result"]


def succeeds(*args: str | Path) -> Outcome:
    """``rnnexport ARGS`` in-process, which must exit 0."""
    outcome = invoke(*args)
    assert outcome.code == 0, outcome
    return outcome


def written(path: Path, name: str) -> dict[str, Any]:
    return validate(json.loads(path.read_text()), name)


@pytest.mark.parametrize("name", DOCUMENTS)
def test_schemas_are_valid_and_name_their_format(name):
    body = schema(name)
    jsonschema.Draft202012Validator.check_schema(body)
    assert body["$id"] == f"rnnexport.{name}/1" and body["properties"]["format"]["const"] == body["$id"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A small seed GRU's graphs and a bundle of them, made through the commands under test."""
    folder = tmp_path_factory.mktemp("json")
    succeeds("convert", *SMALL, "-o", folder / "g.onnx", "--json", folder / "convert.json")
    succeeds("convert", *SMALL, "--form", "step", "-o", folder / "g.step.onnx")
    succeeds("package", folder / "g.onnx", *SMALL, "--step", folder / "g.step.onnx", "-o", folder / "b", "--zip",
             "--variants", "fp16", "--json", folder / "package.json")
    return folder


def test_convert_json_is_the_graph_written(work):
    doc = written(work / "convert.json", "convert-result")
    model = onnx.load(work / "g.onnx")
    props = {p.key: p.value for p in model.metadata_props}
    assert doc["path"] == str(work / "g.onnx") and doc["size_bytes"] == os.path.getsize(work / "g.onnx")
    assert doc["params_sha256"] == props["rnnexport.params_sha256"]
    assert (doc["form"], doc["lowering"]) == (props["rnnexport.form"], props["rnnexport.lowering"])
    for specs, values in ((doc["inputs"], model.graph.input), (doc["outputs"], model.graph.output)):
        dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values]
        assert [(s["name"], s["shape"]) for s in specs] == [(v.name, d) for v, d in zip(values, dims, strict=True)]
    assert [a for a in doc["attempts"] if a["chosen"]] == [{"lowering": doc["lowering"], "chosen": True,
                                                            "reason": None}]


def test_package_json_matches_the_manifest(work):
    doc = written(work / "package.json", "package-result")
    manifest = json.loads((work / "b" / "manifest.json").read_text())
    assert doc["folder"] == str(work / "b") and doc["archive"] == str(work / "b.zip") and (work / "b.zip").is_file()
    assert doc["files"] == len(manifest["files"]) and doc["test_sets"] == len(manifest["test_vectors"])
    assert doc["total_bytes"] == sum(f["size"] for f in manifest["files"])
    assert {k: g["file"] for k, g in doc["graphs"].items()} == {k: g["file"] for k, g in manifest["graphs"].items()}
    assert doc["variants"] == manifest["variants"] and doc["expected_from"] == "pytorch"


@pytest.mark.parametrize("target", ["b.zip", "b", "g.onnx"])
def test_inspect_json_validates_for_bundles_and_graphs(work, target):
    doc = validate(json.loads(succeeds("inspect", work / target, "--json", "-").out), "inspect-result")
    if target == "g.onnx":
        assert doc["kind"] == "graph" and doc["size_bytes"] == os.path.getsize(work / target)
        return
    manifest = json.loads((work / "b" / "manifest.json").read_text())
    sizes = {f["path"]: f["size"] for f in manifest["files"]}
    graphs = {k: {**g, "size_bytes": sizes[g["file"]]} for k, g in manifest["graphs"].items()}
    assert doc["kind"] == "bundle" and {k: doc[k] for k in manifest} == {**manifest, "graphs": graphs}


def test_inspect_json_of_a_graph_rnnexport_did_not_write(tmp_path):
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["a"], ["b"])], "g",
                                   [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [2])],
                                   [onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [2])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)]), tmp_path / "p.onnx")
    doc = validate(json.loads(succeeds("inspect", tmp_path / "p.onnx", "--json").out), "inspect-result")
    assert doc["contract"] is None and doc["operators"] == ["Relu"] and doc["inputs"] == ["a"]


def test_run_json_for_one_stream_and_for_several(work, tmp_path):
    rng = np.random.default_rng(0)
    for i, steps in enumerate((5, 3)):
        np.save(tmp_path / f"x{i}.npy", rng.standard_normal((steps, 1, 4)).astype(np.float32))
    succeeds("run", work / "b.zip", "-i", tmp_path / "x0.npy", "-o", tmp_path / "y.npy", "--state-out",
             tmp_path / "s.npz", "--json", tmp_path / "run.json")
    doc = written(tmp_path / "run.json", "run-result")
    assert doc["streams"] == [{"call": "sequence", "steps": 5, "batch": 1, "y": str(tmp_path / "y.npy"),
                               "y_shape": list(np.load(tmp_path / "y.npy").shape)}]
    assert doc["state_out"] == str(tmp_path / "s.npz") and doc["providers"][0] == "CPUExecutionProvider"
    result = succeeds("run", work / "b.zip", "-i", tmp_path / "x0.npy", "-i", tmp_path / "x1.npy", "-o",
                      tmp_path / "y0.npy", "-o", tmp_path / "y1.npy", "--json", "-")
    doc = validate(json.loads(result.out), "run-result")
    assert [s["steps"] for s in doc["streams"]] == [5, 3] and doc["calls"] == 5
    assert [np.load(s["y"]).shape for s in doc["streams"]] == [(5, 1, 4), (3, 1, 4)]


def test_triton_json_describes_the_model_folder(work, tmp_path):
    pytest.importorskip("tritonclient")
    result = succeeds("triton", work / "g.step.onnx", "-o", tmp_path / "repo", "--name", "g", "--max-batch-size", "8",
                      "--json", "-")
    doc = validate(json.loads(result.out), "triton-result")
    assert doc["folder"] == str(tmp_path / "repo" / "g") and Path(doc["config"]).is_file()
    assert Path(doc["model"]).is_file() and doc["checks"] == {"passed": True, "problems": []}
    assert doc["options"]["max_batch_size"] == 8 and doc["options"]["max_sequences"] == 128
    assert "wrote Triton model g" in result.err  # the summary moves to stderr


def test_json_dash_leaves_stdout_to_the_document(work, tmp_path):
    result = succeeds("convert", *SMALL, "-o", tmp_path / "g.onnx", "--json", "-")
    assert validate(json.loads(result.out), "convert-result")["path"] == str(tmp_path / "g.onnx")
    assert "converted seed gru" in result.err
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize(("args", "fragment"), [
    (["inspect", "{w}/b.zip", "--json", "{w}/b.zip"], "would overwrite"),
    (["convert", *SMALL, "-o", "{t}/g.onnx", "--json", "{t}/g.onnx"], "each output needs its own path"),
    (["run", "{w}/g.onnx", "-i", "{t}/x.npy", "--json", "{t}/nofolder/r.json"], "does not exist"),
])
def test_a_json_path_that_cannot_be_written_is_one_line_before_any_work(work, tmp_path, args, fragment):
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 4), np.float32))
    before = (work / "b.zip").read_bytes()
    assert_one_line_error(invoke(*[a.format(w=work, t=tmp_path) for a in args]), fragment)
    assert not (tmp_path / "g.onnx").exists()
    assert (work / "b.zip").read_bytes() == before


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "verify"])
def test_every_command_takes_json_verbose_and_quiet(command):
    out = succeeds(command, "--help").out
    for option in ("--json PATH", "-v, --verbose", "-q, --quiet"):
        assert option in out, f"{command} --help lacks {option}"


def test_quiet_prints_only_what_was_written(work, tmp_path):
    assert succeeds("convert", *SMALL, "-o", tmp_path / "q.onnx", "-q").out == f"{tmp_path / 'q.onnx'}\n"
    assert succeeds("inspect", work / "b.zip", "-q").out == ""


def test_non_finite_figures_are_strings_as_in_the_verify_report(tmp_path):
    from rnnexport.cli.output import emit

    emit([], {"figures": {"max_abs": float("inf"), "max_rel": [float("nan"), -float("inf"), 1.5]}},
         str(tmp_path / "d.json"))
    assert json.loads((tmp_path / "d.json").read_text()) == {"figures": {"max_abs": "inf",
                                                                         "max_rel": ["nan", "-inf", 1.5]}}


def _logged(verbosity: int) -> str:
    code = textwrap.dedent(f"""
        import warnings
        from rnnexport.cli import configure_logging
        configure_logging({verbosity})
        warnings.warn_explicit("overflow encountered in exp", RuntimeWarning, "/site/onnx/reference/op.py", 7)
        import rnnexport.cli
        warnings.warn_explicit("a note of ours", UserWarning, rnnexport.cli.__file__, 9)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    return proc.stderr


def test_warnings_are_log_lines_other_libraries_only_with_verbose():
    default, verbose, quiet = _logged(0), _logged(1), _logged(-1)
    ours = "warning: UserWarning: a note of ours ("
    theirs = "warning: RuntimeWarning: overflow encountered in exp (/site/onnx/reference/op.py:7)"
    assert default.count("\n") == 1 and default.startswith(ours), default
    assert verbose.splitlines()[0] == theirs and verbose.splitlines()[1].startswith(ours), verbose
    assert quiet == ""
