"""Triton's model configuration for a served step graph: options, the ModelConfig, its text form.

The configuration is built as a ``ModelConfig`` message of Triton's own schema
(``tritonclient.grpc.model_config_pb2``) and rendered with protobuf's text format,
so every field name and enum value is valid by construction; :func:`parse_config`
reads ``config.pbtxt`` back the same way (unknown fields and typos are errors).
Each sequence keeps its state inside the server (implicit state): one ``state``
entry per state tensor, batch axis first and left out of ``dims``. rnnexport graphs take
no START control input, so every entry names where a sequence starts: zeros
(``zero_data``), or, when the contract records the module's own initial state, one
stream's values read from ``initial_state/<file>`` in the model folder (``data_file``,
:func:`initial_state_files`).

A state output is never also listed as an ``output``: Triton's ONNX Runtime backend
splits a tensor named in both with the batch size the output's split left behind (one
request's), so every request but the first of a batch fails ("failed to split the
output state tensor") and keeps its old state. Clients read the state from copies
(``h_state``, see :func:`exposed_names`) instead.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from rnnexport.core.contract import OUT_SUFFIX, IOSpec, StateSpec, TensorSpec
from rnnexport.core.errors import ConvertError

__all__ = [
    "EXPOSED_SUFFIX",
    "INITIAL_STATE_FOLDER",
    "INSTALL_HINT",
    "TRITON_DTYPES",
    "InstanceKind",
    "Strategy",
    "TritonOptions",
    "exposed_names",
    "initial_state_file",
    "initial_state_files",
    "model_config",
    "parse_config",
    "preferred_batch_sizes",
    "render_config",
    "schema",
    "sort_pairing_problems",
    "sortable_names",
    "state_dtype",
    "triton_pairing",
]

#: What to install for Triton's configuration schema (and the gRPC client).
INSTALL_HINT = "pip install tritonclient==2.73.0 grpcio==1.85.3"

#: Contract dtypes and Triton's names for them.
TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "float64": "TYPE_FP64",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
}

#: The model folder's sub-folder Triton reads an initial state's ``data_file`` from.
INITIAL_STATE_FOLDER = "initial_state"

#: A state tensor's copy that ``--expose-state`` lists as an output: ``h`` -> ``h_state``.
EXPOSED_SUFFIX = "_state"

#: The most sequences one instance may hold as candidates (Oldest strategy), and the largest batch.
MAX_SEQUENCES = 1 << 20
MAX_BATCH = 1 << 16
#: Idle timeouts from a millisecond to a day.
IDLE_RANGE_S = (1e-3, 86400.0)


class Strategy(str, enum.Enum):
    """How the sequence batcher forms batches (``sequence_batching.oldest`` / ``.direct``)."""

    OLDEST = "oldest"  # batch the oldest pending requests of any candidate sequence
    DIRECT = "direct"  # each sequence owns one batch slot from its start to its end


class InstanceKind(str, enum.Enum):
    """Where Triton runs the model instances (``instance_group.kind``)."""

    CPU = "cpu"
    GPU = "gpu"


@dataclasses.dataclass(frozen=True)
class TritonOptions:
    """What ``rnnexport triton`` puts in ``config.pbtxt``.

    Attributes:
        name: the model's name and folder in the repository; None for the model's own name.
        max_batch_size: the most requests (one step of one sequence each) stacked into one call.
        idle_timeout_s: seconds a sequence may go without a request before Triton
            frees it and its state (``max_sequence_idle_microseconds``; Triton's default is 1 s).
        strategy: ``oldest`` or ``direct``.
        instances: model instances (``instance_group.count``).
        kind: ``cpu`` or ``gpu`` instances.
        expose_state: also output a copy of the new state (``h_state``, ...) that a client can read
            (the served graph needs those copies: :func:`rnnexport.serving.form.expose_state`).
        max_sequences: Oldest strategy: sequences one instance holds at once
            (``max_candidate_sequences``); more wait in a backlog. None: 16 x max_batch_size.
    """

    name: str | None = None
    max_batch_size: int = 64
    idle_timeout_s: float = 60.0
    strategy: Strategy = Strategy.OLDEST
    instances: int = 1
    kind: InstanceKind = InstanceKind.CPU
    expose_state: bool = False
    max_sequences: int | None = None

    def checked(self) -> TritonOptions:
        """These options with enums parsed, or a :class:`ConvertError` naming the one out of range."""
        _bounded("max batch size", self.max_batch_size, 1, MAX_BATCH)
        _bounded("instances", self.instances, 1, 1024)
        if self.max_sequences is not None:
            _bounded("max sequences", self.max_sequences, 1, MAX_SEQUENCES)
        low, high = IDLE_RANGE_S
        if not isinstance(self.idle_timeout_s, (int, float)) or not low <= self.idle_timeout_s <= high:
            raise ConvertError(f"idle timeout must be from {low:g} to {high:g} seconds, got {self.idle_timeout_s!r}")
        try:
            strategy, kind = Strategy(self.strategy), InstanceKind(self.kind)
        except ValueError as e:
            raise ConvertError(f"{e}; strategies: oldest, direct; kinds: cpu, gpu") from e
        return dataclasses.replace(self, strategy=strategy, kind=kind)

    @property
    def candidates(self) -> int:
        """``max_candidate_sequences`` of the Oldest strategy."""
        return self.max_sequences if self.max_sequences is not None else 16 * self.max_batch_size


def _bounded(what: str, value: Any, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConvertError(f"{what} must be an int from {low} to {high}, got {value!r}")


def schema() -> ModuleType:
    """Triton's ``model_config_pb2``, or a one-line :class:`ConvertError` saying what to install."""
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError) as e:  # tritonclient raises RuntimeError when grpcio is missing
        raise ConvertError(f"Triton's model configuration schema comes with tritonclient: {INSTALL_HINT}") from e
    return model_config_pb2


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """A quarter, a half and all of ``max_batch_size`` (16, 32, 64 for 64), without repeats or zeros."""
    return sorted({size for size in (max_batch_size // 4, max_batch_size // 2, max_batch_size) if size >= 1})


def triton_pairing(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Which input state each output state feeds on Triton: by rank in the two sorted name lists.

    Triton's ONNX Runtime backend pairs them so (server issue #8586), not by the
    ``state`` entries; :func:`sort_pairing_problems` says when that differs.
    """
    inputs = sorted(name for name, _ in pairs)
    outputs = sorted(name for _, name in pairs)
    return dict(zip(outputs, inputs, strict=True))


def sort_pairing_problems(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """One line per ``(input, output)`` state pair that Triton's sorted pairing would break."""
    fed = triton_pairing(pairs)
    problems = []
    for name, output in pairs:
        if fed.get(output) != name:
            problems.append(f"state {name} -> {output}: Triton pairs output states with input states by rank "
                            f"in two sorted name lists (server issue #8586), so {output} would feed "
                            f"{fed.get(output)} instead")
    inputs, outputs = [n for n, _ in pairs], [n for _, n in pairs]
    if len(set(inputs)) != len(inputs) or len(set(outputs)) != len(outputs):
        problems.append(f"state names repeat: {', '.join(inputs)} -> {', '.join(outputs)}")
    return problems


def exposed_names(state: StateSpec) -> tuple[str, ...]:
    """The outputs that carry a copy of each new state tensor: ``h_state``, ``c_state``, ...

    Copies, not the state outputs themselves: see the module's docstring.
    """
    return tuple(name + EXPOSED_SUFFIX for name in state.names)


_DIGITS = re.compile(r"[0-9]+")


def sortable_names(names: Sequence[str]) -> tuple[str, ...] | None:
    """``names`` with every run of digits zero-padded to one width, if that makes them sort alike; else None.

    A list state of 11 or more tensors is named ``s0`` ... ``s10``: ``s1`` sorts before
    ``s10`` but ``s10_out`` before ``s1_out``, which breaks Triton's pairing. Padded
    (``s00`` ... ``s10``), no name is the start of another and the two lists sort alike.
    """
    width = max((len(run) for name in names for run in _DIGITS.findall(name)), default=0)
    padded = tuple(_DIGITS.sub(lambda run: run.group().zfill(width), name) for name in names)
    if len(set(padded)) != len(padded) or sort_pairing_problems([(n, n + OUT_SUFFIX) for n in padded]):
        return None
    return padded


def _dims(spec: TensorSpec) -> list[int]:
    """A tensor's dims without the batch axis (the first), a symbolic size as -1."""
    return [d if isinstance(d, int) else -1 for d in spec.shape[1:]]


def _triton_type(pb: ModuleType, dtype: str, what: str) -> int:
    if dtype not in TRITON_DTYPES:
        raise ConvertError(f"{what} is {dtype}, which has no Triton data type here; use one of "
                           f"{', '.join(TRITON_DTYPES)}")
    return int(pb.DataType.Value(TRITON_DTYPES[dtype]))


def _add_tensor(pb: ModuleType, field: Any, spec: TensorSpec) -> None:
    """A config input or output; a batch-only tensor ``(B,)`` is ``dims [1]`` reshaped to ``[]``."""
    dims = _dims(spec)
    entry = field.add(name=spec.name, data_type=_triton_type(pb, spec.dtype, spec.name),
                      dims=dims or [1])
    if not dims:
        entry.reshape.SetInParent()


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_NOT_PLAIN = re.compile(r"[^A-Za-z0-9_-]+")


def initial_state_file(state: StateSpec, index: int) -> str:
    """The file under :data:`INITIAL_STATE_FOLDER` holding state tensor ``index``'s initial values.

    ``h`` -> ``h.bin``. A state name may hold any character, so one with others than
    letters, digits, ``_`` and ``-`` is written ``<name, those replaced by _>.<index>.bin``:
    a plain file name, never a path, and distinct from every other (the one-dot names
    cannot meet the two-dot ones, and the index tells the two-dot ones apart).
    """
    name = state.names[index]
    if _PLAIN_NAME.fullmatch(name):
        return f"{name}.bin"
    return f"{_NOT_PLAIN.sub('_', name)[:100]}.{index}.bin"


def state_dtype(pb: ModuleType, data_type: int) -> np.dtype[Any] | None:
    """The little-endian numpy dtype of Triton data type ``data_type`` as rnnexport writes it; None for others."""
    try:
        name = pb.DataType.Name(data_type)
    except ValueError:
        return None
    dtypes = {triton: numpy for numpy, triton in TRITON_DTYPES.items()}
    return np.dtype(dtypes[name]).newbyteorder("<") if name in dtypes else None


def initial_state_files(state: StateSpec) -> dict[str, bytes]:
    """The files of :data:`INITIAL_STATE_FOLDER`: one stream's initial values per state tensor, raw row-major
    little-endian bytes of the state's dtype, as Triton reads a ``data_file``; empty when the state starts
    from zeros (``state.initial`` is None)."""
    if state.initial is None:
        return {}
    dtype = np.dtype(state.dtype).newbyteorder("<")
    return {initial_state_file(state, index): np.ascontiguousarray(values, dtype).tobytes()
            for index, values in enumerate(state.initial)}


def _add_states(pb: ModuleType, batching: Any, io: IOSpec) -> None:
    """One ``state`` entry per state tensor, starting from zeros or from the contract's initial values."""
    state = io.state
    for index, (name, output) in enumerate(zip(state.names, state.output_names, strict=True)):
        dims = list(state.dims[index])
        dtype = _triton_type(pb, state.dtype, f"state {name}")
        entry = batching.state.add(input_name=name, output_name=output, data_type=dtype, dims=dims)
        if state.initial is None:
            entry.initial_state.add(data_type=dtype, dims=dims, zero_data=True, name=f"{name}_zeros")
        else:
            entry.initial_state.add(data_type=dtype, dims=dims, data_file=initial_state_file(state, index),
                                    name=f"{name}_initial")


def _add_strategy(batching: Any, options: TritonOptions) -> None:
    if options.strategy is Strategy.OLDEST:
        batching.oldest.max_candidate_sequences = options.candidates
        batching.oldest.preferred_batch_size.extend(preferred_batch_sizes(options.max_batch_size))
    else:
        batching.direct.SetInParent()


def model_config(io: IOSpec, name: str, options: TritonOptions) -> Any:
    """The ``ModelConfig`` message serving a batch-first step graph of contract ``io``.

    With ``options.expose_state`` the outputs are ``y`` and the state copies
    (:func:`exposed_names`), which the served graph must have. When the contract
    records an initial state, each state entry names its ``data_file``: the model
    folder must hold :func:`initial_state_files` under :data:`INITIAL_STATE_FOLDER`.

    Raises:
        ConvertError: a state that is not batch-first, or a dtype Triton cannot take.
    """
    if io.state.batch_axis != 0:
        raise ConvertError(f"the state's batch axis is {io.state.batch_axis}; Triton needs it first: "
                           "serve the batch-first form (rnnexport.serving.batch_first)")
    pb = schema()
    options = options.checked()
    config = pb.ModelConfig(name=name, backend="onnxruntime", max_batch_size=options.max_batch_size)
    _add_tensor(pb, config.input, io.inputs("step")[0])
    _add_tensor(pb, config.output, io.outputs("step")[0])
    if options.expose_state:
        for spec, name in zip(io.state.outputs(), exposed_names(io.state), strict=True):
            _add_tensor(pb, config.output, dataclasses.replace(spec, name=name))
    batching = config.sequence_batching
    batching.max_sequence_idle_microseconds = round(options.idle_timeout_s * 1e6)
    _add_strategy(batching, options)
    _add_states(pb, batching, io)
    kind = pb.ModelInstanceGroup.KIND_CPU if options.kind is InstanceKind.CPU else pb.ModelInstanceGroup.KIND_GPU
    config.instance_group.add(count=options.instances, kind=kind)
    return config


def render_config(config: Any, header: str = "") -> str:
    """``config.pbtxt``: the message in protobuf text format, after ``# header`` comment lines."""
    from google.protobuf import text_format

    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return comments + text_format.MessageToString(config, use_short_repeated_primitives=True)


def parse_config(text: str) -> Any:
    """Parse ``config.pbtxt`` into Triton's ``ModelConfig``.

    Raises:
        ConvertError: text that is not a valid ModelConfig (unknown field, typo, bad value).
    """
    from google.protobuf import text_format

    pb = schema()
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as e:
        raise ConvertError(f"config.pbtxt is not a valid Triton model configuration: {e}") from e
