"""``rnnexport convert`` from the command line: output, help, and bad input.

The command runs in-process (``tests/cli.py``); a real process only where the process is the
point: the console script and ``python -m`` agreeing, shell completion, and where a factory's
imports come from (the working folder, the file's folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from safetensors.torch import save_file

from rnnexport.cli.convert import convert_command
from rnnexport.source import cells
from tests.cli import Outcome, assert_one_line_error, invoke, rnnexport


def test_convert_writes_checked_model_and_prints_contract(tmp_path):
    code, out, err = invoke("convert", "gru", "--input-size", "5", "--hidden-size", "8", "-o", tmp_path / "g.onnx")
    assert code == 0, err
    assert "lowering  native" in out and "h float32[B, 8]" in out and "y float32[T, B, 5]" in out
    model = onnx.load(tmp_path / "g.onnx")
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["rnnexport.lowering"] == "native" and props["rnnexport.cell_family"] == "gru"
    assert len(props["rnnexport.params_sha256"]) == 64


def test_help_documents_every_option():
    code, out, _ = invoke("convert", "--help")
    assert code == 0
    for param in convert_command.params:
        for opt in getattr(param, "opts", []):
            if opt.startswith("-"):
                assert opt in out, opt
        if isinstance(param, type(convert_command.params[0])) and param.help is not None:
            assert param.help.split()[0] in out


def _factory_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "factory.py"
    path.write_text("import torch\n" + body)
    return path


@pytest.mark.parametrize(("args", "fragments"), [
    (["convert", "tcn"], ["unknown model 'tcn'", "rnn, lstm, gru"]),
    (["convert", "missing.py:make"], ["missing.py does not exist"]),
    (["convert", "lstm", "--lowering", "scan", "--form", "step"], ["scan lowers sequences"]),
])
def test_bad_source_is_one_line(tmp_path, args, fragments):
    assert_one_line_error(invoke(*args, "-o", tmp_path / "m.onnx", cwd=tmp_path), *fragments)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(("body", "fragments"), [
    ("def other():\n    pass\n", ["has no function 'make'"]),
    ("def make():\n    raise ValueError('no weights here')\n", ["make() raised ValueError: no weights here"]),
    ("def make():\n    return 42\n", ["returned int"]),
    ("import nonexistent_pkg\ndef make():\n    pass\n", ["importing", "ModuleNotFoundError"]),
    ("def make():\n    return torch.nn.Linear(3, 4)\n", ["holds 0 torch.nn RNN/LSTM/GRU layers"]),
])
def test_bad_factory_is_one_line(tmp_path, body, fragments):
    path = _factory_file(tmp_path, body)
    assert_one_line_error(invoke("convert", f"{path}:make", "-o", tmp_path / "m.onnx"), *fragments)
    assert not (tmp_path / "m.onnx").exists()


def test_factory_file_returning_a_module_converts(tmp_path):
    path = _factory_file(tmp_path, "def make():\n    return torch.nn.GRU(4, 6, num_layers=2)\n")
    code, out, err = invoke("convert", f"{path}:make", "-o", tmp_path / "m.onnx")
    assert code == 0, err
    assert "torch.nn.GRU (2 layers, hidden 6)" in out and "h float32[2, B, 6]" in out


def _weights(tmp_path: Path, edit) -> Path:
    named = dict(zip(cells.PARAM_NAMES["lstm"], cells.init_params("lstm", 6, 8), strict=True))
    edit(named)
    path = tmp_path / "w.safetensors"
    save_file(named, str(path))
    return path


@pytest.mark.parametrize(("edit", "fragments"), [
    (lambda w: w.pop("W_hf"), ["lacks tensor 'W_hf'"]),
    (lambda w: w.update(W_extra=torch.zeros(2)), ["has tensor 'W_extra'"]),
    (lambda w: w.update(b_o=torch.zeros(9)), ["tensor 'b_o'", "shape (9,)", "needs (8,)"]),
])
def test_bad_weights_name_the_tensor(tmp_path, edit, fragments):
    path = _weights(tmp_path, edit)
    assert_one_line_error(invoke("convert", "lstm", "--weights", path, "-o", tmp_path / "m.onnx"), *fragments)
    assert not (tmp_path / "m.onnx").exists()


def test_weights_set_the_sizes_and_explicit_sizes_must_agree(tmp_path):
    path = _weights(tmp_path, lambda w: None)
    code, out, err = invoke("convert", "lstm", "--weights", path, "-o", tmp_path / "m.onnx")
    assert code == 0 and "input 6, hidden 8" in out, err
    assert_one_line_error(invoke("convert", "lstm", "--weights", path, "--hidden-size", "9", "-o", tmp_path / "n.onnx"),
                          "'W_xi'", "needs (6, 9)")


def test_torch_weights_file_loads_with_weights_only(tmp_path):
    named = dict(zip(cells.PARAM_NAMES["rnn"], cells.init_params("rnn", 3, 4), strict=True))
    torch.save(named, tmp_path / "w.pt")
    code, _, err = invoke("convert", "rnn", "--weights", tmp_path / "w.pt", "-o", tmp_path / "m.onnx")
    assert code == 0, err
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    assert_one_line_error(invoke("convert", "rnn", "--weights", tmp_path / "bad.pt", "-o", tmp_path / "n.onnx"),
                          "cannot read weights file")


def test_unwritable_output_path_is_one_line(tmp_path):
    (tmp_path / "plain-file").write_text("")
    targets = [tmp_path / "plain-file" / "m.onnx", Path("/proc/m.onnx"), tmp_path]
    for target in targets:
        assert_one_line_error(invoke("convert", "rnn", "--hidden-size", "4", "-o", target), str(target))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain-file"]


def test_an_existing_output_is_replaced_only_with_force(tmp_path):
    """As package and triton do: without --force, one line and the file untouched; with it, replaced."""
    target = tmp_path / "m.onnx"
    target.write_bytes(b"keep")
    assert_one_line_error(invoke("convert", "rnn", "--hidden-size", "4", "-o", target),
                          f"{target} already exists", "--force")
    assert target.read_bytes() == b"keep"
    code, _, err = invoke("convert", "rnn", "--hidden-size", "4", "-o", target, "--force")
    assert code == 0, err
    onnx.checker.check_model(onnx.load(target), full_check=True)


def test_a_hugging_face_folder_is_told_what_rnnexport_reads(tmp_path):
    folder = tmp_path / "hf-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "lstm"}')
    save_file({"w": torch.zeros(2)}, folder / "model.safetensors")
    assert_one_line_error(invoke("convert", folder, "-o", tmp_path / "m.onnx"), "Hugging Face model folder",
                          "card.json and weights.safetensors", "file.py:factory")
    assert_one_line_error(invoke("convert", tmp_path, "-o", tmp_path / "m.onnx"), "holds no card.json")


def test_shell_completion_as_documented():
    """``_RNNEXPORT_COMPLETE=bash_source`` (README, --help) prints the script; completion names options."""
    env = {**os.environ, "_RNNEXPORT_COMPLETE": "bash_source"}
    script = Path(sys.executable).with_name("rnnexport")
    source = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert source.returncode == 0 and "complete -o nosort -F _rnnexport_completion rnnexport" in source.stdout
    env.update(_RNNEXPORT_COMPLETE="bash_complete", COMP_WORDS="rnnexport convert --fo", COMP_CWORD="2")
    words = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=60).stdout.split()
    assert words == ["plain,--form", "plain,--force"]


def test_native_for_a_cell_it_cannot_express_is_one_line(tmp_path):
    path = tmp_path / "cell.py"
    path.write_text(
        "import torch\nimport rnnexport\n"
        "def cell(inputs, state, params):\n"
        "    (H,) = state\n    outs = []\n"
        "    for X in inputs:\n        H = torch.sin(X @ params[0] + H)\n        outs.append(H)\n"
        "    return torch.cat(outs, 0), (H,)\n"
        "def make():\n    return rnnexport.from_cell(cell, [torch.randn(3, 4)], (torch.zeros(1, 4),))\n")
    assert_one_line_error(invoke("convert", f"{path}:make", "--lowering", "native", "-o", tmp_path / "m.onnx"),
                          "native: the loop is not one of the seed's", "try --lowering auto")
    assert not (tmp_path / "m.onnx").exists()
    code, out, err = invoke("convert", f"{path}:make", "-o", tmp_path / "m.onnx")
    assert code == 0 and "lowering  scan" in out, err


def test_python_dash_m_and_console_script_agree(tmp_path):
    """``python -m rnnexport`` and the installed ``rnnexport`` script are one program: same version, same help."""
    dash_m = [rnnexport(*args, cwd=tmp_path) for args in (["--version"], ["convert", "--help"])]
    script = [console(args, tmp_path) for args in (["--version"], ["convert", "--help"])]
    assert [p.code for p in dash_m] == [code for code, _, _ in script] == [0, 0]
    assert [p.out.replace("python -m rnnexport", "rnnexport") for p in dash_m] == \
        [out.replace("python -m rnnexport", "rnnexport") for _, out, _ in script]
    assert "rnnexport" in dash_m[0].out


def console(args: list[str], cwd: Path) -> Outcome:
    """The installed console script (not ``python -m``, which puts the working folder on sys.path itself)."""
    script = Path(sys.executable).with_name("rnnexport")
    proc = subprocess.run([str(script), *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


GRU = "import torch\n\ndef make_model():\n    return torch.nn.GRU(4, 6)\n"


def test_module_factory_imports_from_the_working_folder(tmp_path):
    (tmp_path / "mypackage").mkdir()
    (tmp_path / "mypackage" / "__init__.py").write_text("")
    (tmp_path / "mypackage" / "models.py").write_text(GRU)
    code, out, err = console(["convert", "mypackage.models:make_model"], cwd=tmp_path)
    assert code == 0, err
    assert (tmp_path / "make_model.onnx").is_file()


def test_file_factory_imports_its_siblings_and_is_named_after_the_file(tmp_path):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "layers.py").write_text(GRU)
    (project / "my_models.py").write_text("from layers import make_model\n")
    code, out, err = console(["convert", f"{project / 'my_models.py'}:make_model"], cwd=elsewhere)
    assert code == 0, err
    assert [p.name for p in elsewhere.iterdir()] == ["my_models.onnx"]


@pytest.mark.parametrize(("args", "fragment"), [
    (["--seq-len", "5"], "--lowering auto writes a graph that takes any T"),
    (["--seq-len", "5", "--lowering", "scan"], "--lowering scan writes a graph that takes any T"),
    (["--seq-len", "5", "--lowering", "unrolled", "--form", "step"], "a step graph is one step"),
])
def test_seq_len_without_an_unrolled_sequence_is_an_error(tmp_path, args, fragment):
    assert_one_line_error(invoke("convert", "rnn", "--hidden-size", "4", *args, "-o", tmp_path / "m.onnx"),
                          "--seq-len", fragment)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(("args", "fragment"), [
    (["convert", "lstm", "--bogus"], "No such option '--bogus'"),
    (["convert"], "Missing argument 'SOURCE'"),
    (["convert", "lstm", "--form", "sideways"], "Invalid value for '--form'"),
    (["package", "missing.onnx", "-o", "b"], "'missing.onnx' does not exist"),
    (["frobnicate"], "No such command 'frobnicate'"),
])
def test_usage_errors_are_one_line_like_the_tools_own(tmp_path, args, fragment):
    assert_one_line_error(invoke(*args, cwd=tmp_path), fragment, "--help")


def test_weights_are_recorded_as_a_relative_path(tmp_path):
    path = _weights(tmp_path, lambda w: None)
    code, _, err = invoke("convert", "lstm", "--weights", path, "-o", "m.onnx", cwd=tmp_path)
    assert code == 0, err
    props = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert json.loads(props["rnnexport.origin"])["weights"] == "w.safetensors"
    assert str(tmp_path) not in props["rnnexport.origin"]
    code, out, err = invoke("verify", "m.onnx", "--seq-lens", "1,3", "--batch-sizes", "1", "-q", cwd=tmp_path)
    assert code == 0, out + err  # the source is rebuilt from the recorded (relative) weights
