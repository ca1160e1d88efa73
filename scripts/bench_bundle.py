"""Bundle size and load time with the weights the sequence and step graphs share stored once, and without.

For each model (the trained ``lstm-charlm`` and the built-in seed LSTM, input 28, hidden 256),
the sequence and step graphs are converted once and packaged twice without variants: with
shared weights (the default: ``weights.bin``, schema ``rnnexport.bundle/2``) and with
``--no-shared-weights`` (two self-contained graphs, ``rnnexport.bundle/1``). For each bundle:
the folder's bytes (every file, the manifest included), the zip's bytes, and the time
``rnnexport.runtime.StatefulSession.load`` takes on the folder and on the zip (open and check
the bundle, start both graphs' onnxruntime sessions; one thread; median of --runs after a
warm-up). Prints a table and writes the figures as JSON.

    python scripts/bench_bundle.py [--runs 20] [--json out/bench-bundle.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import rnnexport
from rnnexport.core.io import atomic_write
from rnnexport.runtime import StatefulSession
from rnnexport.source.sources import load_source

# --- configuration -------------------------------------------------------------------------------
MODELS = ("lstm-charlm", "lstm")  # the trained char model; the seed LSTM (input 28, hidden 256)
FORMS = {"separate": False, "shared": True}
#: A bundle with both graphs and shared weights is at most this fraction of the separate one (zip bytes).
BUNDLE_TARGET = 0.55

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--runs", type=int, default=20, help="timed loads per bundle (median reported)")
parser.add_argument("--json", type=Path, default=Path("out") / "bench-bundle.json", help="where the figures go")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def load_ms(path: Path, runs: int) -> float:
    StatefulSession.load(path, threads=1)  # warm-up: imports, page cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        StatefulSession.load(path, threads=1)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(name: str, work: Path, runs: int) -> dict[str, dict[str, float]]:
    source = load_source(name)  # expected outputs from PyTorch, as `rnnexport package MODEL SOURCE` makes them
    sequence = rnnexport.convert(source, work / "model.onnx")
    step = rnnexport.convert(source, work / "step.onnx", form="step")
    figures = {}
    for form, shared in FORMS.items():
        made = rnnexport.package(sequence.path, work / form, source=source, step_path=step.path, variants=(),
                                 archive=True, shared_weights=shared)
        assert made.archive is not None
        figures[form] = {"folder_bytes": folder_bytes(made.folder), "zip_bytes": made.archive.stat().st_size,
                         "load_folder_ms": load_ms(made.folder, runs), "load_zip_ms": load_ms(made.archive, runs)}
    return figures


def measure_bundles(models: tuple[str, ...], runs: int, work: Path) -> tuple[list[dict], list[dict]]:
    """A row per model and form (``separate``, ``shared``), and the size target per model (zip bytes)."""
    rows, targets = [], []
    for name in models:
        folder = work / name
        folder.mkdir(parents=True)
        figures = measure(name, folder, runs)
        rows += [{"model": name, "form": form, **f} for form, f in figures.items()]
        ratio = figures["shared"]["zip_bytes"] / figures["separate"]["zip_bytes"]
        targets.append({"target": "bundle_size", "cell": name, "text": f"a bundle with both graphs <= "
                        f"{BUNDLE_TARGET}x the size with each graph's own weights (zip, no variants)",
                        "figure": ratio, "op": "<=", "threshold": BUNDLE_TARGET, "unit": "x", "where": "zip bytes",
                        "pass": bool(ratio <= BUNDLE_TARGET)})
    return rows, targets


def main() -> None:
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rnnexport-bench-bundle-") as work:
        rows, targets = measure_bundles(MODELS, args.runs, Path(work))
    results = {"machine": platform.machine(), "processor": platform.processor(), "runs": args.runs,
               "rows": rows, "targets": targets}
    print(f"{'model':12} {'bundle':9} {'folder B':>10} {'zip B':>10} {'load dir ms':>12} {'load zip ms':>12}")
    for r in rows:
        print(f"{r['model']:12} {r['form']:9} {r['folder_bytes']:>10,} {r['zip_bytes']:>10,} "
              f"{r['load_folder_ms']:>12.1f} {r['load_zip_ms']:>12.1f}")
    for t in targets:
        print(f"{'PASS' if t['pass'] else 'MISS'}  {t['cell']}: {t['text']}: {t['figure']:.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, (json.dumps(results, indent=2) + "\n").encode(), "figures")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
