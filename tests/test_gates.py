"""Gate orders against onnx's own reference operators, the oracle for ONNX's conventions.

The native graphs are built from rnnexport.source.gates; running them under
onnx.reference.ReferenceEvaluator (an implementation independent of
onnxruntime) must give what the seed's loops and torch.nn compute.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator

from rnnexport.core.contract import Form
from rnnexport.export.convert import to_onnx
from rnnexport.source import gates
from rnnexport.source.cells import CellKind
from rnnexport.testing import assert_close, feeds, random_inputs, random_state


@pytest.mark.parametrize("name", ["seed_rnn", "seed_lstm", "seed_gru", "nn_rnn_tanh_2layer", "nn_gru_2layer_nobias"])
def test_native_graph_under_onnx_reference_matches_pytorch(exports, name):
    model = exports.model(name)
    onnx_model, _, _, _ = to_onnx(model, Form.SEQUENCE, "native")
    rng = np.random.default_rng(11)
    x = random_inputs(model.io, Form.SEQUENCE, 3, 6, rng)
    state = random_state(model.io, 3, rng, 0.5)
    got = ReferenceEvaluator(onnx_model).run(None, feeds(model.io, x, state))
    names = [s.name for s in model.io.outputs(Form.SEQUENCE)]
    assert_close(got, model.run_sequence(x, state), names, 1e-5, name)


def test_torch_gate_reorder_moves_blocks():
    blocks = np.arange(4)[:, None].repeat(2, axis=1)  # torch LSTM rows i, f, g, o -> 0, 1, 2, 3
    assert gates.torch_to_onnx_gates(CellKind.LSTM, blocks)[:, 0].tolist() == [0, 3, 1, 2]  # i, o, f, c
    blocks = np.arange(3)[:, None]  # torch GRU rows r, z, n
    assert gates.torch_to_onnx_gates(CellKind.GRU, blocks)[:, 0].tolist() == [1, 0, 2]  # z, r, h


def test_wrong_linear_before_reset_is_off_by_a_lot(exports):
    """The classic GRU export bug, shown: the seed's gru is linear_before_reset=0."""
    model = exports.model("seed_gru")
    onnx_model, _, _, _ = to_onnx(model, Form.SEQUENCE, "native")
    node = next(n for n in onnx_model.graph.node if n.op_type == "GRU")
    rng = np.random.default_rng(3)
    x = random_inputs(model.io, Form.SEQUENCE, 2, 5, rng)
    state = random_state(model.io, 2, rng, 0.5)
    want = model.run_sequence(x, state)
    next(a for a in node.attribute if a.name == "linear_before_reset").i = 1
    got = ReferenceEvaluator(onnx_model).run(None, feeds(model.io, x, state))
    assert float(np.abs(got[0] - want[0]).max()) > 1e-2
    assert float(np.abs(got[1] - want[1]).max()) > 1e-3
