"""CPU time of ``verify`` on a minGRU-sized module: this checkout, or others given by path.

A minGRU (Feng et al. 2024, sequential form, as ``tests/gallery.py`` writes it; input 16,
hidden 32) is converted by scan, then verified against its PyTorch module on a grid given
explicitly (so that versions whose default grids differ run the same cases), on the default
engines (onnxruntime's CPU provider and onnx's ReferenceEvaluator), one thread; ``--step``
also converts the step graph and streams it (contract 3).

Each measurement runs in a fresh Python process and counts only ``verify``: the user + system
CPU seconds of that process and of the children it waited for (the ReferenceEvaluator's
process), read with ``resource.getrusage`` before and after. Conversion is not counted. Every
checkout runs from bytecode compiled beforehand (into a temporary ``PYTHONPYCACHEPREFIX``), as
an installed package does, so that no version pays for compiling its own source. The runs
alternate between checkouts, so that a change in the machine's load falls on all of them;
the median of ``--repeat`` runs is printed per checkout and grid, with its ratio to the first
checkout's.

    python scripts/bench_verify.py [--checkout PATH ...] [--grid quick|full|both] [--step] [--repeat 3]
                                   [--threads 1] [--json PATH]

``--checkout`` defaults to this checkout; give an older worktree first to compare with it
(``git worktree add --detach /tmp/old 9d6dd36``, then ``--checkout /tmp/old --checkout .``):
the figures of docs/verify.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

#: The grids, spelled out so that every version runs the same cases: today's quick grid, and the
#: full one (every version's default before ``--grid`` existed); chunk lengths as in both.
GRIDS = {
    "quick": {"batch_sizes": (1, 3), "seq_lens": (7, 256), "chunk_sizes": (1, 3, 64)},
    "full": {"batch_sizes": (1, 4, 16), "seq_lens": (1, 2, 17, 256, 2048), "chunk_sizes": (1, 3, 64)},
}
INPUT, HIDDEN = 16, 32

#: What one measurement runs, in a fresh process whose ``sys.path`` starts at the checkout.
_CHILD = r'''
import json, resource, tempfile, time
import torch
from torch import nn
import rnnexport

INPUT, HIDDEN, OPTIONS, STEP = {input}, {hidden}, {options}, {step}


def g(x):
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


class MinGRU(nn.Module):
    def __init__(self, size, hidden):
        super().__init__()
        self.z = nn.Linear(size, hidden)
        self.h = nn.Linear(size, hidden)
        self.hidden = hidden

    def initial_state(self, batch):
        return torch.zeros(batch, self.hidden)

    def forward(self, x, h):
        ys = []
        for t in range(x.shape[0]):
            z = torch.sigmoid(self.z(x[t]))
            h = (1 - z) * h + z * g(self.h(x[t]))
            ys.append(h)
        return torch.stack(ys), h


def cpu():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


torch.manual_seed(0)
module = MinGRU(INPUT, HIDDEN).eval()
with tempfile.TemporaryDirectory() as tmp:
    path = tmp + "/mingru.onnx"
    rnnexport.convert(module, path, lowering="scan")
    if STEP:
        rnnexport.convert(module, tmp + "/mingru.step.onnx", form="step")
        OPTIONS["step_model"] = tmp + "/mingru.step.onnx"
    (own, kids), wall = cpu(), time.perf_counter()
    report = rnnexport.verify(path, module, **OPTIONS)
    (own_after, kids_after), wall = cpu(), time.perf_counter() - wall
failed = sorted({{c.case for c in report.checks if not c.passed}})
print(json.dumps({{"cpu": own_after - own + kids_after - kids, "children": kids_after - kids, "wall": wall,
                  "checks": len(report.checks), "passed": report.passed, "failed_cases": failed}}))
'''


def _env(checkout: Path, pycache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(checkout), "PYTHONPYCACHEPREFIX": str(pycache)}


def compile_checkout(checkout: Path, pycache: Path) -> None:
    """Compile ``checkout``'s package into ``pycache``, as an install does, before anything is timed."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(checkout / "rnnexport")],
                   env=_env(checkout, pycache), check=True, stdout=subprocess.DEVNULL)


def measure(checkout: Path, pycache: Path, grid: str, step: bool, threads: int | None) -> dict[str, object]:
    """One verify in a fresh process importing rnnexport from ``checkout``: its CPU and wall seconds."""
    options = {**GRIDS[grid], **({} if threads is None else {"threads": threads})}
    code = _CHILD.format(input=INPUT, hidden=HIDDEN, options=repr(options), step=step)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-c", code], env=_env(checkout, pycache), cwd=tmp,
                              capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: verify failed to run in {checkout}: {done.stderr.strip()[-2000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", action="append", type=Path, default=None,
                        help="a checkout of rnnexport to measure (repeatable; default: this one)")
    parser.add_argument("--grid", choices=[*GRIDS, "both"], default="full")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="verify's threads (0: leave the option out, each version's own default)")
    parser.add_argument("--step", action="store_true", help="also convert the step graph and stream it (contract 3)")
    parser.add_argument("--json", type=Path, default=None, help="write every measurement here")
    args = parser.parse_args()
    checkouts = [p.resolve() for p in (args.checkout or [Path(__file__).resolve().parent.parent])]
    grids = list(GRIDS) if args.grid == "both" else [args.grid]
    results: dict[str, dict[str, list[dict[str, object]]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        caches = {checkout: Path(scratch) / str(number) for number, checkout in enumerate(checkouts)}
        for checkout, pycache in caches.items():
            compile_checkout(checkout, pycache)
        for grid in grids:
            for number in range(args.repeat):
                for checkout, pycache in caches.items():
                    run = measure(checkout, pycache, grid, args.step, args.threads or None)
                    results.setdefault(grid, {}).setdefault(str(checkout), []).append(run)
                    print(f"{grid:5} {checkout}: run {number + 1}: {run['cpu']:.2f} s CPU ({run['children']:.2f} s "
                          f"in children), {run['wall']:.2f} s wall, {run['checks']} checks, passed {run['passed']}",
                          flush=True)
    print()
    for grid, by_checkout in results.items():
        first = None
        for checkout, runs in by_checkout.items():
            median = statistics.median(float(str(r["cpu"])) for r in runs)
            first = median if first is None else first
            print(f"{grid:5} {checkout}: median {median:.2f} s CPU over {len(runs)} runs "
                  f"({100 * median / first:.0f}% of the first)")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
