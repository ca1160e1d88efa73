"""Native step graphs are lean: a reshape only where the contract's layout is not the op's.

At B=1 each small node costs onnxruntime 1-2 us, so the node lists are pinned here.
What the graphs compute (PyTorch parity, NaN carried as PyTorch does) is checked by
test_convert_parity, test_verify_configs and test_adversarial.
"""

from __future__ import annotations

import onnx
import pytest
import torch

import rnnexport

GUARD = ["Concat", "IsNaN", "Where", "ReduceSum"]  # one NaN guard per layer, for x and state together

#: configuration: the step graph's nodes, in order.
NODES = {
    "seed_lstm": [*GUARD, "Unsqueeze", "Unsqueeze", "Unsqueeze", "LSTM", "Add", "Add", "Squeeze", "Squeeze",
                  "Gemm"],
    "seed_gru": [*GUARD, "Unsqueeze", "Unsqueeze", "GRU", "Add", "Squeeze", "Gemm"],
    "seed_rnn": [*GUARD, "Unsqueeze", "Unsqueeze", "RNN", "Add", "Squeeze", "Gemm"],
    "nn_gru_2layer_nobias": ["Slice", "Slice", "Unsqueeze", *GUARD, "GRU", "Add", *GUARD, "GRU", "Add",
                             "Concat", "Squeeze"],
    "nn_rnn_tanh_2layer": ["Slice", "Slice", "Unsqueeze", *GUARD, "RNN", "Add", *GUARD, "RNN", "Add",
                           "Concat", "Squeeze"],
}
#: Before the trim (for the record): seed LSTM 29, GRU and RNN 22, two-layer modules 37.
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
