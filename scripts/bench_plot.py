"""Draw the benchmark's two plots from a ``bench-results.json``, without measuring anything.

``scripts/bench.py`` calls :func:`draw_plots` after a run; run this file to redraw the plots of a
recorded run (for example after changing how they look):

    python scripts/bench_plot.py docs/bench-results.json [--plot docs/bench-speedup.png]
                                 [--plot-streams docs/bench-streams.png]

Needs matplotlib (``pip install 'rnnexport[plot]'``); without it, says so and draws nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rnnexport.core.io import atomic_write

#: Bars of the speed-up plot, and the lines of the many-streams plot, in drawing order.
SPEEDUP_ENGINES = ("torch.nn", "native", "scan", "unrolled")
STREAM_ENGINES = ("StatefulSession x S", "StreamBatcher", "StreamBatcher.tick", "InferenceSession.run B=S",
                  "IO binding B=S", "batched gemm floor")


def draw_plots(results: dict[str, Any], speedup_path: Path, streams_path: Path) -> None:
    """The speed-up over eager PyTorch per lowering and grid point, and throughput against streams."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    except ImportError:
        print("matplotlib is not installed (pip install 'rnnexport[plot]'): no plot drawn")
        return
    config = results["config"]
    cells, threads, hidden = config["cells"], config["threads"], config["hidden"]

    def save(fig: Any, path: Path) -> None:
        """Write the figure atomically (in the format its suffix names, else PNG): a reader never sees half."""
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: fig.savefig(f, dpi=110, format=path.suffix.lower().lstrip(".") or "png"), "plot")
        plt.close(fig)
        print(f"wrote {path}")

    points = [(T, B) for T in config["times"] for B in config["batches"]]
    speedup = {(r["cell"], r["T"], r["B"], r["engine"]): r["speedup_vs_eager"] for r in results["sequence"]}

    def measured(cell: str, engine: str) -> tuple[list[int], list[float]]:
        """Grid positions and speed-ups of ``engine`` where it was measured."""
        found = [(j, speedup[(cell, T, B, engine)]) for j, (T, B) in enumerate(points)
                 if (cell, T, B, engine) in speedup]
        return [j for j, _ in found], [v for _, v in found]

    fig, axes = plt.subplots(len(cells), 1, figsize=(11, 2.6 * len(cells)), sharex=True, squeeze=False)
    width = 0.8 / len(SPEEDUP_ENGINES)
    for ax, cell in zip(axes[:, 0], cells, strict=True):
        for i, engine in enumerate(SPEEDUP_ENGINES):
            where, values = measured(cell, engine)
            ax.bar([j + (i - (len(SPEEDUP_ENGINES) - 1) / 2) * width for j in where], values, width, label=engine)
        where, values = measured(cell, "gemm floor")  # what an engine doing only the recurrent matmuls gets
        ax.scatter(where, values, marker="_", s=900, color="black", label="gemm floor", zorder=3)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.margins(y=0.12)
        ax.yaxis.set_major_locator(FixedLocator([2.0**k for k in range(-4, 7)]))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel(f"{cell}\nspeed-up")
        ax.grid(axis="y", which="both", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, ncol=5, fontsize=9, loc="lower center", frameon=False)
    axes[0, 0].set_title(f"Speed-up over the eager PyTorch seed loop (CPU, {threads} thread, hidden {hidden})")
    axes[-1, 0].set_xticks(range(len(points)), [f"T={T}\nB={B}" for T, B in points])
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save(fig, speedup_path)

    rates = {(r["model"], r["S"], r["engine"]): r["steps_per_s"] for r in results["multi_stream"]["rows"]}
    models = list(dict.fromkeys(r["model"] for r in results["multi_stream"]["rows"]))
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(3.3 * len(models), 3.4), sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for engine in STREAM_ENGINES:
            found = [(S, rates.get((model, S, engine))) for S in config["streams"]]
            line = [(S, v) for S, v in found if v]
            if line:
                ax.plot([S for S, _ in line], [v for _, v in line], marker="o", label=engine,
                        linestyle="--" if engine == "batched gemm floor" else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("streams S")
        ax.grid(which="both", alpha=0.3)
    axes[0][0].set_ylabel("aggregate steps/s")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, ncol=4, fontsize=9, loc="lower center", frameon=False)
    fig.suptitle(f"Many streams at once (CPU, {threads} thread)", fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    save(fig, streams_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a bench-results.json written by scripts/bench.py")
    parser.add_argument("--plot", type=Path, default=None, help="default: bench-speedup.png beside the JSON")
    parser.add_argument("--plot-streams", type=Path, default=None, help="default: bench-streams.png beside the JSON")
    args = parser.parse_args()
    try:
        results = json.loads(args.results.read_text())
    except (OSError, ValueError) as e:
        parser.error(f"cannot read {args.results}: {e}")
    if not isinstance(results, dict) or not {"config", "sequence", "multi_stream"} <= results.keys():
        parser.error(f"{args.results}: not a bench-results.json written by scripts/bench.py")
    folder = args.results.parent
    draw_plots(results, args.plot or folder / "bench-speedup.png", args.plot_streams or folder / "bench-streams.png")


if __name__ == "__main__":
    main()
