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
from rnnexport.runtime import StatefulSession
from rnnexport.source.sources import load_source

# --- configuration -------------------------------------------------------------------------------
MODELS = {"lstm-charlm": "lstm-charlm", "seed lstm (28, 256, 28)": "lstm"}
FORMS = {"separate": False, "shared": True}

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


def main() -> None:
    args = parser.parse_args()
    results = {"machine": platform.machine(), "processor": platform.processor(), "runs": args.runs, "models": {}}
    print(f"{'model':26} {'bundle':9} {'folder B':>10} {'zip B':>10} {'load dir ms':>12} {'load zip ms':>12}")
    for name, source in MODELS.items():
        with tempfile.TemporaryDirectory(prefix="rnnexport-bench-bundle-") as work:
            figures = measure(source, Path(work), args.runs)
        results["models"][name] = figures
        for form, f in figures.items():
            print(f"{name:26} {form:9} {f['folder_bytes']:>10,} {f['zip_bytes']:>10,} {f['load_folder_ms']:>12.1f} "
                  f"{f['load_zip_ms']:>12.1f}")
        ratio = {k: figures["shared"][k] / figures["separate"][k] for k in figures["shared"]}
        print(f"{name:26} {'ratio':9} {ratio['folder_bytes']:>10.2f} {ratio['zip_bytes']:>10.2f} "
              f"{ratio['load_folder_ms']:>12.2f} {ratio['load_zip_ms']:>12.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
