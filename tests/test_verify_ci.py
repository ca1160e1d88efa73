"""verify as CI runs it: progress lines in a log, --threads, bundle mode refusing what does not apply."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

import rnnexport
from rnnexport.cli import main


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ci")
    graph = rnnexport.convert("gru", folder / "g.onnx", lowering="native")
    bundle = rnnexport.package(graph.path, folder / "b", variants=["fp16"])
    return graph.path, bundle.folder


def test_progress_is_printed_line_by_line_when_not_on_a_terminal(small):
    graph, _ = small
    proc = subprocess.run([sys.executable, "-m", "rnnexport", "verify", str(graph), "gru", "--batch-sizes", "1,2",
                           "--seq-lens", "1,3", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("verifying: ")]
    assert len(lines) >= 5 and lines[-1].startswith("verifying: 18/18 cases"), proc.stderr  # 16 + 2 NaN cases


@pytest.mark.parametrize("option", [["--batch-sizes", "2"], ["--seq-lens", "5"], ["--case-seed", "3"],
                                    ["--plot", "x.png"], ["--no-reference-evaluator"], ["--step", "s.onnx"]])
def test_bundle_mode_refuses_options_that_do_not_apply(small, option):
    _, bundle = small
    result = CliRunner().invoke(main, ["verify", str(bundle), *option])
    assert result.exit_code == 2 and "does not apply to DIR or ZIP" in result.stderr, result.output


def test_bundle_mode_honours_tolerances_threads_and_rechecks_variants(small, tmp_path):
    _, bundle = small
    result = CliRunner().invoke(main, ["verify", str(bundle), "--engines", "cpu", "--threads", "1",
                                       "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    import json

    data = json.loads((tmp_path / "r.json").read_text())
    assert data["format"] == "rnnexport.verify-report/1" and data["kind"] == "bundle"
    assert any(c["variant"] == "variant fp16" for c in data["checks"])
    strict = CliRunner().invoke(main, ["verify", str(bundle), "--engines", "cpu", "--atol", "0", "--rtol", "0"])
    assert strict.exit_code in (0, 1) and "tolerance  float32: |got - want| <= 0 + 0 * |want|" in strict.output


def test_requested_provider_that_cannot_start_fails_the_bundle_check(small):
    _, bundle = small
    result = CliRunner().invoke(main, ["verify", str(bundle), "--engines", "cpu,cuda"])
    assert result.exit_code == 1 and "requested engine(s) did not start" in result.output
    allowed = CliRunner().invoke(main, ["verify", str(bundle), "--engines", "cpu,cuda", "--allow-missing"])
    assert allowed.exit_code == 0, allowed.output
