"""A module's declared state domain: read from ``state_domain()``, recorded, and where verify draws random states.

The reference for every figure is the PyTorch module itself (through verify), or numpy's own
generator for the draws.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from torch import nn

import rnnexport
from rnnexport.core.contract import IOSpec, StateDomain, StateSpec
from rnnexport.core.errors import ContractError, SourceError
from rnnexport.core.onnxfile import read_info
from rnnexport.testing import random_state
from rnnexport.verification.cases import StateKind, materialize
from tests.gallery import SLSTM, RWKVTimeMix

# --------------------------------------------------------------------------- the contract


def test_the_domains_round_trip_through_the_contract():
    spec = StateSpec(("h", "n"), ((3,), (3,)), 0, domains=(None, StateDomain(1, None)))
    back = StateSpec.from_json(spec.to_json())
    assert back.domains == (None, StateDomain(1.0, None))
    assert spec.to_json()["domains"] == [None, [1.0, None]]
    assert "domains" not in StateSpec(("h",), ((3,),), 0, domains=(None,)).to_json()  # none declared


@pytest.mark.parametrize("domains", [[None], [[1, 0], None], [["a", 1], None], [[1e40, None], None],
                                     [[float("nan"), None], None], [[1, 2, 3], None], "positive"])
def test_a_malformed_domain_in_a_contract_is_refused(domains):
    data = StateSpec(("h", "n"), ((3,), (3,)), 0).to_json()
    data["domains"] = domains
    with pytest.raises(ContractError, match="domain"):
        StateSpec.from_json(data)


# --------------------------------------------------------------------------- the draws


def _io(*domains: StateDomain | None) -> IOSpec:
    names = tuple(f"s{i}" for i in range(len(domains)))
    return IOSpec((1,), "float32", (1,), StateSpec(names, ((500,),) * len(names), 0, domains=domains))


def test_random_states_are_drawn_inside_each_declared_domain():
    io = _io(StateDomain(-2, 3), StateDomain(1, None), StateDomain(None, -1), None)
    bounded, above, below, anywhere = random_state(io, 4, np.random.default_rng(0))
    assert bounded.min() >= -2 and bounded.max() <= 3 and bounded.std() > 1  # spread over the range
    assert above.min() >= 1 and below.max() <= -1
    assert anywhere.min() < 0 < anywhere.max()


def test_an_undeclared_state_is_drawn_as_before():
    """Standard normal, from the same draws of the generator: a grid case keeps its inputs."""
    rng = np.random.default_rng(7)
    want = [rng.standard_normal((4, 500)).astype(np.float32) for _ in range(2)]
    got = random_state(_io(None, None), 4, np.random.default_rng(7))
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))


# --------------------------------------------------------------------------- what a module declares


class Normaliser(nn.Module):
    """A running normaliser n > 0 (a sum of exponentials), and its log: y = log(n). From n <= 0, log gives NaN."""

    def __init__(self, size: int = 4) -> None:
        super().__init__()
        self.w = nn.Linear(size, size)
        self.size = size

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.ones(batch, self.size)

    def forward(self, x, n):
        ys = []
        for t in range(x.shape[0]):
            n = 0.9 * n + torch.exp(self.w(x[t]).clamp(max=5))
            ys.append(torch.log(n))
        return torch.stack(ys), n


class DeclaredNormaliser(Normaliser):
    def state_domain(self):
        return "positive"


def _module(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()


@pytest.mark.parametrize(("declared", "want"), [
    ({"den": "positive", "max": (-1, 1)}, (None, None, StateDomain(0, None), StateDomain(-1, 1))),
    ({"shift": None, "num": "any", "den": (0.5, None), "max": "negative"},
     (None, None, StateDomain(0.5, None), StateDomain(None, 0))),
])
def test_a_module_declares_its_domains_by_state_name(declared, want):
    class Declared(RWKVTimeMix):
        def state_domain(self):
            return declared

    assert rnnexport.from_module(_module(Declared)).io.state.domains == want


def test_a_module_declares_its_domains_shaped_like_its_state():
    model = rnnexport.from_module(_module(SLSTM))  # (h, c, n, m): (None, None, (1.0, None), None)
    assert model.io.state.domains == (None, None, StateDomain(1, None), None)
    assert rnnexport.from_module(_module(DeclaredNormaliser)).io.state.domains == (StateDomain(0, None),)


@pytest.mark.parametrize(("base", "declared", "message"), [
    (Normaliser, "positve", r"gives 'positve' for state h: give \(low, high\)"),
    (Normaliser, (2, 1), "for state h: a state domain needs low < high"),
    (Normaliser, (0, float("inf")), "for state h: a state domain's bounds are numbers of at most"),
    (SLSTM, (None, None, "positive"), r"SLSTM.state_domain\(\): expected a tuple of 4, got a tuple of 3; give a dict by "
                                       r"state name \(s0, s1, s2, s3\)"),
    (RWKVTimeMix, {"den": "positive", "other": None}, "expected a dict with keys shift, num, den, max"),
])
def test_a_malformed_declaration_is_refused_in_one_line(base, declared, message):
    bad = type(base.__name__, (base,), {"state_domain": lambda self: declared})
    with pytest.raises(SourceError, match=message) as info:
        rnnexport.from_module(_module(bad))
    assert "\n" not in str(info.value)


def test_the_domains_are_recorded_in_the_graph(tmp_path):
    path = tmp_path / "slstm.onnx"
    rnnexport.convert(_module(SLSTM), path)
    info = read_info(onnx.load(path))
    assert info is not None and info.io.state.domains == (None, None, StateDomain(1, None), None)


# --------------------------------------------------------------------------- verify


def test_verify_starts_from_states_inside_the_domain(tmp_path):
    """Every random initial state verify feeds lies in the declared domain; from outside it the module
    computes NaN (log of a negative normaliser), which fails contract 5 on PyTorch itself."""
    path = tmp_path / "normaliser.onnx"
    rnnexport.convert(_module(DeclaredNormaliser), path)
    declared = rnnexport.verify(path, _module(DeclaredNormaliser), engines=("cpu",), grid="quick")
    assert declared.passed, declared.failures[:3]
    model = rnnexport.from_module(_module(DeclaredNormaliser))
    for case in (c for c in declared.cases if c.state is StateKind.RANDOM):
        (n,) = materialize(case, model.io)[1]
        assert n.min() > 0, case.id
    undeclared = rnnexport.verify(path, _module(Normaliser), engines=("cpu",), grid="quick")
    failed = {(c.contract.value, c.engine) for c in undeclared.checks if not c.passed}
    assert ("finite", "pytorch") in failed and not undeclared.passed


class Undeclared:
    """The same module with no domain: random states standard normal."""

    state_domain = None


@pytest.mark.parametrize(("cls", "case", "seed"), [(SLSTM, "B16-T2048-saturating-random", 2),
                                                   (RWKVTimeMix, "B16-T256-saturating-random", 0)])
def test_a_state_outside_the_domain_makes_the_comparison_ill_conditioned(tmp_path, cls, case, seed):
    """sLSTM from a normaliser n < 1 (even negative), RWKV from a denominator <= 0: states the modules never
    reach. There the graph parts from PyTorch by rounding amplified a thousandfold (the sLSTM case
    fails verify on this machine's onnxruntime); from inside the domain both pass with errors of 1e-6."""
    path = tmp_path / "m.onnx"
    rnnexport.convert(_module(cls), path)
    batch, time = (int(part[1:]) for part in case.split("-")[:2])
    errors = {}
    for name, module in (("declared", _module(cls)), ("undeclared", _module(type("U", (Undeclared, cls), {})))):
        report = rnnexport.verify(path, module, seed=seed, batch_sizes=(batch,), seq_lens=(time,), engines=("cpu",),
                                  diagnose=False)
        errors[name] = max(c.max_abs or 0.0 for c in report.checks
                           if c.case == case and c.contract.value == "graph_vs_pytorch" and c.output == "y")
        if name == "declared":
            assert report.passed, report.failures[:3]
    assert errors["undeclared"] > 100 * errors["declared"], errors


def test_a_bundles_test_vectors_start_inside_the_domain(tmp_path):
    """``package`` draws its test sets' initial states from the recorded contract: inside the domain."""
    graph = tmp_path / "normaliser.onnx"
    module = _module(DeclaredNormaliser)
    rnnexport.convert(module, graph)
    rnnexport.package(graph, tmp_path / "bundle", source=rnnexport.from_module(module), variants=[])
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    starts = [entry["dir"] for entry in manifest["test_vectors"] if entry["kind"] == "single"]  # streams start at 0
    states = [onnx.numpy_helper.to_array(onnx.load_tensor(str(tmp_path / "bundle" / folder / "input_1.pb")))
              for folder in starts]
    assert states and all(state.min() > 0 for state in states)
    assert rnnexport.verify(tmp_path / "bundle").passed
