"""StreamBatcher: many streams through one call equal each stream run alone, bit for bit on CPU.

Streams join (from the zero state or a given one), leave, reset and have their state
set at random ticks, through ``step`` and through ``submit`` from several threads.
The reference is one :class:`StatefulSession` per stream, replaying what that
stream saw. Four graphs: seed LSTM and RNN cells (``(B, H)`` state, batch axis 0), a
torch.nn.GRU with ``(layers, B, H)`` state (batch axis 1), and a trained model; and
rnn-charlm, a trained plain RNN, for 500 one-hot steps at 1, 8 and 100 streams.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Hashable

import numpy as np
import pytest
import torch

import rnnexport
from rnnexport.core.errors import RuntimeContractError
from rnnexport.runtime import StatefulSession, StreamBatcher

SOURCES = ("seed_lstm", "seed_rnn", "nn_gru_2layer", "gru_charlm")
#: Steps of the long plain-RNN run: 1.1e-5 to 8e-3 apart by step 200 when a batch of one summed differently.
LONG_STEPS = 500


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("batcher")
    torch.manual_seed(0)
    sources = {"seed_lstm": "lstm", "nn_gru_2layer": torch.nn.GRU(8, 16, num_layers=2).eval(),
               "gru_charlm": "gru-charlm", "seed_rnn": "rnn", "rnn_charlm": "rnn-charlm"}
    paths = {}
    for name, source in sources.items():
        paths[name] = str(rnnexport.convert(source, root / f"{name}.onnx", form="step").path)
    return paths


class Log:
    """What each stream saw, in order: ``("join", state)``, ``("step", x, y)``, ``("reset",)``, ``("set", state)``."""

    def __init__(self) -> None:
        self.events: dict[Hashable, list[tuple]] = {}
        self.lock = threading.Lock()

    def add(self, stream: Hashable, *event) -> None:
        with self.lock:
            self.events.setdefault(stream, []).append(event)

    def replay(self, path: str, exact: bool = True) -> int:
        """Each stream's events on its own StatefulSession; returns how many steps were compared."""
        first = StatefulSession.load(path, threads=1)
        compared = 0
        for stream, events in self.events.items():
            alone = first.new_stream()
            for kind, *args in events:
                if kind == "join":
                    alone.reset()
                    if args[0] is not None:
                        alone.state = args[0]
                elif kind == "step":
                    want = alone.step(args[0])
                    assert_equal(args[1], want, exact, f"stream {stream!r} step {compared}")
                    compared += 1
                elif kind == "reset":
                    alone.reset()
                else:
                    alone.state = args[0]
        return compared


def assert_equal(got: np.ndarray, want: np.ndarray, exact: bool, what: str) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, what
    if exact:
        assert np.array_equal(got, want), f"{what}: max |diff| {np.abs(got - want).max():.3g}"
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=what)


def random_x(batcher: StreamBatcher, rng: np.random.Generator) -> np.ndarray:
    c = batcher.contract
    if c.x_encoding == "one-hot":
        return np.eye(c.x_features[0], dtype=np.float32)[rng.integers(c.x_features[0])][None]
    return rng.standard_normal((1, *c.x_features)).astype(np.float32)


def random_state(batcher: StreamBatcher, rng: np.random.Generator) -> dict[str, np.ndarray]:
    spec = batcher.contract.state
    return {n: (0.5 * rng.standard_normal(spec.shape(i, 1))).astype(np.float32)  # type: ignore[arg-type]
            for i, n in enumerate(spec.names)}


def join(batcher: StreamBatcher, log: Log, rng: np.random.Generator, mine: list[Hashable], name) -> None:
    """A stream joins, from the zero state or a random one."""
    state = random_state(batcher, rng) if rng.random() < 0.5 else None
    stream = batcher.join(name(), state)
    mine.append(stream)
    log.add(stream, "join", state)


def churn(batcher: StreamBatcher, log: Log, rng: np.random.Generator, mine: list[Hashable], name) -> None:
    """At random: a stream joins, one leaves, one resets, one gets a state."""
    roll = rng.random()
    if (roll < 0.3 and len(mine) < 8) or not mine:
        join(batcher, log, rng, mine, name)
    elif roll < 0.4 and len(mine) > 1:
        batcher.leave(mine.pop(int(rng.integers(len(mine)))))
    elif roll < 0.5:
        stream = mine[int(rng.integers(len(mine)))]
        batcher.reset(stream)
        log.add(stream, "reset")
    elif roll < 0.55:
        stream = mine[int(rng.integers(len(mine)))]
        state = random_state(batcher, rng)
        batcher.set_state(stream, state)
        log.add(stream, "set", state)


def run_ticks(batcher: StreamBatcher, log: Log, seed: int, ticks: int, threaded: bool, prefix: str = "") -> None:
    """Ticks of random churn, then a step of a random subset of this caller's streams."""
    rng = np.random.default_rng(seed)
    mine: list[Hashable] = []
    count = iter(range(10**6))

    def name() -> Hashable:
        return f"{prefix}{next(count)}" if prefix else None  # None: the batcher picks an int id

    for _ in range(3):
        join(batcher, log, rng, mine, name)
    for _ in range(ticks):
        churn(batcher, log, rng, mine, name)
        active = [s for s in mine if rng.random() < 0.7] or mine[:1]
        xs = {s: random_x(batcher, rng) for s in active}
        if threaded:
            futures = {s: batcher.submit(s, x) for s, x in xs.items()}
            ys = {s: f.result(timeout=30) for s, f in futures.items()}
        else:
            ys = batcher.step(xs)
        for s in active:
            log.add(s, "step", xs[s], ys[s])


@pytest.mark.parametrize("source", SOURCES)
def test_step_equals_each_stream_alone(graphs, source):
    batcher = StreamBatcher.load(graphs[source], threads=1, max_batch=4)  # small: chunked ticks, a growing pool
    log = Log()
    ticks = 100
    run_ticks(batcher, log, seed=1, ticks=ticks, threaded=False)
    stats = batcher.stats
    assert log.replay(graphs[source]) == stats.steps > 2 * ticks
    assert stats.calls > ticks  # some ticks had more than max_batch streams


@pytest.mark.parametrize("source", SOURCES)
def test_submit_from_threads_equals_each_stream_alone(graphs, source):
    log = Log()
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            run_ticks(batcher, log, seed=10 + index, ticks=30, threaded=True, prefix=f"t{index}-")
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    with StreamBatcher.load(graphs[source], threads=1, max_batch=16, max_wait=0.005) as batcher:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[0]
    stats = batcher.stats
    assert log.replay(graphs[source]) == stats.steps > 4 * 30
    assert stats.calls < stats.steps, stats  # steps of different threads shared calls


def test_state_get_set_and_resume_elsewhere(graphs):
    batcher = StreamBatcher.load(graphs["seed_lstm"], threads=1)
    rng = np.random.default_rng(5)
    a, b = batcher.join(), batcher.join()
    xs = [random_x(batcher, rng) for _ in range(6)]
    for x in xs[:3]:
        batcher.step({a: x, b: x})
    saved = batcher.get_state(a)
    assert set(saved) == {"h", "c"} and saved["h"].shape == (1, batcher.contract.state.dims[0][0])
    c = batcher.join("resumed", saved)
    ys = [batcher.step({a: x, c: x}) for x in xs[3:]]
    assert all(np.array_equal(y[a], y[c]) for y in ys)
    batcher.reset(b)
    assert not any(v.any() for v in batcher.get_state(b).values())
    saved["h"][:] = 7  # a copy: the stream's state is untouched
    assert not np.array_equal(batcher.get_state(a)["h"], saved["h"])


@pytest.mark.parametrize("count", [1, 8, 100])
def test_plain_rnn_streams_equal_each_alone_for_500_one_hot_steps(graphs, count):
    """rnn-charlm, streams stepping at random ticks and finishing at different times, so a
    stream's batch changes from tick to tick (lone rows included): every y and final state
    equals the stream run alone, bit for bit. With onnxruntime's RNN operator (a batch of one
    summed in another order) they drifted apart by up to 8e-3 within 200 steps."""
    path = graphs["rnn_charlm"]
    batcher = StreamBatcher.load(path, threads=1, max_batch=64)
    rng = np.random.default_rng(count)
    eye = np.eye(batcher.contract.x_features[0], dtype=np.float32)
    chars = rng.integers(len(eye), size=(count, LONG_STEPS))
    streams = [batcher.join() for _ in range(count)]
    ys: list[list[np.ndarray]] = [[] for _ in range(count)]
    while any(len(y) < LONG_STEPS for y in ys):
        active = [i for i in range(count) if len(ys[i]) < LONG_STEPS and rng.random() < 0.7]
        got = batcher.step({streams[i]: eye[chars[i, len(ys[i])]][None] for i in active})
        for i in active:
            ys[i].append(got[streams[i]])
    assert batcher.stats.steps == count * LONG_STEPS
    if count > 1:
        assert batcher.stats.mean_batch > 1  # streams shared calls
    first = StatefulSession.load(path, threads=1)
    for i in range(count):
        alone = first.new_stream()
        want = np.concatenate([alone.step(eye[c][None]) for c in chars[i]])
        got = np.concatenate(ys[i])
        assert np.array_equal(got, want), f"stream {i}: max |diff| {np.abs(got - want).max():.3g}"
        assert all(np.array_equal(batcher.get_state(streams[i])[n], v) for n, v in alone.state.items())


def test_bad_input_is_one_line_and_changes_nothing(graphs):
    batcher = StreamBatcher.load(graphs["seed_lstm"], threads=1)
    a = batcher.join()
    x = random_x(batcher, np.random.default_rng(0))
    batcher.step({a: x})
    before = batcher.get_state(a)
    features = batcher.contract.x_features[0]
    cases = [
        ({a: x, "nobody": x}, "no stream 'nobody' has joined"),
        ({a: x[0]}, f"expected float32 array of shape (1, {features})"),
        ({a: x.astype(np.float64)}, "astype"),
        ({a: np.zeros((2, features), np.float32)}, "got shape (2,"),
        ({a: [0.0] * features}, "expected a numpy"),
    ]
    for inputs, message in cases:
        with pytest.raises(RuntimeContractError, match=re.escape(message)) as e:
            batcher.step(inputs)
        assert "\n" not in str(e.value)
    assert all(np.array_equal(v, before[k]) for k, v in batcher.get_state(a).items())
    for call, message in [
        (lambda: batcher.join(a), "already joined"),
        (lambda: batcher.set_state(a, {"h": before["h"]}), "expected exactly h, c, got h"),
        (lambda: batcher.set_state(a, {"h": before["h"], "c": before["h"][0]}), "state of stream 0 c"),
        (lambda: batcher.reset("nobody"), "reset: no stream"),
        (lambda: batcher.submit("nobody", x), "submit: no stream"),
        (lambda: batcher.step([x]), "expected a mapping"),
        (lambda: StreamBatcher.load(graphs["seed_lstm"], max_batch=0), "max_batch"),
    ]:
        with pytest.raises(RuntimeContractError, match=message):
            call()


def test_check_finite_refuses_nan(graphs):
    batcher = StreamBatcher.load(graphs["seed_lstm"], threads=1, check_finite=True)
    a = batcher.join()
    x = random_x(batcher, np.random.default_rng(0))
    x[0, 1] = np.nan
    with pytest.raises(RuntimeContractError, match="x of stream 0 holds nan"):
        batcher.step({a: x})


def test_nan_stays_in_its_stream(graphs):
    """The step graph's NaN guard is per stream: a NaN in one stream's x does not leak into others."""
    batcher = StreamBatcher.load(graphs["seed_lstm"], threads=1)
    a, b = batcher.join(), batcher.join()
    x = random_x(batcher, np.random.default_rng(0))
    bad = x.copy()
    bad[0, 0] = np.nan
    ys = batcher.step({a: bad, b: x})
    assert np.isnan(ys[a]).all() and np.isfinite(ys[b]).all()
    assert np.isnan(batcher.get_state(a)["h"]).all() and np.isfinite(batcher.get_state(b)["h"]).all()


def test_leaving_fails_pending_steps_and_close_flushes(graphs):
    batcher = StreamBatcher.load(graphs["seed_lstm"], threads=1, max_wait=30)
    a, b = batcher.join(), batcher.join()
    x = random_x(batcher, np.random.default_rng(0))
    pending = batcher.submit(a, x)  # b has no step yet: the worker waits for it
    batcher.leave(a)
    with pytest.raises(RuntimeContractError, match="left before this step ran"):
        pending.result(timeout=10)
    queued = batcher.submit(b, x)
    batcher.close()  # runs what is pending without waiting out max_wait
    assert queued.result(timeout=10).shape == (1, batcher.contract.y_features[0])
    with pytest.raises(RuntimeContractError, match="closed"):
        batcher.submit(b, x)


@pytest.mark.parametrize("source", SOURCES)
def test_tick_equals_step_bit_for_bit(graphs, source):
    """``tick(xs)`` (rows in joining order) gives what ``step({stream: row})`` gives, bit for bit, through joins,
    leaves, resets, set states and ticks of more streams than ``max_batch``; and each stream what it gets alone."""
    by_tick = StreamBatcher.load(graphs[source], threads=1, max_batch=4)
    by_step = StreamBatcher.load(graphs[source], threads=1, max_batch=4)
    rng = np.random.default_rng(3)
    log = Log()
    mine: list[Hashable] = []
    count = iter(range(10**6))
    for tick in range(60):
        roll = rng.random()
        if roll < 0.25 and len(mine) < 7 or not mine:
            stream, state = f"s{next(count)}", random_state(by_tick, rng) if rng.random() < 0.5 else None
            assert by_tick.join(stream, state) == by_step.join(stream, state) == stream
            mine.append(stream)
            log.add(stream, "join", state)
        elif roll < 0.35 and len(mine) > 1:
            stream = mine.pop(int(rng.integers(len(mine))))
            by_tick.leave(stream)
            by_step.leave(stream)
        elif roll < 0.45:
            stream = mine[int(rng.integers(len(mine)))]
            by_tick.reset(stream)
            by_step.reset(stream)
            log.add(stream, "reset")
        elif roll < 0.5:
            stream, state = mine[int(rng.integers(len(mine)))], random_state(by_tick, rng)
            by_tick.set_state(stream, state)
            by_step.set_state(stream, state)
            log.add(stream, "set", state)
        assert list(by_tick.streams) == mine
        rows = [random_x(by_tick, rng) for _ in mine]
        if tick % 7 == 3:  # a dict step on a subset between ticks: the tick's resident state is written back
            ys = by_tick.step({mine[0]: rows[0]})
            assert np.array_equal(ys[mine[0]], by_step.step({mine[0]: rows[0]})[mine[0]])
            log.add(mine[0], "step", rows[0], ys[mine[0]])
            continue
        got = by_tick.tick(np.concatenate(rows))
        want = by_step.step(dict(zip(mine, rows, strict=True)))
        assert got.shape == (len(mine), *by_tick.contract.y_features) and got.dtype == want[mine[0]].dtype
        for i, stream in enumerate(mine):
            assert np.array_equal(got[i:i + 1], want[stream]), f"tick {tick} stream {stream}"
            log.add(stream, "step", rows[i], got[i:i + 1])
    for stream in mine:
        assert all(np.array_equal(v, by_step.get_state(stream)[k]) for k, v in by_tick.get_state(stream).items())
    assert log.replay(graphs[source]) == by_tick.stats.steps
    assert by_tick.stats.calls > by_tick.stats.steps / 4  # some ticks ran more than max_batch streams


def test_tick_bad_input_is_one_line_and_changes_nothing(graphs):
    batcher = StreamBatcher.load(graphs["seed_lstm"], threads=1)
    features = batcher.contract.x_features[0]
    with pytest.raises(RuntimeContractError, match="no stream has joined"):
        batcher.tick(np.zeros((0, features), np.float32))
    a, b = batcher.join(), batcher.join()
    xs = np.random.default_rng(0).standard_normal((2, features)).astype(np.float32)
    batcher.tick(xs)
    before = {s: batcher.get_state(s) for s in (a, b)}
    for bad, message in [
        (xs[:1], "xs has 1 rows, but 2 streams have joined"),
        (xs.astype(np.float64), "astype"),
        (xs[:, :-1], f"expected float32 array of shape (2, {features})"),
        (xs.tolist(), "expected a numpy"),
    ]:
        with pytest.raises(RuntimeContractError, match=re.escape(message)) as e:
            batcher.tick(bad)
        assert "\n" not in str(e.value)
    for stream in (a, b):
        assert all(np.array_equal(v, before[stream][k]) for k, v in batcher.get_state(stream).items())
    batcher.leave(a)
    assert batcher.tick(xs[1:]).shape == (1, batcher.contract.y_features[0])
