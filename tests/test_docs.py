"""The README's and docs' shell command blocks, followed literally, as a reader would.

Every ```bash block of README.md and docs/*.md runs, in document order, as one bash script
(``set -euo pipefail``) in one temporary folder laid out like a checkout (copies of
``models/``, ``scripts/`` and ``docs/``), with this environment's ``rnnexport`` and
``python`` first on PATH. Blocks build on earlier ones, as they do for a reader, so run the
whole module. Two things keep it to a couple of minutes: a command already run by an earlier
block is not run again, and ``rnnexport verify GRAPH.onnx`` gets a small grid appended
(``--batch-sizes 1,4 --seq-lens 1,17``; the default grid takes minutes per graph and is
``tests/test_verify_cli.py``'s business): every file, option and source it names is still
checked as written. Blocks that install, need a GPU, docker, a running server, or minutes of
training or benchmarking are skipped, with the reason in the test report.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(bash|sh|shell)\s*$")
SMALL_GRID = " --batch-sizes 1,4 --seq-lens 1,17"
JS_ENGINES = ROOT / "rnnexport" / "backends" / "js" / "node_modules"

#: (pattern in a block, why it is not run here)
SKIPS = [
    (r"python3 -m venv|pip install", "creates a venv and installs packages: .ci/run runs these commands, "
                                     "tests/test_install.py checks the wheel"),
    (r"\bdocker\b", "needs docker and a running Triton server"),
    (r"--engines \S*cuda|--kind gpu", "needs a GPU (the device check runs it where one is lent)"),
    (r"\bnpm (ci|install)\b", "installs npm packages (tests/test_node_example.py runs the Node example)"),
    (r"serve\.py", "starts a web server and waits for a browser (tests/test_browser_example.py drives it)"),
    (r"scripts/train\.py", "retrains the models into models/ (minutes)"),
    (r"scripts/bench\.py --threads", "runs the full benchmark (minutes; tests/test_bench.py runs --quick)"),
]


def _blocks() -> list[tuple[str, int, str]]:
    found = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        start = None
        for number, line in enumerate(lines, 1):
            if start is None and _FENCE.match(line.strip()):
                start = number
            elif start is not None and line.strip() == "```":
                found.append((path.relative_to(ROOT).as_posix(), start, "\n".join(lines[start:number - 1])))
                start = None
    return found


BLOCKS = _blocks()


def _skip_reason(block: str) -> str | None:
    text = "\n".join(line.split(" #")[0] for line in block.splitlines() if not line.lstrip().startswith("#"))
    for pattern, reason in SKIPS:
        if re.search(pattern, text):
            return reason
    if "--engines" in text and re.search(r"\b(node|wasm|browser)\b", text) and \
            (not JS_ENGINES.is_dir() or shutil.which("chromium") is None):
        return "needs the JavaScript engines (npm ci in rnnexport/engines/js) and Chromium"
    return None


class Workspace:
    """The reader's folder: a checkout's models/, scripts/ and docs/, and the commands run so far."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.done: set[str] = set()
        for name in ("models", "scripts", "docs"):
            shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("node_modules", "__pycache__"))
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                    "PYTHONWARNINGS": "ignore"}
        self.env.pop("RNNEXPORT_MODELS", None)

    def script(self, text: str) -> str:
        """The block as run: repeated rnnexport commands dropped, graph verifies on the small grid."""
        lines = []
        for line in text.splitlines():
            command = line.split(" #")[0].strip()
            if command.startswith("rnnexport "):
                if command in self.done:
                    continue
                self.done.add(command)
                words = command.split()
                if words[1] == "verify" and words[2].endswith(".onnx") and "--seq-lens" not in words:
                    line = command + SMALL_GRID
            lines.append(line)
        return "set -euo pipefail\n" + "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("reader"))


@pytest.mark.slow
@pytest.mark.parametrize(("doc", "line", "text"), BLOCKS, ids=[f"{d}:{n}" for d, n, _ in BLOCKS])
def test_command_block_runs_as_written(workspace, doc, line, text):
    reason = _skip_reason(text)
    if reason:
        pytest.skip(f"{doc}:{line}: {reason}")
    proc = subprocess.run(["bash", "-c", workspace.script(text)], cwd=workspace.folder, env=workspace.env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{doc}:{line} failed (exit {proc.returncode}):\n{text}\n--- output:\n" \
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_every_doc_has_its_shell_blocks_found():
    """The blocks run here are the ones a reader runs: a command in an unlabelled fence would hide."""
    counts = {doc: sum(1 for d, _, _ in BLOCKS if d == doc) for doc in ("README.md", "docs/embedding.md")}
    assert counts["README.md"] >= 8 and counts["docs/embedding.md"] >= 4, counts
    for path in DOCS:
        opener = None
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("```"):
                opener = stripped if opener is None else None
            elif opener == "```" and stripped.startswith(("rnnexport ", "python scripts/")):
                raise AssertionError(f"{path.name}:{number}: a command in a ``` block: label it bash (or text)")


def test_ci_runs_the_readme_install_and_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    assert command in readme.splitlines()
