"""Bundles: manifest, checksums, test vectors, variants, zips, and their safety checks."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from rnnexport.bundle import Manifest, ZipLimits, open_bundle
from rnnexport.bundle.vectors import read_set, write_set
from rnnexport.core.cpu import this_cpu
from rnnexport.core.errors import BundleError
from rnnexport.packaging import package
from rnnexport.verification import verify
from tests.cli import assert_one_line_error, invoke

EXPECTED_VARIANTS = {"seed_lstm": {"ort", "int8", "int8-qdq", "fp16"}, "nn_gru_2layer_nobias": {"ort", "int8-qdq", "fp16"}}


@pytest.fixture(scope="module")
def bundles(exports, tmp_path_factory):
    """A bundle (with step graph and every variant) per model, packaged once."""
    root = tmp_path_factory.mktemp("bundles")
    made = {}
    for name in EXPECTED_VARIANTS:
        sequence = exports.export(name)
        step = exports.export(name, form="step")
        made[name] = package(sequence.path, root / name, source=exports.model(name), step_path=step.path,
                             archive=True)
    return made


@pytest.mark.parametrize("name", list(EXPECTED_VARIANTS))
def test_bundle_has_contract_checksums_vectors_and_variants(bundles, exports, name):
    result = bundles[name]
    manifest = json.loads((result.folder / "manifest.json").read_text())
    assert manifest == result.manifest.to_json() and manifest["schema"] == "rnnexport.bundle/2"  # shared weights
    assert {g["file"]: g["weights"] for g in manifest["graphs"].values()} == {"model.onnx": "weights.bin",
                                                                               "step.onnx": "weights.bin"}
    model = exports.model(name)
    assert manifest["io"] == model.io.to_json()
    assert manifest["model"]["params_sha256"] == model.params_sha256()
    assert [s["name"] for s in manifest["graphs"]["sequence"]["inputs"]] == ["x", *model.io.state.names]
    assert set(manifest["graphs"]) == {"sequence", "step"}
    listed = {f["path"] for f in manifest["files"]}
    on_disk = {p.relative_to(result.folder).as_posix() for p in result.folder.rglob("*") if p.is_file()}
    assert listed == on_disk - {"manifest.json"}
    kinds = [(t["graph"], t["kind"]) for t in manifest["test_vectors"]]
    assert kinds.count(("sequence", "stream")) == 2 and ("step", "single") in kinds
    assert {t["expected_from"] for t in manifest["test_vectors"]} == {"pytorch"}
    made = {v["name"] for v in manifest["variants"] if v["status"] == "ok"}
    assert made == EXPECTED_VARIANTS[name]
    here = {"machine": this_cpu().machine, "features": list(this_cpu().features)}
    for variant in manifest["variants"]:
        if variant["status"] == "ok":
            assert all(f["passed"] for f in variant["figures"].values())
            assert all((result.folder / f).is_file() for f in variant["files"])
            assert variant["cpu"] == here  # where its figures and checks ran
        else:
            assert variant["name"] == "int8" and "no int8 GRU kernel" in variant["reason"]


@pytest.mark.parametrize("name", list(EXPECTED_VARIANTS))
def test_bundle_and_its_zip_verify(bundles, name):
    for path in (bundles[name].folder, bundles[name].archive):
        report = verify(path, engines=("cpu",))
        assert report.passed, report.to_json()
        assert report.kind == "bundle" and {c.contract.value for c in report.checks} == {"test_vectors", "finite"}
        assert {c.case for c in report.checks} >= {"test_data_set_1", "test_data_set_2", "step/test_data_set_0"}


#: onnxruntime's integer GEMMs and their weight inputs (DynamicQuantizeLSTM: W and R).
INTEGER_GEMMS = {"DynamicQuantizeLSTM": (1, 2), "MatMulInteger": (1,), "DynamicQuantizeMatMul": (1,),
                 "MatMulIntegerToFloat": (1,)}


@pytest.mark.parametrize("graph, variants", [("model.onnx", "variants"), ("step.onnx", "step/variants")])
def test_int8_variant_has_no_gemm_that_saturates_on_avx2(bundles, graph, variants):
    """What makes the int8 variant right on every CPU, checked on any CPU.

    onnxruntime multiplies uint8 activations by int8 weights, on x86 CPUs without VNNI,
    in saturating int16 pair sums; uint8 x uint8 cannot saturate. So every integer GEMM of
    the variant must take uint8 weights, and the LSTM's must be the float weights quantized.
    """
    folder = bundles["seed_lstm"].folder
    variant = onnx.load(folder / variants / "model.int8.onnx")
    weights = {t.name: t for t in variant.graph.initializer}
    gemms = [n for n in variant.graph.node if n.op_type in INTEGER_GEMMS]
    assert {n.op_type for n in gemms} >= {"DynamicQuantizeLSTM", "MatMulInteger"}
    for node in gemms:
        for index in INTEGER_GEMMS[node.op_type]:
            assert weights[node.input[index]].data_type == onnx.TensorProto.UINT8, (node.op_type, index)
    lstm = next(n for n in gemms if n.op_type == "DynamicQuantizeLSTM")
    float_lstm = next(n for n in onnx.load(folder / graph).graph.node if n.op_type == "LSTM")
    floats = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(folder / graph).graph.initializer}
    for w, scale, zero, original in ((1, 8, 9, 1), (2, 10, 11, 2)):  # the com.microsoft schema's inputs
        q, s, z = (onnx.numpy_helper.to_array(weights[lstm.input[i]]) for i in (w, scale, zero))
        assert (z == 128).all()
        # DynamicQuantizeLSTM keeps W as (directions, input, 4 * hidden): the float one transposed
        dequantized = np.swapaxes((q.astype(np.float32) - z[:, None, :]) * s[:, None, :], 1, 2)
        want = floats[float_lstm.input[original]]
        np.testing.assert_allclose(dequantized, want, atol=float(s.max()) / 2 + 1e-7)


def test_integer_gemm_weights_other_than_uint8_constants_are_found():
    """The guard that leaves an int8 variant out rather than ship a kernel that saturates on AVX2."""
    from onnx import helper, numpy_helper

    from rnnexport.packaging.variants import _signed_weights

    def graph(weight: np.ndarray | None) -> onnx.ModelProto:
        inits = [numpy_helper.from_array(weight, "B")] if weight is not None else []
        inputs = [helper.make_tensor_value_info("A", onnx.TensorProto.UINT8, [2, 4])]
        if weight is None:  # weights computed at run time
            inputs.append(helper.make_tensor_value_info("B", onnx.TensorProto.UINT8, [4, 3]))
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"], name="head")
        out = helper.make_tensor_value_info("Y", onnx.TensorProto.INT32, [2, 3])
        return helper.make_model(helper.make_graph([node], "g", inputs, [out], inits))

    assert _signed_weights(graph(np.ones((4, 3), np.uint8))) == []
    assert _signed_weights(graph(np.ones((4, 3), np.int8))) == ["MatMulInteger 'head'"]
    assert _signed_weights(graph(None)) == ["MatMulInteger 'head'"]


def test_manifest_cpu_record_round_trips_and_is_bounded(bundles):
    data = bundles["seed_lstm"].manifest.to_json()
    assert Manifest.from_json(json.loads(json.dumps(data))) == bundles["seed_lstm"].manifest
    old = json.loads(json.dumps(data))
    for variant in old["variants"]:
        variant.pop("cpu", None)
    assert all(v.cpu is None for v in Manifest.from_json(old).variants)  # written before CPUs were recorded
    made = next(i for i, v in enumerate(data["variants"]) if v["status"] == "ok")
    for cpu, problem in [({"machine": "x" * 33, "features": []}, "cpu machine"),
                         ({"machine": "x86_64", "features": ["avx2"] * 33}, "cpu features"),
                         ({"machine": "x86_64", "features": ["avx 2"]}, "cpu features"),
                         ({"machine": "x86_64", "features": "avx2"}, "features must be a list"),
                         ("x86_64", "malformed variant cpu")]:
        bad = json.loads(json.dumps(data))
        bad["variants"][made]["cpu"] = cpu
        with pytest.raises(BundleError, match=problem):
            Manifest.from_json(bad)


def test_stream_pair_continues_from_the_first_calls_state(bundles):
    bundle = open_bundle(bundles["seed_lstm"].folder)
    _, first_out = read_set(bundle, "test_data_set_1")
    second_in, _ = read_set(bundle, "test_data_set_2")
    for (_, carried), (_, given) in zip(first_out[1:], second_in[1:], strict=True):
        np.testing.assert_array_equal(carried, given)


@pytest.mark.parametrize("name", list(EXPECTED_VARIANTS))
def test_vectors_pass_under_the_reference_evaluator(bundles, name):
    result = bundles[name]
    bundle = open_bundle(result.folder)
    for entry in result.manifest.test_vectors:
        graph = result.folder / result.manifest.graphs[entry.graph].file
        inputs, outputs = read_set(bundle, entry.dir)
        got = ReferenceEvaluator(str(graph)).run(None, dict(inputs))
        for (out_name, want), actual in zip(outputs, got, strict=True):
            np.testing.assert_allclose(actual, want, atol=1e-5, rtol=1e-4, err_msg=f"{entry.dir}/{out_name}")


def test_flipped_byte_fails_the_checksum(bundles, tmp_path):
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(bundles["seed_lstm"].folder, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx does not match its SHA-256"):
        verify(copy)
    assert_one_line_error(invoke("verify", copy), "model.onnx does not match its SHA-256")


def test_zip_twice_gives_identical_bytes(exports, tmp_path):
    result = exports.export("seed_gru")
    first = package(result.path, tmp_path / "a", variants=["fp16"], archive=True)
    second = package(result.path, tmp_path / "b", variants=["fp16"], archive=True)
    assert first.archive.read_bytes() == second.archive.read_bytes()
    assert {t.expected_from for t in first.manifest.test_vectors} == {"onnxruntime-cpu"}


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("entry", ["../x", "/etc/x", "a/../../x"])
def test_unsafe_zip_entries_are_refused(tmp_path, entry):
    archive = _zip(tmp_path / "evil.zip", {"manifest.json": b"{}", entry: b"boom"})
    with pytest.raises(BundleError, match="points outside the bundle"):
        open_bundle(archive)
    assert not (tmp_path / "x").exists()
    assert_one_line_error(invoke("verify", archive), "points outside the bundle")


def test_zip_bomb_is_refused(tmp_path):
    archive = _zip(tmp_path / "bomb.zip", {"manifest.json": b"{}", "big.bin": bytes(64 * 2**20)})
    with pytest.raises(BundleError, match="zip bomb"):
        open_bundle(archive)
    with pytest.raises(BundleError, match="over the limit"):
        open_bundle(_zip(tmp_path / "b2.zip", {"manifest.json": b"{}", "a": b"x" * 1000}),
                    ZipLimits(max_total_bytes=100))


def test_unknown_schema_and_missing_file_are_refused(bundles, tmp_path):
    import shutil

    copy = tmp_path / "future"
    shutil.copytree(bundles["seed_lstm"].folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "step.onnx").unlink()
    with pytest.raises(BundleError, match="lacks step.onnx"):
        open_bundle(copy)
    manifest["schema"] = "rnnexport.bundle/99"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema 'rnnexport.bundle/99'"):
        open_bundle(copy)


def test_interrupted_packaging_leaves_no_half_bundle(exports, tmp_path, monkeypatch):
    import rnnexport.packaging as pkg

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pkg, "write_manifest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        package(exports.export("seed_rnn").path, tmp_path / "bundle", variants=[])
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_needs_force(exports, tmp_path):
    path = exports.export("seed_rnn").path
    package(path, tmp_path / "b", variants=[])
    with pytest.raises(BundleError, match="already exists"):
        package(path, tmp_path / "b", variants=[])
    package(path, tmp_path / "b", variants=["fp16"], force=True)
    assert (tmp_path / "b" / "variants" / "model.fp16.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_source_that_does_not_match_is_refused(exports, tmp_path):
    import rnnexport
    from tests.configs import seed_params

    path = exports.export("seed_lstm").path
    with pytest.raises(BundleError, match="parameters differ"):
        package(path, tmp_path / "b", source=rnnexport.builtin("lstm", params=seed_params("lstm", seed=99)))
    with pytest.raises(BundleError, match="I/O contract differs"):
        package(path, tmp_path / "b", source=exports.model("user_seed_gru"))
    assert list(tmp_path.iterdir()) == []


def test_onnx_projects_own_operator_cases_verify(tmp_path):
    from onnx.backend.test.case.node import collect_testcases

    cases = [c for c in collect_testcases(None) if c.name in ("test_lstm_defaults", "test_gru_defaults",
                                                              "test_simple_rnn_defaults")]
    assert len(cases) == 3
    for case in cases:
        folder = tmp_path / case.name
        folder.mkdir()
        (folder / "model.onnx").write_bytes(case.model.SerializeToString())
        for index, (inputs, outputs) in enumerate(case.data_sets):
            names_in = [i.name for i in case.model.graph.input]
            names_out = [o.name for o in case.model.graph.output]
            write_set(folder / f"test_data_set_{index}", list(zip(names_in, inputs, strict=True)),
                      list(zip(names_out, outputs, strict=True)))
        report = verify(folder)
        assert report.passed, report.to_json()
