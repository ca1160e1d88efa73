"""The ``openvino-stateful`` variant: a bundle's step graph as OpenVINO IR with the state inside the model.

OpenVINO's own tools make it: the ONNX step graph is read by OpenVINO's ONNX frontend, its
``MakeStateful`` pass replaces each state input and its state output (``h`` -> ``h_out``, as
the I/O contract pairs them) by a ``ReadValue``/``Assign`` pair over one variable, and
``openvino.save_model`` writes the ``.xml`` and ``.bin`` (float32 weights, not compressed).
Two things are added so that an app needs nothing but ``x``:

- each variable is named as the state tensor it holds (``h``, ``c``, ...), so
  ``query_state()`` gives the contract's names;
- each ``ReadValue`` starts from one stream's initial state (batch 1: zeros, or the module's own,
  the contract's ``state.initial``), broadcast to the batch of the ``x`` fed (OpenVINO ops
  ``ShapeOf``, ``Gather``, ``Concat``, ``Broadcast``): a new infer request, and every
  ``reset_state()``, start every stream from the initial state, at any batch. (Computing it
  inside ``ReadValue``'s initializer from ``x``'s shape is what OpenVINO intends, but OpenVINO
  2026.4's CPU plugin cannot compile it where the state meets ``x`` in a ``Concat``, as the seed
  GRU and RNN step graphs do.)

The state outputs' names are taken off the tensors the ``Assign`` s read, so that the model's one
output is ``y`` alone, also where ``y`` is a state tensor's value and OpenVINO merges the two.

An app that resumes a saved state sets it with ``set_state`` before the next step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rnnexport.core.contract import X_NAME, Y_NAME, Form, IOSpec
from rnnexport.core.errors import BundleError
from rnnexport.core.io import atomic_write
from rnnexport.core.ort import run_limited, start_session
from rnnexport.engines.stateful import RESET, StatefulCall, stream

if TYPE_CHECKING:
    import openvino

__all__ = ["make_ir", "streamed"]


def make_ir(source: Path, target: Path, io: IOSpec) -> str:
    """Write the step graph ``source`` as stateful OpenVINO IR: ``target`` (``.xml``) and its ``.bin``; the notes.

    ``source`` is a path so that OpenVINO's ONNX frontend reads any external data from its folder
    (a bundle's ``step.onnx`` beside ``weights.bin``); ``package`` gives it the self-contained step
    graph, before the weights are shared. Either way the ``.bin`` holds every weight: the IR reads
    no external data.

    Raises:
        ValueError: OpenVINO's model has no parameter or result for a state tensor, or the stateful
            model's one output is not ``y`` alone.
    """
    import openvino
    from openvino import opset13 as ops
    from openvino import passes

    model = openvino.Core().read_model(str(source))
    pairs = dict(zip(io.state.names, io.state.output_names, strict=True))
    parameters = {name for p in model.get_parameters() for name in p.output(0).get_names()}
    results = {name for r in model.get_results() for name in r.input_value(0).get_names()}
    missing = [f"{a} -> {b}" for a, b in pairs.items() if a not in parameters or b not in results]
    if missing:
        raise ValueError(f"OpenVINO's model of the step graph has no state pair {missing[0]}")
    manager = passes.Manager()
    manager.register_pass(passes.MakeStateful(pairs))
    manager.run_passes(model)
    _drop_state_output_names(model, io)
    batch = ops.gather(ops.shape_of(model.input(X_NAME), output_type="i64"), ops.constant(np.array([0], np.int64)),
                       ops.constant(np.int64(0)))
    for op in [op for op in model.get_ordered_ops() if op.get_type_name() == "ReadValue"]:
        name = next(n for n in io.state.names if n in op.output(0).get_names())
        index = io.state.names.index(name)
        one = io.state.start(1)[index]  # zeros, or the module's own initial state
        op.set_arguments([ops.constant(one)])  # a reset variable holds one stream's initial state ...
        dims = [ops.constant(np.array([d], np.int64)) for d in io.state.dims[index]]
        dims.insert(io.state.batch_axis, batch)
        readers = list(op.output(0).get_target_inputs())
        wide = ops.broadcast(op.output(0), ops.concat(dims, 0))  # ... which every stream of x starts from
        for reader in readers:
            reader.replace_source_output(wide.output(0))
        variable = model.get_variable_by_id(op.get_variable_id())
        info = variable.get_info()
        info.variable_id = name
        variable.update(info)
    model.validate_nodes_and_infer_types()
    outputs = [sorted(o.get_names()) for o in model.outputs]
    if outputs != [[Y_NAME]]:
        raise ValueError(f"OpenVINO's stateful model has outputs {outputs}, not {Y_NAME!r} alone")
    for number, op in enumerate(model.get_ordered_ops()):  # OpenVINO numbers new ops from a process-wide counter:
        if op.get_type_name() not in ("Parameter", "Result"):  # renamed by their place, the same IR every time
            op.set_friendly_name(f"{op.get_type_name()}_{number}")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.with_name(f".{target.stem}.tmp.xml")  # written whole, then moved into place (as atomic_write does)
    try:
        openvino.save_model(model, work, compress_to_fp16=False)
        atomic_write(target.with_suffix(".bin"), work.with_suffix(".bin").read_bytes(), "OpenVINO IR weights",
                     BundleError)
        atomic_write(target, work.read_bytes(), "OpenVINO IR", BundleError)
    finally:
        work.unlink(missing_ok=True)
        work.with_suffix(".bin").unlink(missing_ok=True)
    names = ", ".join(io.state.names)
    return (f"OpenVINO IR with the state inside (ReadValue/Assign, variables {names}): feed x only, read the state "
            "with query_state(); a new infer request and reset_state() start from the initial state at the batch of x")


def _drop_state_output_names(model: openvino.Model, io: IOSpec) -> None:
    """Take the state outputs' names (``h_out``, ...) off the tensors the ``Assign`` s now read.

    Where ``y`` is a state tensor's value (``y_t = h_t``), the step graph computes the two alike,
    and OpenVINO's CPU plugin merges them when it compiles: the model's one output would then carry
    ``h_out`` beside ``y``, and ``get_any_name()`` gives ``h_out``. Once ``MakeStateful`` has made
    the pairs variables, a state output is no tensor an app reads, so its name goes: the output is
    ``y`` alone whatever is merged.
    """
    gone = set(io.state.output_names)
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Assign":
            tensor = op.input_value(0).get_tensor()
            tensor.set_names(tensor.get_names() - gone)


def streamed(reference: Path, target: Path, io: IOSpec, cases: Sequence[tuple[np.ndarray, list[np.ndarray]]],
             timeout: float | None) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    """Each case streamed step by step through the stateful IR ``target`` and the step graph ``reference``.

    ``cases`` are sequence-shaped ``x`` with the state they start from: a new stream's state (the
    contract's initial state) streams after ``reset_state()`` with only ``x`` fed, any other is set
    with ``set_state`` first.
    Returns, per step, the IR's outputs (``y``, then each state variable) and the step graph's,
    in the step graph's output order.
    """
    session = start_session(reference, "cpu").session
    out_names = [s.name for s in io.outputs(Form.STEP)]  # y, then the state outputs
    calls: list[StatefulCall] = []
    want: list[list[np.ndarray]] = []
    for x, state in cases:
        fresh = all(np.array_equal(s, i) for s, i in zip(state, io.state.start(int(x.shape[io.batch_axis])), strict=True))
        calls.append(RESET)
        for t in range(x.shape[io.time_axis]):
            x_t = np.ascontiguousarray(np.take(x, t, axis=io.time_axis))
            given = None if fresh or t else dict(zip(io.state.names, state, strict=True))
            calls.append(StatefulCall(x_t, given))
            outputs = run_limited(session, out_names, io.feeds(x_t, state), timeout, "a check step of the step graph")
            want.append(outputs)
            state = outputs[1:]
    got = stream(target.read_bytes(), target.with_suffix(".bin").read_bytes(), calls, timeout)
    pairs = []
    for found, expected in zip(got, want, strict=True):
        values = [found.outputs.get(out_names[0]), *(found.state.get(n) for n in io.state.names)]
        absent = [n for n, v in zip([out_names[0], *io.state.names], values, strict=True) if v is None]
        if absent:
            raise ValueError(f"the stateful model gives no {absent[0]!r} (outputs {', '.join(found.outputs)}, "
                             f"variables {', '.join(found.state)})")
        pairs.append(([v for v in values if v is not None], expected))
    return pairs
