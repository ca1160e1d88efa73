"""Static checks of a Triton model folder: does ``config.pbtxt`` fit the graph it serves?

What a Triton server with the ONNX Runtime backend and the sequence batcher needs,
checked offline (no server): the configuration parses into Triton's own
``ModelConfig``; every name, dtype and dim agrees with the graph; every tensor has
the batch axis first; the graph's inputs are the config's inputs, control inputs
and state entries; no state output is also listed as an output (the backend then
fails all but one request of each batch); the state pairs survive Triton's
sorted-name pairing (server issue #8586); each state starts from a fixed-size
initial state: zeros, or a ``data_file`` that is a plain file name in the model
folder's ``initial_state/`` holding exactly the state's bytes (its size read with stat,
never the file). Every problem is reported, not just the first.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import onnx

from rnnexport.core.contract import Dim
from rnnexport.core.errors import ContractError, RnnexportError, describe
from rnnexport.core.onnxfile import load_model, read_info, value_dtype
from rnnexport.serving.config import (
    EXPOSED_SUFFIX,
    INITIAL_STATE_FOLDER,
    TRITON_DTYPES,
    parse_config,
    schema,
    sort_pairing_problems,
    state_dtype,
)
from rnnexport.serving.form import declared_shape

__all__ = ["CHECKS", "CONFIG", "CheckReport", "Problem", "check_config", "check_model_folder", "initial_state_path",
           "model_file", "read_config"]

CONFIG = "config.pbtxt"
#: Every check, in the order they run.
CHECKS = ("parse", "settings", "names", "input-count", "batch-first", "dims", "state", "state-output",
          "sort-pairing", "initial-state", "contract")
_MAX_CONFIG_BYTES = 1 << 20
_VERSION = re.compile(r"^[0-9]{1,18}$")
#: A ``data_file`` Triton joins to ``initial_state/``: one plain file name, no folder, no ``..``.
_DATA_FILE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}$")

Shape = tuple[Dim, ...]


@dataclasses.dataclass(frozen=True)
class Problem:
    """One failed check: which (one of :data:`CHECKS`) and what is wrong, in one line."""

    check: str
    message: str


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """What :func:`check_model_folder` found."""

    folder: Path
    problems: tuple[Problem, ...]

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def failed(self) -> set[str]:
        """The names of the checks that failed."""
        return {p.check for p in self.problems}

    def lines(self) -> list[str]:
        """``PASS ...`` or ``FAIL ...`` and one line per problem."""
        if self.passed:
            return [f"PASS {self.folder}: {', '.join(CHECKS)}"]
        return [f"FAIL {self.folder}: {len(self.problems)} problem(s)",
                *(f"  {p.check}: {p.message}" for p in self.problems)]


@dataclasses.dataclass(frozen=True)
class _Tensor:
    dtype: str | None
    shape: Shape | None


def _tensors(values: Any) -> dict[str, _Tensor]:
    found = {}
    for value in values:
        found[value.name] = _Tensor(value_dtype(value), declared_shape(value))
    return found


def _model_dims(shape: Shape) -> list[int]:
    """A graph tensor's dims as Triton writes them: batch axis left out, symbolic sizes -1."""
    return [d if isinstance(d, int) else -1 for d in shape[1:]]


def _type_name(pb: Any, data_type: int) -> str:
    try:
        return str(pb.DataType.Name(data_type))
    except ValueError:
        return f"data type {data_type}"


# --- the checks --------------------------------------------------------------------------------

def _settings(config: Any) -> list[Problem]:
    problems = []
    if config.backend != "onnxruntime" and config.platform != "onnxruntime_onnx":
        problems.append(Problem("settings", f"backend is {config.backend or config.platform or 'unset'!r}; "
                                            "an ONNX graph needs backend: \"onnxruntime\""))
    if config.max_batch_size < 1:
        problems.append(Problem("settings", "max_batch_size is 0: the sequence batcher cannot batch sequences; "
                                            "set it to the most requests one call may stack"))
    if config.WhichOneof("scheduling_choice") != "sequence_batching":
        problems.append(Problem("settings", "no sequence_batching: requests of one stream would not reach one "
                                            "state in order"))
    oldest = config.sequence_batching.oldest
    too_big = [s for s in oldest.preferred_batch_size if s > config.max_batch_size]
    if too_big:
        problems.append(Problem("settings", f"preferred_batch_size {too_big[0]} is over max_batch_size "
                                            f"{config.max_batch_size}"))
    return problems


def _names(config: Any, inputs: dict[str, _Tensor], outputs: dict[str, _Tensor]) -> list[Problem]:
    batching = config.sequence_batching
    wanted = [("input", e.name, inputs) for e in config.input]
    wanted += [("output", e.name, outputs) for e in config.output]
    wanted += [("control input", e.name, inputs) for e in batching.control_input]
    wanted += [("state input", e.input_name, inputs) for e in batching.state]
    wanted += [("state output", e.output_name, outputs) for e in batching.state]
    return [Problem("names", f"{what} {name!r} is not a graph {what.split()[-1]} (the graph has "
                             f"{', '.join(have)})")
            for what, name, have in wanted if name not in have]


def _input_count(config: Any, inputs: dict[str, _Tensor]) -> list[Problem]:
    batching = config.sequence_batching
    listed = [e.name for e in config.input] + [e.name for e in batching.control_input] + \
        [e.input_name for e in batching.state]
    if sorted(listed) == sorted(inputs):
        return []
    return [Problem("input-count", f"graph inputs {', '.join(inputs)} are not the config's inputs + control "
                                   f"inputs + state entries ({', '.join(listed)}): Triton refuses the model")]


def _batch_first(inputs: dict[str, _Tensor], outputs: dict[str, _Tensor]) -> list[Problem]:
    problems = []
    for name, tensor in {**inputs, **outputs}.items():
        shape = tensor.shape
        if shape is None or not shape:
            problems.append(Problem("batch-first", f"{name} declares no batch axis (shape {shape}); Triton "
                                                   "stacks sequences on axis 0 of every tensor"))
        elif isinstance(shape[0], int) or shape[0] in shape[1:]:
            problems.append(Problem("batch-first", f"{name} is declared {shape}: its batch axis is not first; "
                                                   "Triton stacks sequences on axis 0, so it would fail or mix "
                                                   "streams: serve the batch-first form (rnnexport triton)"))
    return problems


def _agree(pb: Any, check: str, what: str, entry: Any, dims: list[int], tensor: _Tensor) -> list[Problem]:
    """A config entry's data_type and dims against the graph tensor it names."""
    problems = []
    want_type = TRITON_DTYPES.get(tensor.dtype or "")
    if want_type is None or pb.DataType.Value(want_type) != entry.data_type:
        problems.append(Problem(check, f"{what} is {_type_name(pb, entry.data_type)} in the config, "
                                       f"{tensor.dtype} in the graph"))
    if tensor.shape is not None and tensor.shape and dims != _model_dims(tensor.shape):
        problems.append(Problem(check, f"{what} has dims {dims} in the config; the graph's "
                                       f"{tensor.shape} means {_model_dims(tensor.shape)}"))
    return problems


def _io_dims(pb: Any, config: Any, inputs: dict[str, _Tensor], outputs: dict[str, _Tensor]) -> list[Problem]:
    problems = []
    for kind, entries, tensors in (("input", config.input, inputs), ("output", config.output, outputs)):
        for entry in entries:
            if entry.name in tensors:
                dims = list(entry.reshape.shape) if entry.HasField("reshape") else list(entry.dims)
                problems += _agree(pb, "dims", f"{kind} {entry.name}", entry, dims, tensors[entry.name])
    return problems


def _states(pb: Any, config: Any, inputs: dict[str, _Tensor], outputs: dict[str, _Tensor]) -> list[Problem]:
    problems = []
    for entry in config.sequence_batching.state:
        dims = list(entry.dims)
        if not dims or min(dims) < 1:
            problems.append(Problem("state", f"state {entry.input_name} has dims {dims}; implicit state needs "
                                             "fixed sizes"))
        for what, name, tensors in (("input", entry.input_name, inputs), ("output", entry.output_name, outputs)):
            if name in tensors:
                problems += _agree(pb, "state", f"state {what} {name}", entry, dims, tensors[name])
    return problems


def _state_outputs(config: Any) -> list[Problem]:
    """A state output also listed in ``output``: the ONNX Runtime backend splits it wrongly once a call has 2+ requests.

    The backend reads each output tensor once, with one shape vector: returning it to
    the requests overwrites the batch size there with each request's own (1), and the
    state split that follows then sees a batch of 1 and fails every other request of
    the call ("failed to split the output state tensor"), which also keeps its old state.
    """
    if config.max_batch_size < 2:
        return []  # one request per call: the split never runs out
    outputs = {e.name for e in config.output}
    return [Problem("state-output", f"state output {e.output_name} is also listed as an output: Triton's ONNX Runtime "
                                    "backend then fails every request but the first of a batch (\"failed to split the "
                                    "output state tensor\") and keeps their old state; list a copy instead "
                                    f"(rnnexport triton --expose-state serves {e.input_name}{EXPOSED_SUFFIX})")
            for e in config.sequence_batching.state if e.output_name in outputs]


def _sort_pairing(config: Any) -> list[Problem]:
    pairs = [(e.input_name, e.output_name) for e in config.sequence_batching.state]
    return [Problem("sort-pairing", line) for line in sort_pairing_problems(pairs)]


def _has_start(pb: Any, config: Any) -> bool:
    start = pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START
    return any(c.kind == start for e in config.sequence_batching.control_input for c in e.control)


def _initial_state(pb: Any, config: Any, folder: Path | None) -> list[Problem]:
    if _has_start(pb, config):
        return []  # the model itself can reset the state on START
    problems = []
    for entry in config.sequence_batching.state:
        name = entry.input_name
        if len(entry.initial_state) != 1:
            problems.append(Problem("initial-state", f"state {name} has {len(entry.initial_state)} initial_state "
                                                     "entries; without a START control input it needs exactly one "
                                                     "(zero_data: true or a data_file), else step 0 of a sequence "
                                                     "reads garbage"))
            continue
        initial = entry.initial_state[0]
        fixed = bool(initial.dims) and min(initial.dims) >= 1
        if list(initial.dims) != list(entry.dims) or not fixed:
            problems.append(Problem("initial-state", f"initial state of {name} has dims {list(initial.dims)}; "
                                                     f"it needs the state's fixed dims {list(entry.dims)}"))
        if initial.data_type != entry.data_type:
            problems.append(Problem("initial-state", f"initial state of {name} is "
                                                     f"{_type_name(pb, initial.data_type)}, the state is "
                                                     f"{_type_name(pb, entry.data_type)}"))
        kind = initial.WhichOneof("state_data")
        if not initial.name or kind is None or (kind == "zero_data" and not initial.zero_data):
            problems.append(Problem("initial-state", f"initial state of {name} needs a name and zero_data: true "
                                                     "(or a data_file)"))
        elif kind == "data_file":
            problems += _data_file(pb, name, initial, folder if fixed else None)
    return problems


def _data_file(pb: Any, name: str, initial: Any, folder: Path | None) -> list[Problem]:
    """A ``data_file`` is a plain name; in ``folder`` (when given), a regular file of exactly the state's bytes."""
    file = initial.data_file
    if not _plain_file(file):
        return [Problem("initial-state", f"initial state of {name} names data_file {file!r:.80}: it must be a plain "
                                         f"file name in the model folder's {INITIAL_STATE_FOLDER}/ (letters, digits, "
                                         "'_', '-', '.'; no folder, no '..')")]
    dtype = state_dtype(pb, initial.data_type)
    if folder is None or dtype is None:
        return []  # no folder to look in, or a data type reported above
    want = math.prod(initial.dims) * dtype.itemsize
    try:
        info = (folder / INITIAL_STATE_FOLDER / file).lstat()
    except OSError as e:
        return [Problem("initial-state", f"initial state of {name}: {INITIAL_STATE_FOLDER}/{file} cannot be read "
                                         f"({e.strerror or describe(e)}); write its {want} bytes there")]
    if not stat.S_ISREG(info.st_mode):
        return [Problem("initial-state", f"initial state of {name}: {INITIAL_STATE_FOLDER}/{file} is not a plain "
                                         "file (a link or folder); write the state's bytes there")]
    if info.st_size != want:
        return [Problem("initial-state", f"initial state of {name}: {INITIAL_STATE_FOLDER}/{file} holds "
                                         f"{info.st_size} bytes; dims {list(initial.dims)} of "
                                         f"{_type_name(pb, initial.data_type)} need {want}")]
    return []


def _contract(config: Any, model: onnx.ModelProto) -> list[Problem]:
    """The rnnexport contract in the graph's metadata, when there is one: state pairs and batch axis."""
    try:
        info = read_info(model)
    except ContractError as e:
        return [Problem("contract", f"the graph's rnnexport metadata is malformed: {e}")]
    if info is None:
        return []
    state = info.io.state
    problems = []
    pairs = {(e.input_name, e.output_name) for e in config.sequence_batching.state}
    want = set(zip(state.names, state.output_names, strict=True))
    if pairs != want:
        problems.append(Problem("contract", f"state pairs {sorted(pairs)} are not the contract's {sorted(want)}"))
    if state.batch_axis != 0:
        problems.append(Problem("contract", f"the graph's contract puts the state's batch axis at "
                                            f"{state.batch_axis}; Triton needs it first"))
    return problems


def check_config(config: Any, model: onnx.ModelProto, folder: str | os.PathLike[str] | None = None) -> list[Problem]:
    """Every problem of serving ``model`` on Triton with ``config`` (a ``ModelConfig``); empty when it fits.

    Args:
        config: the parsed ``ModelConfig``.
        model: the graph it serves.
        folder: the model folder, to check the initial-state ``data_file`` files in; None checks only
            their names.
    """
    pb = schema()
    inputs, outputs = _tensors(model.graph.input), _tensors(model.graph.output)
    initializers = {t.name for t in model.graph.initializer}
    inputs = {n: t for n, t in inputs.items() if n not in initializers}
    return [
        *_settings(config),
        *_names(config, inputs, outputs),
        *_input_count(config, inputs),
        *_batch_first(inputs, outputs),
        *_io_dims(pb, config, inputs, outputs),
        *_states(pb, config, inputs, outputs),
        *_state_outputs(config),
        *_sort_pairing(config),
        *_initial_state(pb, config, None if folder is None else Path(folder)),
        *_contract(config, model),
    ]


def initial_state_path(folder: Path, data_file: str) -> Path | None:
    """Where Triton reads an initial state's ``data_file`` in model folder ``folder``: ``initial_state/<file>``.

    None when ``data_file`` is not a plain file name (letters, digits, ``_``, ``-``, ``.``;
    no folder, no ``..``): Triton would join it to the folder as it is, reaching elsewhere.
    """
    return folder / INITIAL_STATE_FOLDER / data_file if _plain_file(data_file) else None


def _plain_file(name: str) -> bool:
    return bool(_DATA_FILE.fullmatch(name)) and ".." not in name


def model_file(folder: Path, config: Any) -> Path | None:
    """The graph Triton would load from ``folder``: the highest numeric version's model file."""
    versions = sorted((int(p.name), p) for p in folder.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name))
    if not versions:
        return None
    return versions[-1][1] / (config.default_model_filename or "model.onnx")


def read_config(folder: str | os.PathLike[str]) -> Any:
    """Parse ``folder/config.pbtxt`` (at most 1 MiB) into Triton's ``ModelConfig``.

    Raises:
        RnnexportError: the file is missing, too large, or not a valid configuration.
    """
    path = Path(folder) / CONFIG
    try:
        size = path.stat().st_size
        if size > _MAX_CONFIG_BYTES:
            raise RnnexportError(f"{path} is {size} bytes, over the limit of {_MAX_CONFIG_BYTES}")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise RnnexportError(f"cannot read {path}: {describe(e)}") from e
    return parse_config(text)


def check_model_folder(folder: str | os.PathLike[str]) -> CheckReport:
    """Check a Triton model folder (``REPOSITORY/NAME``): ``config.pbtxt`` against its newest graph.

    Returns:
        A :class:`CheckReport` listing every problem; ``passed`` when there is none.
    """
    folder = Path(folder)
    try:
        config = read_config(folder)
    except RnnexportError as e:
        return CheckReport(folder, (Problem("parse", str(e)),))
    problems = []
    if config.name and config.name != folder.name:
        problems.append(Problem("settings", f"config name {config.name!r} is not the folder's {folder.name!r}"))
    path = model_file(folder, config)
    if path is None or not path.is_file():
        missing = path or folder / "1" / "model.onnx"
        return CheckReport(folder, (*problems, Problem("names", f"{missing} does not exist")))
    try:
        model = load_model(path, str(path))
    except RnnexportError as e:
        return CheckReport(folder, (*problems, Problem("names", str(e))))
    return CheckReport(folder, (*problems, *check_config(config, model, folder)))
