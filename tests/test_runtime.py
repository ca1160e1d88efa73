"""StatefulSession streams: step by step, ragged chunks, saved state, interleaved streams, resets.

The reference is one call of onnxruntime over the whole sequence (itself checked
against PyTorch), so streaming must reproduce it within 1e-5.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest

from rnnexport.core.contract import Form
from rnnexport.runtime import StatefulSession
from rnnexport.testing import assert_close, feeds, random_inputs, random_state

STREAMED = ["seed_rnn", "seed_lstm", "seed_gru", "nn_gru_2layer_nobias"]
#: Batch-major (B, T, I) real input, and int64 token ids without a feature axis.
LAYOUTS = {"wrapped_batch_first_gru": None, "wrapped_token_lm": 20}
T, B = 500, 3
CHUNKS = (1, 7, 64, 3, 200, 1, 224)
ATOL = 1e-5

_references: dict[tuple, tuple] = {}


def one_call(exports, name: str, x: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
    """``[y, *state_out]`` of one raw onnxruntime call of the sequence graph."""
    model = exports.model(name)
    session = exports.session(exports.export(name))
    return session.run(None, feeds(model.io, x, state))


def reference(exports, name: str, seed: int = 0, vocabulary: int | None = None):
    """``(x, state0, [y, *state_out])`` for a T-step, B-stream sequence from a random state."""
    key = (name, seed)
    if key not in _references:
        model = exports.model(name)
        rng = np.random.default_rng(seed)
        x = random_inputs(model.io, Form.SEQUENCE, B, T, rng, vocabulary=vocabulary)
        state = random_state(model.io, B, rng, 0.5)
        _references[key] = (x, state, one_call(exports, name, x, state))
    return _references[key]


def names(exports, name: str) -> list[str]:
    model = exports.model(name)
    return ["y", *model.io.state.output_names]


def got(session: StatefulSession, y: np.ndarray) -> list[np.ndarray]:
    return [y, *session.state.values()]


def load(exports, name: str, form: str, batch: int = B) -> StatefulSession:
    return StatefulSession.load(exports.export(name, form=form).path, batch=batch)


def time_slice(x: np.ndarray, start: int, stop: int, time_axis: int) -> np.ndarray:
    return x[start:stop] if time_axis == 0 else x[:, start:stop]


def test_reference_matches_pytorch(exports):
    """The one-call reference is itself right: it agrees with the PyTorch model."""
    for name in STREAMED:
        x, state, want = reference(exports, name)
        torch_out = exports.model(name).run_sequence(x, state)
        assert_close(want, torch_out, names(exports, name), atol=1e-4, context=f"{name} vs pytorch")


@pytest.mark.parametrize("form", ["step", "sequence"])
@pytest.mark.parametrize("name", STREAMED)
def test_step_by_step_equals_one_call(exports, name, form):
    """500 steps through .step() (a step graph, or a sequence graph at T=1) == one call."""
    x, state, want = reference(exports, name)
    session = load(exports, name, form)
    session.state = dict(zip(session.contract.state.names, state, strict=True))
    y = np.stack([session.step(x[t]) for t in range(T)])
    assert_close(got(session, y), want, names(exports, name), atol=ATOL, context=f"{name} {form} graph, stepped")


@pytest.mark.parametrize("form", ["sequence", "step"])
@pytest.mark.parametrize("name", STREAMED)
def test_ragged_chunks_equal_one_call(exports, name, form):
    """.run() over chunks of 1, 7, 64, ... steps == one call; a step graph loops inside run()."""
    x, state, want = reference(exports, name)
    session = load(exports, name, form)
    session.state = dict(zip(session.contract.state.names, state, strict=True))
    bounds = np.cumsum((0, *CHUNKS))
    assert bounds[-1] == T
    y = np.concatenate([session.run(x[a:b]) for a, b in itertools.pairwise(bounds)])
    assert_close(got(session, y), want, names(exports, name), atol=ATOL, context=f"{name} {form} graph, chunked")


@pytest.mark.parametrize("name", STREAMED)
def test_saved_state_resumes_in_a_new_session(exports, name, tmp_path):
    """.state saved to .npz after 200 steps, loaded into a fresh session, continues identically."""
    x, state, want = reference(exports, name)
    first = load(exports, name, "step")
    first.state = dict(zip(first.contract.state.names, state, strict=True))
    head = np.stack([first.step(x[t]) for t in range(200)])
    np.savez(tmp_path / "state.npz", **first.state)
    second = load(exports, name, "sequence")
    with np.load(tmp_path / "state.npz") as saved:
        second.state = dict(saved)
    tail = second.run(x[200:])
    assert_close(got(second, np.concatenate([head, tail])), want, names(exports, name), atol=ATOL,
                 context=f"{name} resumed")


@pytest.mark.parametrize("name", ["seed_lstm", "nn_gru_2layer_nobias"])
def test_interleaved_streams_do_not_disturb_each_other(exports, name):
    """Two streams of one load, stepped alternately (and a third chunked in between), stay independent."""
    x1, s1, want1 = reference(exports, name, seed=0)
    x2, s2, want2 = reference(exports, name, seed=1)
    a = load(exports, name, "step")
    b = a.new_stream()
    c = a.new_stream(batch=1)
    a.state = dict(zip(a.contract.state.names, s1, strict=True))
    b.state = dict(zip(b.contract.state.names, s2, strict=True))
    y1, y2 = [], []
    for t in range(T):
        y1.append(a.step(x1[t]))
        y2.append(b.step(x2[t]))
        if t % 100 == 0:
            c.run(x1[:5, :1])  # a third stream on the same sessions
    assert_close(got(a, np.stack(y1)), want1, names(exports, name), atol=ATOL, context=f"{name} stream a")
    assert_close(got(b, np.stack(y2)), want2, names(exports, name), atol=ATOL, context=f"{name} stream b")


@pytest.mark.parametrize("name", ["seed_lstm", "nn_gru_2layer_nobias"])
def test_reset_one_stream(exports, name):
    """reset(1) zeroes stream 1 along the state's batch axis; streams 0 and 2 carry on."""
    x, state, want_all = reference(exports, name)
    model = exports.model(name)
    axis = model.io.state.batch_axis
    session = load(exports, name, "sequence")
    session.state = dict(zip(session.contract.state.names, state, strict=True))
    session.run(x[:100])
    session.reset(1)
    for value in session.state.values():
        assert not np.take(value, 1, axis=axis).any() and np.take(value, 0, axis=axis).any()
    y = session.run(x[100:200])
    # streams 0 and 2: continue from the state after 100 steps of the full reference
    mid = one_call(exports, name, x[:100], state)[1:]
    want_rest = one_call(exports, name, x[100:200], mid)
    # stream 1: from zeros
    zeros = model.io.state.zeros(1)
    want_one = one_call(exports, name, x[100:200, 1:2], zeros)
    rows = [0, 2]
    assert_close([y[:, rows]], [want_rest[0][:, rows]], ["y"], atol=ATOL, context="kept streams")
    assert_close([y[:, 1:2]], [want_one[0]], ["y"], atol=ATOL, context="reset stream")
    for name_, value, kept, fresh in zip(model.io.state.names, session.state.values(), want_rest[1:],
                                         want_one[1:], strict=True):
        assert_close([np.take(value, rows, axis=axis), np.take(value, [1], axis=axis)],
                     [np.take(kept, rows, axis=axis), fresh], [name_, name_], atol=ATOL, context="state")
    session.reset()
    assert all(not v.any() for v in session.state.values())


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_batch_major_and_token_inputs(exports, name):
    """(B, T, I) graphs and int64 token inputs: chunks and steps follow the contract's layout."""
    model = exports.model(name)
    axis = model.io.time_axis
    rng = np.random.default_rng(5)
    x = random_inputs(model.io, Form.SEQUENCE, 2, 40, rng, vocabulary=LAYOUTS[name])
    state = random_state(model.io, 2, rng, 0.5)
    want = one_call(exports, name, x, state)
    for form in ("sequence", "step"):
        session = load(exports, name, form, batch=2)
        session.state = dict(zip(session.contract.state.names, state, strict=True))
        y = np.concatenate([session.run(time_slice(x, a, b, axis)) for a, b in ((0, 3), (3, 4), (4, 40))],
                           axis=axis)
        assert_close(got(session, y), want, names(exports, name), atol=ATOL, context=f"{name} {form} chunks")
    session = load(exports, name, "sequence", batch=2)
    session.state = dict(zip(session.contract.state.names, state, strict=True))
    y = np.stack([session.step(np.take(x, t, axis=axis)) for t in range(40)], axis=axis)
    assert_close(got(session, y), want, names(exports, name), atol=ATOL, context=f"{name} steps")


def test_unrolled_graph_runs_whole_multiples(exports):
    """A sequence graph unrolled at T=7 takes 7, 14, ... steps per run(); the state carries over."""
    name = "seed_rnn"
    x, state, _ = reference(exports, name)
    want = one_call(exports, name, x[:497], state)
    session = StatefulSession.load(exports.export(name, lowering="unrolled", seq_len=7).path, batch=B)
    assert session.forms == ("sequence",)
    session.state = dict(zip(session.contract.state.names, state, strict=True))
    y = np.concatenate([session.run(x[:7]), session.run(x[7:497])])
    assert_close(got(session, y), want, names(exports, name), atol=ATOL, context="unrolled T=7")


def test_session_properties(exports):
    session = load(exports, "seed_lstm", "step", batch=2)
    assert session.batch == 2 and session.forms == ("step",)
    assert session.providers == ("CPUExecutionProvider",) and session.device == "cpu"
    assert list(session.state) == list(exports.model("seed_lstm").io.state.names)
    assert all(not v.any() for v in session.state.values())  # zeros to start
    assert session.new_stream().batch == 2 and session.new_stream(5).batch == 5
    assert "seed" in session.description


def test_threads_option(exports):
    """threads=1 is honoured (the fastest setting for one small stream) and gives the same numbers."""
    x, state, want = reference(exports, "seed_gru")
    options = ort.SessionOptions()
    session = StatefulSession.load(exports.export("seed_gru").path, batch=B, threads=1, session_options=options)
    assert options.intra_op_num_threads == 1
    session.state = dict(zip(session.contract.state.names, state, strict=True))
    assert_close(got(session, session.run(x)), want, names(exports, "seed_gru"), atol=ATOL, context="threads=1")
