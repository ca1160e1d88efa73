"""``rnnexport triton``: the model folder, its static checks, and batching exactly as Triton's sequence batcher does.

No Triton server runs here: configs are parsed with Triton's own schema
(tritonclient's ``model_config_pb2``), and :func:`emulate_sequence_batcher` drives
the served graph with onnxruntime as the batcher would. Bad folders (torch.nn state
without the serving form, swapped or sort-breaking state names, no initial state)
must fail the checks, and those that run must fail the behavioural comparison.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

import rnnexport
from rnnexport.core.compare import compare, tolerance_for
from rnnexport.core.contract import Form, GraphInfo
from rnnexport.core.errors import ContractError, ConvertError
from rnnexport.core.ort import start_session
from rnnexport.runtime import StatefulSession
from rnnexport.serving import (
    EmulatedRun,
    TritonOptions,
    batch_first,
    check_model_folder,
    emulate_sequence_batcher,
    model_config,
    read_config,
    render_config,
)
from rnnexport.serving.config import EXPOSED_SUFFIX
from rnnexport.testing import random_inputs
from tests.cli import Outcome, assert_one_line_error, invoke

pytest.importorskip("tritonclient.grpc", reason="needs tritonclient (pip install tritonclient grpcio)")

TRAINED = ("lstm-charlm", "gru-charlm", "rnn-charlm", "lstm-forecaster")
NN_LSTM = "nn-lstm-2layer"
FACTORY = """
import torch

def lstm2():
    torch.manual_seed(0)
    return torch.nn.LSTM(6, 12, num_layers=2).eval()

def sort_breaking():
    import rnnexport

    def cell(inputs, state, params):
        (w,) = params
        a, b = state
        outputs = []
        for x in inputs:
            a, b = torch.tanh(x @ w + 0.5 * b), 0.5 * a + 0.1
            outputs.append(a)
        return torch.cat(outputs, dim=0), (a, b)

    torch.manual_seed(0)
    return rnnexport.from_cell(cell, [torch.randn(8, 8)], (torch.zeros(2, 8), torch.zeros(2, 8)),
                               state_names=("a", "a_b"))


class Stack(torch.nn.Module):  # GRU cells stacked 11 deep: a list state of 11 tensors, named s0 ... s10

    def __init__(self):
        super().__init__()
        self.cells = torch.nn.ModuleList([torch.nn.GRUCell(4 if k == 0 else 6, 6) for k in range(11)])

    def initial_state(self, batch):
        return [torch.zeros(batch, 6) for _ in self.cells]

    def forward(self, x, state):
        state, ys = list(state), []
        for x_t in x:
            for k, cell in enumerate(self.cells):
                state[k] = x_t = cell(x_t, state[k])
            ys.append(x_t)
        return torch.stack(ys), state


def eleven():
    torch.manual_seed(0)
    return Stack().eval()
"""


def triton(*args: object) -> Outcome:
    return invoke("triton", *args)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Per model: the step graph (the reference) and what `rnnexport triton` is given (a bundle, a factory)."""
    root = tmp_path_factory.mktemp("triton-sources")
    (root / "factories.py").write_text(FACTORY)
    made = {}
    for name in TRAINED:
        sequence = rnnexport.convert(name, root / f"{name}.onnx", form="sequence")
        step = rnnexport.convert(name, root / f"{name}.step.onnx", form="step")
        bundle = rnnexport.package(sequence.path, root / f"{name}-bundle", step_path=step.path, variants=())
        made[name] = (step.path, bundle.folder)
    factory = f"{root / 'factories.py'}:lstm2"
    made[NN_LSTM] = (rnnexport.convert(factory, root / "lstm2.step.onnx", form="step").path, factory)
    made["sort-breaking"] = (None, f"{root / 'factories.py'}:sort_breaking")
    eleven = f"{root / 'factories.py'}:eleven"
    made["eleven"] = (rnnexport.convert(eleven, root / "eleven.step.onnx", form="step").path, eleven)  # s0 ... s10
    return made


@pytest.fixture(scope="module")
def repository(sources, tmp_path_factory):
    """One Triton model repository holding a model per source, written by the CLI."""
    repo = tmp_path_factory.mktemp("triton") / "models"
    for name in (*TRAINED, NN_LSTM):
        code, output, _ = triton(sources[name][1], "-o", repo, "--name", name)
        assert code == 0, output
    return repo


def streams(io, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` input sequences of 5 to 30 steps, ``(T, ...)`` each, in the model's encoding."""
    return [random_inputs(io, Form.STEP, int(rng.integers(5, 31)), None, rng, vocabulary=20) for _ in range(count)]


def alone(step_path, xs: np.ndarray) -> dict[str, np.ndarray]:
    """One sequence run by itself through the original step graph from the zero state; state batch-first."""
    session = start_session(step_path, "cpu").session
    info = GraphInfo.from_props(session.get_modelmeta().custom_metadata_map)
    assert info is not None
    io = info.io
    state = io.state.zeros(1)
    got: dict[str, list[np.ndarray]] = {}
    for x in xs:
        y, *state = session.run(None, io.feeds(x[None], state))
        got.setdefault("y", []).append(y[0])
        for name, value in zip(io.state.output_names, state, strict=True):
            got.setdefault(name, []).append(np.moveaxis(value, io.state.batch_axis, 0)[0])
    return {name: np.stack(values) for name, values in got.items()}


def reference_name(name: str) -> str:
    """The step graph's output that a served output matches: itself, or the state output an exposed copy copies."""
    return name.removesuffix(EXPOSED_SUFFIX) + "_out" if name.endswith(EXPOSED_SUFFIX) else name


def served_and_alone(folder, step_path, count: int = 24, seed: int = 0):
    """Each stream's outputs from the emulated server beside what it gets alone; None if a request failed."""
    session = start_session(step_path, "cpu").session
    info = GraphInfo.from_props(session.get_modelmeta().custom_metadata_map)
    assert info is not None
    xs = streams(info.io, count, np.random.default_rng(seed))
    try:
        run = emulate_sequence_batcher(folder, xs, seed=seed)
    except ContractError:
        return None  # as the server would fail at run time
    assert max(run.batch_sizes) > 1, run.batch_sizes  # streams were batched together
    if run.errors:
        return None
    return [(served[name], alone(step_path, x)[reference_name(name)])
            for x, served in zip(xs, run.outputs, strict=True) for name in served]


def batches_exactly(folder, step_path, count: int = 24, seed: int = 0) -> bool:
    """Whether the emulated server gives every stream, bit for bit, what it gets alone."""
    pairs = served_and_alone(folder, step_path, count, seed)
    return pairs is not None and all(np.array_equal(got, want) for got, want in pairs)


def batches_within_rounding(folder, step_path, count: int = 24, seed: int = 0) -> bool:
    """Whether every stream gets what it gets alone within float32 rounding (verify's default tolerance)."""
    pairs = served_and_alone(folder, step_path, count, seed)
    tol = tolerance_for("float32")
    return pairs is not None and all(compare(got, want, tol).passed for got, want in pairs)


def copy_folder(repository, name: str, tmp_path):
    folder = tmp_path / "models" / name
    shutil.copytree(repository / name, folder)
    return folder


# --- the command and its static checks ---------------------------------------------------------

@pytest.mark.parametrize("name", [*TRAINED, NN_LSTM])
def test_triton_writes_a_folder_that_passes_every_check(repository, name):
    folder = repository / name
    report = check_model_folder(folder)
    assert report.passed, report.lines()
    assert sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt"]
    assert [p.name for p in (folder / "1").iterdir()] == ["model.onnx"]
    config = read_config(folder)
    assert config.name == name and config.backend == "onnxruntime" and config.max_batch_size == 64
    batching = config.sequence_batching
    assert batching.WhichOneof("strategy_choice") == "oldest"
    assert list(batching.oldest.preferred_batch_size) == [16, 32, 64]
    assert batching.max_sequence_idle_microseconds == 60_000_000 and not batching.control_input
    model = onnx.load(folder / "1" / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 10 and [(o.domain, o.version) for o in model.opset_import] == [("", 20)]
    info = GraphInfo.from_props({p.key: p.value for p in model.metadata_props})
    assert info is not None and info.io.state.batch_axis == 0
    for entry, state_name in zip(batching.state, info.io.state.names, strict=True):
        assert (entry.input_name, entry.output_name) == (state_name, state_name + "_out")
        (initial,) = entry.initial_state
        assert initial.zero_data and list(initial.dims) == list(entry.dims) and min(entry.dims) >= 1
    transposes = [n for n in model.graph.node if n.op_type == "Transpose" and n.name.startswith("serve_")]
    assert len(transposes) == (4 if name in (NN_LSTM, "lstm-forecaster") else 0)


def test_served_graph_runs_in_the_runtime_with_its_batch_first_contract(repository):
    session = StatefulSession.load(repository / NN_LSTM / "1" / "model.onnx", batch=3)
    assert session.contract.state.batch_axis == 0
    assert session.step(np.ones((3, 6), np.float32)).shape == (3, 12)
    assert {n: v.shape for n, v in session.state.items()} == {"h": (3, 2, 12), "c": (3, 2, 12)}


def test_options_reach_the_config(sources, tmp_path):
    code, output, _ = triton(sources[NN_LSTM][1], "-o", tmp_path / "models", "--name", "lstm", "--max-batch-size", "8",
                          "--idle-timeout", "2.5", "--strategy", "direct", "--instances", "3", "--kind", "gpu",
                          "--expose-state")
    assert code == 0, output
    assert "h, c transposed to batch-first" in output and "PASS" in output
    config = read_config(tmp_path / "models" / "lstm")
    assert config.max_batch_size == 8 and config.sequence_batching.max_sequence_idle_microseconds == 2_500_000
    assert config.sequence_batching.WhichOneof("strategy_choice") == "direct"
    assert [(g.count, g.kind) for g in config.instance_group] == [(3, 1)]  # KIND_GPU
    assert [o.name for o in config.output] == ["y", "h_state", "c_state"]  # copies: not h_out, c_out themselves
    assert [(s.input_name, s.output_name) for s in config.sequence_batching.state] == [("h", "h_out"),
                                                                                        ("c", "c_out")]
    assert "h_state, c_state: copies of h_out, c_out" in output
    assert check_model_folder(tmp_path / "models" / "lstm").passed


def test_existing_folder_is_replaced_only_with_force(repository, sources, tmp_path):
    folder = copy_folder(repository, "rnn-charlm", tmp_path)
    assert_one_line_error(triton(sources["rnn-charlm"][1], "-o", folder.parent, "--name", "rnn-charlm"),
                          "already exists", "--force")
    (folder / "stale.txt").write_text("old")
    code, output, _ = triton(sources["rnn-charlm"][1], "-o", folder.parent, "--name", "rnn-charlm", "--force")
    assert code == 0, output
    assert not (folder / "stale.txt").exists() and check_model_folder(folder).passed
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


# --- refusals ----------------------------------------------------------------------------------

def test_refuses_sort_breaking_state_names(sources, tmp_path):
    assert_one_line_error(triton(sources["sort-breaking"][1], "-o", tmp_path / "models"), "a_b", "issue #8586",
                          "no name is the start of another", "state_names", "state dict")
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())


def test_a_list_state_of_eleven_tensors_is_renamed_to_sort_alike(sources, tmp_path):
    """s0 ... s10: s1 sorts before s10 but s1_out after s10_out, so Triton would feed s1_out to s10;
    served as s00 ... s10, the pairing holds and every stream batches exactly."""
    step_path = sources["eleven"][0]
    code, output, _ = triton(step_path, "-o", tmp_path / "models", "--name", "eleven", "--max-batch-size", "8")
    assert code == 0, output
    assert "renamed   s0 -> s00, s1 -> s01" in output
    folder = tmp_path / "models" / "eleven"
    config = read_config(folder)
    assert [s.input_name for s in config.sequence_batching.state] == [f"s{k:02d}" for k in range(11)]
    assert check_model_folder(folder).passed
    session = StatefulSession.load(folder / "1" / "model.onnx")  # the renamed contract, structure included
    assert session.contract.state.names[10] == "s10" and len(session.nested_state()) == 11
    assert batches_exactly(folder, step_path, count=12, seed=2)


def test_refuses_a_sequence_graph_and_a_bundle_without_step_graph(sources, tmp_path):
    step, bundle = sources["gru-charlm"]
    sequence = step.with_name("gru-charlm.onnx")
    assert_one_line_error(triton(sequence, "-o", tmp_path / "models"), "sequence graph", "--form step")
    no_step = rnnexport.package(sequence, tmp_path / "no-step", variants=())
    assert_one_line_error(triton(no_step.folder, "-o", tmp_path / "models"),
                          "holds no step graph", "--step")


def test_refuses_a_graph_that_cannot_be_made_batch_first(sources, tmp_path):
    model = onnx.load(sources[NN_LSTM][0])
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_value = 3  # h no longer (2, B, 12)
    onnx.save(model, tmp_path / "odd.onnx")
    assert_one_line_error(triton(tmp_path / "odd.onnx", "-o", tmp_path / "models"),
                          "cannot be made batch-first")


def test_bad_option_is_one_line(sources, tmp_path):
    with pytest.raises(ConvertError, match="idle timeout"):
        TritonOptions(idle_timeout_s=0).checked()
    assert_one_line_error(triton(sources[NN_LSTM][0], "-o", tmp_path / "models", "--name", "../up"),
                          "not a model name")


# --- bad folders: the checks reject them, and those that run do not batch exactly --------------

def test_torch_state_without_the_serving_form_is_rejected(repository, sources, tmp_path):
    folder = copy_folder(repository, NN_LSTM, tmp_path)
    shutil.copy(sources[NN_LSTM][0], folder / "1" / "model.onnx")  # (layers, B, H) state, as converted
    report = check_model_folder(folder)
    assert {"batch-first", "state", "contract"} <= report.failed, report.lines()
    config = read_config(folder)
    config.max_batch_size = 2  # a batch equal to the layer count runs, and mixes streams
    (folder / "config.pbtxt").write_text(render_config(config))
    assert not batches_within_rounding(folder, sources[NN_LSTM][0])


def test_swapped_state_names_are_rejected(repository, tmp_path):
    folder = copy_folder(repository, "lstm-charlm", tmp_path)
    config = read_config(folder)
    h, c = config.sequence_batching.state
    h.output_name, c.output_name = "c_out", "h_out"
    (folder / "config.pbtxt").write_text(render_config(config))
    report = check_model_folder(folder)
    assert report.failed == {"sort-pairing", "contract"}, report.lines()


def test_sort_breaking_names_are_rejected_and_mix_state(sources, tmp_path):
    step = rnnexport.convert(sources["sort-breaking"][1], tmp_path / "ab.step.onnx", form="step")
    model = onnx.load(step.path)
    served = batch_first(model, step.info)
    config = model_config(served.info.io, "ab", TritonOptions(max_batch_size=8))
    folder = tmp_path / "models" / "ab"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(render_config(config))
    onnx.save(served.model, folder / "1" / "model.onnx")
    report = check_model_folder(folder)
    assert report.failed == {"sort-pairing"}, report.lines()
    assert "a_out would feed a_b" in " ".join(report.lines())
    assert not batches_within_rounding(folder, step.path)


def test_missing_initial_state_is_rejected(repository, sources, tmp_path):
    folder = copy_folder(repository, "gru-charlm", tmp_path)
    config = read_config(folder)
    config.sequence_batching.state[0].ClearField("initial_state")
    (folder / "config.pbtxt").write_text(render_config(config))
    assert check_model_folder(folder).failed == {"initial-state"}
    assert not batches_within_rounding(folder, sources["gru-charlm"][0])


def test_typos_and_mismatched_dims_are_rejected(repository, tmp_path):
    folder = copy_folder(repository, "rnn-charlm", tmp_path)
    text = (folder / "config.pbtxt").read_text()
    (folder / "config.pbtxt").write_text(text.replace("max_batch_size", "max_batch"))
    assert check_model_folder(folder).failed == {"parse"}
    config = read_config(repository / "rnn-charlm")
    config.input[0].dims[0] += 1
    config.sequence_batching.state[0].dims[0] += 1
    (folder / "config.pbtxt").write_text(render_config(config))
    assert {"dims", "state", "initial-state"} == check_model_folder(folder).failed


# --- behaviour: batched as Triton batches, exactly as each stream alone ------------------------

@pytest.mark.parametrize("name", [*TRAINED, NN_LSTM])
def test_served_model_batches_streams_exactly(repository, sources, name):
    assert batches_exactly(repository / name, sources[name][0])


@pytest.mark.parametrize("count", [1, 8, 100])
def test_plain_rnn_served_for_500_one_hot_steps_equals_each_stream_alone(repository, sources, count):
    """On Triton 24.10, rnn-charlm streams served in batches were 2.9e-4 from the same stream alone after 50
    one-hot steps and 8e-3 by step 200 (onnxruntime's RNN operator summed a batch of one in another order).
    Served as Gemm + Tanh, every stream equals its lone run bit for bit, with batches of every size."""
    step_path = sources["rnn-charlm"][0]
    session = StatefulSession.load(step_path, threads=1)
    eye = np.eye(session.contract.x_features[0], dtype=np.float32)
    chars = np.random.default_rng(count).integers(len(eye), size=(count, 500))
    run = emulate_sequence_batcher(repository / "rnn-charlm", [eye[c] for c in chars], seed=count)
    assert not run.errors
    if count > 1:
        assert max(run.batch_sizes) > 1 and min(run.batch_sizes) == 1, run.batch_sizes
    for row, served in zip(chars, run.outputs, strict=True):
        alone = session.new_stream()
        want = np.concatenate([alone.step(eye[c][None]) for c in row])
        assert np.array_equal(served["y"], want), f"max |diff| {np.abs(served['y'] - want).max():.3g}"


def test_state_outputs_batch_exactly_with_a_small_max_batch(sources, tmp_path):
    code, output, _ = triton(sources[NN_LSTM][1], "-o", tmp_path / "models", "--name", "small", "--max-batch-size", "3",
                          "--expose-state")
    assert code == 0, output
    assert batches_exactly(tmp_path / "models" / "small", sources[NN_LSTM][0], count=16, seed=5)


def listing_the_state_outputs(folder, max_batch_size: int) -> None:
    """Rewrite ``folder``'s config as --expose-state once wrote it: h_out and c_out listed as outputs themselves."""
    config = read_config(folder)
    config.max_batch_size = max_batch_size
    config.sequence_batching.oldest.ClearField("preferred_batch_size")
    for entry in config.output[1:]:
        entry.name = reference_name(entry.name)
    (folder / "config.pbtxt").write_text(render_config(config))


def test_state_outputs_listed_as_outputs_fail_as_on_the_server(sources, tmp_path):
    """Triton 24.10 answered such a config with "failed to split the output state tensor 'c_out' in responses:
    expected batch size of at least 2 in model output, got 1" for every request but the first of a call,
    kept those sequences' old state, and so answered later steps wrongly. The emulator does the same."""
    code, output, _ = triton(sources["lstm-charlm"][1], "-o", tmp_path / "models", "--name", "old", "--expose-state")
    assert code == 0, output
    folder = tmp_path / "models" / "old"
    listing_the_state_outputs(folder, 8)
    report = check_model_folder(folder)
    assert report.failed == {"state-output"}, report.lines()
    assert "state output c_out is also listed as an output" in " ".join(report.lines())
    xs = streams(read_info_io(sources["lstm-charlm"][0]), 16, np.random.default_rng(3))
    run = emulate_sequence_batcher(folder, xs, seed=3)
    calls_of_two_or_more = sum(size - 1 for size in run.batch_sizes)
    assert len(run.errors) == calls_of_two_or_more > 0  # all but the first request of each call
    assert run.errors[0].endswith("failed to split the output state tensor 'c_out' in responses: expected batch "
                                  "size of at least 2 in model output, got 1")
    wrong_after_a_failure(run, xs, sources["lstm-charlm"][0])
    listing_the_state_outputs(folder, 1)  # one request per call: nothing to split wrongly
    assert check_model_folder(folder).passed
    one_by_one = emulate_sequence_batcher(folder, xs[:4], seed=3)
    assert not one_by_one.errors and max(one_by_one.batch_sizes) == 1
    for x, served in zip(xs[:4], one_by_one.outputs, strict=True):
        assert all(np.array_equal(served[n], alone(sources["lstm-charlm"][0], x)[reference_name(n)]) for n in served)


def read_info_io(step_path):
    info = GraphInfo.from_props({p.key: p.value for p in onnx.load(step_path).metadata_props})
    assert info is not None
    return info.io


def wrong_after_a_failure(run: EmulatedRun, xs, step_path) -> None:
    """A failed step answers nothing (NaN here) and keeps the old state, so the sequence's later answers are wrong."""
    failed = [(int(line.split()[1]), int(line.split()[3].rstrip(":"))) for line in run.errors]
    index, step = next((i, t) for i, t in failed if t + 1 < len(xs[i]))
    want = alone(step_path, xs[index])["y"]
    got = run.outputs[index]["y"]
    assert np.isnan(got[step]).all()
    assert not np.array_equal(got[step + 1:], want[step + 1:])

