"""``rnnexport verify`` from the command line: exit codes, the JSON report and its schema, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from rnnexport.export.convert import convert
from rnnexport.source.sources import SourceSpec
from rnnexport.verification import verify
from tests.cli import assert_one_line_error, invoke

ROOT = Path(__file__).resolve().parent.parent
#: The schema the wheel ships as rnnexport/schemas/verify-report.schema.json.
SCHEMA = json.loads((ROOT / "docs" / "verify-report.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
SMALL = ["--batch-sizes", "1,2", "--seq-lens", "1,3", "--engines", "cpu,reference"]


def validate(instance: object) -> list[str]:
    """Errors of ``instance`` against the shipped report schema, by jsonschema (empty: valid)."""
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(instance)]


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A built-in LSTM graph whose metadata lets verify rebuild its source."""
    path = tmp_path_factory.mktemp("verify") / "lstm.onnx"
    convert(SourceSpec("lstm", input_size=5, hidden_size=8, seed=3), path)
    return path


@pytest.fixture(scope="module")
def nudged(small) -> Path:
    proto = onnx.load(small)
    tensor = next(t for t in proto.graph.initializer if t.name.startswith("R"))
    array = numpy_helper.to_array(tensor).copy()
    array.flat[0] += 1e-3
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    path = small.with_name("nudged.onnx")
    onnx.save(proto, path)
    return path


# --------------------------------------------------------------------------- exit codes and JSON


def test_exit_0_when_all_pass_with_schema_valid_json(small, tmp_path):
    code, out, err = invoke("verify", str(small), *SMALL, "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("PASS")
    assert "1 graph == PyTorch" in out and "onnxruntime:cpu" in out and "seed 0" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert validate(data) == []
    assert data["passed"] and data["form"] == "sequence" and data["tolerance"]["atol"] == 1e-5
    assert {c["id"] for c in data["contracts"]} >= {"graph_vs_pytorch", "chunked_vs_whole", "declared_shapes"}
    assert len(data["cases"]) == 2 * 2 * 2 * 2 + 2 and all(c["seed"] >= 0 for c in data["cases"])  # + NaN in x, in state


def test_exit_1_on_a_parity_failure_with_figures_in_json(nudged, tmp_path):
    code, out, err = invoke("verify", nudged, "lstm", "--input-size", "5", "--hidden-size", "8", "--seed", "3",
                            "--batch-sizes", "1,2", "--seq-lens", "1,3", "--engines", "cpu", "--json", tmp_path / "r.json")
    assert code == 1, err
    assert out.strip().splitlines()[-1].startswith("FAIL") and "1 graph == PyTorch" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert validate(data) == [] and not data["passed"]
    failed = [c for c in data["checks"] if not c["passed"]]
    assert failed and all(c["contract"] == "graph_vs_pytorch" for c in failed)
    assert all(isinstance(c["max_abs"], float) and c["max_abs"] > 1e-5 for c in failed)


def test_exit_2_for_a_file_that_is_not_onnx(tmp_path):
    (tmp_path / "notes.onnx").write_text("this is not a model")
    assert_one_line_error(invoke("verify", str(tmp_path / "notes.onnx")), "is not an ONNX model")


def test_non_finite_figures_are_strict_json(small, tmp_path):
    proto = onnx.load(small)
    tensor = next(t for t in proto.graph.initializer if t.name.startswith("W_hq"))
    array = numpy_helper.to_array(tensor).copy()
    array.flat[0] = np.nan
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    onnx.save(proto, tmp_path / "nan.onnx")
    code, out, err = invoke("verify", str(tmp_path / "nan.onnx"), *SMALL, "--json", str(tmp_path / "r.json"))
    assert code == 1
    def forbidden(constant):
        raise AssertionError(f"non-strict JSON literal {constant}")

    data = json.loads((tmp_path / "r.json").read_text(), parse_constant=forbidden)
    assert validate(data) == []
    assert any(c["contract"] == "finite" and not c["passed"] for c in data["checks"])
    assert any(c["max_abs"] == "inf" for c in data["checks"] if c["contract"] == "graph_vs_pytorch")


def test_the_validator_rejects_what_the_schema_forbids(small):
    data = verify(small, batch_sizes=(1,), seq_lens=(2,), engines=("cpu",)).to_json()
    assert validate(data) == []
    broken = json.loads(json.dumps(data))
    broken["checks"][0]["max_abs"] = "big"
    broken["cases"][0]["batch"] = 0
    broken["surprise"] = 1
    del broken["seed"]
    errors = validate(broken)
    assert len(errors) == 4, errors


def test_json_dash_writes_the_report_to_stdout_and_the_table_to_stderr(small, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = invoke("verify", str(small), *SMALL, "--json", "-")
    assert code == 0, err
    data = json.loads(out)  # stdout is the JSON report and nothing else
    assert validate(data) == [] and data["passed"] and data["grid"] == "quick"
    assert err.strip().splitlines()[-1].startswith("PASS") and "1 graph == PyTorch" in err
    assert list(tmp_path.iterdir()) == []  # no file named "-"


def test_the_default_grid_is_quick_and_full_is_the_release_grid(small, tmp_path):
    code, out, err = invoke("verify", str(small), "--engines", "cpu", "--json", str(tmp_path / "quick.json"))
    assert code == 0, err
    quick = json.loads((tmp_path / "quick.json").read_text())
    grid = {(c["batch"], c["time"]) for c in quick["cases"] if c["state"] != "nan" and c["inputs"] != "nan"}
    assert quick["grid"] == "quick" and grid == {(1, 7), (1, 256), (3, 7), (3, 256)}
    assert {c["state"] for c in quick["cases"]} == {"zero", "random", "nan"}
    assert {c["contract"] for c in quick["checks"]} >= {"graph_vs_pytorch", "chunked_vs_whole"}
    assert "quick grid; --grid full for every size" in out
    code, out, err = invoke("verify", small, "--engines", "cpu", "--grid", "full", "--seq-lens", "3",
                            "--json", tmp_path / "full.json")  # full's batch sizes, at one short length
    assert code == 0, err
    full = json.loads((tmp_path / "full.json").read_text())
    assert full["grid"] == "full" and {c["batch"] for c in full["cases"]} == {1, 4, 16}


def test_unasked_providers_that_cannot_start_print_no_library_errors(small):
    import onnxruntime as ort

    from rnnexport.core.errors import ProviderError
    from rnnexport.core.ort import start_session

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime lists no CUDA provider")
    try:
        start_session(small, "cuda")
        pytest.skip("CUDA starts here")
    except ProviderError:
        pass
    code, out, err = invoke("verify", str(small), "--batch-sizes", "1", "--seq-lens", "2")
    assert code == 0, out + err
    assert "onnxruntime:cuda" in out and "were not asked for" in out
    assert ".so" not in out + err and "cannot open shared object" not in out + err
    data = verify(small, batch_sizes=(1,), seq_lens=(2,)).to_json()  # the JSON keeps the reason
    cuda = next(e for e in data["engines"] if e["name"] == "onnxruntime:cuda")
    assert not cuda["requested"] and not cuda["available"] and "did not start" in cuda["reason"]
    code, out, err = invoke("verify", str(small), "--engines", "cuda", "--batch-sizes", "1", "--seq-lens", "2")
    assert code == 1 and "did not start" in out and "no checks ran" in out  # asked for: the reason, no case run


def test_every_report_field_is_documented():
    text = (ROOT / "docs" / "verify.md").read_text()
    names = set(SCHEMA["properties"])
    for definition in SCHEMA["$defs"].values():
        names |= set(definition.get("properties", {}))
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"docs/verify.md does not document {missing}"


# --------------------------------------------------------------------------- output options


def test_quiet_prints_one_line(small):
    code, out, err = invoke("verify", str(small), *SMALL, "--quiet")
    assert code == 0 and len(out.strip().splitlines()) == 1 and out.startswith("PASS")


def test_plot_writes_an_image(small, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is the optional 'plot' extra")
    code, out, err = invoke("verify", str(small), *SMALL, "--plot", str(tmp_path / "err.png"))
    assert code == 0, err
    assert (tmp_path / "err.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_install(small, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the extra were not installed
    assert_one_line_error(invoke("verify", small, *SMALL, "--plot", tmp_path / "err.png"),
                          "pip install 'rnnexport[plot]'")
    assert not (tmp_path / "err.png").exists()


# --------------------------------------------------------------------------- bad input


def _renamed_input(small: Path, tmp_path: Path) -> Path:
    proto = onnx.load(small)
    proto.graph.input[2].name = "cell"
    for node in proto.graph.node:
        node.input[:] = ["cell" if i == "c" else i for i in node.input]
    onnx.save(proto, tmp_path / "renamed.onnx")
    return tmp_path / "renamed.onnx"


def _no_metadata(small: Path, tmp_path: Path) -> Path:
    proto = onnx.load(small)
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "bare.onnx")
    return tmp_path / "bare.onnx"


@pytest.mark.parametrize(("args", "fragments"), [
    (["MISSING"], ["does not exist"]),
    (["RENAMED"], ["has no input 'c' of the I/O contract", "the graph has x, h, cell"]),
    (["SMALL", "lstm", "--input-size", "5", "--hidden-size", "9"],
     ["SOURCE does not match", "declares input h float32[B, 8]", "h float32[B, 9]"]),
    (["SMALL", "gru", "--input-size", "5", "--hidden-size", "8"], ["SOURCE does not match"]),
    (["SMALL", "lstm", "--input-size", "5", "--hidden-size", "8", "--seed", "4"],
     ["parameter sha256", "do not match"]),
    (["SMALL", "--engines", "cpu,rocmx"], ["unknown engine 'rocmx'", "cpu, cuda, tensorrt, reference, openvino"]),
    (["SMALL", "--engines", "AzureExecutionProvider"], ["unknown engine 'AzureExecutionProvider'"]),
    (["SMALL", "--providers", "cpu"], ["No such option '--providers'"]),
    (["SMALL", "--grid", "medium"], ["'medium' is not one of 'quick', 'full'"]),
    (["SMALL", "--engines", "cpu", "--no-reference-evaluator"], ["with --engines, leave reference out"]),
    (["SMALL", "--batch-sizes", "0,2"], ["--batch-sizes takes comma-separated positive integers"]),
    (["SMALL", "--seq-lens", "a"], ["--seq-lens takes"]),
    (["SMALL", "--hidden-size", "8"], ["describe a SOURCE; give it"]),
    (["SMALL", "--step", "SMALL"], ["is a sequence graph; give a graph converted with --form step"]),
    (["SMALL", "--json", "NODIR/r.json"], ["folder", "does not exist"]),
    (["SMALL", "--json", "SMALL"], ["would overwrite", "MODEL of this command"]),
    (["BARE"], ["has no rnnexport metadata", "pass the SOURCE"]),
    (["SMALL", "tcn"], ["unknown model 'tcn'"]),
])
def test_bad_input_is_one_line_exit_2(small, tmp_path, args, fragments):
    paths = {"SMALL": small, "MISSING": tmp_path / "missing.onnx", "RENAMED": _renamed_input(small, tmp_path),
             "BARE": _no_metadata(small, tmp_path), "NODIR/r.json": tmp_path / "nodir" / "r.json"}
    assert_one_line_error(invoke(*[paths.get(a, a) for a in ["verify", *args]]), *fragments)


def test_a_graph_without_metadata_verifies_against_its_source(small, tmp_path):
    bare = _no_metadata(small, tmp_path)
    code, out, err = invoke("verify", bare, "lstm", "--input-size", "5", "--hidden-size", "8", "--seed", "3", *SMALL)
    assert code == 0, out + err
    assert "lowering unknown" not in out and "sequence, unknown" in out


def test_module_graph_needs_its_source_and_then_verifies(tmp_path):
    factory = tmp_path / "factory.py"
    factory.write_text("import torch\n\ndef make():\n    torch.manual_seed(0)\n"
                       "    return torch.nn.GRU(4, 6, num_layers=2)\n")
    convert(f"{factory}:make", tmp_path / "gru.onnx")
    assert_one_line_error(invoke("verify", tmp_path / "gru.onnx", *SMALL),
                          "cannot be rebuilt from the graph's metadata", "file.py:factory")
    code, out, err = invoke("verify", str(tmp_path / "gru.onnx"), f"{factory}:make", *SMALL)
    assert code == 0, out + err


def test_trained_model_is_rebuilt_from_metadata_with_one_hot_cases(tmp_path):
    convert("lstm-charlm", tmp_path / "charlm.onnx")
    report = verify(tmp_path / "charlm.onnx", batch_sizes=(2,), seq_lens=(3,), engines=("cpu",))
    assert report.passed, report.failures[:3]
    assert "lstm-charlm" in report.source
    assert {c.inputs.value for c in report.cases if not c.nonfinite} == {"normal", "saturating", "one-hot"}


def test_help_documents_every_option():
    from rnnexport.cli.verify import verify_command

    code, out, err = invoke("verify", "--help")
    assert code == 0
    for param in verify_command.params:
        for opt in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]:
            if opt.startswith("--"):
                assert opt in out, opt
    docs = (ROOT / "docs" / "verify.md").read_text()
    for opt in ("--engines", "--grid", "--allow-missing", "--batch-sizes", "--seq-lens", "--case-seed", "--json",
                "--plot", "--quiet", "--step", "--atol", "--rtol", "--no-reference-evaluator", "--threads"):
        assert opt in docs, opt


def test_public_api_is_callable_and_options_are_checked(small):
    import rnnexport
    import rnnexport.verification.render  # importing a submodule must not hide the function
    from rnnexport.core.errors import VerifyError
    from rnnexport.verification import VerifyOptions

    assert "verify" in rnnexport.__all__ and callable(rnnexport.verify)
    options = VerifyOptions(batch_sizes=[2], seq_lens=[3], engines=["cpu"])
    assert options.batch_sizes == (2,)
    report = rnnexport.verify(small, options=options)
    assert report.passed and {c.engine for c in report.checks} == {"pytorch", "onnxruntime:cpu"}
    with pytest.raises(TypeError, match="unknown option 'batch'"):
        verify(small, batch=2)
    with pytest.raises(TypeError, match="not both"):
        verify(small, options=options, seed=1)
    for bad in ({"seq_lens": ()}, {"batch_sizes": (0,)}, {"engines": ()}, {"atol": -1.0}, {"grid": "medium"},
                {"threads": 0}, {"batch_sizes": (16,), "seq_lens": (1 << 20,)}):
        with pytest.raises(VerifyError):
            VerifyOptions(**bad)
