"""onnxruntime's JavaScript builds as runners: onnxruntime-node, onnxruntime-web (wasm) in Node,
and onnxruntime-web in headless Chromium.

Node and wasm run ``engine.js`` in one long-lived ``node`` process per graph, fed one JSON line
per call. The browser engine serves a page, the graph and onnxruntime-web's files on
127.0.0.1 and drives headless Chromium, which fetches each call and posts the outputs back.
The npm packages come from ``rnnexport/engines/js/package-lock.json``
(``ONNXRUNTIME_NODE_INSTALL=skip npm ci`` in that folder); Chromium is Debian's ``chromium``.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rnnexport.engines.base import (
    EngineFailure,
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
#: Seconds a JavaScript engine may take to load a graph, and to answer one call.
START_TIMEOUT, CALL_TIMEOUT = 120.0, 120.0


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


def _load(model: str | os.PathLike[str] | bytes, engine: str) -> onnx.ModelProto:
    """onnxruntime-node has the com.microsoft kernels; onnxruntime-web does not."""
    return standard_graph(model, engine, allow_foreign=engine == "node")


class NodeRunner(Runner):
    """onnxruntime-node (``engine="node"``) or onnxruntime-web's wasm build in Node (``engine="wasm"``)."""

    def __init__(self, model: str | os.PathLike[str] | bytes, engine: str = "node") -> None:
        super().__init__()
        self.model = model
        self.engine = engine
        self.name = engine
        self.process: subprocess.Popen[str] | None = None
        self.folder: tempfile.TemporaryDirectory[str] | None = None

    def _activate(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise EngineUnavailable(self.name, "node is not installed (Node.js 18 or newer)")
        package = "onnxruntime-node" if self.engine == "node" else "onnxruntime-web"
        if not (_modules() / package).is_dir():
            raise EngineUnavailable(self.name, f"the npm package {package} is not installed ({JS_INSTALL})")
        proto = _load(self.model, self.name)
        self.inputs, self.outputs = graph_tensors(proto)
        self.folder = tempfile.TemporaryDirectory(prefix="rnnexport-js-")
        path = Path(self.folder.name) / "model.onnx"
        path.write_bytes(proto.SerializeToString())
        env = {**os.environ, "NODE_PATH": str(_modules())}
        self.process = subprocess.Popen([node, str(JS_DIR / "engine.js"), self.engine, str(path)], cwd=JS_DIR,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True, env=env)
        ready = self._answer(START_TIMEOUT)
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
        except queue.Empty:
            return {"error": f"no answer in {timeout:.0f} s"}
        if not line:
            return {"error": "the node process ended"}
        return dict(json.loads(line))

    def _deactivate(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        if self.folder is not None:
            self.folder.cleanup()
            self.folder = None

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps({"feeds": _encode(feeds)}) + "\n")
        self.process.stdin.flush()
        answer = self._answer(CALL_TIMEOUT)
        if "error" in answer:
            raise EngineFailure(f"{self.name} raised {answer['error'][:300]}")
        return _decode(answer["outputs"])


def chromium_binary() -> str | None:
    """Debian's Chromium (or another on PATH), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class _Exchange:
    """What the page and the runner pass each other: requests one way, answers the other."""

    def __init__(self, model: bytes) -> None:
        self.model = model
        self.requests: queue.Queue[dict[str, Any]] = queue.Queue()
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()


def _handler(exchange: _Exchange, dist: Path) -> type[http.server.BaseHTTPRequestHandler]:
    page = (JS_DIR / "verify.html").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            return None

        def _send(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/":
                self._send(page, "text/html")
            elif self.path == "/model.onnx":
                self._send(exchange.model, "application/octet-stream")
            elif self.path == "/next":
                self._send(json.dumps(exchange.requests.get()).encode(), "application/json")
            elif self.path.startswith("/ort/") and "/" not in self.path[5:] and (dist / self.path[5:]).is_file():
                kind = {"mjs": "text/javascript", "js": "text/javascript", "wasm": "application/wasm"}
                self._send((dist / self.path[5:]).read_bytes(), kind.get(self.path.rsplit(".", 1)[-1], "text/plain"))
            else:
                self.send_error(404)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = min(int(self.headers.get("Content-Length", "0")), 1 << 28)
            exchange.answers.put(json.loads(self.rfile.read(length) or b"{}"))
            self._send(b"{}", "application/json")

    return Handler


class BrowserRunner(Runner):
    """onnxruntime-web (wasm) in headless Chromium, on a page served from 127.0.0.1."""

    name = "browser"

    def __init__(self, model: str | os.PathLike[str] | bytes) -> None:
        super().__init__()
        self.model = model
        self.exchange: _Exchange | None = None
        self.server: http.server.ThreadingHTTPServer | None = None
        self.browser: subprocess.Popen[bytes] | None = None
        self.profile: tempfile.TemporaryDirectory[str] | None = None

    def _activate(self) -> None:
        binary = chromium_binary()
        if binary is None:
            raise EngineUnavailable(self.name, f"Chromium is not installed ({BROWSER_INSTALL})")
        dist = _modules() / "onnxruntime-web" / "dist"
        if not dist.is_dir():
            raise EngineUnavailable(self.name, f"the npm package onnxruntime-web is not installed ({JS_INSTALL})")
        proto = _load(self.model, self.name)
        self.inputs, self.outputs = graph_tensors(proto)
        self.exchange = _Exchange(proto.SerializeToString())
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.exchange, dist))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.profile = tempfile.TemporaryDirectory(prefix="rnnexport-chromium-")
        url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={self.profile.name}"]
        self.browser = subprocess.Popen([binary, *flags, url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ready = self._answer(START_TIMEOUT)
        if "error" in ready:
            self._deactivate()
            raise EngineUnavailable(self.name, f"onnxruntime-web in Chromium cannot load this graph: "
                                               f"{ready['error'][:300]}")

    def _answer(self, timeout: float) -> dict[str, Any]:
        assert self.exchange is not None
        try:
            return self.exchange.answers.get(timeout=timeout)
        except queue.Empty:
            return {"error": f"no answer from the page in {timeout:.0f} s"}

    def _deactivate(self) -> None:
        if self.exchange is not None:
            self.exchange.requests.put({"stop": True})
        if self.browser is not None:
            self.browser.kill()
            self.browser.wait()
            self.browser = None
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.profile is not None:
            self.profile.cleanup()
            self.profile = None
        self.exchange = None

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.exchange is not None
        self.exchange.requests.put({"feeds": _encode(feeds)})
        answer = self._answer(CALL_TIMEOUT)
        if "error" in answer:
            raise EngineFailure(f"{self.name} raised {answer['error'][:300]}")
        return _decode(answer["outputs"])
