"""One weight file for a bundle's pair of graphs: stored once, loaded by every engine, and held to the bundle.

The sequence and step graphs of a packaged bundle read the weights they share from one
``weights.bin`` (ONNX external data). These tests check that the tensors are stored once, that
both graphs load that form and match PyTorch on every engine (onnxruntime, the
ReferenceEvaluator, OpenVINO, tract, onnxruntime-node, onnxruntime-web in Node and in
Chromium), and that a graph whose external data leaves the bundle, reads past the end of its
file, or a weights file that was altered is refused in one line before any engine sees it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import rnnexport
from rnnexport.bundle import write_zip
from rnnexport.bundle.reader import ZipLimits, open_bundle
from rnnexport.core.contract import Form
from rnnexport.core.errors import BundleError
from rnnexport.core.external import ExternalModel, is_safe_location
from rnnexport.engines.base import EngineUnavailable
from rnnexport.engines.registry import engine_spec, running
from rnnexport.packaging.shared import MIN_BYTES, WEIGHTS
from rnnexport.runtime import StatefulSession
from rnnexport.testing import assert_close, random_inputs, random_state
from tests.bundles import relisted_copy
from tests.cli import assert_one_line_error, invoke
from tests.configs import seed_params
from tests.nodejs import check

#: Every engine but CUDA and TensorRT; the JavaScript ones start a process or a browser each: slow lane.
ENGINES = ("cpu", "reference", "openvino", "tract",
           *(pytest.param(name, marks=pytest.mark.slow) for name in ("node", "wasm", "browser")))


@pytest.fixture(scope="module")
def model() -> rnnexport.RecurrentModel:
    """A seed LSTM whose every weight is over 1 KiB (input 16, hidden 32, output 16)."""
    return rnnexport.builtin("lstm", params=seed_params("lstm", i=16, h=32, q=16, seed=5))


@pytest.fixture(scope="module")
def graphs(model, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("shared-graphs")
    sequence = rnnexport.convert(model, folder / "lstm.onnx")
    step = rnnexport.convert(model, folder / "lstm.step.onnx", form="step")
    return sequence.path, step.path


@pytest.fixture(scope="module")
def shared(model, graphs, tmp_path_factory) -> Path:
    """The pair packaged with one weights file (the default), as a folder and a zip beside it."""
    folder = tmp_path_factory.mktemp("shared") / "bundle"
    made = rnnexport.package(graphs[0], folder, source=model, step_path=graphs[1], variants=(), archive=True)
    assert made.shared is not None and made.archive is not None
    return made.folder


@pytest.fixture(scope="module")
def separate(model, graphs, tmp_path_factory) -> Path:
    """The same pair packaged as two self-contained graphs (``--no-shared-weights``)."""
    folder = tmp_path_factory.mktemp("separate") / "bundle"
    return rnnexport.package(graphs[0], folder, source=model, step_path=graphs[1], variants=(), archive=True,
                             shared_weights=False).folder


def _weights(path: Path) -> dict[str, bytes]:
    """The initializers of a self-contained graph that sharing moves (1 KiB and more), by name."""
    return {t.name: t.raw_data for t in onnx.load(path).graph.initializer if len(t.raw_data) >= MIN_BYTES}


def test_the_pair_stores_its_weights_once(shared, graphs):
    sequence, step = _weights(graphs[0]), _weights(graphs[1])
    assert sorted(map(len, sequence.values())) == sorted(map(len, step.values()))  # W, R, B, W_hq in both
    one_copy = sum(map(len, sequence.values()))
    stored = (shared / WEIGHTS).read_bytes()
    assert one_copy <= len(stored) < one_copy + 64 * len(sequence)  # each tensor once, 64-byte aligned
    manifest = json.loads((shared / "manifest.json").read_text())
    assert manifest["schema"] == "rnnexport.bundle/2"
    assert {k: (g["file"], g["weights"]) for k, g in manifest["graphs"].items()} == {
        "sequence": ("model.onnx", WEIGHTS), "step": ("step.onnx", WEIGHTS)}
    for graph, given in (("model.onnx", graphs[0]), ("step.onnx", graphs[1])):
        moved = given.stat().st_size - (shared / graph).stat().st_size  # what the graph no longer holds
        assert one_copy - 100 * len(sequence) < moved <= one_copy  # (less the external data entries)
        proto = onnx.load(shared / graph, load_external_data=False)
        for tensor in (t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL):
            info = {e.key: e.value for e in tensor.external_data}
            offset, length = int(info["offset"]), int(info["length"])
            assert info["location"] == WEIGHTS and offset % 64 == 0
            assert stored[offset:offset + length] in sequence.values()  # the same bytes as the export's
        assert sum(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer) == len(sequence)


def test_sharing_saves_one_copy_and_the_old_form_stays_on_request(shared, separate, graphs):
    manifest = json.loads((separate / "manifest.json").read_text())
    assert manifest["schema"] == "rnnexport.bundle/1" and manifest["graphs"]["step"]["file"] == "step/model.onnx"
    assert "weights" not in manifest["graphs"]["step"] and not (separate / WEIGHTS).exists()
    one_copy = sum(map(len, _weights(graphs[0]).values()))

    def size(folder: Path) -> int:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")

    assert one_copy - 1024 < size(separate) - size(shared) <= one_copy
    assert os.path.getsize(f"{separate}.zip") - os.path.getsize(f"{shared}.zip") > 0.8 * one_copy  # random weights
    x = np.ones((3, 1, 16), np.float32)
    assert np.array_equal(StatefulSession.load(separate).run(x), StatefulSession.load(shared).run(x))


@pytest.mark.parametrize("engine", ENGINES)
def test_both_graphs_load_the_shared_weights_and_match_pytorch(shared, model, engine):
    """Each engine loads the graphs as the reader hands them out (graph and weights.bin, checked) and is
    compared with PyTorch on inputs of its own: a sequence from a random state, then steps from its end."""
    opened = open_bundle(f"{shared}.zip")
    sources = {key: opened.graphs[key].model for key in ("sequence", "step")}
    assert all(isinstance(s, ExternalModel) and set(s.files) == {WEIGHTS} for s in sources.values())
    rng = np.random.default_rng(7)
    x, state = random_inputs(model.io, Form.SEQUENCE, 2, 5, rng), random_state(model.io, 2, rng)
    want = model.run_sequence(x, state)
    steps = random_inputs(model.io, Form.STEP, 2, None, rng)
    want_step = model.run_step(steps, want[1:])
    names = ["y", *model.io.state.output_names]
    with running(engine_spec(engine), sources) as runners:
        if isinstance(runners, EngineUnavailable):
            if os.environ.get("CI"):
                pytest.fail(f"CI must have every engine: {runners.reason}")
            pytest.skip(runners.reason)
        got = runners["sequence"].infer(model.io.feeds(x, state))
        assert_close(list(got.values()), want, names, context=f"sequence graph on {engine}")
        got_step = runners["step"].infer(model.io.feeds(steps, list(got.values())[1:]))
        assert_close(list(got_step.values()), want_step, names, context=f"step graph on {engine}")


@pytest.mark.parametrize("as_zip", [False, True])
def test_both_graphs_hold_the_one_checked_weights_object(shared, as_zip):
    """The weights are read and hashed once as the bundle opens, and both graphs hand out those bytes: one
    object (onnxruntime's session options then take it once, without comparing its bytes)."""
    graphs = open_bundle(Path(f"{shared}.zip") if as_zip else shared).graphs
    sequence, step = graphs["sequence"].model, graphs["step"].model
    assert isinstance(sequence, ExternalModel) and isinstance(step, ExternalModel)
    assert sequence.files[WEIGHTS] is step.files[WEIGHTS]
    assert sequence.files[WEIGHTS] == (shared / WEIGHTS).read_bytes()


def test_the_runtime_streams_the_shared_pair_from_a_zip(shared, model):
    session = StatefulSession.load(f"{shared}.zip")
    rng = np.random.default_rng(3)
    x = random_inputs(model.io, Form.SEQUENCE, 1, 6, rng)
    want = model.run_sequence(x, [np.zeros(model.io.state.shape(i, 1), np.float32) for i in range(2)])
    streamed = np.stack([session.step(x_t) for x_t in x])  # the step graph, the state carried
    assert_close([streamed], want[:1], ["y"], context="six steps")
    assert_close([session.run(x)], [model.run_sequence(x, want[1:])[0]], ["y"], context="then the sequence graph")


# --- what the reader refuses ---------------------------------------------------------------------------


def _external(**changes: str):
    """An edit of the step graph: the first external tensor's ``external_data`` entries changed."""
    def change(folder: Path) -> None:
        proto = onnx.load(folder / "step.onnx", load_external_data=False)
        tensor = next(t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
        for entry in tensor.external_data:
            entry.value = changes.get(entry.key, entry.value)
        (folder / "step.onnx").write_bytes(proto.SerializeToString())
    return change


def _refused(path: Path, *fragments: str) -> None:
    with pytest.raises(BundleError) as e:
        open_bundle(path)
    message = str(e.value)
    assert "\n" not in message and all(f in message for f in fragments), message
    assert_one_line_error(invoke("verify", path, "--engines", "cpu"))


@pytest.mark.parametrize("location", ["../weights.bin", "/etc/hostname", "step/../../weights.bin",
                                      "*/_ORT_MEM_ADDR_/*", "test_data_set_0/input_0.pb"])
def test_a_location_outside_the_weights_file_is_refused(shared, tmp_path, location):
    changed = relisted_copy(shared, tmp_path / "b", _external(location=location))
    _refused(changed, "step.onnx", repr(location)[:40])


def test_a_trailing_newline_is_no_plain_location_or_number(shared, tmp_path):
    """``$`` also matches before a final newline: the whole text must be the path or the number."""
    assert is_safe_location("weights.bin") and not is_safe_location("weights.bin\n")
    proto = onnx.load(shared / "step.onnx", load_external_data=False)
    tensor = next(t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    offset = next(e.value for e in tensor.external_data if e.key == "offset")
    _refused(relisted_copy(shared, tmp_path / "b", _external(offset=offset + "\n")), "whole number")
    folder = _test_folder(shared, tmp_path / "t", ["w.bin\n"])
    shutil.copyfile(shared / WEIGHTS, folder / "w.bin\n")
    _refused(folder, "not a plain relative path")


def test_a_location_escaping_a_zip_bundle_is_refused(shared, tmp_path):
    write_zip(relisted_copy(shared, tmp_path / "b", _external(location="../weights.bin")), tmp_path / "b.zip")
    _refused(tmp_path / "b.zip", "not a plain relative path")


def test_an_offset_past_the_end_is_refused(shared, tmp_path):
    size = (shared / WEIGHTS).stat().st_size
    _refused(relisted_copy(shared, tmp_path / "b", _external(offset=str(size - 4))), f"which holds {size}")
    _refused(relisted_copy(shared, tmp_path / "c", _external(offset="-4")), "whole number")


def test_a_tampered_weights_file_is_refused(shared, tmp_path):
    copy = Path(shutil.copytree(shared, tmp_path / "b"))
    data = bytearray((copy / WEIGHTS).read_bytes())
    data[100] ^= 1
    (copy / WEIGHTS).write_bytes(bytes(data))
    _refused(copy, "checksum mismatch", WEIGHTS)
    write_zip(copy, tmp_path / "b.zip")
    _refused(tmp_path / "b.zip", "checksum mismatch", WEIGHTS)


def test_a_weights_file_linking_out_of_the_bundle_is_refused(shared, tmp_path):
    copy = Path(shutil.copytree(shared, tmp_path / "b"))
    outside = tmp_path / "elsewhere.bin"
    (copy / WEIGHTS).rename(outside)
    (copy / WEIGHTS).symlink_to(outside)  # the same bytes, so only the link can be what is refused
    _refused(copy, "weights.bin leads outside the bundle")


def test_a_bundle_folder_is_held_to_the_limits_before_its_files_are_read(shared):
    """As a zip's headers are: each listed file within the per-entry limit, all of them within the total."""
    listed = [f["path"] for f in json.loads((shared / "manifest.json").read_text())["files"]]
    sizes = {path: (shared / path).stat().st_size for path in listed}
    first = next(path for path in listed if sizes[path] > 1000)
    with pytest.raises(BundleError, match=f"lists {sum(sizes.values())} bytes of files, over the limit of 1000"):
        open_bundle(shared, ZipLimits(max_total_bytes=1000))
    with pytest.raises(BundleError, match=f"{first} is {sizes[first]} bytes, over the limit of 1000"):
        open_bundle(shared, ZipLimits(max_member_bytes=1000))


def test_a_graph_whose_entry_names_no_weights_may_read_none(shared, tmp_path):
    def unnamed(folder: Path) -> None:
        manifest = json.loads((folder / "manifest.json").read_text())
        del manifest["graphs"]["step"]["weights"]
        (folder / "manifest.json").write_text(json.dumps(manifest))

    _refused(relisted_copy(shared, tmp_path / "b", unnamed), "does not name as its weights")


def _ortm(location: str):
    """An edit of a folder's step graph: producer name ``ORTM...`` (bytes 4-8 read as the ORT format's tag)
    and the first external tensor read from ``location``."""
    def change(folder: Path) -> None:
        _external(location=location)(folder)
        proto = onnx.load(folder / "step.onnx", load_external_data=False)
        proto.ir_version, proto.producer_name = 8, "ORTM-like producer"  # field 1 (2 bytes), field 2 from byte 2
        data = proto.SerializeToString()
        assert data[4:8] == b"ORTM", data[:8]
        (folder / "step.onnx").write_bytes(data)
    return change


@pytest.mark.parametrize("location", ["/etc/passwd", "../x"])
def test_an_onnx_graph_tagged_like_the_ort_format_is_still_checked(shared, tmp_path, location):
    """Only the ort variant's file may skip the external data checks: a manifest graph, or a test folder's
    model.onnx, whose producer name puts ``ORTM`` at bytes 4-8 is ONNX and is checked like any other."""
    changed = relisted_copy(shared, tmp_path / "b", _ortm(location))
    _refused(changed, "step.onnx", "not a plain relative path")
    assert_one_line_error(invoke("triton", changed, "-o", tmp_path / "models"), "not a plain relative path")
    assert not (tmp_path / "models").exists()
    folder = tmp_path / "test-folder"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((changed / "step.onnx").read_bytes())
    _refused(folder, "model.onnx", "not a plain relative path")


def _test_folder(shared: Path, folder: Path, locations: list[str], **changes: str) -> Path:
    """An ONNX test folder (no manifest) whose model.onnx is the bundle's step graph, its external tensors
    reading from ``locations`` in turn (each a whole copy of weights.bin, as the bundle's offsets expect),
    their other external data entries set to ``changes``."""
    folder.mkdir()
    proto = onnx.load(shared / "step.onnx", load_external_data=False)
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) >= len(locations)
    for k, tensor in enumerate(external):
        for entry in tensor.external_data:
            entry.value = locations[k % len(locations)] if entry.key == "location" else \
                changes.get(entry.key, entry.value)
    (folder / "model.onnx").write_bytes(proto.SerializeToString())
    return folder


def test_a_test_folder_graph_reading_its_own_file_is_refused(shared, tmp_path):
    folder = _test_folder(shared, tmp_path / "t", ["model.onnx"], offset="0", length="16")  # within its bytes
    _refused(folder, "model.onnx", "the graph's own file")


def test_a_test_folder_reading_more_than_the_total_limit_is_refused_before_reading(shared, tmp_path):
    """Each file within the per-file limit, together over the total one (links to one file count each time)."""
    folder = _test_folder(shared, tmp_path / "t", ["a.bin", "b.bin", "c.bin"])
    shutil.copyfile(shared / WEIGHTS, folder / "a.bin")
    for name in ("b.bin", "c.bin"):
        (folder / name).symlink_to(folder / "a.bin")
    size = (folder / "a.bin").stat().st_size
    assert isinstance(open_bundle(folder).graphs["model.onnx"].model, ExternalModel)  # the default limits take it
    graph = (folder / "model.onnx").stat().st_size
    limits = ZipLimits(max_member_bytes=size, max_total_bytes=2 * size + graph)
    with pytest.raises(BundleError, match=re.escape(f"files it reads (a.bin, b.bin, c.bin) are {3 * size + graph} "
                                                    f"bytes, over the limit of {limits.max_total_bytes}")):
        open_bundle(folder, limits)
    with pytest.raises(BundleError, match=f"a.bin is {size} bytes, over the limit of {size - 1}"):
        open_bundle(folder, ZipLimits(max_member_bytes=size - 1))


# --- the Node example ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("as_zip", [False, True])
def test_the_node_example_loads_the_shared_pair(shared, node, as_zip):
    result = check(node, Path(f"{shared}.zip") if as_zip else shared)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("6 passed, 0 failed")


@pytest.mark.slow
def test_the_node_example_refuses_a_location_outside_the_weights_file(shared, node, tmp_path):
    result = check(node, relisted_copy(shared, tmp_path / "b", _external(location="model.onnx")))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "does not name as its weights" in lines[0], result.stderr
