"""Serve the browser example: the page, onnxruntime-web's files and a bundle folder, on 127.0.0.1.

Make a bundle of the trained char model, serve it, and open the printed address::

    rnnexport convert lstm-charlm -o /tmp/charlm.onnx
    rnnexport convert lstm-charlm --form step -o /tmp/charlm-step.onnx
    rnnexport package /tmp/charlm.onnx -o /tmp/charlm --step /tmp/charlm-step.onnx
    python scripts/browser/serve.py /tmp/charlm --vocabulary models/lstm-charlm/card.json

Paths: ``/`` the page, ``/ort/NAME`` onnxruntime-web's ``dist`` files, ``/bundle/PATH`` the
bundle folder's files, ``/vocabulary.json`` the ``--vocabulary`` file. Every answer carries
COOP/COEP headers (cross-origin isolation, which onnxruntime-web's threaded wasm needs). When
the page posts its result to ``/result``, the server prints it as one ``result: {...}`` line.
Standard library only.
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
DIST = HERE.parent.parent / "rnnexport" / "backends" / "js" / "node_modules" / "onnxruntime-web" / "dist"
PAGE = {"/": "index.html", "/index.html": "index.html", "/charlm.js": "charlm.js"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
         ".wasm": "application/wasm", ".json": "application/json", ".onnx": "application/octet-stream"}
MAX_RESULT = 1 << 20  # bytes of a posted result

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("bundle", type=Path, help="a bundle folder (rnnexport package -o DIR)")
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


class Handler(http.server.BaseHTTPRequestHandler):
    bundle: Path
    dist: Path
    vocabulary: Path | None
    once: bool

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
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

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        file = self.resolve(urllib.parse.unquote(urllib.parse.urlsplit(self.path).path))
        if file is None or not file.is_file():
            self.send(404, b"not found\n", "text/plain")
        else:
            self.send(200, file.read_bytes(), TYPES.get(file.suffix, "application/octet-stream"))

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
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
    for what, folder in (("bundle", args.bundle), ("onnxruntime-web dist", args.dist)):
        if not folder.is_dir():
            hint = " (cd rnnexport/engines/js && ONNXRUNTIME_NODE_INSTALL=skip npm ci)" if folder == DIST else ""
            sys.exit(f"error: {what} folder {folder} does not exist{hint}")
    if args.vocabulary is not None and not args.vocabulary.is_file():
        sys.exit(f"error: vocabulary file {args.vocabulary} does not exist")
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
