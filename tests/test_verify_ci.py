"""verify as CI runs it: progress lines in a log, weighted by each case's size, --threads, bundle mode
refusing what does not apply, a requested engine that cannot start."""

from __future__ import annotations

import itertools
import json

import pytest

import rnnexport
from rnnexport.verification import Tick
from tests.cli import assert_one_line_error, invoke


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ci")
    graph = rnnexport.convert("gru", folder / "g.onnx", lowering="native")
    bundle = rnnexport.package(graph.path, folder / "b", variants=["fp16"])
    return graph.path, bundle.folder


def test_progress_is_printed_line_by_line_when_not_on_a_terminal(small):
    graph, _ = small
    code, _, err = invoke("verify", graph, "gru", "--batch-sizes", "1,2", "--seq-lens", "1,3", "--threads", "1")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("verifying: ")]
    assert len(lines) >= 5 and lines[-1].startswith("verifying: 18/18 (100% of the work)"), err  # 16 + 2 NaN
    assert "s left" in lines[0]


def test_progress_is_weighted_by_batch_times_steps(small):
    graph, _ = small
    ticks: list[Tick] = []
    report = rnnexport.verify(graph, "gru", engines=("cpu",), batch_sizes=(1, 4), seq_lens=(1, 32),
                              progress=ticks.append)
    assert [t.done for t in ticks] == list(range(1, len(report.cases) + 1))
    cases = {c.id: c for c in report.cases}
    assert sorted(t.label for t in ticks) == sorted(cases)  # each case ticks once, in the order it ran
    weights = [cases[t.label].batch * cases[t.label].time for t in ticks]
    assert [t.cost_done for t in ticks] == list(itertools.accumulate(weights))
    assert ticks[-1].cost_total == sum(weights) and ticks[-1].fraction == 1.0 and ticks[-1].eta == 0.0
    assert ticks[0].eta > 0
    # a B1-T1 case moves the bar by one of 4 + 4*32 + ... steps, far less than one case's share
    light = [(before, t) for before, t in itertools.pairwise([None, *ticks]) if cases[t.label].batch * cases[t.label].time == 1]
    assert light and all(t.fraction - (before.fraction if before else 0.0) < 1 / len(report.cases) for before, t in light)


@pytest.mark.parametrize("option", [["--batch-sizes", "2"], ["--seq-lens", "5"], ["--case-seed", "3"],
                                    ["--plot", "x.png"], ["--grid", "full"], ["--step", "s.onnx"], ["gru"]])
def test_bundle_mode_refuses_options_that_do_not_apply(small, option):
    _, bundle = small
    assert_one_line_error(invoke("verify", bundle, *option), "does not apply to DIR or ZIP")


def test_bundle_mode_honours_tolerances_threads_and_rechecks_variants(small, tmp_path):
    _, bundle = small
    code, _, err = invoke("verify", bundle, "--engines", "cpu", "--threads", "1", "--json", tmp_path / "r.json")
    assert code == 0, err
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["format"] == "rnnexport.verify-report/1" and data["kind"] == "bundle"
    assert any(c["variant"] == "variant fp16" for c in data["checks"])
    code, out, err = invoke("verify", bundle, "--engines", "cpu", "--atol", "0", "--rtol", "0")
    assert code in (0, 1) and "tolerance  float32: |got - want| <= 0 + 0 * |want|" in out + err


def test_requested_provider_that_cannot_start_fails_the_bundle_check(small):
    _, bundle = small
    code, out, err = invoke("verify", bundle, "--engines", "cpu,cuda", "--json", "-")
    if code == 0:
        pytest.skip("CUDA starts here")
    assert code == 1 and "requested engine(s) did not start" in err
    data = json.loads(out)
    assert data["checks"] == [] and any(n["kind"] == "stopped" for n in data["notes"])  # before any test set
    code, out, err = invoke("verify", bundle, "--engines", "cpu,cuda", "--allow-missing")
    assert code == 0, (out, err)


def test_bundle_default_engines_include_the_reference_evaluator_unless_left_out(small, tmp_path):
    _, bundle = small
    report = rnnexport.verify(bundle)
    assert {"onnxruntime:cpu", "onnx-reference"} <= {c.engine for c in report.checks} and report.passed
    assert report.grid is None and report.kind.value == "bundle"
    without = rnnexport.verify(bundle, reference_evaluator=False)
    assert "onnx-reference" not in {e.name for e in without.engines}
