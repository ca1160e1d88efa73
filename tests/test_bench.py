"""``scripts/bench.py --quick`` runs end to end and writes complete figures, outside the checkout.

No timing assertions: the machine's speed is not the test's business. What is:
every grid point, engine, export and target has its row with numbers, the
exported graphs computed what the eager seed loop computes, and the plot exists.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CELLS = ("rnn", "lstm", "gru")
SEQUENCE_ENGINES = ("eager", "torch.nn", "native", "scan", "gemm floor")
STREAM_ENGINES = ("eager step", "InferenceSession.run", "StatefulSession.step", "call floor")
TARGETS = ("native_vs_eager_B1", "native_vs_eager_Bmax", "native_vs_nn", "scan_vs_native",
           "session_vs_raw", "session_vs_eager", "export_native", "export_scan")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench():
    """One ``--quick`` run as documented: its files go to a new temporary folder, none into the checkout."""
    published = {p.name: p.read_bytes() for p in (ROOT / "docs").glob("bench-*")}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, f"bench.py --quick failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    wrote = [Path(line.removeprefix("wrote ")) for line in proc.stdout.splitlines() if line.startswith("wrote ")]
    folder = wrote[0].parent
    try:
        assert folder.parent == Path(tempfile.gettempdir()) and folder.name.startswith("rnnexport-bench-quick-")
        assert all(p.parent == folder for p in wrote), wrote
        assert {p.name: p.read_bytes() for p in (ROOT / "docs").glob("bench-*")} == published
        plot = folder / "bench-speedup.png"
        yield (json.loads((folder / "bench-results.json").read_text()),
               plot.read_bytes() if plot.exists() else None, proc.stdout)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_results_have_every_section(bench):
    results, _, _ = bench
    for key in ("machine", "config", "sequence", "streaming", "export", "cuda", "targets", "nn_vs_seed_max_abs",
                "ragged", "bundle"):
        assert key in results, key
    assert results["quick"] is True
    assert results["config"]["cells"] == list(CELLS)
    assert results["machine"]["cores"] >= 1 and results["machine"]["cpu"]


def test_every_grid_point_has_every_engine_with_numbers(bench):
    results, _, _ = bench
    config = results["config"]
    rows = {(r["cell"], r["T"], r["B"], r["engine"]): r for r in results["sequence"]}
    for cell in CELLS:
        for T in config["times"]:
            for B in config["batches"]:
                engines = SEQUENCE_ENGINES + (("unrolled",) if T == config["unrolled_T"] else ())
                for engine in engines:
                    row = rows.pop((cell, T, B, engine), None)
                    assert row is not None, f"no row for {cell} T={T} B={B} {engine}"
                    assert positive(row["ms"]) and positive(row["steps_per_s"]), row
                    eager = next(r for r in results["sequence"]
                                 if (r["cell"], r["T"], r["B"], r["engine"]) == (cell, T, B, "eager"))
                    assert row["speedup_vs_eager"] == pytest.approx(eager["ms"] / row["ms"]), row
                    if engine != "gemm floor":  # the floor computes no y
                        assert math.isfinite(row["max_abs_vs_eager"]), row
    assert not rows, f"rows outside the grid: {sorted(rows)}"


def test_exported_graphs_compute_the_seed_loop(bench):
    """Each lowering's y agrees with the eager seed loop (the independent reference) at every point."""
    results, _, _ = bench
    for row in results["sequence"]:
        if row["engine"] in ("native", "scan", "unrolled"):
            assert row["max_abs_vs_eager"] < 1e-4, row
    nn = results["nn_vs_seed_max_abs"]
    assert nn["rnn"] < 1e-4 and nn["lstm"] < 1e-4, nn  # same function on the same weights
    assert nn["gru"] > 1e-4, nn  # torch.nn.GRU's linear_before_reset=1: a different function


def test_streaming_rows(bench):
    results, _, _ = bench
    rows = {(r["cell"], r["engine"]): r for r in results["streaming"]}
    for cell in CELLS:
        for engine in STREAM_ENGINES:
            row = rows[(cell, engine)]
            assert positive(row["us_per_step"]) or row.get("status") == "runtime not available", row


def test_export_rows(bench):
    results, _, _ = bench
    config = results["config"]
    rows = {(r["cell"], r["form"], r["lowering"], r["T"]): r for r in results["export"]}
    for cell in CELLS:
        for key in (("sequence", "native", None), ("sequence", "scan", None), ("step", "native", None),
                    ("sequence", "unrolled", config["unrolled_T"])):
            row = rows[(cell, *key)]
            assert positive(row["seconds"]) and positive(row["nodes"]) and positive(row["bytes"]), row
        unrolled = rows[(cell, "sequence", "unrolled", config["unrolled_T"])]
        assert unrolled["nodes"] > rows[(cell, "sequence", "scan", None)]["nodes"], "unrolled repeats the step"


def test_cuda_rows_have_numbers_or_say_no_gpu(bench):
    results, _, _ = bench
    cuda = results["cuda"]
    assert cuda["status"] in ("ok", "no GPU") and cuda["reason"]
    assert cuda["rows"]
    for row in cuda["rows"]:
        if cuda["status"] == "ok":  # a lowering the CUDA provider cannot run says why instead
            assert positive(row["ms"]) or row["status"], row
        else:
            assert row["status"] == "no GPU" and row["ms"] is None, row


def test_every_target_has_a_figure_and_a_verdict(bench):
    results, _, stdout = bench
    got = {(t["cell"], t["target"]): t for t in results["targets"]}
    assert set(got) == {(c, t) for c in CELLS for t in TARGETS}
    for t in got.values():
        if t.get("status") == "runtime not available":
            continue
        assert isinstance(t["pass"], bool) and math.isfinite(t["figure"]) and t["threshold"] > 0, t
        assert f"{'PASS' if t['pass'] else 'MISS'}  {t['cell']:5s} {t['text']}" in stdout


def test_ragged_rows_and_targets(bench):
    """Every ragged engine is timed at every T, the one ragged call equals PyTorch's packed run, and
    each of the three ragged targets has a figure and a printed verdict."""
    results, _, stdout = bench
    ragged, config = results["ragged"], results["config"]
    rows = {(r["cell"], r["T"], r["engine"]): r for r in ragged["rows"]}
    B = config["ragged_B"]
    for cell in ("lstm", "gru"):
        for T in config["ragged_T"]:
            for engine in ("one call, lengths", "torch packed", f"{B} separate calls", "full batch, lengths",
                           "full batch, no lengths"):
                assert positive(rows[(cell, T, engine)]["ms"]), (cell, T, engine)
            assert rows[(cell, T, "one call, lengths")]["max_abs_vs_torch_packed"] < 1e-4
    assert {(t["cell"], t["target"]) for t in ragged["targets"]} == {
        (c, t) for c in ("lstm", "gru") for t in ("ragged_vs_packed", "ragged_vs_separate", "lengths_overhead")}
    for t in ragged["targets"]:
        assert isinstance(t["pass"], bool) and math.isfinite(t["figure"]), t
        assert f"{'PASS' if t['pass'] else 'MISS'}  {t['cell']:5s} {t['text']}" in stdout


def test_bundle_rows_and_size_target(bench):
    """Both bundle forms are measured for each model, the shared one is the smaller, and the size
    target's figure is the ratio of the two zips the rows give."""
    results, _, stdout = bench
    bundle = results["bundle"]
    rows = {(r["model"], r["form"]): r for r in bundle["rows"]}
    for model in results["config"]["bundle_models"]:
        shared, separate = rows[(model, "shared")], rows[(model, "separate")]
        for row in (shared, separate):
            assert all(positive(row[k]) for k in ("folder_bytes", "zip_bytes", "load_folder_ms", "load_zip_ms")), row
        assert shared["folder_bytes"] < separate["folder_bytes"]
        target = next(t for t in bundle["targets"] if t["cell"] == model)
        assert target["figure"] == shared["zip_bytes"] / separate["zip_bytes"]
        assert f"{'PASS' if target['pass'] else 'MISS'}  {model:5s} {target['text']}" in stdout


def test_plot_written_when_matplotlib_is_there(bench):
    _, plot, stdout = bench
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no plot drawn" in stdout
        return
    assert plot is not None and plot[:8] == b"\x89PNG\r\n\x1a\n"
