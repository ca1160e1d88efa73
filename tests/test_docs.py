"""The README's and docs' shell command blocks and Python snippets, followed literally, as a reader would.

Every ```bash block of README.md and docs/*.md runs, in document order, as one bash script
(``set -euo pipefail``), and every ```python block as one Python program, in one temporary
folder laid out like a checkout (copies of ``models/``, ``scripts/`` and ``docs/``), with
this environment's ``rnnexport`` and ``python`` first on PATH. Blocks build on earlier ones
(a snippet reads the bundle an earlier command made), as they do for a reader, so run the
whole module; a snippet defines every other name it uses. Two things keep it to a couple of minutes: a command already run by an earlier
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
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(bash|sh|shell|python)\s*$")
SMALL_GRID = " --batch-sizes 1,4 --seq-lens 1,17"
JS_ENGINES = ROOT / "rnnexport" / "engines" / "js" / "node_modules"

#: (pattern in a block, why it is not run here)
SKIPS = [
    (r"python3 -m venv|pip install", "creates a venv and installs packages: .ci/run runs these commands, "
                                     "tests/test_install.py checks the wheel"),
    (r"\bdocker\b", "needs docker and a running Triton server"),
    (r"--engines \S*cuda|--kind gpu", "needs a GPU (the device check runs it where one is lent)"),
    (r"\bnpm (ci|install)\b", "installs npm packages (tests/test_node_example.py runs the Node example)"),
    (r"ray_serve\.py", "needs Ray Serve, about 690 MB (pip install \"ray[serve]==2.60.0\")"),
    (r"serve\.py", "starts a web server and waits for a browser (tests/test_browser_example.py drives it)"),
    (r"scripts/train\.py", "retrains the models into models/ (minutes)"),
    (r"scripts/bench\.py --threads", "runs the full benchmark (minutes; tests/test_bench.py runs --quick)"),
    (r"InferenceServerClient", "needs a running Triton server (docker)"),
    (r"[\"']cuda[\"']", "needs a GPU (the device check runs it where one is lent)"),
]


#: The first line of a Python block as collected (a comment, so the block runs unchanged).
PYTHON = "# python\n"


def _blocks() -> list[tuple[str, int, str]]:
    """(document, line of the opening fence, text): a Python block's text starts with its ``# python`` marker."""
    found = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        start, python = None, False
        for number, line in enumerate(lines, 1):
            fence = _FENCE.match(line.strip())
            if start is None and fence:
                start, python = number, fence.group(1) == "python"
            elif start is not None and line.strip() == "```":
                text = textwrap.dedent("\n".join(lines[start:number - 1]))  # a block in a list item is indented
                found.append((path.relative_to(ROOT).as_posix(), start, PYTHON + text if python else text))
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
    if text.startswith(PYTHON):
        command = [sys.executable, "-c", text]
    else:
        command = ["bash", "-c", workspace.script(text)]
    proc = subprocess.run(command, cwd=workspace.folder, env=workspace.env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{doc}:{line} failed (exit {proc.returncode}):\n{text}\n--- output:\n" \
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_every_doc_has_its_shell_blocks_found():
    """The blocks run here are the ones a reader runs: a command in an unlabelled fence would hide."""
    counts = {doc: sum(1 for d, _, _ in BLOCKS if d == doc) for doc in ("README.md", "docs/embedding.md")}
    assert counts["README.md"] >= 8 and counts["docs/embedding.md"] >= 4, counts
    snippets = {f"{d}:{n}" for d, n, t in BLOCKS if t.startswith(PYTHON)}
    assert len(snippets) >= 9 and any(s.startswith("docs/modules.md") for s in snippets), snippets
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


def test_the_browser_server_serves_a_bundle_zip(exports, tmp_path):
    """``serve.py BUNDLE.zip`` (as docs/embedding.md says) serves the zip's files, read through the bundle reader."""
    import urllib.error
    import urllib.request
    import zipfile

    from rnnexport.packaging import package

    archive = package(exports.export("seed_gru", form="step").path, tmp_path / "b", variants=[], archive=True).archive
    assert archive is not None
    (tmp_path / "dist").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "browser" / "serve.py"), str(archive), "--dist",
                               str(tmp_path / "dist"), "--port", "0"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = server.stdout.readline().split()[1]  # serving http://127.0.0.1:PORT/ (...)
        with zipfile.ZipFile(archive) as z:
            for name in ("manifest.json", "model.onnx"):
                with urllib.request.urlopen(f"{url}bundle/{name}", timeout=30) as answer:
                    assert answer.read() == z.read(name), name
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"{url}bundle/missing.onnx", timeout=30)
    finally:
        server.kill()
        server.wait()


def test_the_triton_client_without_a_server_is_one_line(exports, tmp_path):
    pytest.importorskip("tritonclient.grpc")
    from rnnexport.serving import triton_repository
    from rnnexport.serving.config import TritonOptions

    triton_repository(exports.export("seed_gru", form="step").path, tmp_path / "repo", TritonOptions(name="g"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "triton_client.py"), str(tmp_path / "repo" / "g"),
                           "--url", "127.0.0.1:9", "--streams", "2", "--steps", "2"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: no Triton server answers at 127.0.0.1:9") and \
        len(proc.stderr.splitlines()) == 1, proc.stderr
