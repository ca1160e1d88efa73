"""Exported graphs compute what PyTorch computes, for every configuration and lowering.

One file per (configuration, lowering), run by onnxruntime's CPU provider at
several lengths and batch sizes from a non-zero initial state.
"""

from __future__ import annotations

import numpy as np
import pytest

from rnnexport.core.contract import Form, Lowering
from rnnexport.core.errors import ConvertError
from rnnexport.testing import assert_close, feeds, random_inputs, random_state
from tests.configs import AUTO, BIDIRECTIONAL, CONFIGS, LOWERINGS, VOCABULARY, fast_lane

ATOL = 1e-5
SEQ_LENS = (1, 7, 100)
BATCHES = (1, 5)

SEQUENCE_CASES = [(name, lw) for name, lws in LOWERINGS.items() for lw in lws]
REFUSED_CASES = [(name, lw.value) for name in CONFIGS for lw in (Lowering.NATIVE, Lowering.SCAN)
                 if lw.value not in LOWERINGS[name]]


def _case(exports, name: str, form: Form, batch: int, time: int | None, seed: int):
    model = exports.model(name)
    rng = np.random.default_rng(seed)
    x = random_inputs(model.io, form, batch, time, rng, vocabulary=VOCABULARY.get(name))
    return model, x, random_state(model.io, batch, rng, scale=0.5)


@pytest.mark.parametrize(("name", "lowering"), fast_lane(SEQUENCE_CASES))
def test_sequence_graph_matches_pytorch(exports, name, lowering):
    result = exports.export(name, lowering=lowering)
    assert result.lowering.value == lowering
    session = exports.session(result)
    names = [s.name for s in result.outputs]
    for time in SEQ_LENS:
        for batch in BATCHES:
            model, x, state = _case(exports, name, Form.SEQUENCE, batch, time, seed=time * 10 + batch)
            got = session.run(names, feeds(model.io, x, state))
            want = model.run_sequence(x, state)
            assert_close(got, want, names, ATOL, f"{name}/{lowering} T={time} B={batch}")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_unrolled_graph_matches_pytorch_at_its_length(exports, name):
    result = exports.export(name, lowering="unrolled", seq_len=7)
    assert result.seq_len == 7 and result.inputs[0].shape.count(7) == 1
    session = exports.session(result)
    names = [s.name for s in result.outputs]
    for batch in BATCHES:
        model, x, state = _case(exports, name, Form.SEQUENCE, batch, 7, seed=batch)
        assert_close(session.run(names, feeds(model.io, x, state)), model.run_sequence(x, state),
                     names, ATOL, f"{name}/unrolled B={batch}")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_auto_picks_native_when_recognised_else_scan(exports, name):
    result = exports.export(name, lowering=AUTO[name])
    auto = exports.export(name) if AUTO[name] != "native" else result
    assert auto.lowering.value == AUTO[name]
    if AUTO[name] != "native":
        assert auto.attempts[0].lowering is Lowering.NATIVE and auto.attempts[0].reason


@pytest.mark.parametrize(("name", "lowering"), REFUSED_CASES)
def test_lowering_that_does_not_apply_is_refused_with_reason(exports, name, lowering, tmp_path):
    from rnnexport.export.convert import convert

    with pytest.raises(ConvertError, match=f"{lowering}: .+"):
        convert(exports.model(name), tmp_path / "m.onnx", lowering=lowering)
    assert not (tmp_path / "m.onnx").exists()


STEP_CASES = [(name, lw) for name in CONFIGS if name not in BIDIRECTIONAL
              for lw in (("native", "unrolled") if "native" in LOWERINGS[name] else ("unrolled",))]


@pytest.mark.parametrize(("name", "lowering"), fast_lane(STEP_CASES))
def test_step_graph_fed_t_times_matches_sequence(exports, name, lowering):
    step = exports.export(name, form="step", lowering=lowering)
    assert step.inputs[0].shape[0] == "B"
    session = exports.session(step)
    names = [s.name for s in step.outputs]
    model = exports.model(name)
    time_axis = model.io.time_axis
    for batch in BATCHES:
        _, x, state = _case(exports, name, Form.SEQUENCE, batch, 7, seed=100 + batch)
        want = model.run_sequence(x, state)
        carried, ys = state, []
        for t in range(7):
            y, *carried = session.run(names, feeds(model.io, np.take(x, t, axis=time_axis), carried))
            ys.append(y)
        got = [np.stack(ys, axis=time_axis), *carried]
        assert_close(got, want, names, ATOL, f"{name}/step-{lowering} B={batch}")


@pytest.mark.parametrize("name", sorted(BIDIRECTIONAL))
def test_bidirectional_has_no_step_form(exports, name, tmp_path):
    from rnnexport.export.convert import convert

    with pytest.raises(ConvertError, match="bidirectional"):
        convert(exports.model(name), tmp_path / "s.onnx", form="step")


@pytest.mark.slow
def test_native_and_scan_graph_size_does_not_grow_with_t(exports):
    """One native/scan file serves every T; an unrolled trace grows with T."""
    unrolled = [exports.export("seed_lstm", lowering="unrolled", seq_len=t).nodes for t in (3, 9)]
    assert unrolled[0] < unrolled[1]
    for lowering in ("native", "scan"):
        result = exports.export("seed_lstm", lowering=lowering)
        assert result.inputs[0].shape[0] == "T"
        assert result.nodes < unrolled[0]
        session = exports.session(result)
        model = exports.model("seed_lstm")
        for time in (1, 1000):
            _, x, state = _case(exports, "seed_lstm", Form.SEQUENCE, 2, time, seed=time)
            y = session.run(["y"], feeds(model.io, x, state))[0]
            assert y.shape == (time, 2, 7)
