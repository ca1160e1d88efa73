"""Each contract catches a real defect, planted in a real exported graph.

The clean graph passes the same grid, so every failure below comes from the defect.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rnnexport.verification import Contract, verify

GRID = {"batch_sizes": (1, 3), "seq_lens": (1, 5), "engines": ("cpu", "reference")}


def _save(proto: onnx.ModelProto, path) -> str:
    onnx.save(proto, str(path))
    return str(path)


def _nudge_weight(proto: onnx.ModelProto, delta: float) -> str:
    """Add ``delta`` to one element of the largest float initializer (the recurrent weights)."""
    tensor = max((t for t in proto.graph.initializer if t.data_type == TensorProto.FLOAT),
                 key=lambda t: int(np.prod(t.dims)))
    array = numpy_helper.to_array(tensor).copy()
    array.flat[0] += delta
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return tensor.name


def _zero_input(proto: onnx.ModelProto, name: str) -> None:
    """Rewire every use of graph input ``name`` to zeros of its shape: the graph ignores it."""
    graph = proto.graph
    for node in graph.node:
        node.input[:] = [f"{name}_zeros" if i == name else i for i in node.input]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    graph.node.insert(0, helper.make_node("ConstantOfShape", [f"{name}_shape"], [f"{name}_zeros"], value=zero))
    graph.node.insert(0, helper.make_node("Shape", [name], [f"{name}_shape"]))


def _zero_output(proto: onnx.ModelProto, name: str) -> None:
    """Make graph output ``name`` zeros of its computed shape (e.g. a step graph dropping its cell state)."""
    graph = proto.graph
    for node in graph.node:
        node.output[:] = [f"{name}_computed" if o == name else o for o in node.output]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    graph.node.extend([helper.make_node("Shape", [f"{name}_computed"], [f"{name}_shape"]),
                       helper.make_node("ConstantOfShape", [f"{name}_shape"], [name], value=zero)])


def _failed(report, contract: Contract) -> list:
    return [c for c in report.failures if c.contract is contract]


@pytest.fixture(scope="module")
def lstm(exports):
    return exports.model("seed_lstm"), exports.export("seed_lstm"), exports.export("seed_lstm", form="step")


def test_clean_graph_passes_every_contract(lstm):
    model, seq, step = lstm
    report = verify(seq.path, model, step_model=str(step.path), **GRID)
    assert report.passed, report.failures[:3]
    ran = {c.contract for c in report.checks}
    assert {Contract.PYTORCH, Contract.CHUNKED, Contract.STEP, Contract.SHAPES, Contract.FINITE} <= ran


def test_weight_changed_by_1e_3_fails_contract_1_with_figures(lstm, tmp_path):
    model, seq, _ = lstm
    proto = onnx.load(seq.path)
    _nudge_weight(proto, 1e-3)
    report = verify(_save(proto, tmp_path / "nudged.onnx"), model, **GRID)
    failed = _failed(report, Contract.PYTORCH)
    assert failed and not report.passed
    engines = {c.engine for c in failed}
    assert engines == {"onnxruntime:cpu", "onnx-reference"}
    for check in failed:
        assert check.max_abs is not None and check.max_abs > 1e-5 and check.ratio > 1
        assert check.max_rel is not None and "out of tolerance" in check.detail
    # the graph is wrong but self-consistent: chunking and shapes still hold
    assert not _failed(report, Contract.CHUNKED) and not _failed(report, Contract.SHAPES)
    assert any(c.first_step is not None and c.last_step is not None for c in failed)


def test_graph_ignoring_its_state_input_fails_contract_2(lstm, tmp_path):
    model, seq, _ = lstm
    proto = onnx.load(seq.path)
    _zero_input(proto, model.io.state.names[0])
    report = verify(_save(proto, tmp_path / "stateless.onnx"), model, **GRID)
    failed = _failed(report, Contract.CHUNKED)
    assert failed and {c.variant for c in failed} >= {"chunk=1", "chunk=3"}
    assert all(c.max_abs > 0 for c in failed if c.max_abs is not None)


def test_step_graph_dropping_cell_state_fails_contract_3(lstm, tmp_path):
    model, seq, step = lstm
    proto = onnx.load(step.path)
    _zero_output(proto, model.io.state.output_names[1])
    broken = _save(proto, tmp_path / "forgetful.step.onnx")
    report = verify(seq.path, model, step_model=broken, **GRID)
    failed = _failed(report, Contract.STEP)
    assert failed and {c.output for c in failed} >= {"y", "c_out"}
    assert not _failed(report, Contract.PYTORCH)  # the sequence graph itself is fine
    # verified on its own, the step graph fails its streamed comparison with PyTorch too
    alone = verify(broken, model, **GRID)
    assert _failed(alone, Contract.STEP) and alone.form == "step"


def _wrong_at_batch_one(proto: onnx.ModelProto, output: str, state: str, axis: int) -> None:
    """Add 0.5 to graph output ``output`` when input ``state``'s batch axis (``axis``) is 1: right at any other B."""
    graph = proto.graph
    for node in graph.node:
        node.output[:] = [f"{output}_computed" if o == output else o for o in node.output]
    one = numpy_helper.from_array(np.array([1], dtype=np.int64), "b1_one")
    half = numpy_helper.from_array(np.array(0.5, dtype=np.float32), "b1_half")
    graph.initializer.extend([one, half])
    graph.node.extend([
        helper.make_node("Shape", [state], ["b1_shape"], start=axis, end=axis + 1),
        helper.make_node("Equal", ["b1_shape", "b1_one"], ["b1_is_one"]),
        helper.make_node("Cast", ["b1_is_one"], ["b1_flag"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["b1_flag", "b1_half"], ["b1_offset"]),
        helper.make_node("Add", [f"{output}_computed", "b1_offset"], [output]),
    ])


def test_step_graph_wrong_only_at_batch_size_1_fails_contract_3(lstm, tmp_path):
    """The cases of one length stream as one batch; the grid's B=1 still streams at B=1 on every engine."""
    model, seq, step = lstm
    proto = onnx.load(step.path)
    _wrong_at_batch_one(proto, "y", model.io.state.names[0], model.io.state.batch_axis)
    broken = _save(proto, tmp_path / "wrong-at-b1.step.onnx")
    report = verify(seq.path, model, step_model=broken, **GRID)
    failed = _failed(report, Contract.STEP)
    assert {c.engine for c in failed} == {"onnxruntime:cpu", "onnx-reference"}
    assert {c.case.split("-")[0] for c in failed} == {"B1"} and {c.output for c in failed} == {"y"}
    assert not _failed(report, Contract.PYTORCH)  # the sequence graph itself is fine


def test_wrong_declared_output_shape_fails_contract_4(lstm, tmp_path):
    model, seq, _ = lstm
    proto = onnx.load(seq.path)
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    dims[len(dims) - 1].dim_value += 1
    report = verify(_save(proto, tmp_path / "misdeclared.onnx"), model, **GRID)
    failed = _failed(report, Contract.SHAPES)
    assert failed and {c.output for c in failed} == {"y"}
    assert {c.engine for c in failed} == {"onnxruntime:cpu", "onnx-reference"}
    assert "declared y float32[T, B, 8]" in failed[0].detail and ", 7]" in failed[0].detail
    assert not _failed(report, Contract.PYTORCH)


def test_nan_weight_fails_contract_5(lstm, tmp_path):
    model, seq, _ = lstm
    proto = onnx.load(seq.path)
    _nudge_weight(proto, float("nan"))
    report = verify(_save(proto, tmp_path / "nan.onnx"), model, **GRID)
    failed = _failed(report, Contract.FINITE)
    assert failed and "NaN" in failed[0].detail
    assert not [c for c in report.checks if c.contract is Contract.FINITE and c.engine == "pytorch"
                and not c.passed]
