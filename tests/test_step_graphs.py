"""Native step graphs are lean: a reshape only where the contract's layout is not the op's.

At B=1 each small node costs onnxruntime 1-2 us, so the node lists are pinned here.
What the graphs compute (PyTorch parity, NaN carried as PyTorch does) is checked by
test_convert_parity, test_verify_configs and test_adversarial; that a plain-RNN step
gives a row the same bits in any batch, here and by test_batcher and test_triton.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import rnnexport
from rnnexport.runtime import StatefulSession

GUARD = ["Concat", "IsNaN", "Where", "ReduceSum"]  # one NaN guard per layer, for x and state together
#: A plain-RNN layer: [x, h] concatenated, one Gemm, its NaN guard (on the same concatenation), Tanh.
RNN_LAYER = ["Concat", "Gemm", "IsNaN", "Where", "ReduceSum", "Tanh", "Add"]

#: configuration: the step graph's nodes, in order.
NODES = {
    "seed_lstm": [*GUARD, "Unsqueeze", "Unsqueeze", "Unsqueeze", "LSTM", "Add", "Add", "Squeeze", "Squeeze",
                  "Gemm"],
    "seed_gru": [*GUARD, "Unsqueeze", "Unsqueeze", "GRU", "Add", "Squeeze", "Gemm"],
    "seed_rnn": [*RNN_LAYER, "Gemm"],
    "nn_gru_2layer_nobias": ["Slice", "Slice", "Unsqueeze", *GUARD, "GRU", "Add", *GUARD, "GRU", "Add",
                             "Concat", "Squeeze"],
    "nn_rnn_tanh_2layer": ["Gather", *RNN_LAYER, "Gather", *RNN_LAYER, "Unsqueeze", "Unsqueeze", "Concat",
                           "Identity"],
}
#: Before the trim (for the record): seed LSTM 29, GRU and RNN 22, two-layer modules 37 (the RNN
#: graphs have since traded the RNN operator for Gemm and Tanh: 8 and 20 nodes).
BEFORE = {"seed_lstm": 29, "seed_gru": 22, "seed_rnn": 22, "nn_gru_2layer_nobias": 37, "nn_rnn_tanh_2layer": 37}


def _graph(exports, name: str) -> onnx.GraphProto:
    return onnx.load(str(exports.export(name, form="step", lowering="native").path)).graph


@pytest.mark.parametrize("name", sorted(NODES))
def test_step_graph_nodes(exports, name):
    graph = _graph(exports, name)
    assert [n.op_type for n in graph.node] == NODES[name]
    assert len(graph.node) <= BEFORE[name] // 2 + 3


@pytest.mark.parametrize("name", sorted(NODES))
def test_nothing_reads_the_ops_sequence_output(exports, name):
    """``Y`` equals ``Y_h`` at T=1: the next layer, the head and the state outputs read ``Y_h``."""
    graph = _graph(exports, name)
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type in ("LSTM", "GRU", "RNN"):
            assert node.output[0] not in read and all(o in read for o in node.output[1:])


def test_a_one_layer_module_writes_its_state_from_the_op(tmp_path):
    """torch.nn's (layers, B, H) state is the op's own layout: no Slice, Concat or Identity around it."""
    torch.manual_seed(0)
    path = rnnexport.convert(torch.nn.LSTM(8, 16).eval(), tmp_path / "lstm.onnx", form="step").path
    graph = onnx.load(str(path)).graph
    assert [n.op_type for n in graph.node] == ["Unsqueeze", *GUARD, "LSTM", "Add", "Add", "Squeeze"]
    made = {o: n.op_type for n in graph.node for o in n.output}
    assert (made["h_out"], made["c_out"], made["y"]) == ("Add", "Add", "Squeeze")


def test_seed_head_is_one_gemm(exports):
    graph = _graph(exports, "seed_lstm")
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    assert gemm.input[0] == "h_out" and gemm.output[0] == "y"
    assert not any(n.op_type in ("MatMul", "CumSum", "Transpose") for n in graph.node)


@pytest.mark.parametrize(("name", "lowering"), [("seed_rnn", "native"), ("nn_rnn_tanh_2layer", "native"),
                                              ("nn_rnn_relu", "unrolled")])
def test_plain_rnn_step_gives_a_row_the_same_bits_in_any_batch(exports, name, lowering):
    """onnxruntime's RNN operator summed a batch of one in another order than a larger batch;
    the Gemm it was replaced with does not (nor the traced step of a relu RNN, MatMul on
    constant weights): a row alone equals that row inside batches of 2, 3, 7 and 64."""
    path = exports.export(name, form="step", lowering=lowering).path
    session = StatefulSession.load(path, threads=1)
    io = session.contract
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, *io.x_features)).astype(np.float32)
    state = {n: rng.standard_normal(z.shape).astype(np.float32)
             for n, z in zip(io.state.names, io.state.zeros(64), strict=True)}
    axis = io.state.batch_axis
    outputs = {}
    for batch in (1, 2, 3, 7, 64):
        stream = session.new_stream(batch=batch)
        stream.state = {n: np.take(v, range(batch), axis=axis) for n, v in state.items()}
        y = stream.step(x[:batch])
        outputs[batch] = (y[:1], {n: np.take(v, [0], axis=axis) for n, v in stream.state.items()})
    for batch in (2, 3, 7, 64):
        assert np.array_equal(outputs[batch][0], outputs[1][0]), batch
        assert all(np.array_equal(outputs[batch][1][n], outputs[1][1][n]) for n in io.state.names), batch
