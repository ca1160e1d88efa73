"""Bundles that stand alone and know where they were proved: vocabulary, no paths, engines, tolerances, variants."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rnnexport.bundle import open_bundle
from rnnexport.core.cpu import this_cpu
from rnnexport.core.errors import BundleError
from rnnexport.export.convert import convert
from rnnexport.packaging import package
from rnnexport.source.sources import load_source
from tests.cli import assert_one_line_error, invoke, rnnexport
from tests.int8check import int8_misses

ROOT = Path(__file__).resolve().parent.parent
CHAR_MODEL = "lstm-charlm"


def _checkout_bundle(folder: Path) -> bytes:
    """A copy of the models folder at ``folder``, converted and packaged as a user of that checkout would."""
    shutil.copytree(ROOT / "models", folder / "models")
    env = {"RNNEXPORT_MODELS": str(folder / "models")}
    for args in (["convert", CHAR_MODEL, "-o", "lm.onnx"], ["convert", CHAR_MODEL, "--form", "step", "-o", "lm.step.onnx"],
                 ["package", "lm.onnx", CHAR_MODEL, "--step", "lm.step.onnx", "-o", "lm-bundle", "--zip",
                  "--variants", "int8,fp16"]):
        code, _, err = rnnexport(*args, cwd=folder, env=env, timeout=600)  # a process of its own: its environment
        assert code == 0, err
    return (folder / "lm-bundle.zip").read_bytes()


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory) -> tuple[Path, Path]:
    first, second = tmp_path_factory.mktemp("checkout-a"), tmp_path_factory.mktemp("deeper") / "checkout-b"
    second.mkdir()
    _checkout_bundle(first)
    _checkout_bundle(second)
    return first, second


@pytest.mark.slow
def test_the_same_model_from_two_checkouts_gives_identical_zips(checkouts):
    first, second = checkouts
    assert (first / "lm-bundle.zip").read_bytes() == (second / "lm-bundle.zip").read_bytes()
    for folder in checkouts:  # no path of the build machine anywhere: manifest, graphs, vectors
        for path in (folder / "lm-bundle").rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert str(folder).encode() not in data and str(ROOT).encode() not in data, path


def test_the_manifest_carries_what_a_char_app_needs(checkouts):
    manifest = json.loads((checkouts[0] / "lm-bundle" / "manifest.json").read_text())
    card = json.loads((ROOT / "models" / CHAR_MODEL / "card.json").read_text())
    assert manifest["io"]["x_encoding"] == "one-hot"
    assert "".join(manifest["io"]["vocabulary"]) == card["vocabulary"]
    assert manifest["model"]["origin"] == {"model": CHAR_MODEL}
    session = open_bundle(checkouts[0] / "lm-bundle.zip")  # the typed reader keeps it
    assert session.contract is not None and "".join(session.contract.vocabulary or ()) == card["vocabulary"]


def test_every_graph_and_variant_records_the_engines_it_was_checked_on(checkouts):
    manifest = json.loads((checkouts[0] / "lm-bundle" / "manifest.json").read_text())
    for graph in manifest["graphs"].values():
        engines = {c["engine"]: c for c in graph["checked_on"]}
        assert {"onnxruntime:cpu", "onnx-reference"} <= set(engines)
        assert all(c["status"] == "passed" and c["sets"] == 3 and c["max_abs"] < 1e-4 for c in engines.values())
    made = {(v["of"], v["name"]): v for v in manifest["variants"]}
    assert set(made) == {(g, n) for g in ("sequence", "step") for n in ("int8", "fp16")}
    for (graph, name), variant in made.items():
        assert variant["status"] == "ok" and variant["files"][0].startswith("step/variants/" if graph == "step"
                                                                          else "variants/")
        ran = {c["engine"]: c["status"] for c in variant["checked_on"]}
        if name == "int8":  # onnxruntime's own operators: marked, and not run elsewhere
            assert variant["engines"] == ["onnxruntime"] and ran["onnxruntime:cpu"] == "passed"
            assert ran.get("onnx-reference", "unavailable") == "unavailable"
        else:
            assert "engines" not in variant and ran == {"onnxruntime:cpu": "passed", "onnx-reference": "passed"}


def test_vector_sets_carry_rounding_aware_tolerances(checkouts):
    manifest = json.loads((checkouts[0] / "lm-bundle" / "manifest.json").read_text())
    for entry in manifest["test_vectors"]:
        tol = entry["tolerance"]
        assert tol["rtol"] == 1e-4 and tol["float32_error"] >= 0
        assert tol["atol"] == pytest.approx(1e-5 + 3 * tol["float32_error"])


def test_int8_notes_state_what_it_changes_in_the_text(checkouts):
    manifest = json.loads((checkouts[0] / "lm-bundle" / "manifest.json").read_text())
    int8 = next(v for v in manifest["variants"] if v["name"] == "int8" and v["of"] == "sequence")
    agreement = int8["agreement"]
    assert agreement["text_chars"] == 400 and 0.5 < agreement["next_char_agreement"] <= 1
    assert 0 <= agreement["greedy_same_chars"] <= 400
    assert f"{agreement['next_char_agreement']:.1%}" in int8["notes"] and "greedy" in int8["notes"]


def test_int8_variant_meets_its_tolerance_on_this_cpu(checkouts):
    """The int8 graphs against float32 on the CPU this test runs on, whichever its instruction set.

    onnxruntime picks its int8 kernels by the CPU's features (AVX2, AVX-512, VNNI, NEON dot
    product...); on an AVX2-only CPU, int8 weights used to saturate (max abs error 2.4).
    """
    folder = checkouts[0] / "lm-bundle"
    here = this_cpu()
    recorded = {v["of"]: v.get("cpu") for v in json.loads((folder / "manifest.json").read_text())["variants"]
                if v["name"] == "int8"}
    assert recorded == {g: {"machine": here.machine, "features": list(here.features)} for g in ("sequence", "step")}
    assert int8_misses(folder) == {"sequence": {}, "step": {}}, here.describe()


@pytest.mark.slow
def test_int8_variant_meets_its_tolerance_on_an_emulated_avx2_cpu(checkouts, tmp_path):
    """The same check on a Haswell (AVX2, no AVX-512, no VNNI) emulated by qemu's user mode.

    Int8 weights, as rnnexport once quantized them, must fail there: else the emulated CPU
    does not run the saturating kernel and this test proves nothing. Under the emulator
    /proc/cpuinfo is still the host's, so the features a bundle would record there are the
    host's too; on a real AVX2 machine they are its own.
    """
    qemu = shutil.which("qemu-x86_64")
    if qemu is None or this_cpu().machine != "x86_64":
        pytest.skip("needs qemu-x86_64 on PATH (Debian: apt-get install qemu-user) on an x86-64 host")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = checkouts[0] / "lm-bundle"
    signed = {}
    for graph, path in (("sequence", "model.onnx"), ("step", "step.onnx")):
        signed[graph] = str(tmp_path / f"{graph}.int8.onnx")
        quantize_dynamic(str(folder / path), signed[graph], weight_type=QuantType.QInt8, per_channel=True)
    script = ("import json, sys; from tests.int8check import int8_misses; from pathlib import Path; "
              "f = Path(sys.argv[1]); print(json.dumps([int8_misses(f), int8_misses(f, json.loads(sys.argv[2]))]))")
    proc = subprocess.run([qemu, "-cpu", "Haswell", sys.executable, "-c", script, str(folder), json.dumps(signed)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours, theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(theirs.values()), f"int8 weights did not saturate under emulation: {theirs}"
    assert ours == {"sequence": {}, "step": {}}


def test_a_requested_variant_that_cannot_be_made_fails_and_writes_nothing(exports, tmp_path):
    gru = exports.export("seed_gru")  # onnxruntime has no int8 GRU kernel
    with pytest.raises(BundleError, match="variant int8 of the sequence graph was asked for but cannot be made"):
        package(gru.path, tmp_path / "b", variants=["int8", "fp16"], archive=True)
    assert list(tmp_path.iterdir()) == []
    result = package(gru.path, tmp_path / "b", variants=["int8", "fp16"], optional=["int8"])
    assert {v.name: v.ok for v in result.variants} == {"int8": False, "fp16": True}
    default = package(gru.path, tmp_path / "c")  # the default list: every variant optional
    assert {v.name for v in default.variants if v.ok} == {"ort", "int8-qdq", "fp16"}  # the portable int8 takes GRUs


def test_package_cli_refuses_a_requested_variant_in_one_line(exports, tmp_path):
    gru = exports.export("seed_gru")
    line = assert_one_line_error(invoke("package", gru.path, "-o", "b", "--variants", "int8", cwd=tmp_path),
                                 "--variants-optional int8")
    assert line.startswith("error: variant int8") and not (tmp_path / "b").exists()
    code, out, err = invoke("package", gru.path, "-o", "b", "--variants", "int8,fp16", "--variants-optional", "int8",
                            cwd=tmp_path)
    assert code == 0 and "int8 of sequence: left out" in out, err


def test_step_graph_variants_of_a_seed_lstm(exports, tmp_path):
    result = package(exports.export("seed_lstm").path, tmp_path / "b", source=exports.model("seed_lstm"),
                     step_path=exports.export("seed_lstm", form="step").path, variants=["int8", "fp16"])
    made = {(v.of, v.name) for v in result.variants if v.ok}
    assert made == {(g, n) for g in ("sequence", "step") for n in ("int8", "fp16")}
    assert (tmp_path / "b" / "step" / "variants" / "model.int8.onnx").is_file()
    assert all(v.agreement == {} for v in result.variants)  # not a char model: no text figures


def test_trained_model_graph_records_its_name_not_its_card_path(tmp_path):
    model = load_source(CHAR_MODEL)
    assert model.origin == {"model": CHAR_MODEL}
    result = convert(model, tmp_path / "m.onnx", lowering="scan")  # traced: torch records stack traces
    data = (tmp_path / "m.onnx").read_bytes()
    assert str(ROOT).encode() not in data and b"stack_trace" not in data
    assert result.info.origin == {"model": CHAR_MODEL}


def test_a_vocabulary_must_fit_the_one_hot_input():
    from rnnexport.core.contract import IOSpec
    from rnnexport.core.errors import ContractError

    io = load_source(CHAR_MODEL).io
    assert IOSpec.from_json(io.to_json()) == io and len(io.vocabulary or ()) == 32
    with pytest.raises(ContractError, match="needs a vocabulary of that size"):
        IOSpec.from_json({**io.to_json(), "vocabulary": ["a", "b"]})
    with pytest.raises(ContractError, match="vocabulary"):
        IOSpec.from_json({**io.to_json(), "vocabulary": "abc"})
