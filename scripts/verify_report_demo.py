"""A failing verify to look at: the seed LSTM with its gates left in torch.nn's order, diagnosed.

Writes ``report.html`` (the page to open), ``report.md`` and ``report.json`` into ``--out``
and prints the text report; with ``--screenshot FILE.png`` headless Chromium photographs the
page's first screen (docs/verify-report.png is made this way:
``python scripts/verify_report_demo.py --screenshot docs/verify-report.png``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

import rnnexport
from rnnexport.engines.js import chromium_binary
from rnnexport.verification.render import render_text, write_json
from rnnexport.verification.render_html import write_report

WINDOW = "1000,1500"  # the verdict, the diagnosis, the table and the first curves
SCALE = "0.7"  # drawn at 70%: a 700 x 1050 PNG under 150 KB


def plant_torch_gate_order(good: Path, bad: Path) -> None:
    """The LSTM node's W, R and B with the ONNX gate blocks (i, o, f, c) put in torch.nn's order (i, f, c, o)."""
    model = onnx.load(str(good))
    node = next(n for n in model.graph.node if n.op_type == "LSTM")
    for index, halves in ((1, 1), (2, 1), (3, 2)):
        tensor = next(t for t in model.graph.initializer if t.name == node.input[index])
        array = numpy_helper.to_array(tensor)
        parts = np.split(array, 4 * halves, axis=1)
        order = [k + 4 * h for h in range(halves) for k in (0, 2, 3, 1)]
        tensor.CopyFrom(numpy_helper.from_array(np.concatenate([parts[k] for k in order], axis=1), tensor.name))
    onnx.save(model, str(bad))


def screenshot(page: Path, png: Path) -> None:
    binary = chromium_binary()
    if binary is None:
        sys.exit("error: --screenshot needs chromium (apt-get install -y --no-install-recommends chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={WINDOW}", f"--force-device-scale-factor={SCALE}", f"--screenshot={png.resolve()}",
                        page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    print(f"wrote {png} ({png.stat().st_size // 1024} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/report-demo"))
    parser.add_argument("--screenshot", type=Path, default=None, metavar="FILE.png")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    good = rnnexport.convert("lstm", args.out / "lstm.onnx", lowering="native").path
    bad = args.out / "lstm-torch-gates.onnx"
    plant_torch_gate_order(good, bad)
    report = rnnexport.verify(bad, engines=("cpu", "reference"), seq_lens=(7, 256), diagnose=True)
    print(render_text(report))
    write_report(report, args.out / "report.html")
    write_report(report, args.out / "report.md")
    write_json(report, args.out / "report.json")
    print(f"wrote {args.out / 'report.html'}, report.md and report.json")
    if args.screenshot:
        screenshot(args.out / "report.html", args.screenshot)


if __name__ == "__main__":
    main()
