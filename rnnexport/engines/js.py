"""onnxruntime's JavaScript builds as runners: onnxruntime-node, onnxruntime-web (wasm) in Node,
and onnxruntime-web in headless Chromium.

Node and wasm run ``engine.js`` in one long-lived ``node`` process per graph, fed one JSON line
per call. The browser engine serves a page, the graph and onnxruntime-web's files on
127.0.0.1 and drives headless Chromium, which fetches each call and posts the outputs back.
The npm packages come from ``rnnexport/engines/js/package-lock.json``
(``ONNXRUNTIME_NODE_INSTALL=skip npm ci`` in that folder); Chromium is Debian's ``chromium``.

A graph with external data (a bundle's graph and the weights file it shares) is loaded as
an app loads it: the graph's bytes and each file's bytes, handed to onnxruntime's
``externalData`` session option (Node and wasm read them from the scratch folder; the page
fetches them from the runner's server).

Each process is started so that it dies with this one (:func:`rnnexport.core.process.start_child`);
a call over the runner's budget kills it (:class:`~rnnexport.engines.base.EngineTimeout`). The
graph copy and the browser profile live in scratch folders (:func:`rnnexport.core.io.scratch_folder`).
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rnnexport.core.external import ExternalModel, materialize
from rnnexport.core.io import scratch_folder
from rnnexport.core.process import start_child, stop_child
from rnnexport.engines.base import (
    START_ALLOWANCE,
    EngineFailure,
    EngineTimeout,
    EngineUnavailable,
    Runner,
    graph_tensors,
    standard_graph,
)

__all__ = ["BROWSER_INSTALL", "JS_DIR", "JS_INSTALL", "BrowserRunner", "NodeRunner", "chromium_binary"]

#: Where engine.js, the page and the npm lockfile live.
JS_DIR = Path(__file__).resolve().parent / "js"
JS_INSTALL = f"cd {JS_DIR} && ONNXRUNTIME_NODE_INSTALL=skip npm ci"
BROWSER_INSTALL = "apt-get install -y --no-install-recommends chromium"
#: Seconds a JavaScript engine may take to answer one call when the runner has no budget of its own;
#: loading the graph may take :data:`~rnnexport.engines.base.START_ALLOWANCE` more than a call.
CALL_TIMEOUT = 120.0


class _Late(Exception):
    """No answer before the deadline."""


def _modules() -> Path:
    return Path(os.environ.get("RNNEXPORT_NODE_MODULES", JS_DIR / "node_modules"))


def _encode(feeds: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    return [{"name": name, "dtype": array.dtype.name, "shape": list(array.shape),
             "data": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()}
            for name, array in feeds.items()]


def _decode(outputs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    found = {}
    for item in outputs:
        array = np.frombuffer(base64.b64decode(item["data"]), dtype=np.dtype(item["dtype"]))
        found[item["name"]] = array.reshape([int(d) for d in item["shape"]])
    return found


def _load(model: str | os.PathLike[str] | bytes | ExternalModel, engine: str) -> onnx.ModelProto:
    """onnxruntime-node has the com.microsoft kernels; onnxruntime-web does not."""
    return standard_graph(model, engine, allow_foreign=engine == "node")


class _JsRunner(Runner):
    """What the Node and browser runners share: a per-call budget and how an answer settles a call."""

    @property
    def call_budget(self) -> float:
        """Seconds one call may take: the runner's budget, else :data:`CALL_TIMEOUT`."""
        return self.timeout if self.timeout is not None else CALL_TIMEOUT

    def _answer(self, timeout: float) -> dict[str, Any]:
        raise NotImplementedError

    def _settle(self) -> dict[str, np.ndarray]:
        """The outputs the engine answers within the budget; a late answer stops it, an error fails the call."""
        try:
            got = self._answer(self.call_budget)
        except _Late as e:
            self._deactivate()
            raise EngineTimeout(self.name, self.call_budget) from e
        if "error" in got:
            raise EngineFailure(f"{self.name} raised {got['error'][:300]}")
        return _decode(got["outputs"])


class NodeRunner(_JsRunner):
    """onnxruntime-node (``engine="node"``) or onnxruntime-web's wasm build in Node (``engine="wasm"``)."""

    def __init__(self, model: str | os.PathLike[str] | bytes | ExternalModel, engine: str = "node",
                 timeout: float | None = None) -> None:
        super().__init__(timeout)
        self.model = model
        self.engine = engine
        self.name = engine
        self.process: subprocess.Popen[str] | None = None
        self.folder: Path | None = None

    def _activate(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise EngineUnavailable(self.name, "node is not installed (Node.js 18 or newer)")
        package = "onnxruntime-node" if self.engine == "node" else "onnxruntime-web"
        if not (_modules() / package).is_dir():
            raise EngineUnavailable(self.name, f"the npm package {package} is not installed ({JS_INSTALL})")
        proto = _load(self.model, self.name)
        self.inputs, self.outputs = graph_tensors(proto)
        self.folder = scratch_folder("node")
        path = self.folder / "model.onnx"
        external: list[str] = []
        if isinstance(self.model, ExternalModel):
            path, external = materialize(self.model, self.folder), list(self.model.files)
        else:
            path.write_bytes(proto.SerializeToString())
        env = {**os.environ, "NODE_PATH": str(_modules())}
        self.process = start_child([node, str(JS_DIR / "engine.js"), self.engine, str(path), *external], cwd=JS_DIR,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   text=True, env=env)
        budget = START_ALLOWANCE + self.call_budget
        try:
            ready = self._answer(budget)
        except _Late:
            ready = {"error": f"no answer in {budget:g} s"}
        if "error" in ready:
            self._deactivate()
            raise EngineUnavailable(self.name, f"{package} cannot load this graph: {ready['error'][:300]}")

    def _answer(self, timeout: float) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: lines.put(self.process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty as e:
            raise _Late from e
        if not line:
            return {"error": "the node process ended"}
        return dict(json.loads(line))

    def _deactivate(self) -> None:
        stop_child(self.process)
        self.process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.process is None or self.process.stdin is None:
            raise EngineUnavailable(self.name, "not run: its process is gone")
        self.process.stdin.write(json.dumps({"feeds": _encode(feeds)}) + "\n")
        self.process.stdin.flush()
        return self._settle()


def chromium_binary() -> str | None:
    """Debian's Chromium (or another on PATH), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class _Exchange:
    """What the page and the runner pass each other: requests one way, answers the other."""

    def __init__(self, model: bytes, files: dict[str, bytes] | None = None) -> None:
        self.model = model
        self.files = files or {}  # external data files, by location
        self.requests: queue.Queue[dict[str, Any]] = queue.Queue()
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()


def _handler(exchange: _Exchange, dist: Path) -> type[http.server.BaseHTTPRequestHandler]:
    page = (JS_DIR / "verify.html").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # the base class's name
            return None

        def _send(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # http.server's name
            if self.path == "/":
                self._send(page, "text/html")
            elif self.path == "/model.onnx":
                self._send(exchange.model, "application/octet-stream")
            elif self.path == "/external.json":
                self._send(json.dumps(list(exchange.files)).encode(), "application/json")
            elif self.path.startswith("/external/") and self.path[len("/external/"):] in exchange.files:
                self._send(exchange.files[self.path[len("/external/"):]], "application/octet-stream")
            elif self.path == "/next":
                self._send(json.dumps(exchange.requests.get()).encode(), "application/json")
            elif self.path.startswith("/ort/") and "/" not in self.path[5:] and (dist / self.path[5:]).is_file():
                kind = {"mjs": "text/javascript", "js": "text/javascript", "wasm": "application/wasm"}
                self._send((dist / self.path[5:]).read_bytes(), kind.get(self.path.rsplit(".", 1)[-1], "text/plain"))
            else:
                self.send_error(404)

        def do_POST(self) -> None:  # http.server's name
            length = min(int(self.headers.get("Content-Length", "0")), 1 << 28)
            exchange.answers.put(json.loads(self.rfile.read(length) or b"{}"))
            self._send(b"{}", "application/json")

    return Handler


class BrowserRunner(_JsRunner):
    """onnxruntime-web (wasm) in headless Chromium, on a page served from 127.0.0.1."""

    name = "browser"

    def __init__(self, model: str | os.PathLike[str] | bytes | ExternalModel, timeout: float | None = None) -> None:
        super().__init__(timeout)
        self.model = model
        self.exchange: _Exchange | None = None
        self.server: http.server.ThreadingHTTPServer | None = None
        self.browser: subprocess.Popen[bytes] | None = None
        self.profile: Path | None = None

    def _activate(self) -> None:
        binary = chromium_binary()
        if binary is None:
            raise EngineUnavailable(self.name, f"Chromium is not installed ({BROWSER_INSTALL})")
        dist = _modules() / "onnxruntime-web" / "dist"
        if not dist.is_dir():
            raise EngineUnavailable(self.name, f"the npm package onnxruntime-web is not installed ({JS_INSTALL})")
        proto = _load(self.model, self.name)
        self.inputs, self.outputs = graph_tensors(proto)
        if isinstance(self.model, ExternalModel):
            self.exchange = _Exchange(self.model.model, dict(self.model.files))
        else:
            self.exchange = _Exchange(proto.SerializeToString())
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.exchange, dist))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.profile = scratch_folder("chromium")
        url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={self.profile}"]
        self.browser = start_child([binary, *flags, url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        budget = START_ALLOWANCE + self.call_budget
        try:
            ready = self._answer(budget)
        except _Late:
            ready = {"error": f"no answer from the page in {budget:g} s"}
        if "error" in ready:
            self._deactivate()
            raise EngineUnavailable(self.name, f"onnxruntime-web in Chromium cannot load this graph: "
                                               f"{ready['error'][:300]}")

    def _answer(self, timeout: float) -> dict[str, Any]:
        assert self.exchange is not None
        try:
            return self.exchange.answers.get(timeout=timeout)
        except queue.Empty as e:
            raise _Late from e

    def _deactivate(self) -> None:
        if self.exchange is not None:
            self.exchange.requests.put({"stop": True})
        stop_child(self.browser)
        self.browser = None
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.profile is not None:
            shutil.rmtree(self.profile, ignore_errors=True)
            self.profile = None
        self.exchange = None

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.exchange is None:
            raise EngineUnavailable(self.name, "not run: the browser is gone")
        self.exchange.requests.put({"feeds": _encode(feeds)})
        return self._settle()
