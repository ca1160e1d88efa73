"""Adversarial input against the CLI and the API: one clear line, exit 2, nothing written or lost.

Grouped by what could go wrong: code run from a graph, zip bombs, NaN, a bundle check that
trusts its manifest, files lost to an output path, tracebacks where one line is promised.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from rnnexport.bundle import open_bundle
from rnnexport.core.errors import BundleError, ContractError, RnnexportError
from rnnexport.runtime import StatefulSession
from tests.bundles import copy_bundle, edit_manifest
from tests.cli import assert_one_line_error, invoke, rnnexport, snapshot

ROOT = Path(__file__).resolve().parent.parent


def zipped(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


# --------------------------------------------------------------------------- 1. no code from a graph


def _with_origin(source: Path, target: Path, origin: dict) -> Path:
    model = onnx.load(source)
    for prop in model.metadata_props:
        if prop.key == "rnnexport.origin":
            prop.value = json.dumps(origin)
    onnx.save(model, target)
    return target


@pytest.mark.parametrize("origin", [
    {"model": "{evil}:make"},
    {"model": "os:abort"},
    {"model": "nosuch-model", "card": "{card}"},
    {"model": "../{card_dir}"},
], ids=["file-factory", "module-function", "card-path", "relative-folder"])
def test_verify_never_imports_what_a_graphs_metadata_names(exports, tmp_path, origin):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\ndef make():\n    raise SystemExit(7)\n")
    card = tmp_path / "card" / "card.json"
    card.parent.mkdir()
    card.write_text(json.dumps({"format": "rnnexport.card/1", "name": "x", "source": "factory",
                                "factory": f"{evil}:make", "weights": "w.safetensors"}))
    filled = {k: v.format(evil=evil, card=card, card_dir=card.parent) for k, v in origin.items()}
    graph = _with_origin(exports.export("seed_gru").path, tmp_path / "g.onnx", filled)
    # a subprocess: a regression that calls os.abort must not take the test run down with it
    assert_one_line_error(rnnexport("verify", graph, "--batch-sizes", "1", "--seq-lens", "2", cwd=tmp_path),
                          "pass SOURCE")
    assert not marker.exists()


# --------------------------------------------------------------------------- 2. zip bombs


def test_huge_manifest_is_refused_from_the_headers(tmp_path):
    archive = zipped(tmp_path / "bomb.zip", {"manifest.json": bytes(40 * 2**20)})
    np.save(tmp_path / "x.npy", np.ones((1, 10), np.float32))
    for command in (["verify"], ["inspect"], ["run", "--input", tmp_path / "x.npy"]):
        assert_one_line_error(invoke(*command[:1], archive, *command[1:]), "refusing", "zip bomb")
    with pytest.raises(BundleError, match="zip bomb"):
        StatefulSession.load(archive)


def test_many_members_of_1_mib_are_refused(tmp_path):
    archive = zipped(tmp_path / "many.zip", {"manifest.json": b"{}", **{f"f{i}": bytes(2**20) for i in range(300)}})
    with pytest.raises(BundleError, match="inflates .* times"):
        open_bundle(archive)


def test_too_many_entries_are_refused_quickly(tmp_path):
    archive = zipped(tmp_path / "entries.zip", {"manifest.json": b"{}", **{f"e{i}": b"" for i in range(5000)}})
    assert_one_line_error(invoke("verify", archive), "5001 entries, over the limit of 4096")


def test_damaged_zip_member_is_one_line(bundle, tmp_path):
    archive = tmp_path / "b.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as out:
        for path in sorted(bundle.rglob("*")):
            if path.is_file():
                out.write(path, path.relative_to(bundle).as_posix())
    data = bytearray(archive.read_bytes())
    offset = data.index(b"manifest.json") + 200  # inside a stored member near the manifest's entry
    data[offset] ^= 0xFF
    archive.write_bytes(bytes(data))
    assert_one_line_error(invoke("verify", archive))


# --------------------------------------------------------------------------- 3. NaN


def test_run_refuses_nan_input_by_default(bundle, tmp_path):
    x = np.ones((1, 10), np.float32)
    x[0, 3] = np.nan
    np.save(tmp_path / "x.npy", x)
    assert_one_line_error(invoke("run", bundle, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy"), "NaN", "x")
    assert not (tmp_path / "y.npy").exists()
    code, _, err = invoke("run", bundle, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--allow-nonfinite")
    assert code == 0, err
    assert np.isnan(np.load(tmp_path / "y.npy")).all()  # the native LSTM step carries NaN as PyTorch does


def test_api_check_finite_refuses_nan_in_x_and_state(bundle):
    session = StatefulSession.load(bundle, check_finite=True, form="step")
    with pytest.raises(ContractError, match="non-finite"):
        session.step(np.full((1, 10), np.inf, np.float32))
    state = session.state
    state["h"][0, 0] = np.nan
    with pytest.raises(ContractError, match="state h holds nan"):
        session.state = state


def test_nan_weights_are_not_packaged(exports, tmp_path):
    model = onnx.load(exports.export("seed_gru").path)
    tensor = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    array = onnx.numpy_helper.to_array(tensor).copy()
    array.flat[0] = np.nan
    tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
    onnx.save(model, tmp_path / "nan.onnx")
    assert_one_line_error(invoke("package", tmp_path / "nan.onnx", "-o", tmp_path / "b"), "NaN or Inf in its weights")
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- 4. the bundle check trusts nothing


@pytest.mark.parametrize(("change", "fragments"), [
    (lambda m: m["graphs"]["sequence"].update(file="../model.onnx"), ["unsafe path"]),
    (lambda m: m["graphs"]["sequence"].update(file="/etc/hostname"), ["unsafe path"]),
    (lambda m: m.update(files=[f for f in m["files"] if f["path"] != "model.onnx"]), ["no checksum"]),
    (lambda m: m["io"].update(x_features=[11]), ["differs from the manifest's io"]),
    (lambda m: m.update(files="model.onnx"), ["files must be a list"]),
    (lambda m: m.pop("graphs"), ["lists no graphs"]),
    (lambda m: m["io"]["state"].update(shapes=[["B", 100000000000], ["B", 16]]), ["malformed state contract"]),
    (lambda m: m["test_vectors"][0].update(graph="nosuch"), ["does not list"]),
], ids=["dotdot-graph", "absolute-graph", "unlisted-graph", "tampered-io", "files-string", "no-graphs",
        "huge-state", "vector-for-no-graph"])
def test_tampered_manifest_is_refused_by_verify_and_run(bundle, tmp_path, change, fragments):
    folder = edit_manifest(copy_bundle(bundle, tmp_path), change)
    before = snapshot(tmp_path)
    assert_one_line_error(invoke("verify", folder), *fragments)
    np.save(tmp_path / "x.npy", np.ones((1, 10), np.float32))
    assert_one_line_error(invoke("run", folder, "--input", tmp_path / "x.npy"), *fragments)
    assert snapshot(tmp_path) == {**before, "x.npy": snapshot(tmp_path)["x.npy"]}


def test_manifest_without_sizes_still_checks_every_checksum(bundle, tmp_path):
    folder = copy_bundle(bundle, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["files"]:
        entry.pop("size")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, out, err = invoke("verify", folder)
    assert code == 0, err
    (folder / "step.onnx").write_bytes((folder / "step.onnx").read_bytes() + b"\0")
    assert_one_line_error(invoke("verify", folder), "step.onnx does not match its SHA-256")


def _tampered_graph(exports, tmp_path, key: str, value: str) -> Path:
    model = onnx.load(exports.export("seed_gru").path)
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
    onnx.save(model, tmp_path / "tampered.onnx")
    return tmp_path / "tampered.onnx"


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("rnnexport.io", "{not json", "not JSON"),
    ("rnnexport.io", json.dumps({"x_features": [28], "x_dtype": "float32", "y_features": [28],
                                 "state": {"names": ["h"], "shapes": [["B", 1e11]], "batch_axis": 0}}),
     "malformed state contract"),
    ("rnnexport.form", "sideways", "form"),
    ("rnnexport.seq_len", "-3", "seq_len"),
], ids=["io-not-json", "io-huge-state", "bad-form", "bad-seq-len"])
def test_graph_with_tampered_metadata_is_one_line_everywhere(exports, tmp_path, key, value, fragment):
    graph = _tampered_graph(exports, tmp_path, key, value)
    np.save(tmp_path / "x.npy", np.ones((1, 10), np.float32))
    assert_one_line_error(invoke("verify", graph), fragment)
    assert_one_line_error(invoke("run", graph, "--input", tmp_path / "x.npy"), fragment)
    assert_one_line_error(invoke("package", graph, "-o", tmp_path / "b"), fragment)
    assert_one_line_error(invoke("inspect", graph), fragment)
    assert not (tmp_path / "b").exists()


def test_plain_test_folder_report_says_there_were_no_checksums(exports, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    shutil.copyfile(exports.export("seed_gru").path, folder / "model.onnx")
    code, out, err = invoke("verify", folder)
    assert code == 1 and "checksums  none" in out and "no graph engine ran" in out, out + err


def test_damaged_plain_test_folder_is_one_line(tmp_path):
    folder = tmp_path / "plain"
    (folder / "test_data_set_0").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"not a model")
    assert_one_line_error(invoke("verify", folder), "is not an ONNX model")


def test_garbage_test_vector_is_one_line(exports, tmp_path):
    folder = tmp_path / "plain"
    (folder / "test_data_set_0").mkdir(parents=True)
    shutil.copyfile(exports.export("seed_gru").path, folder / "model.onnx")
    (folder / "test_data_set_0" / "input_0.pb").write_bytes(os.urandom(64))
    (folder / "test_data_set_0" / "output_0.pb").write_bytes(os.urandom(64))
    assert_one_line_error(invoke("verify", folder), "test_data_set_0")


# --------------------------------------------------------------------------- 5. nothing of the user's lost


def test_convert_never_writes_over_its_own_weights(tmp_path):
    weights = ROOT / "models" / "gru-charlm" / "weights.safetensors"
    mine = tmp_path / "w.safetensors"
    shutil.copyfile(weights, mine)
    before = mine.read_bytes()
    assert_one_line_error(invoke("convert", "gru", "--weights", mine, "-o", mine, "--force"), "would overwrite", "input")
    assert mine.read_bytes() == before


def test_convert_never_writes_into_the_models_folder(tmp_path):
    target = ROOT / "models" / "lstm-charlm" / "weights.safetensors"
    before = target.read_bytes()
    assert_one_line_error(invoke("convert", "gru", "-o", target, "--force"), "models folder")
    assert target.read_bytes() == before


def test_convert_refuses_a_device_node():
    assert_one_line_error(invoke("convert", "gru", "-o", "/dev/null"), "not a regular file")


def test_package_force_replaces_only_a_bundle(exports, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    graph = exports.export("seed_rnn").path
    assert_one_line_error(invoke("package", graph, "-o", mine, "--variants", "none", "--force"), "not an rnnexport bundle")
    assert (mine / "thesis.txt").read_text() == "years of work"


def test_package_into_the_current_folder_is_refused(exports, tmp_path):
    graph = exports.export("seed_rnn").path
    (tmp_path / "keep.txt").write_text("keep")
    before = snapshot(tmp_path)
    assert_one_line_error(invoke("package", graph, "-o", ".", "--variants", "none", "--force", cwd=tmp_path),
                   "current folder")
    assert snapshot(tmp_path) == before


def test_package_zip_needs_force_and_a_bundle_to_replace(exports, tmp_path):
    graph = exports.export("seed_rnn").path
    (tmp_path / "b.zip").write_bytes(b"someone's archive")
    assert_one_line_error(invoke("package", graph, "-o", tmp_path / "b", "--variants", "none", "--zip"), "already exists")
    assert_one_line_error(invoke("package", graph, "-o", tmp_path / "b", "--variants", "none", "--zip", "--force"),
                   "not an rnnexport bundle")
    assert (tmp_path / "b.zip").read_bytes() == b"someone's archive" and not (tmp_path / "b").exists()


def test_package_zip_path_that_is_a_folder(exports, tmp_path):
    (tmp_path / "b.zip").mkdir()
    assert_one_line_error(invoke("package", exports.export("seed_rnn").path, "-o", tmp_path / "b", "--variants", "none",
                          "--zip"), "already exists")


def test_package_refuses_an_output_that_holds_its_input(exports, tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    graph = folder / "m.onnx"
    shutil.copyfile(exports.export("seed_rnn").path, graph)
    assert_one_line_error(invoke("package", graph, "-o", folder, "--variants", "none", "--force"), "input of this command")
    assert graph.is_file()


# --------------------------------------------------------------------------- 6. one line, never a traceback


def test_huge_hidden_size_is_refused_before_allocating(tmp_path):
    assert_one_line_error(invoke("convert", "lstm", "--hidden-size", "20000", "-o", tmp_path / "m.onnx"),
                   "parameters, over the limit")
    assert not (tmp_path / "m.onnx").exists()


def test_huge_grid_is_refused_before_running(exports):
    assert_one_line_error(invoke("verify", exports.export("seed_gru").path, "--seq-lens", "10000000"), "over the limit")


def test_factory_calling_sys_exit_is_one_line(tmp_path):
    (tmp_path / "f.py").write_text("import sys\ndef make():\n    sys.exit(3)\n")
    assert_one_line_error(invoke("convert", f"{tmp_path / 'f.py'}:make", "-o", tmp_path / "m.onnx"), "sys.exit(3)")


@pytest.mark.parametrize("content", [b"\x93NUMPY garbage", os.urandom(300)], ids=["truncated", "random-bytes"])
def test_damaged_state_file_is_one_line(bundle, tmp_path, content):
    np.save(tmp_path / "x.npy", np.ones((1, 10), np.float32))
    (tmp_path / "s.npz").write_bytes(content)
    assert_one_line_error(invoke("run", bundle, "--input", tmp_path / "x.npy", "--state-in", tmp_path / "s.npz"), "state")


def test_truncated_npz_state_is_one_line(bundle, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 10), np.float32))
    np.savez(tmp_path / "s.npz", h=np.zeros((1, 16), np.float32), c=np.zeros((1, 16), np.float32))
    data = (tmp_path / "s.npz").read_bytes()
    (tmp_path / "s.npz").write_bytes(data[: len(data) // 2])
    assert_one_line_error(invoke("run", bundle, "--input", tmp_path / "x.npy", "--state-in", tmp_path / "s.npz"), "state")


def test_object_array_state_is_one_line(bundle, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 10), np.float32))
    np.savez(tmp_path / "s.npz", h=np.array([object()], dtype=object), c=np.zeros((1, 16), np.float32))
    assert_one_line_error(invoke("run", bundle, "--input", tmp_path / "x.npy", "--state-in", tmp_path / "s.npz"), "state")


@pytest.mark.parametrize("streams", [True, 2.0, "0", [0, True]])
def test_reset_refuses_what_is_not_a_stream_index(bundle, streams):
    session = StatefulSession.load(bundle, batch=2)
    with pytest.raises(ContractError, match="reset:"):
        session.reset(streams)


def test_contract_with_a_huge_state_is_refused_on_load(exports, tmp_path):
    io = json.loads(next(p.value for p in onnx.load(exports.export("seed_gru").path).metadata_props
                         if p.key == "rnnexport.io"))
    io["state"]["shapes"] = [["B", 100000000000]]
    graph = _tampered_graph(exports, tmp_path, "rnnexport.io", json.dumps(io))
    with pytest.raises(RnnexportError, match="malformed state contract") as info:
        StatefulSession.load(graph)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- 8. reproducible archives


def test_zip_is_byte_identical_without_the_ort_variant_and_file_identical_but_one_with_it(exports, tmp_path):
    graph = exports.export("seed_lstm").path
    made = [invoke("package", graph, "-o", tmp_path / name, "--zip", "--variants", "int8,fp16") for name in "ab"]
    assert all(code == 0 for code, _, _ in made), made
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    for name in "cd":
        assert invoke("package", graph, "-o", tmp_path / name, "--zip")[0] == 0
    first, second = (zipfile.ZipFile(tmp_path / f"{n}.zip") for n in "cd")
    different = {n for n in first.namelist() if first.read(n) != second.read(n)}
    assert different <= {"variants/model.ort", "manifest.json"}, different


# --- what a graph or manifest says is printed as data, never as lines of its own --------------------

FORGED = "a model\nerror: forged line\r\x1b[2Kwarning: forged too\u202e"


def _no_forged_lines(text: str) -> None:
    for line in text.splitlines():
        assert not line.startswith(("error: forged", "warning: forged")), text
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text, repr(text)
    assert "a model\\x0aerror: forged line\\x0d\\x1b[2Kwarning: forged too\\u202e" in text, text


def test_inspect_prints_a_graphs_description_as_one_line(exports, tmp_path):
    import dataclasses

    from rnnexport.core.onnxfile import read_info, write_info

    model = onnx.load(exports.export("seed_gru").path)
    info = read_info(model)
    write_info(model, dataclasses.replace(info, description=FORGED))
    onnx.save(model, tmp_path / "forged.onnx")
    code, out, err = invoke("inspect", tmp_path / "forged.onnx")
    assert code == 0 and err == "", err
    _no_forged_lines(out)
    code, out, err = invoke("inspect", tmp_path / "forged.onnx", "--json", "-")
    assert json.loads(out)["description"] == FORGED  # the JSON keeps the text as it is, escaped by JSON


def test_inspect_and_verify_print_a_manifests_description_as_one_line(bundle, tmp_path):
    folder = edit_manifest(copy_bundle(bundle, tmp_path), lambda m: m.setdefault("model", {}).update(description=FORGED))
    code, out, err = invoke("inspect", folder)
    assert code == 0 and err == "", err
    _no_forged_lines(out)
    code, out, err = invoke("verify", folder, "--engines", "cpu")
    assert code == 0, out + err
    _no_forged_lines(out)
