"""The scan lowering's passes cut per-step work without changing results.

Each rewrite is checked where it must fire (a seed cell and a module built
around a torch.nn layer): with it the Scan body (then the whole graph) is
smaller than without it, and the results equal those of the plain traced body.
Where a rewrite's condition does not hold (a step that mixes batch rows) it
must not fire, and the graph must still compute what PyTorch computes.
Each pass on its own, on hand-built graphs, is tests/test_passes.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import rnnexport
from rnnexport.core.contract import Form
from rnnexport.export.lowerings import trace_step
from rnnexport.export.passes.algebra import fuse_matmuls, lift_biases
from rnnexport.export.passes.carry import carry_states
from rnnexport.export.passes.head import hoist_head
from rnnexport.export.passes.hoist import hoist_inputs
from rnnexport.export.passes.splits import fuse_split_gates
from rnnexport.export.passes.views import VIEW_OPS, drop_identity_views
from rnnexport.export.scan import SCAN_PASSES, wrap_in_scan
from rnnexport.source.model import RecurrentModel
from rnnexport.testing import feeds, random_inputs, random_state
from tests.configs import VOCABULARY

if TYPE_CHECKING:
    from tests.conftest import ExportCache

Steps = Callable[[str], onnx.ModelProto]

ATOL = 1e-6

#: Where each rewrite must fire, and what it must have done there.
FIRES = {
    "simplify": ("seed_lstm", "nn_gru_2layer_nobias"),
    "hoist": ("seed_lstm", "wrapped_token_lm", "wrapped_batch_first_gru", "user_leaky_cell"),
    "fuse_gates": ("seed_lstm", "seed_gru", "wrapped_batch_first_gru"),
    "head": ("seed_lstm", "wrapped_token_lm", "wrapped_batch_first_gru", "user_leaky_cell"),
    "carry": ("wrapped_token_lm", "wrapped_batch_first_gru"),
}
CASES = [(rewrite, name) for rewrite, names in FIRES.items() for name in names]
#: The passes behind each rewrite (hoisting lifts biases and fuses matmuls first).
PASSES = {
    "simplify": (drop_identity_views,),
    "hoist": (lift_biases, fuse_matmuls, hoist_inputs),
    "fuse_gates": (fuse_split_gates,),
    "head": (hoist_head,),
    "carry": (carry_states,),
}
#: The traced step as the body: no rewrite, dead nodes dropped, weights in the body.
PLAIN = SCAN_PASSES.without(*(p for passes in PASSES.values() for p in passes))


def _traced(model: RecurrentModel) -> onnx.ModelProto:
    step = trace_step(model)
    assert isinstance(step, onnx.ModelProto), step
    return step


@pytest.fixture(scope="module")
def steps(exports: ExportCache) -> Callable[[str], onnx.ModelProto]:
    cache: dict[str, onnx.ModelProto] = {}

    def get(name: str) -> onnx.ModelProto:
        if name not in cache:
            cache[name] = _traced(exports.model(name))
        return cache[name]
    return get


def _scan(graph: onnx.GraphProto) -> onnx.NodeProto:
    return next(n for n in graph.node if n.op_type == "Scan")


def _body(model_proto: onnx.ModelProto) -> onnx.GraphProto:
    return next(a.g for a in _scan(model_proto.graph).attribute if a.name == "body")


def _cost(model_proto: onnx.ModelProto) -> tuple[int, int]:
    """Per-step nodes first, then the nodes run once per call."""
    return len(_body(model_proto).node), len(model_proto.graph.node)


def _work(graph: onnx.GraphProto) -> int:
    """Nodes that compute something (Identity is free)."""
    return sum(n.op_type != "Identity" for n in graph.node)


def _ops(graph: onnx.GraphProto, *ops: str) -> int:
    return sum(n.op_type in ops for n in graph.node)


def _all_ops(model_proto: onnx.ModelProto, *ops: str) -> int:
    """Nodes of these ops in the outer graph and the body."""
    return _ops(model_proto.graph, *ops) + _ops(_body(model_proto), *ops)


#: What a traced view chain is made of (Slice and Gather where they only re-shape).
_VIEWS = (*VIEW_OPS, "Slice", "Gather")
_ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Sigmoid", "Tanh", "Relu")


def _run(model: RecurrentModel, proto: onnx.ModelProto, batch: int, time: int, name: str | None = None) -> list[np.ndarray]:
    rng = np.random.default_rng(batch * 100 + time)
    x = random_inputs(model.io, Form.SEQUENCE, batch, time, rng, vocabulary=VOCABULARY.get(name or ""))
    state = random_state(model.io, batch, rng, 0.5)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds(model.io, x, state))


def _assert_same_results(model: RecurrentModel, got: onnx.ModelProto, want: onnx.ModelProto, name: str) -> None:
    for batch, time in ((1, 1), (3, 9)):
        for a, b in zip(_run(model, got, batch, time, name), _run(model, want, batch, time, name), strict=True):
            np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)


def _matmuls(graph: onnx.GraphProto) -> int:
    return _ops(graph, "MatMul", "Gemm")


def _done_hoist(with_it: onnx.ModelProto, without: onnx.ModelProto) -> bool:
    """Input matmuls (``x_t @ W_x``) left the body for the outer graph."""
    return (_matmuls(_body(with_it)) < _matmuls(_body(without))
            and _matmuls(with_it.graph) > _matmuls(without.graph))


#: What each rewrite must visibly have done (beyond making the graph smaller): ``(with_it, without) -> bool``.
DONE = {
    "simplify": lambda w, wo: _all_ops(w, *_VIEWS) < _all_ops(wo, *_VIEWS),
    "hoist": _done_hoist,
    "fuse_gates": lambda w, wo: _ops(_body(w), *_ELEMENTWISE) < _ops(_body(wo), *_ELEMENTWISE),
    "head": lambda w, wo: (_matmuls(_body(w)) < _matmuls(_body(wo))
                           and not any(o == "y" or o.startswith("y__") for o in _scan(w.graph).output)),
    "carry": lambda w, wo: not {"h", "c"} & set(_scan(w.graph).input) and "h" in _scan(wo.graph).input,
}


@pytest.mark.parametrize(("rewrite", "name"), CASES)
def test_rewrite_fires_and_keeps_results(exports: ExportCache, steps: Steps, rewrite: str, name: str) -> None:
    model, step = exports.model(name), steps(name)
    with_it = wrap_in_scan(model, step)
    without = wrap_in_scan(model, step, SCAN_PASSES.without(*PASSES[rewrite]))
    assert _cost(with_it) < _cost(without), (rewrite, _cost(with_it), _cost(without))
    assert DONE[rewrite](with_it, without), rewrite
    onnx.checker.check_model(with_it, full_check=True)
    _assert_same_results(model, with_it, wrap_in_scan(model, step, PLAIN), name)


def test_gate_activations_run_once_per_step(exports: ExportCache, steps: Steps) -> None:
    """The seed LSTM's three sigmoid gates become one Sigmoid over the fused gate pre-activations."""
    model = exports.model("seed_lstm")
    plain = wrap_in_scan(model, steps("seed_lstm"), SCAN_PASSES.without(fuse_split_gates))
    fused = wrap_in_scan(model, steps("seed_lstm"))
    assert (_ops(_body(plain), "Sigmoid"), _ops(_body(fused), "Sigmoid")) == (3, 1)
    assert _ops(_body(fused), "Add") < _ops(_body(plain), "Add")


@pytest.mark.parametrize("name", ["seed_rnn", "seed_lstm", "seed_gru", "wrapped_token_lm"])
def test_body_is_at_most_half_the_traced_step(exports: ExportCache, steps: Steps, name: str) -> None:
    model, step = exports.model(name), steps(name)
    plain, rewritten = wrap_in_scan(model, step, PLAIN), wrap_in_scan(model, step)
    # Identity nodes cost nothing (onnxruntime removes them); they give body outputs their own value
    assert 2 * _work(_body(rewritten)) <= _work(_body(plain)) + 2, (_cost(rewritten), _cost(plain))


@pytest.mark.parametrize("name", ["seed_lstm", "wrapped_token_lm", "user_leaky_cell"])
def test_time_major_graph_scans_axis_zero_only(exports: ExportCache, steps: Steps, name: str) -> None:
    """Engines that implement Scan along axis 0 only (onnx's reference) can run time-major graphs."""
    scan = _scan(wrap_in_scan(exports.model(name), steps(name)).graph)
    axes = {a.name: list(a.ints) for a in scan.attribute if a.name.endswith("_axes")}
    assert all(v == 0 for values in axes.values() for v in values), axes


def test_recurrent_weights_live_in_the_body(exports: ExportCache, steps: Steps) -> None:
    """Weights only the loop reads are the body's own initializers (ONNX Runtime pre-packs them)."""
    proto = wrap_in_scan(exports.model("seed_lstm"), steps("seed_lstm"))
    body_weights = {t.name for t in _body(proto).initializer}
    outer_reads = {i for n in proto.graph.node for i in n.input}
    assert body_weights and not body_weights & outer_reads
    assert not {t.name for t in proto.graph.initializer} - outer_reads


def _batch_coupled_cell(inputs: torch.Tensor, state: tuple[torch.Tensor, ...], params: list[torch.Tensor]
                        ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """A loop whose input and output layers mix batch rows: no T*B trick may apply to them."""
    W_x, W_h, b, W_o = params
    (H,) = state
    outputs = []
    for X in inputs:
        centred = X - X.mean(dim=0, keepdim=True)
        H = torch.tanh(centred @ W_x + H @ W_h + b)
        outputs.append(torch.softmax(H @ W_o, dim=0))
    return torch.cat(outputs, dim=0), (H,)


def test_rows_mixing_steps_are_not_hoisted_and_match_pytorch() -> None:
    gen = torch.Generator().manual_seed(7)
    params = [torch.randn(s, generator=gen) * 0.4 for s in ((6, 8), (8, 8), (8,), (8, 4))]
    model = rnnexport.from_cell(_batch_coupled_cell, params, (torch.zeros(2, 8),))
    proto = wrap_in_scan(model, _traced(model))
    body = _body(proto)
    assert _ops(body, "ReduceMean") == 1 and _ops(body, "Softmax") == 1
    assert "x" in _scan(proto.graph).input and "y" in _scan(proto.graph).output
    rng = np.random.default_rng(3)
    x = random_inputs(model.io, Form.SEQUENCE, 4, 6, rng)
    state = random_state(model.io, 4, rng, 0.5)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, want in zip(session.run(None, feeds(model.io, x, state)), model.run_sequence(x, state), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def _leading_axis_cell(inputs: torch.Tensor, state: tuple[torch.Tensor, ...], params: list[torch.Tensor]
                       ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """A loop whose values carry a leading unit axis, so their batch axis is the second."""
    W_x, W_h, W_o = params
    (H,) = state
    outputs = []
    for X in inputs:
        both = torch.tanh((X @ W_x).unsqueeze(0) + (H @ W_h).unsqueeze(0))
        H = both[0]
        outputs.append((both * 2.0)[0] @ W_o)
    return torch.cat(outputs, dim=0), (H,)


def test_values_batched_on_a_later_axis_are_stacked_along_time_and_match_pytorch() -> None:
    gen = torch.Generator().manual_seed(8)
    params = [torch.randn(s, generator=gen) * 0.4 for s in ((6, 8), (8, 8), (8, 4))]
    model = rnnexport.from_cell(_leading_axis_cell, params, (torch.zeros(2, 8),))
    proto = wrap_in_scan(model, _traced(model))
    scan = _scan(proto.graph)
    assert "x" not in scan.input and "y" not in scan.output
    assert all(v == 0 for a in scan.attribute if a.name.endswith("_axes") for v in a.ints)
    rng = np.random.default_rng(4)
    x = random_inputs(model.io, Form.SEQUENCE, 3, 5, rng)
    state = random_state(model.io, 3, rng, 0.5)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, want in zip(session.run(None, feeds(model.io, x, state)), model.run_sequence(x, state), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
