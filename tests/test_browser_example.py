"""The browser example (scripts/browser) streams the trained char model in real headless Chromium.

It packages lstm-charlm (sequence and step graphs), serves the page with scripts/browser/serve.py,
lets Chromium run it, and checks that the text the page generated greedily, one step per
character with the state carried, equals what rnnexport.runtime gives in Python.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

import rnnexport
from rnnexport.engines.js import JS_DIR, JS_INSTALL, chromium_binary
from rnnexport.runtime import StatefulSession

ROOT = Path(__file__).resolve().parent.parent
SERVE = ROOT / "scripts" / "browser" / "serve.py"
CARD = ROOT / "models" / "lstm-charlm" / "card.json"
DIST = Path(os.environ.get("RNNEXPORT_NODE_MODULES", JS_DIR / "node_modules")) / "onnxruntime-web" / "dist"
LENGTH = 200  # characters generated after the prompt
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium, with onnxruntime-web installed; missing ones skip (fail under CI=1)."""
    binary = chromium_binary()
    reason = ("chromium is not installed (apt-get install -y --no-install-recommends chromium)" if binary is None
              else None if DIST.is_dir() else f"onnxruntime-web is not installed ({JS_INSTALL})")
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser example: {reason}")
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="module")
def charlm_bundle(tmp_path_factory) -> Path:
    """The trained character LSTM packaged (both graphs, no variants): what the page streams."""
    folder = tmp_path_factory.mktemp("charlm")
    sequence = rnnexport.convert("lstm-charlm", folder / "charlm.onnx")
    step = rnnexport.convert("lstm-charlm", folder / "charlm-step.onnx", form="step")
    return rnnexport.package(sequence.path, folder / "bundle", step_path=step.path, variants=()).folder


def greedy_in_python(bundle: Path, vocabulary: str, prompt: str, length: int) -> str:
    """The page's loop with rnnexport.runtime: feed the prompt, then each argmax, one step each."""
    session = StatefulSession.load(bundle, threads=1)
    eye = np.eye(len(vocabulary), dtype=np.float32)
    for char in prompt:
        logits = session.step(eye[vocabulary.index(char)][None])[0]
    text = ""
    for _ in range(length):
        char = vocabulary[int(np.argmax(logits))]
        text += char
        logits = session.step(eye[vocabulary.index(char)][None])[0]
    return text


def run_page(chromium: str, bundle: Path, query: str, vocabulary: Path | None = CARD) -> dict:
    """Serve the page with serve.py --once, open it in headless Chromium, return what it posted."""
    given = ["--vocabulary", str(vocabulary)] if vocabulary else []
    server = subprocess.Popen([sys.executable, str(SERVE), str(bundle), *given, "--dist", str(DIST), "--port", "0",
                               "--once"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()  # serving http://127.0.0.1:PORT/ (...)
        assert first.startswith("serving http://127.0.0.1:"), first + server.stderr.read()
        url = first.split()[1]
        with tempfile.TemporaryDirectory(prefix="rnnexport-browser-example-", ignore_cleanup_errors=True) as profile:
            browser = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", url + query],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                out, err = server.communicate(timeout=60)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(browser.pid, signal.SIGKILL)  # Chromium and the helpers it started
                browser.wait()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    lines = [line for line in out.splitlines() if line.startswith("result: ")]
    assert server.returncode == 0 and len(lines) == 1, out + err
    return json.loads(lines[0][len("result: "):])


def test_the_page_generates_what_python_generates(chromium, charlm_bundle):
    card = json.loads(CARD.read_text())  # the bundle's manifest records the vocabulary: no --vocabulary
    result = run_page(chromium, charlm_bundle, f"?length={LENGTH}&prompt={urllib.parse.quote(card['prompt'])}",
                      vocabulary=None)
    assert "error" not in result, result["error"]
    assert result["prompt"] == card["prompt"] and result["steps"] == len(card["prompt"]) + LENGTH
    assert result["text"] == greedy_in_python(charlm_bundle, card["vocabulary"], card["prompt"], LENGTH)
    assert "the state" in result["text"]  # a trained model writes words, not noise


@pytest.mark.parametrize("file", ["step.onnx", "weights.bin"])  # the step graph and the weights it shares
def test_the_page_reports_a_tampered_file_in_one_line(chromium, charlm_bundle, tmp_path, file):
    tampered = Path(shutil.copytree(charlm_bundle, tmp_path / "bundle"))
    assert json.loads((tampered / "manifest.json").read_text())["graphs"]["step"]["weights"] == "weights.bin"
    with open(tampered / file, "ab") as f:
        f.write(b"\0")
    result = run_page(chromium, tampered, "?length=5&prompt=the")
    assert result == {"error": f"checksum mismatch: {file} does not match the manifest"}


def test_the_page_reads_a_served_vocabulary_when_the_manifest_has_none(chromium, charlm_bundle, tmp_path):
    card = json.loads(CARD.read_text())
    copy = Path(shutil.copytree(charlm_bundle, tmp_path / "bundle"))
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["io"]["vocabulary"] == list(card["vocabulary"])
    del manifest["io"]["vocabulary"]  # the manifest is not among its own checksums
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = run_page(chromium, copy, "?length=40")  # --vocabulary CARD: its vocabulary and prompt
    assert result["prompt"] == card["prompt"]
    assert result["text"] == greedy_in_python(charlm_bundle, card["vocabulary"], card["prompt"], 40)
