"""``verify --report``: a self-contained HTML page (and markdown) of a failing and a passing report.

The page is checked as text (the table, the curves, the histograms, the diagnosis; no URL, no
script, a Content-Security-Policy that forbids loading anything) and opened in headless
Chromium: a screenshot whose first screen shows the verdict's colour, a DOM with the table and
the curves, and no request from the page to any host (Chromium is pointed at a recording proxy;
a control page with an external image shows the recorder sees page requests).
"""

from __future__ import annotations

import html.parser
import os
import socket
import struct
import subprocess
import threading
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import rnnexport
from rnnexport.engines.js import chromium_binary
from rnnexport.verification.render import markdown_text
from rnnexport.verification.render_html import html_text, write_report
from tests.cli import assert_one_line_error, invoke

#: The verdict banner's colours (render_html's CSS).
COLOURS = {"FAIL": (0xB0, 0x00, 0x20), "PASS": (0x1B, 0x7F, 0x3B)}
#: Hosts Chromium itself calls in the background whatever the page (component updates, sign-in):
#: requests to these are Chromium's, not the page's (which names no host at all: see the text checks).
CHROMIUM_OWN = (".google.com", ".googleapis.com", ".gstatic.com", ".gvt1.com")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
         "--disable-default-apps", "--no-pings", "--disable-domain-reliability", "--hide-scrollbars",
         "--proxy-bypass-list=<-loopback>", "--window-size=1200,900")


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict:
    """A passing report of the seed LSTM, and a failing one of the same graph with its gates in torch's order."""
    root = tmp_path_factory.mktemp("reports")
    good = rnnexport.convert(rnnexport.builtin("lstm", 5, 8, 5), root / "lstm.onnx", lowering="native").path
    model = onnx.load(str(good))
    node = next(n for n in model.graph.node if n.op_type == "LSTM")
    for index in (1, 2):  # W and R: the ONNX blocks i, o, f, c put as i, f, c, o
        tensor = next(t for t in model.graph.initializer if t.name == node.input[index])
        i, o, f, c = np.split(numpy_helper.to_array(tensor), 4, axis=1)
        tensor.CopyFrom(numpy_helper.from_array(np.concatenate([i, f, c, o], axis=1), tensor.name))
    bad = root / "bad.onnx"
    onnx.save(model, str(bad))
    options = {"engines": ("cpu", "reference"), "batch_sizes": (1,), "seq_lens": (7, 64)}
    return {"PASS": rnnexport.verify(good, **options), "FAIL": rnnexport.verify(bad, **options), "root": root,
            "good": good}


class _Tags(html.parser.HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(text: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


@pytest.mark.parametrize("verdict", ["FAIL", "PASS"])
def test_page_holds_the_verdict_table_curves_and_histograms(reports, verdict):
    report = reports[verdict]
    assert report.passed is (verdict == "PASS")
    page = html_text(report)
    tags = _tags(page)
    names = [t for t, _ in tags]
    assert names.count("polyline") >= 2  # contract 1's curve on each of the two engines
    assert names.count("svg") >= 3 and any(a.get("class") == "bar" for t, a in tags if t == "rect")
    assert any(a.get("id") == "contract-table" for t, a in tags if t == "table")
    assert page.index(f'<span class="word">{verdict}</span>') < page.index('id="contracts"')  # verdict first
    for engine in ("onnxruntime:cpu", "onnx-reference"):
        assert f'data-engine="{engine}"' in page
    assert ("first diverging value" in page and "gates stacked in the wrong order" in page) is (verdict == "FAIL")
    assert "avx" in page or "cpu " in page  # the environment section names the CPU


@pytest.mark.parametrize("verdict", ["FAIL", "PASS"])
def test_page_loads_nothing(reports, verdict):
    page = html_text(reports[verdict])
    tags = _tags(page)
    assert not {"script", "link", "iframe", "object", "embed", "img"} & {t for t, _ in tags}
    assert not any(k in ("src", "href", "srcset", "action") or k.startswith("on") for _, a in tags for k in a)
    lowered = page.lower()
    assert "http://" not in lowered and "https://" not in lowered and "url(" not in lowered and "@import" not in lowered
    assert "default-src 'none'" in page  # and the policy forbids loading anything anyway


def test_markdown_for_ci_logs(reports):
    text = markdown_text(reports["FAIL"])
    assert text.startswith("# rnnexport verify: FAIL")
    assert "| 1 graph == PyTorch | - | **FAIL" in text and "first diverging value: LSTM node" in text
    assert any(ch in text for ch in "▁▂▃▄▅▆▇█") and "## Environment" in text
    assert markdown_text(reports["PASS"]).startswith("# rnnexport verify: PASS")


def test_command_line_writes_the_page_and_refuses_bad_paths(reports, tmp_path):
    args = ["verify", str(reports["good"]), "--engines", "cpu", "--batch-sizes", "1", "--seq-lens", "7"]
    code, out, err = invoke(*args, "--report", tmp_path / "r.html")
    assert code == 0, out + err
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")
    assert invoke(*args, "--report", tmp_path / "r.md").code == 0
    assert (tmp_path / "r.md").read_text().startswith("# rnnexport verify: PASS")
    assert_one_line_error(invoke(*args, "--report", tmp_path / "r.txt"), "--report", ".html")
    assert not (tmp_path / "r.txt").exists()
    copy = tmp_path / "model.html"
    copy.write_bytes(reports["good"].read_bytes())
    assert_one_line_error(invoke("verify", copy, "lstm", "--input-size", "5", "--hidden-size", "8", "--output-size", "5",
                                 "--report", copy), "would overwrite")
    assert copy.read_bytes() == reports["good"].read_bytes()


# --------------------------------------------------------------------------- in headless Chromium


def decode_png(data: bytes, rows: int) -> np.ndarray:
    """The first ``rows`` rows of an 8-bit RGB or RGBA PNG as an ``(rows, width, 3)`` array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    assert header is not None
    width, height, depth, colour = header[:4]
    assert depth == 8 and colour in (2, 6) and header[6] == 0  # not interlaced
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    previous = np.zeros(stride, np.int32)
    out = []
    for y in range(min(rows, height)):
        kind, line = raw[y * (stride + 1)], np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        current = np.zeros(stride, np.int32)
        for x in range(stride):
            left = current[x - channels] if x >= channels else 0
            up, corner = previous[x], (previous[x - channels] if x >= channels else 0)
            if kind == 0:
                guess = 0
            elif kind == 1:
                guess = left
            elif kind == 2:
                guess = up
            elif kind == 3:
                guess = (left + up) // 2
            else:
                p = left + up - corner
                guess = min((abs(p - left), 0, left), (abs(p - up), 1, up), (abs(p - corner), 2, corner))[2]
            current[x] = (line[x] + guess) & 0xFF
        out.append(current.reshape(width, channels)[:, :3])
        previous = current
    return np.stack(out)


class _Recorder:
    """A listening socket standing in for a proxy: it records the first bytes of every request Chromium sends."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.server.settimeout(0.1)
        self.requests: list[bytes] = []
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.getsockname()[1]

    def _serve(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            conn.settimeout(1)
            try:
                self.requests.append(conn.recv(2048))
            except OSError:
                self.requests.append(b"")
            finally:
                conn.close()

    def page_requests(self) -> list[str]:
        """The requests' first lines, less Chromium's own background calls (:data:`CHROMIUM_OWN`)."""
        lines = [r.split(b"\r\n", 1)[0].decode("latin-1") for r in self.requests]
        def own(line: str) -> bool:
            target = line.split(" ")[1] if " " in line else ""
            host = target.split("//")[-1].split("/")[0].split(":")[0]
            return any(host.endswith(s) or "." + host == s for s in CHROMIUM_OWN)
        return [line for line in lines if not own(line)]

    def close(self) -> None:
        self.stopped = True
        self.thread.join()
        self.server.close()


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = chromium_binary()
    if binary is None:
        reason = "chromium is not installed (apt-get install -y --no-install-recommends chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must open the HTML report: {reason}")
        pytest.skip(reason)
    return binary


def _open(chromium: str, page: Path, profile: Path, *extra: str) -> tuple[list[str], subprocess.CompletedProcess]:
    recorder = _Recorder()
    try:
        proc = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}",
                               f"--proxy-server=http://127.0.0.1:{recorder.port}", *extra, page.as_uri()],
                              capture_output=True, text=True, timeout=120)
    finally:
        recorder.close()
    return recorder.page_requests(), proc


@pytest.mark.parametrize("verdict", ["FAIL", "PASS"])
def test_report_opens_in_headless_chromium(chromium, reports, tmp_path, verdict):
    page = write_report(reports[verdict], tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    requests, proc = _open(chromium, page, tmp_path / "profile", f"--screenshot={shot}")
    assert shot.is_file(), proc.stderr[-2000:]
    assert requests == [], requests  # the page asked for nothing
    top = decode_png(shot.read_bytes(), 80)[20:70]  # the first screen's top band: the verdict banner
    share = float(np.mean(np.all(np.abs(top - np.array(COLOURS[verdict])) <= 2, axis=-1)))
    assert share > 0.5, share
    requests, proc = _open(chromium, page, tmp_path / "profile2", "--dump-dom")
    dom = proc.stdout
    assert requests == [] and 'id="contract-table"' in dom and dom.count("<polyline") >= 2
    assert f'<span class="word">{verdict}</span>' in dom


def test_the_recorder_sees_a_page_that_loads_something(chromium, tmp_path):
    """The control: a page with an external image (and no policy) is caught asking for it."""
    page = tmp_path / "control.html"
    page.write_text('<!doctype html><html><body><img src="http://example.invalid/x.png">x</body></html>')
    requests, _ = _open(chromium, page, tmp_path / "profile", "--dump-dom")
    assert any("example.invalid" in r for r in requests), requests
