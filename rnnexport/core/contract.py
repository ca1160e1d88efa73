"""The I/O contract: the one definition of what every rnnexport graph takes and gives.

:class:`StateSpec` and :class:`IOSpec` generate every tensor name, shape and
dynamic axis that the exporter writes, the verifier feeds, the manifest records
and the runtime reads. :class:`GraphInfo` is what a graph records about itself in
its ``metadata_props`` (keys under :data:`META_PREFIX`).

Torch-free: standard library and numpy only. JSON read from a graph or a manifest
is data: every field is type-checked and every size bounded before use, and a
malformed contract raises :class:`~rnnexport.core.errors.ContractError` with one line.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np

from rnnexport.core.data import load_json
from rnnexport.core.errors import ContractError

__all__ = [
    "Declared",
    "BATCH",
    "MAX_BOUND",
    "MAX_DIM",
    "MAX_NAME",
    "MAX_STATE_DEPTH",
    "MAX_STATE_TENSORS",
    "META_PREFIX",
    "TIME",
    "X_NAME",
    "Y_NAME",
    "Form",
    "GraphInfo",
    "IOSpec",
    "LENGTHS_NAME",
    "Layout",
    "LengthsSpec",
    "Lowering",
    "NanPolicy",
    "StateDomain",
    "StateSpec",
    "TensorSpec",
    "check_array",
    "check_lengths",
    "show_shape",
]

#: Symbolic dimension names used in every exported graph: streams and time steps.
BATCH = "B"
TIME = "T"

X_NAME = "x"
Y_NAME = "y"
LENGTHS_NAME = "lengths"
OUT_SUFFIX = "_out"

#: Prefix of every ``metadata_props`` key rnnexport writes into a graph.
META_PREFIX = "rnnexport."

#: The largest size a contract may give one axis; larger is refused as malformed.
MAX_DIM = 1 << 24
#: The most elements one stream's state tensor may hold.
MAX_STATE_ELEMENTS = 1 << 28
#: The longest tensor name (or state structure key) a contract may hold.
MAX_NAME = 128
#: The most state tensors a contract may name, and how deep their structure may nest.
MAX_STATE_TENSORS, MAX_STATE_DEPTH = 64, 8

#: The largest magnitude a state domain's bound may have.
MAX_BOUND = 1e30
#: The most values a recorded initial state may hold, every tensor's one stream together (it is kept
#: in the contract's JSON: a graph's metadata and a bundle's manifest).
MAX_INITIAL_VALUES = 1 << 14

_DTYPES = ("float32", "float16", "float64", "int64", "int32")
_ENCODINGS = ("real", "one-hot", "token-ids")
#: The most entries a vocabulary may hold, and the longest one entry may be.
MAX_VOCABULARY, MAX_TOKEN = 1 << 20, 64


class Form(str, enum.Enum):
    """What one call of the graph computes."""

    STEP = "step"
    SEQUENCE = "sequence"


class Lowering(str, enum.Enum):
    """How the recurrence is expressed in ONNX."""

    AUTO = "auto"
    NATIVE = "native"
    SCAN = "scan"
    UNROLLED = "unrolled"


class NanPolicy(str, enum.Enum):
    """What a graph does with NaN in its input or state (``rnnexport convert --nan``).

    ``carry``: the graph itself gives NaN exactly where PyTorch does (per-layer guards:
    some engines' fast activations would turn NaN into finite values). ``refuse``: the
    graph has no guards; the runtime refuses non-finite input to it at the boundary.
    """

    CARRY = "carry"
    REFUSE = "refuse"


class Layout(str, enum.Enum):
    """Where the time axis of ``x`` and ``y`` sits."""

    TIME_MAJOR = "time_major"  # (T, B, ...)
    BATCH_MAJOR = "batch_major"  # (B, T, ...), torch's batch_first


Dim = int | str

#: How a model's state nests, leaves named: a state name, a tuple of structures, or a dict
#: of them by str key. JSON has it as nested lists and objects of names.
Structure = str | tuple[Any, ...] | dict[str, Any]


# --- validation of untrusted JSON -------------------------------------------------------------

def _field(data: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in data:
        raise ContractError(f"malformed {what}: missing {key!r}")
    return data[key]


def _dim(value: Any, what: str, symbols: tuple[str, ...] = ()) -> Dim:
    if isinstance(value, str) and value in symbols:
        return value
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DIM:
        allowed = f" or one of {', '.join(symbols)}" if symbols else ""
        raise ContractError(f"malformed {what}: a size must be an int from 1 to {MAX_DIM}{allowed}, got {value!r}")
    return value


def _dims(values: Any, what: str, symbols: tuple[str, ...] = ()) -> tuple[Dim, ...]:
    if not isinstance(values, list) or len(values) > 8:
        raise ContractError(f"malformed {what}: expected a list of at most 8 sizes, got {values!r:.80}")
    return tuple(_dim(v, what, symbols) for v in values)


def _ints(values: Any, what: str) -> tuple[int, ...]:
    return tuple(int(d) for d in _dims(values, what))


def _choice(value: Any, allowed: Sequence[str], what: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ContractError(f"malformed {what}: expected one of {', '.join(allowed)}, got {value!r:.80}")
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise ContractError(f"malformed {what}: a tensor name must be a non-empty string, got {value!r:.80}")
    return value


def _object(data: Any, what: str) -> Mapping[str, Any]:
    if isinstance(data, (str, bytes)):
        data = load_json(data, what)
    if not isinstance(data, Mapping):
        raise ContractError(f"malformed {what}: expected a JSON object")
    return data


# --- the contract -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, shape (ints or symbolic names) and dtype."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    def concrete(self, batch: int, time: int | None = None) -> tuple[int, ...]:
        """The shape with ``B`` and ``T`` replaced by numbers.

        Raises:
            ContractError: the shape has ``T`` and no ``time`` was given, or a symbol other than ``B``/``T``.
        """
        sizes = {BATCH: batch, **({TIME: time} if time is not None else {})}
        dims = []
        for d in self.shape:
            if isinstance(d, str) and d not in sizes:
                raise ContractError(f"{self.name} has the size {d!r} in its shape; give it a number")
            dims.append(sizes[d] if isinstance(d, str) else d)
        return tuple(dims)

    def describe(self) -> str:
        """``x float32[T, B, 28]``."""
        return f"{self.name} {self.dtype}[{', '.join(str(d) for d in self.shape)}]"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: Any) -> TensorSpec:
        data = _object(data, "tensor spec")
        return cls(_name(_field(data, "name", "tensor spec"), "tensor spec"),
                   _dims(_field(data, "shape", "tensor spec"), "tensor spec shape", (BATCH, TIME)),
                   _choice(_field(data, "dtype", "tensor spec"), _DTYPES, "tensor spec dtype"))


@dataclasses.dataclass(frozen=True)
class StateDomain:
    """Where a state tensor's values lie, as its module declares (``state_domain()``): ``low <= v <= high``.

    Either bound may be None (open). Random initial states are drawn inside it
    (:func:`rnnexport.core.inputs.random_state`): a denominator that must stay positive, a
    normaliser of at least 1, a probability in [0, 1].
    """

    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        for bound in (self.low, self.high):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))
                                      or not abs(bound) <= MAX_BOUND):
                raise ContractError(f"a state domain's bounds are numbers of at most {MAX_BOUND:g} in magnitude "
                                    f"or None, got {bound!r:.40}")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ContractError(f"a state domain needs low < high, got [{self.low}, {self.high}]")
        for field in ("low", "high"):
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, float(value))

    def describe(self) -> str:
        """``[0, inf)``, ``[1, 3]``."""
        low = "(-inf" if self.low is None else f"[{self.low:g}"
        high = "inf)" if self.high is None else f"{self.high:g}]"
        return f"{low}, {high}"

    def to_json(self) -> list[float | None]:
        return [self.low, self.high]

    @classmethod
    def from_json(cls, data: Any) -> StateDomain:
        if not isinstance(data, list) or len(data) != 2:
            raise ContractError(f"malformed state contract: a domain is [low, high], got {data!r:.80}")
        return cls(*data)


def _json_domains(value: Any, count: int) -> tuple[StateDomain | None, ...] | None:
    """``domains`` as JSON gives it (a list of [low, high] or null, one per state name); None when absent."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != count:
        raise ContractError(f"malformed state contract: domains must be a list of one [low, high] or null per "
                            f"state name ({count}), got {value!r:.80}")
    return tuple(None if item is None else StateDomain.from_json(item) for item in value)


@dataclasses.dataclass(frozen=True)
class StateSpec:
    """The recurrent state: its names and per-tensor shapes around the batch axis.

    Seed cells hold ``(B, H)`` tensors (``batch_axis=0``, ``dims=((H,), ...)``);
    torch.nn modules hold ``(layers * directions, B, H)`` (``batch_axis=1``).

    ``structure`` is how a module with nested state holds it (e.g. ``(("s0_0", "s0_1"), "s1")``
    for ``((h1, c1), h2)``, or ``{"enc": ..., "dec": ...}``): every name exactly once, at most
    :data:`MAX_STATE_DEPTH` containers deep. None means flat: one tensor, or a tuple in name
    order (:attr:`tree`). :meth:`nest` and :meth:`flatten` convert between the two views.
    ``nested_axes`` is where each tensor has its batch axis in the nested view, when the
    module's tensors do not share one (the graph has them all at ``batch_axis``); None: at
    ``batch_axis``. ``domains`` is where each tensor's values lie (:class:`StateDomain`, None:
    anywhere), as the module declares; None: none declared. It tells verify and packaging
    where to draw a random initial state, not what the graph computes, so it takes no part in
    comparing contracts. ``initial`` is what a new stream's state starts from, one stream's values
    per tensor (shaped as :attr:`dims`), as the module's initial-state method gives them; None:
    zeros. At most :data:`MAX_INITIAL_VALUES` values together; all zeros is normalised to None.
    """

    names: tuple[str, ...]
    dims: tuple[tuple[int, ...], ...]
    batch_axis: int
    dtype: str = "float32"
    structure: Structure | None = dataclasses.field(default=None, hash=False)
    nested_axes: tuple[int, ...] | None = None
    domains: tuple[StateDomain | None, ...] | None = dataclasses.field(default=None, compare=False)
    initial: tuple[np.ndarray, ...] | None = dataclasses.field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.initial is not None:
            object.__setattr__(self, "initial", self._checked_initial(self.initial))
        if self.domains is not None:
            domains = tuple(self.domains)
            if len(domains) != len(self.names) or not all(d is None or isinstance(d, StateDomain) for d in domains):
                raise ContractError(f"malformed state contract: domains must be one StateDomain or None per state "
                                    f"tensor ({len(self.names)}), got {self.domains!r:.80}")
            object.__setattr__(self, "domains", None if all(d is None for d in domains) else domains)
        if self.structure is not None:  # normalised: lists become tuples
            object.__setattr__(self, "structure", _parse_structure(self.structure, self.names))
        if self.nested_axes is not None:
            axes = self.nested_axes
            if not isinstance(axes, (list, tuple)) or len(axes) != len(self.names) or not all(
                    isinstance(a, int) and not isinstance(a, bool) and 0 <= a <= len(d)
                    for a, d in zip(axes, self.dims, strict=True)):
                raise ContractError(f"malformed state contract: nested_axes must be one axis per state tensor "
                                    f"within its rank, got {axes!r:.80}")
            object.__setattr__(self, "nested_axes", tuple(axes))

    def _checked_initial(self, values: Sequence[Any]) -> tuple[np.ndarray, ...] | None:
        """``values`` as read-only arrays of one stream's state each; None when they are all zeros.

        Raises:
            ContractError: not one array per tensor of its per-stream shape, over
                :data:`MAX_INITIAL_VALUES` values together, or holding NaN or Inf.
        """
        if not isinstance(values, (list, tuple)) or len(values) != len(self.names):
            raise ContractError(f"malformed state contract: initial must be one array per state tensor "
                                f"({len(self.names)}), got {_describe_value(values)}")
        total = sum(int(np.prod(d, dtype=np.int64)) for d in self.dims)
        if total > MAX_INITIAL_VALUES:
            raise ContractError(f"an initial state of {total} values per stream is over the {MAX_INITIAL_VALUES} "
                                "rnnexport records; let the initial-state method return zeros")
        arrays = []
        for name, dims, value in zip(self.names, self.dims, values, strict=True):
            array = np.asarray(value)
            if array.shape != dims or not np.issubdtype(array.dtype, np.number):
                raise ContractError(f"malformed state contract: initial {name} must be numbers of shape {dims} "
                                    f"(one stream), got {_describe_value(value)}")
            array = array.astype(self.dtype)
            if not np.isfinite(array).all():
                raise ContractError(f"malformed state contract: initial {name} holds NaN or Inf")
            array.setflags(write=False)
            arrays.append(array)
        return None if not any(a.any() for a in arrays) else tuple(arrays)

    @property
    def tree(self) -> Structure:
        """The structure, or for a flat state its one name or the tuple of its names."""
        if self.structure is not None:
            return self.structure
        return self.names[0] if len(self.names) == 1 else self.names

    def nest(self, values: Sequence[Any]) -> Any:
        """``values`` (one per name, in name order) arranged as :attr:`tree`: tuples and dicts.

        Raises:
            ContractError: not one value per state name.
        """
        self._one_each(values)
        if self.nested_axes is not None:
            values = [np.ascontiguousarray(np.moveaxis(v, self.batch_axis, a)) for v, a in zip(values, self.nested_axes, strict=True)]
        by_name = dict(zip(self.names, values, strict=True))

        def build(node: Structure) -> Any:
            if isinstance(node, str):
                return by_name[node]
            if isinstance(node, dict):
                return {key: build(child) for key, child in node.items()}
            return tuple(build(child) for child in node)

        return build(self.tree)

    def _one_each(self, values: Sequence[Any]) -> None:
        if len(values) != len(self.names):
            raise ContractError(f"state: expected {len(self.names)} values ({', '.join(self.names)}), "
                                f"got {len(values)}")

    def flatten(self, nested: Any, what: str = "state") -> list[Any]:
        """The leaves of ``nested`` (shaped as :attr:`tree`; lists stand for tuples) in name order.

        Raises:
            ContractError: ``nested`` is not shaped as the structure (one line, with the path).
        """
        found: dict[str, Any] = {}

        def walk(node: Structure, value: Any, path: str) -> None:
            if isinstance(node, str):
                found[node] = value
            elif isinstance(node, dict):
                if not isinstance(value, Mapping) or set(value.keys()) != set(node):
                    raise ContractError(f"{what}{path}: expected a dict with keys {', '.join(node)}, "
                                        f"got {_describe_value(value)}")
                for key, child in node.items():
                    walk(child, value[key], f"{path}[{key!r}]")
            elif not isinstance(value, (tuple, list)) or len(value) != len(node):
                raise ContractError(f"{what}{path}: expected a tuple of {len(node)}, got {_describe_value(value)}")
            else:
                for index, (child, item) in enumerate(zip(node, value, strict=True)):
                    walk(child, item, f"{path}[{index}]")

        walk(self.tree, nested, "")
        values = [found[name] for name in self.names]
        if self.nested_axes is not None:  # arrays only: anything else fails the caller's array check
            values = [np.moveaxis(v, a, self.batch_axis) if isinstance(v, np.ndarray) and v.ndim > a else v
                      for v, a in zip(values, self.nested_axes, strict=True)]
        return values

    def shape(self, index: int, batch: Dim = BATCH) -> tuple[Dim, ...]:
        """State tensor ``index``'s shape with ``batch`` (a number, or ``"B"``) at the batch axis."""
        dims: list[Dim] = list(self.dims[index])
        dims.insert(self.batch_axis, batch)
        return tuple(dims)

    @property
    def shapes(self) -> tuple[tuple[Dim, ...], ...]:
        """Every state tensor's symbolic shape, ``"B"`` at the batch axis."""
        return tuple(self.shape(i) for i in range(len(self.names)))

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(name + OUT_SUFFIX for name in self.names)

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(n, self.shape(i), self.dtype) for i, n in enumerate(self.names)]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(n, self.shape(i), self.dtype) for i, n in enumerate(self.output_names)]

    def zeros(self, batch: int) -> list[np.ndarray]:
        """The initial state for ``batch`` streams, one array per state name."""
        # an int batch makes every dim an int; shape() is typed for the symbolic "B" too
        return [np.zeros(cast("tuple[int, ...]", self.shape(i, batch)), dtype=self.dtype)
                for i in range(len(self.names))]

    def start(self, batch: int) -> list[np.ndarray]:
        """What ``batch`` new streams start from, one array per state name: :attr:`initial` on every
        stream, else zeros."""
        if self.initial is None:
            return self.zeros(batch)
        return [np.repeat(np.expand_dims(one, self.batch_axis), batch, axis=self.batch_axis) for one in self.initial]

    def to_json(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "output_names": list(self.output_names),
            "shapes": [list(s) for s in self.shapes],
            "batch_axis": self.batch_axis,
            "dtype": self.dtype,
            "initial": "zeros" if self.initial is None else {"values": [a.ravel().tolist() for a in self.initial]},
            **({"structure": _structure_json(self.structure)} if self.structure is not None else {}),
            **({"nested_axes": list(self.nested_axes)} if self.nested_axes is not None else {}),
            **({"domains": [None if d is None else d.to_json() for d in self.domains]} if self.domains else {}),
        }

    @classmethod
    def from_json(cls, data: Any) -> StateSpec:
        """Parse :meth:`to_json`'s output, checking every field.

        Raises:
            ContractError: a missing or malformed field, or sizes out of bounds.
        """
        what = "state contract"
        data = _object(data, what)
        names = _field(data, "names", what)
        if not isinstance(names, list) or not 1 <= len(names) <= MAX_STATE_TENSORS:
            raise ContractError(f"malformed {what}: names must be a list of 1 to {MAX_STATE_TENSORS} names, "
                                f"got {names!r:.80}")
        names = tuple(_name(n, what) for n in names)
        if len(set(names)) != len(names):
            raise ContractError(f"malformed {what}: names must differ, got {list(names)!r:.80}")
        shapes = _field(data, "shapes", what)
        if not isinstance(shapes, list) or len(shapes) != len(names):
            raise ContractError(f"malformed {what}: expected one shape per name ({len(names)})")
        axis = _field(data, "batch_axis", what)
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise ContractError(f"malformed {what}: batch_axis must be an int, got {axis!r:.80}")
        dims = []
        for shape in shapes:
            parsed = _dims(shape, what, (BATCH,))
            if not 0 <= axis < len(parsed) or parsed[axis] != BATCH or parsed.count(BATCH) != 1:
                raise ContractError(f"malformed {what}: batch axis {axis} is not the one 'B' of {shape}")
            rest = tuple(int(d) for i, d in enumerate(parsed) if i != axis)
            if int(np.prod(rest, dtype=np.int64)) > MAX_STATE_ELEMENTS:
                raise ContractError(f"malformed {what}: a state of shape {shape} is over "
                                    f"{MAX_STATE_ELEMENTS} elements per stream")
            dims.append(rest)
        spec = cls(names, tuple(dims), axis, _choice(data.get("dtype", "float32"), _DTYPES, f"{what} dtype"),
                   _json_structure(data.get("structure"), what), _json_axes(data.get("nested_axes"), what),
                   _json_domains(data.get("domains"), len(names)), _json_initial(data.get("initial"), dims, what))
        outputs = data.get("output_names")
        if outputs is not None and list(outputs) != list(spec.output_names):
            raise ContractError(f"malformed {what}: output_names {outputs!r:.80} are not "
                                f"{list(spec.output_names)}")
        return spec


def _json_initial(value: Any, dims: Sequence[tuple[int, ...]], what: str) -> tuple[np.ndarray, ...] | None:
    """``initial`` as JSON gives it: ``"zeros"`` (or absent) is None, ``{"values": [[...], ...]}`` one flat
    list of numbers per tensor, sized before anything is built. Checked in ``StateSpec.__post_init__``."""
    if value is None or value == "zeros":
        return None
    lists = value.get("values") if isinstance(value, dict) and set(value) == {"values"} else None
    if not isinstance(lists, list) or len(lists) != len(dims):
        raise ContractError(f'malformed {what}: initial must be "zeros" or {{"values": [...]}} with one list per '
                            f"state tensor, got {value!r:.80}")
    sizes = [int(np.prod(d, dtype=np.int64)) for d in dims]
    if sum(sizes) > MAX_INITIAL_VALUES:
        raise ContractError(f"malformed {what}: an initial state of {sum(sizes)} values is over {MAX_INITIAL_VALUES}")
    arrays = []
    for numbers, size, shape in zip(lists, sizes, dims, strict=True):
        if not isinstance(numbers, list) or len(numbers) != size or not all(
                isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers):
            raise ContractError(f"malformed {what}: each initial list must hold {size} numbers, got {numbers!r:.80}")
        arrays.append(np.asarray(numbers, np.float64).reshape(shape))
    return tuple(arrays)


def _json_structure(value: Any, what: str) -> Any:
    """The structure as JSON gives it; None (flat) when absent. Checked in ``StateSpec.__post_init__``."""
    if value is None:
        return None
    if not isinstance(value, (list, dict)):
        raise ContractError(f"malformed {what}: structure must be a list or an object of names, got {value!r:.80}")
    return value


def _json_axes(value: Any, what: str) -> tuple[int, ...] | None:
    """``nested_axes`` as JSON gives it; None when absent. Checked in ``StateSpec.__post_init__``."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_STATE_TENSORS:
        raise ContractError(f"malformed {what}: nested_axes must be a list of axes, got {value!r:.80}")
    return tuple(value)


def _parse_structure(value: Any, names: tuple[str, ...]) -> Structure:
    """``value`` (JSON lists and objects, or tuples and dicts) as a structure over ``names``.

    Raises:
        ContractError: a container that is empty or of another type, a leaf that is not one of
            ``names`` or comes twice, a name left out, or nesting deeper than ``MAX_STATE_DEPTH``.
    """
    what = "malformed state contract: structure"
    known, seen = set(names), set()

    def walk(node: Any, depth: int) -> Structure:
        if isinstance(node, str):
            if node not in known:
                raise ContractError(f"{what} names {node!r:.80}, which is not a state name ({', '.join(names)})")
            if node in seen:
                raise ContractError(f"{what} names {node!r:.80} twice")
            seen.add(node)
            return node
        if depth >= MAX_STATE_DEPTH:
            raise ContractError(f"{what} nests deeper than {MAX_STATE_DEPTH} levels")
        if isinstance(node, (list, tuple)) and node:
            return tuple(walk(child, depth + 1) for child in node)
        if isinstance(node, Mapping) and node:
            bad = [k for k in node if not isinstance(k, str) or not k or len(k) > MAX_NAME]
            if bad:
                raise ContractError(f"{what} has key {bad[0]!r:.80}; keys are non-empty strings")
            return {key: walk(child, depth + 1) for key, child in node.items()}
        raise ContractError(f"{what} holds {node!r:.80}; expected non-empty lists and objects of state names")

    if not isinstance(value, (list, tuple, Mapping)):
        raise ContractError(f"{what} must be a list or an object of names, got {value!r:.80}")
    parsed = walk(value, 0)
    missing = [n for n in names if n not in seen]
    if missing:
        raise ContractError(f"{what} leaves out state {missing[0]!r}")
    return parsed


def _structure_json(node: Structure) -> Any:
    if isinstance(node, str):
        return node
    if isinstance(node, dict):
        return {key: _structure_json(child) for key, child in node.items()}
    return [_structure_json(child) for child in node]


def _describe_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    if isinstance(value, Mapping):
        return f"a dict with keys {', '.join(map(str, value.keys())) or 'none'}"
    return f"a {type(value).__name__}"


#: What a lengths input means; one value today, recorded so a later meaning cannot be misread.
PACKED = "packed"
#: The dtype of a lengths input: int64, as torch's ``pack_padded_sequence`` takes lengths, as numpy
#: makes integer arrays by default on 64-bit Linux and macOS, and as ONNX's ``ReverseSequence`` reads
#: them; only the recurrent operators want int32, one Cast inside the graph.
LENGTHS_DTYPE = "int64"


@dataclasses.dataclass(frozen=True)
class LengthsSpec:
    """The optional ``lengths (B,)`` input of a sequence graph: each stream's own number of steps.

    Semantics (``"packed"``) are PyTorch's packed sequences: in stream ``b``, steps
    ``t >= lengths[b]`` give zeros in ``y`` (as ``pad_packed_sequence`` pads) and leave the
    state unchanged, so the state outputs hold each stream's state after its own last step
    and a length of 0 returns the initial state. The graph clamps lengths to ``[0, T]``.
    """

    name: str = LENGTHS_NAME
    dtype: str = LENGTHS_DTYPE
    semantics: str = PACKED

    @property
    def tensor(self) -> TensorSpec:
        """The graph input: ``lengths int64[B]``."""
        return TensorSpec(self.name, (BATCH,), self.dtype)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": [BATCH], "semantics": self.semantics}

    @classmethod
    def from_json(cls, data: Any) -> LengthsSpec:
        """Parse :meth:`to_json`'s output, checking every field.

        Raises:
            ContractError: a missing or malformed field.
        """
        what = "I/O contract lengths"
        data = _object(data, what)
        shape = data.get("shape", [BATCH])
        if shape != [BATCH]:
            raise ContractError(f"malformed {what}: shape must be [{BATCH!r}], got {shape!r:.80}")
        return cls(_name(_field(data, "name", what), what),
                   _choice(_field(data, "dtype", what), (LENGTHS_DTYPE,), f"{what} dtype"),
                   _choice(data.get("semantics", PACKED), (PACKED,), f"{what} semantics"))


@dataclasses.dataclass(frozen=True)
class IOSpec:
    """The whole I/O contract: data input ``x``, output ``y`` and the state."""

    x_features: tuple[int, ...]
    x_dtype: str
    y_features: tuple[int, ...]
    state: StateSpec
    layout: Layout = Layout.TIME_MAJOR
    y_dtype: str = "float32"
    #: What ``x`` holds: ``real`` vectors, ``one-hot`` vectors over a vocabulary of
    #: size ``x_features[0]``, or ``token-ids`` (int64, no feature axis).
    x_encoding: str = "real"
    #: The tokens behind one-hot or token-id indices, in index order (a trained char
    #: model's characters), so an app needs nothing but the graph or bundle; None if unknown.
    vocabulary: tuple[str, ...] | None = None
    #: The sequence graph's ``lengths`` input (ragged batches), after the state inputs; None: it has none.
    #: Step graphs never take one.
    lengths: LengthsSpec | None = None

    def __post_init__(self) -> None:
        if self.lengths is not None:
            taken = {X_NAME, Y_NAME, *self.state.names, *self.state.output_names}
            if self.lengths.name in taken:
                raise ContractError(f"malformed I/O contract: the lengths input {self.lengths.name!r} has the "
                                    "name of another input or output")
        if self.vocabulary is not None and self.x_encoding == "one-hot" \
                and (len(self.x_features) != 1 or len(self.vocabulary) != self.x_features[0]):
            raise ContractError(f"malformed I/O contract: a one-hot x of {list(self.x_features)} features needs "
                                f"a vocabulary of that size, got {len(self.vocabulary)} entries")

    @property
    def time_axis(self) -> int:
        """Axis of time in sequence ``x``/``y``; the batch axis is the other of 0 and 1."""
        return 0 if self.layout is Layout.TIME_MAJOR else 1

    @property
    def batch_axis(self) -> int:
        """Axis of the batch in sequence ``x``/``y``."""
        return 1 - self.time_axis

    def _shape(self, features: tuple[int, ...], form: Form | str, batch: Dim, time: Dim) -> tuple[Dim, ...]:
        if Form(form) is Form.STEP:
            return (batch, *features)
        lead = (time, batch) if self.layout is Layout.TIME_MAJOR else (batch, time)
        return (*lead, *features)

    def x_shape(self, form: Form | str, batch: Dim = BATCH, time: Dim = TIME) -> tuple[Dim, ...]:
        """Shape of ``x`` for one call of a ``form`` graph."""
        return self._shape(self.x_features, form, batch, time)

    def y_shape(self, form: Form | str, batch: Dim = BATCH, time: Dim = TIME) -> tuple[Dim, ...]:
        """Shape of ``y`` for one call of a ``form`` graph."""
        return self._shape(self.y_features, form, batch, time)

    def inputs(self, form: Form | str, seq_len: int | None = None) -> list[TensorSpec]:
        """Graph inputs in order: ``x``, then the state (``h``, ``c``), then a sequence graph's ``lengths``."""
        time = TIME if seq_len is None else seq_len
        lengths = [self.lengths.tensor] if self.lengths is not None and Form(form) is Form.SEQUENCE else []
        return [TensorSpec(X_NAME, self.x_shape(form, BATCH, time), self.x_dtype), *self.state.inputs(), *lengths]

    def without_lengths(self) -> IOSpec:
        """This contract without a lengths input: what the model's step graph, and its source, have."""
        return dataclasses.replace(self, lengths=None) if self.lengths is not None else self

    def with_lengths(self) -> IOSpec:
        """This contract with the lengths input (:class:`LengthsSpec`)."""
        return dataclasses.replace(self, lengths=LengthsSpec())

    def outputs(self, form: Form | str, seq_len: int | None = None) -> list[TensorSpec]:
        """Graph outputs in order: ``y``, then the state (``h_out``, ``c_out``)."""
        time = TIME if seq_len is None else seq_len
        return [TensorSpec(Y_NAME, self.y_shape(form, BATCH, time), self.y_dtype), *self.state.outputs()]

    def disagreement(self, form: Form | str, inputs: Sequence[Declared], outputs: Sequence[Declared]) -> str | None:
        """How a graph's own declared inputs and outputs differ from this contract, or None.

        ``inputs``/``outputs`` are ``(name, dtype, shape)`` as the graph declares them (a shape
        None when unknown; a dim an int, a symbol, or None). Ranks, dtypes and every size that
        both give as a number must agree: metadata that claims another shape than the graph has
        would otherwise end in an engine's own error at the first call.
        """
        for declared, specs in ((inputs, self.inputs(form)), (outputs, self.outputs(form))):
            for (name, dtype, shape), spec in zip(declared, specs, strict=False):
                if name != spec.name:
                    continue  # names are checked where they are bound
                problem = _differs(spec, dtype, shape)
                if problem:
                    return problem
        return None

    def feeds(self, x: np.ndarray, state: Sequence[np.ndarray],
              lengths: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The input dict of one graph call: ``{"x": x, "h": ..., "c": ...}`` (and ``"lengths"``).

        For a contract with a lengths input and a sequence ``x``, ``lengths`` defaults to
        every stream running all of ``x``'s steps; a step ``x`` never takes lengths.

        Raises:
            ContractError: not one ``state`` array per state name.
        """
        self.state._one_each(state)
        feeds = {X_NAME: x, **dict(zip(self.state.names, state, strict=True))}
        if self.lengths is not None and np.ndim(x) == 2 + len(self.x_features):
            if lengths is None:
                shape = np.shape(x)
                lengths = np.full(shape[self.batch_axis], shape[self.time_axis], np.int64)
            feeds[self.lengths.name] = lengths
        return feeds

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "x_features": list(self.x_features),
            "x_dtype": self.x_dtype,
            "y_features": list(self.y_features),
            "y_dtype": self.y_dtype,
            "layout": self.layout.value,
            "x_encoding": self.x_encoding,
            "state": self.state.to_json(),
        }
        if self.vocabulary is not None:
            data["vocabulary"] = list(self.vocabulary)
        if self.lengths is not None:
            data["lengths"] = self.lengths.to_json()
        return data

    @classmethod
    def from_json(cls, data: Any) -> IOSpec:
        """Parse :meth:`to_json`'s output (a dict or its JSON text), checking every field.

        Raises:
            ContractError: a missing or malformed field, or sizes out of bounds.
        """
        what = "I/O contract"
        data = _object(data, what)
        x_features = _field(data, "x_features", what)
        if isinstance(x_features, list) and len(x_features) > 4:
            raise ContractError(f"malformed {what}: x_features has {len(x_features)} axes (at most 4)")
        return cls(
            x_features=_ints(x_features, "I/O contract x_features"),
            x_dtype=_choice(_field(data, "x_dtype", what), _DTYPES, "I/O contract x_dtype"),
            y_features=_ints(_field(data, "y_features", what), "I/O contract y_features"),
            state=StateSpec.from_json(_field(data, "state", what)),
            layout=Layout(_choice(data.get("layout", Layout.TIME_MAJOR.value), [v.value for v in Layout],
                                  "I/O contract layout")),
            y_dtype=_choice(data.get("y_dtype", "float32"), _DTYPES, "I/O contract y_dtype"),
            x_encoding=_choice(data.get("x_encoding", "real"), _ENCODINGS, "I/O contract x_encoding"),
            vocabulary=_vocabulary(data.get("vocabulary")),
            lengths=None if data.get("lengths") is None else LengthsSpec.from_json(data["lengths"]),
        )


def _vocabulary(value: Any) -> tuple[str, ...] | None:
    what = "I/O contract vocabulary"
    if value is None:
        return None
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_VOCABULARY:
        raise ContractError(f"malformed {what}: expected a list of 1 to {MAX_VOCABULARY} strings")
    if not all(isinstance(t, str) and len(t) <= MAX_TOKEN for t in value):
        raise ContractError(f"malformed {what}: every entry must be a string of at most {MAX_TOKEN} characters")
    return tuple(value)


# --- what a graph records about itself --------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GraphInfo:
    """What rnnexport wrote into a graph's ``metadata_props``: enough to run, verify and rebuild it."""

    version: str
    form: Form
    lowering: Lowering
    io: IOSpec
    source_kind: str
    cell_family: str | None
    params_sha256: str
    seq_len: int | None = None
    origin: dict[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""
    #: Graphs written before the policy was recorded carry NaN (their guards are in the graph).
    nan: NanPolicy = NanPolicy.CARRY

    def to_props(self) -> dict[str, str]:
        """The metadata entries, keys with :data:`META_PREFIX`."""
        props = {
            "version": self.version,
            "form": self.form.value,
            "lowering": self.lowering.value,
            "source_kind": self.source_kind,
            "cell_family": self.cell_family or "",
            "layout": self.io.layout.value,
            "state": json.dumps(self.io.state.to_json()),
            "io": json.dumps(self.io.to_json()),
            "params_sha256": self.params_sha256,
            "seq_len": "" if self.seq_len is None else str(self.seq_len),
            "origin": json.dumps(self.origin),
            "description": self.description,
            "nan": self.nan.value,
        }
        return {META_PREFIX + k: v for k, v in props.items()}

    @classmethod
    def from_props(cls, metadata: Mapping[str, str]) -> GraphInfo | None:
        """Parse a graph's metadata (all its keys, any prefix); None when rnnexport wrote none.

        Raises:
            ContractError: rnnexport metadata that is present but malformed.
        """
        props = {k[len(META_PREFIX):]: v for k, v in metadata.items() if k.startswith(META_PREFIX)}
        if "io" not in props:
            return None
        what = "graph metadata"
        seq_len = props.get("seq_len") or None
        if seq_len is not None and (not seq_len.isdigit() or not 1 <= int(seq_len) <= MAX_DIM):
            raise ContractError(f"malformed {what}: seq_len {seq_len!r:.40} is not a size")
        origin = _object(props.get("origin") or "{}", f"{what} origin")
        return cls(
            version=props.get("version", "")[:64],
            form=Form(_choice(props.get("form"), [f.value for f in Form], f"{what} form")),
            lowering=Lowering(_choice(props.get("lowering"), [v.value for v in Lowering], f"{what} lowering")),
            io=IOSpec.from_json(props["io"]),
            source_kind=props.get("source_kind", "")[:64],
            cell_family=props.get("cell_family") or None,
            params_sha256=props.get("params_sha256", "")[:64],
            seq_len=int(seq_len) if seq_len is not None else None,
            origin=dict(origin),
            description=props.get("description", "")[:1000],
            nan=NanPolicy(_choice(props.get("nan") or NanPolicy.CARRY.value, [p.value for p in NanPolicy],
                                  f"{what} nan")),
        )


# --- checking arrays against the contract ------------------------------------------------------

#: A tensor as a graph declares it: name, dtype (numpy's name, or None if unknown), shape (None if unknown).
Declared = tuple[str, "str | None", "Sequence[int | str | None] | None"]


def _differs(spec: TensorSpec, dtype: str | None, shape: Sequence[int | str | None] | None) -> str | None:
    if dtype is not None and dtype != spec.dtype:
        return f"{spec.name} is {dtype} in the graph, {spec.dtype} in its metadata"
    if shape is None:
        return None
    fixed = [(d, w) for d, w in zip(shape, spec.shape, strict=False) if isinstance(d, int) and isinstance(w, int)]
    if len(shape) != len(spec.shape) or any(d != w for d, w in fixed):
        return (f"{spec.name} has shape {show_shape(['?' if d is None else d for d in shape])} in the graph, "
                f"{show_shape(spec.shape)} in its metadata")
    return None


def show_shape(shape: Sequence[Any]) -> str:
    """``(T, B, 32)``: a shape as the error messages write it."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def check_array(name: str, value: Any, dtype: str, shape: tuple[Dim, ...]) -> np.ndarray:
    """``value`` as a C-contiguous array, or a one-line error naming what was expected.

    ``shape`` holds ints (must match) and names (``"T"``: any size of at least 1).

    Raises:
        ContractError: for a non-array, a wrong dtype or a wrong shape.
    """
    if type(value) is np.ndarray and value.shape == shape and value.dtype == dtype \
            and value.flags.c_contiguous:
        return value  # the common case, checked fast: this runs once per step
    want = f"{dtype} array of shape {show_shape(shape)}"
    if not isinstance(value, np.ndarray):
        raise ContractError(f"{name}: expected a numpy {want}, got {type(value).__name__}")
    if value.dtype != np.dtype(dtype):
        raise ContractError(f"{name}: expected {want}, got dtype {value.dtype} "
                            f"(convert with .astype(np.{dtype}))")
    fits = value.ndim == len(shape) and all(
        (size >= 1) if isinstance(want_size, str) else size == want_size
        for size, want_size in zip(value.shape, shape, strict=True))
    if not fits:
        raise ContractError(f"{name}: expected {want}, got shape {show_shape(value.shape)}")
    return np.ascontiguousarray(value)


def check_lengths(value: Any, batch: int, time: int, name: str = LENGTHS_NAME) -> np.ndarray:
    """``value`` as the int64 ``(batch,)`` lengths of ``batch`` streams over ``time`` steps, or a one-line error.

    Any integer dtype is taken (numpy makes int32 arrays on some platforms); each length must
    be from 0 to ``time``.

    Raises:
        ContractError: a non-array, a non-integer dtype, a wrong shape, or a length out of range.
    """
    want = f"an integer array of shape ({batch},), one length per stream, each from 0 to {time}"
    if not isinstance(value, np.ndarray):
        raise ContractError(f"{name}: expected {want}, got {type(value).__name__}")
    if value.dtype.kind not in "iu":
        raise ContractError(f"{name}: expected {want}, got dtype {value.dtype}")
    if value.shape != (batch,):
        raise ContractError(f"{name}: expected {want}, got shape {show_shape(value.shape)}")
    bad = np.flatnonzero((value < 0) | (value > time))
    if bad.size:
        raise ContractError(f"{name}: expected {want}, got {value[bad[0]]} for stream {bad[0]}")
    return np.ascontiguousarray(value, dtype=np.int64)
