"""Serve the browser example: the page, onnxruntime-web's files and a bundle (folder or .zip), on 127.0.0.1.

Make a bundle of the trained char model, serve it, and open the printed address::

    rnnexport convert lstm-charlm -o /tmp/charlm.onnx
    rnnexport convert lstm-charlm --form step -o /tmp/charlm-step.onnx
    rnnexport package /tmp/charlm.onnx lstm-charlm -o /tmp/charlm --step /tmp/charlm-step.onnx --zip
    python scripts/browser/serve.py /tmp/charlm.zip

Paths: ``/`` the page, ``/ort/NAME`` onnxruntime-web's ``dist`` files, ``/bundle/PATH`` the
bundle's files, ``/vocabulary.json`` the ``--vocabulary`` file. A folder is served as it is
(the page checks each graph's SHA-256 itself); a ``.zip`` is opened with rnnexport's bundle
reader (its size limits and checksums) and served from memory. Every answer carries COOP/COEP
headers (cross-origin isolation, which onnxruntime-web's threaded wasm needs). When the page
posts its result to ``/result``, the server prints it as one ``result: {...}`` line. Standard
library only for a folder; a ``.zip`` also needs rnnexport installed.
"""

from __future__ import annotations

import argparse
import http.server
import json
import sys
import threading
import urllib.parse
from pathlib import Path

# --- configuration -------------------------------------------------------------------------------
HERE = Path(__file__).resolve().parent
DIST = HERE.parent.parent / "rnnexport" / "engines" / "js" / "node_modules" / "onnxruntime-web" / "dist"
PAGE = {"/": "index.html", "/index.html": "index.html", "/charlm.js": "charlm.js"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
         ".wasm": "application/wasm", ".json": "application/json", ".onnx": "application/octet-stream"}
MAX_RESULT = 1 << 20  # bytes of a posted result

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("bundle", type=Path, help="a bundle folder or its .zip (rnnexport package -o DIR [--zip])")
parser.add_argument("--vocabulary", type=Path, default=None,
                    help='JSON with "vocabulary" (and "prompt"), e.g. a model card; for bundles whose '
                         "manifest records none")
parser.add_argument("--dist", type=Path, default=DIST, help="onnxruntime-web's dist folder (default: %(default)s)")
parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
parser.add_argument("--once", action="store_true", help="exit after the page posts its result")


def inside(root: Path, relative: str) -> Path | None:
    """``root/relative`` when it is a file inside ``root`` (links resolved), else None."""
    path = (root / relative).resolve()
    return path if path.is_file() and root in path.parents else None


class ZipBundle:
    """The files of a bundle zip, read through rnnexport's one bundle reader (limits, checksums)."""

    def __init__(self, path: Path) -> None:
        from rnnexport.bundle.reader import open_bundle
        from rnnexport.core.errors import BundleError

        self.error = BundleError
        try:
            self.bundle = open_bundle(path)
        except BundleError as e:
            sys.exit(f"error: {' '.join(str(e).split())}")
        if self.bundle.kind != "zip":
            sys.exit(f"error: {path} is not a bundle folder or a .zip of one")

    def read(self, name: str) -> bytes | None:
        try:
            return self.bundle.read(name)
        except self.error:
            return None


class Handler(http.server.BaseHTTPRequestHandler):
    bundle: Path
    archive: ZipBundle | None
    dist: Path
    vocabulary: Path | None
    once: bool

    def log_message(self, format: str, *args: object) -> None:  # the base class's name
        return None

    def send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.end_headers()
        self.wfile.write(body)

    def resolve(self, path: str) -> Path | None:
        if path in PAGE:
            return HERE / PAGE[path]
        if path == "/vocabulary.json":
            return self.vocabulary
        if path.startswith("/ort/"):
            return inside(self.dist, path[len("/ort/"):])
        if path.startswith("/bundle/"):
            return inside(self.bundle, path[len("/bundle/"):])
        return None

    def do_GET(self) -> None:  # http.server's name
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if self.archive is not None and path.startswith("/bundle/"):
            body = self.archive.read(path[len("/bundle/"):])
            if body is None:
                self.send(404, b"not found\n", "text/plain")
            else:
                self.send(200, body, TYPES.get(Path(path).suffix, "application/octet-stream"))
            return
        file = self.resolve(path)
        if file is None or not file.is_file():
            self.send(404, b"not found\n", "text/plain")
        else:  # the type of the file served ("/" is index.html), not of the path asked for
            self.send(200, file.read_bytes(), TYPES.get(file.suffix, "application/octet-stream"))

    def do_POST(self) -> None:  # http.server's name
        if self.path != "/result":
            self.send(404, b"not found\n", "text/plain")
            return
        length = min(int(self.headers.get("Content-Length") or 0), MAX_RESULT)
        try:
            result = json.loads(self.rfile.read(length))
        except ValueError:
            result = {"error": "the page posted a result that is not JSON"}
        self.send(200, b"{}", "application/json")
        print(f"result: {json.dumps(result)}", flush=True)
        if self.once:
            threading.Thread(target=self.server.shutdown, daemon=True).start()


def main() -> int:
    args = parser.parse_args()
    if not args.bundle.exists():
        sys.exit(f"error: bundle {args.bundle} does not exist: give a bundle folder or its .zip "
                 "(rnnexport package MODEL.onnx -o DIR [--zip])")
    if not args.dist.is_dir():
        hint = " (cd rnnexport/engines/js && ONNXRUNTIME_NODE_INSTALL=skip npm ci)" if args.dist == DIST else ""
        sys.exit(f"error: onnxruntime-web dist folder {args.dist} does not exist{hint}")
    if args.vocabulary is not None and not args.vocabulary.is_file():
        sys.exit(f"error: vocabulary file {args.vocabulary} does not exist")
    Handler.archive = None if args.bundle.is_dir() else ZipBundle(args.bundle)
    Handler.bundle, Handler.dist = args.bundle.resolve(), args.dist.resolve()
    Handler.vocabulary, Handler.once = args.vocabulary and args.vocabulary.resolve(), args.once
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"serving http://127.0.0.1:{server.server_address[1]}/ (bundle {args.bundle}, "
          f"onnxruntime-web from {args.dist})", flush=True)
    with server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
