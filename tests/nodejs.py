"""The Node.js example (``scripts/node/check_bundle.js``): where node is, and running it on a bundle."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

NODE_DIR = Path(__file__).resolve().parent.parent / "scripts" / "node"
SCRIPT = NODE_DIR / "check_bundle.js"
PACKAGES = ("onnxruntime-node", "onnx-proto", "adm-zip")


def _missing(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the Node example: {reason}")
    pytest.skip(reason)


def node_binary() -> str:
    """The node binary, with the example's npm packages installed (``npm ci`` once, if needed); else a skip."""
    binary = shutil.which("node")
    if binary is None:
        _missing("node is not installed on this machine")
    if not all((NODE_DIR / "node_modules" / p).is_dir() for p in PACKAGES):
        npm = shutil.which("npm")
        if npm is None:
            _missing("npm is not installed, and scripts/node/node_modules is missing")
        env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}
        try:
            done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, env=env,
                                  capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            _missing("npm ci timed out (no package registry reachable?)")
        if done.returncode != 0:
            _missing(f"npm ci failed (no package registry reachable?): {done.stderr.strip()[-300:]}")
    return binary


def check(node: str, bundle: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``node check_bundle.js BUNDLE OPTIONS``: streams the bundle's test vectors and compares them."""
    return subprocess.run([node, str(SCRIPT), str(bundle), *options], capture_output=True, text=True, timeout=120)
