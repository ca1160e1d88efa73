"""The first graph value that diverges from PyTorch, found by matching values against PyTorch's own.

Method (``docs/verify.md``, "Diagnosis"):

1. PyTorch runs the case once more with every tensor its operators produce recorded
   (:class:`Recorder`; torch.nn's fused RNN operators are run through their per-step
   decompositions, so each step's gates and state are recorded too): the *pool*.
2. The graph runs the case once on onnxruntime with every value exposed
   (:mod:`rnnexport.verification.exposed`). Each value becomes an *instance*: one per
   top-graph value, one per Scan body value and step, one per step and direction of a
   native RNN/LSTM/GRU operator's ``Y``. Each instance knows the instances it is computed from.
3. An instance *matches* when PyTorch computed a tensor holding the same values in the same
   order, whatever its shape (within the check's tolerance): views and reshapes do not hide a
   value. Graph inputs are given; integers, shapes and constant-valued tensors are not judged.
4. A value that matches nothing but from which a matching value is computed (a fused gate
   matrix PyTorch never builds, split into gates it does) is not a divergence.
5. From each failing output, walk back through the instances that match nothing. Those
   whose own inputs all match (or are given, or are not judged) are where the divergence
   starts; the first in graph and time order is *the first diverging value*.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rnnexport.core.compare import Tolerance
from rnnexport.core.graphs import attribute, subgraphs
from rnnexport.export.passes.graph import constants, free_names
from rnnexport.verification.exposed import body, iterations_reversed, scan_value
from rnnexport.verification.findings import InputError, InputStatus, Location

__all__ = ["MATCH_FACTOR", "MAX_POOL_ELEMENTS", "Graph", "Instance", "Pool", "Status", "first_divergence",
           "record_pool"]

#: Intermediate values match PyTorch's within this many times the check's atol and rtol (which holds
#: PyTorch's own float32 rounding error on the case): no looser, or a value equal to a failing output
#: would match where the output does not.
MATCH_FACTOR = 1.0
#: The most float elements PyTorch's recorded tensors may hold together (the rest are not recorded).
MAX_POOL_ELEMENTS = 1 << 23
RECURRENT = ("RNN", "LSTM", "GRU")
_FLOATS = (np.float16, np.float32, np.float64)


class Status(str, enum.Enum):
    """An instance against PyTorch's values."""

    GIVEN = "given"
    MATCHED = "matched"
    DIVERGED = "diverged"
    #: No PyTorch tensor holds its values, but values computed from it match: a fused or reshaped value.
    UNMATCHED_FEEDS_MATCHED = "feeds matched"
    UNKNOWN = "unknown"  # not a float tensor, constant-valued, or not computed


# --- PyTorch's values ------------------------------------------------------------------------------

_RNN_OPS = {torch.ops.aten.lstm.input, torch.ops.aten.gru.input, torch.ops.aten.rnn_tanh.input,
            torch.ops.aten.rnn_relu.input}


class Recorder(TorchDispatchMode):
    """Every floating-point tensor PyTorch's operators return while active, as numpy arrays."""

    def __init__(self, limit: int = MAX_POOL_ELEMENTS) -> None:
        super().__init__()
        self.arrays: list[np.ndarray] = []
        self.elements, self.limit, self.full = 0, limit, False

    def keep(self, value: Any) -> None:
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, torch.Tensor) and item.is_floating_point() and item.numel() > 1:
                if self.elements + item.numel() > self.limit:
                    self.full = True
                    continue
                self.elements += item.numel()
                self.arrays.append(item.detach().cpu().numpy().copy())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _RNN_OPS:
            from torch._decomp import decomposition_table

            with self:  # the per-step decomposition, its operators recorded too
                return decomposition_table[func](*args, **kwargs)
        out = func(*args, **kwargs)
        self.keep(out)
        return out


def record_pool(modules: Sequence[torch.nn.Module | None], x: np.ndarray, state: Sequence[np.ndarray],
                tol: Tolerance) -> Pool:
    """Every tensor ``modules`` compute on ``x`` and ``state`` (the reference, and the module torch traced), as a pool."""
    recorder = Recorder()
    recorder.keep([torch.from_numpy(np.asarray(a)) for a in (x, *state) if np.issubdtype(np.asarray(a).dtype,
                                                                                          np.floating)])
    for module in dict.fromkeys(m for m in modules if m is not None):
        feeds = [torch.from_numpy(np.array(a)) for a in (x, *state)]
        with torch.no_grad(), _without_onednn(), recorder:
            module(*feeds)
    return Pool(recorder.arrays, tol, recorder.full)


@contextlib.contextmanager
def _without_onednn() -> Iterator[None]:
    """oneDNN off: torch.nn's RNN decompositions then run step by step, so each step's values are recorded."""
    before = bool(torch.backends.mkldnn.enabled)
    setattr(torch.backends.mkldnn, "enabled", False)  # noqa: B010 - a property of torch's module object
    try:
        yield
    finally:
        setattr(torch.backends.mkldnn, "enabled", before)  # noqa: B010


class Pool:
    """PyTorch's recorded tensors, grouped by size, to ask whether a graph value is one of them."""

    def __init__(self, arrays: Sequence[np.ndarray], tol: Tolerance, partial: bool = False) -> None:
        self.atol, self.rtol = tol.atol * MATCH_FACTOR, tol.rtol * MATCH_FACTOR
        self.partial = partial
        self.count = len(arrays)
        self._by_size: dict[int, list[np.ndarray]] = {}
        for array in arrays:
            self._by_size.setdefault(array.size, []).append(array.astype(np.float64).ravel())
        self._stacked: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _rows(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The tensors of ``size`` as rows, their sums and their allowed total error (for a quick test)."""
        if size not in self._stacked:
            found = self._by_size.get(size)
            if not found:
                return None
            rows = np.unique(np.stack(found), axis=0)
            with np.errstate(invalid="ignore", over="ignore"):
                sums = np.nansum(rows, axis=1)
                slack = size * self.atol + self.rtol * np.nansum(np.abs(rows), axis=1)
            self._stacked[size] = rows, sums, slack
        return self._stacked[size]

    @staticmethod
    def _differences(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(rows - query)
            diff = np.where(np.isnan(rows) & np.isnan(query), 0.0, diff)
            return np.where(np.isnan(diff), np.inf, diff)

    def match(self, array: np.ndarray) -> float | None:
        """The error of a recorded tensor holding ``array``'s values in its order (any shape); None if none does."""
        stacked = self._rows(array.size)
        if stacked is None:
            return None
        rows, sums, slack = stacked
        query = array.astype(np.float64).ravel()
        with np.errstate(invalid="ignore", over="ignore"):
            near = np.abs(sums - np.nansum(query)) <= slack + 1e-12  # the sums must be this close to match
        near |= np.isnan(sums)
        if not near.any():
            return None
        candidates = rows[near]
        diff = self._differences(candidates, query)
        ok = (diff <= self.atol + self.rtol * np.abs(candidates)).all(axis=1)
        return float(diff[ok].max(axis=1).min()) if ok.any() else None

    def nearest(self, array: np.ndarray) -> float | None:
        """How far ``array`` is from the closest recorded tensor of its size (None: none of its size)."""
        stacked = self._rows(array.size)
        if stacked is None:
            return None
        return float(self._differences(stacked[0], array.astype(np.float64).ravel()).max(axis=1).min())


# --- the graph's values as instances ---------------------------------------------------------------

@dataclasses.dataclass
class Instance:
    """One value the graph computed on the case: a top-graph value, a body value at a step, a slice of ``Y``."""

    key: str
    name: str
    location: Location
    array: np.ndarray | None
    parents: tuple[str, ...]
    order: tuple[int, int, int]
    given: bool = False
    status: Status = Status.UNKNOWN
    error: float | None = None
    #: The parent that is the state carried from the step before (a Scan state, a native operator's ``Y``).
    carried: str | None = None


def _informative(array: np.ndarray | None) -> bool:
    if array is None or array.dtype.type not in _FLOATS or array.size < 2:
        return False
    finite = array[np.isfinite(array)]
    return finite.size > 1 and bool(np.ptp(finite) > 0)


class Graph:
    """The instances of a graph's values on one run, and the walk that finds where they leave PyTorch's."""

    def __init__(self, model: onnx.ModelProto, values: Mapping[str, np.ndarray],
                 feeds: Mapping[str, np.ndarray]) -> None:
        self.model, self.values = model, values
        self.instances: dict[str, Instance] = {}
        self.constants = constants(model.graph)
        graph = model.graph
        recurrent = [n for n in graph.node if n.op_type in RECURRENT and n.domain in ("", "ai.onnx")]
        self._layers = {id(n): i for i, n in enumerate(recurrent)}
        for value in graph.input:
            if value.name in feeds and value.name not in self.constants:
                array = np.asarray(feeds[value.name])
                self._add(Instance(value.name, value.name, Location("input", "", value.name), array, (), (-1, 0, 0),
                                   given=True))
        for index, node in enumerate(graph.node):
            if node.op_type in RECURRENT and node.domain in ("", "ai.onnx"):
                self._native(index, node, len(recurrent))
            elif node.op_type == "Scan" and node.domain in ("", "ai.onnx"):
                self._scan(index, node)
            else:
                self._plain(index, node)

    def _add(self, instance: Instance) -> None:
        self.instances[instance.key] = instance

    def _refs(self, names: Sequence[str], local: Mapping[str, str] | None = None) -> tuple[str, ...]:
        """The instance keys of ``names`` (``local`` maps body names to this step's keys)."""
        found = []
        for name in names:
            key = (local or {}).get(name, name)
            if name and key in self.instances:
                found.append(key)
        return tuple(dict.fromkeys(found))

    @staticmethod
    def _reads(node: onnx.NodeProto) -> list[str]:
        return [*node.input, *sorted(n for g in subgraphs(node) for n in free_names(g))]

    def _plain(self, index: int, node: onnx.NodeProto) -> None:
        parents = self._refs(self._reads(node))
        for out in node.output:
            if out:
                location = Location(node.op_type, node.name or out, out)
                self._add(Instance(out, out, location, self.values.get(out), parents, (index, 0, 0)))

    def _native(self, index: int, node: onnx.NodeProto, layers: int) -> None:
        """``Y`` of an RNN/LSTM/GRU node as one instance per step and direction, each from the step before."""
        outputs = [*node.output, "", "", ""][:3]
        y_name, h_name, c_name = outputs
        initial = self._refs([*node.input[5:7]])
        x_refs = self._refs(node.input[:1])
        y = self.values.get(y_name) if y_name else None
        mode = attribute(node, "direction", "forward")
        layer = self._layers[id(node)]
        last: list[str] = []
        slices: list[str] = []
        if y is not None and y.ndim == 4:
            y = y if attribute(node, "layout", 0) == 0 else y.transpose(1, 2, 0, 3)  # (B, T, D, H) -> (T, D, B, H)
            steps, directions = y.shape[0], y.shape[1]
            for d in range(directions):
                reverse = mode == "reverse" or (mode == "bidirectional" and d == 1)
                previous: tuple[str, ...] = initial
                for i in range(steps):
                    t = steps - 1 - i if reverse else i
                    key = f"{y_name}[t={t},d={d}]"
                    location = Location(node.op_type, node.name or y_name, y_name, "native", step=t, layer=layer,
                                        layers=layers, direction=d, reverse=reverse)
                    self._add(Instance(key, y_name, location, y[t, d], (*x_refs, *previous), (index, i, d),
                                       carried=previous[0] if i else None))
                    slices.append(key)
                    previous = (key,)
                last.append(previous[0])
            location = Location(node.op_type, node.name or y_name, y_name, "native", layer=layer, layers=layers)
            self._add(Instance(y_name, y_name, location, self.values.get(y_name), tuple(slices), (index, steps, 0)))
        for name in (h_name, c_name):
            if name:
                location = Location(node.op_type, node.name or name, name, "native", layer=layer, layers=layers)
                parents = tuple(last) or (*x_refs, *initial)
                self._add(Instance(name, name, location, self.values.get(name), parents, (index, 1 << 30, 0)))

    def _scan(self, index: int, node: onnx.NodeProto) -> None:
        """Each Scan body value at each iteration, from the same iteration's values and the last one's state."""
        inner = body(node)
        scans = int(attribute(node, "num_scan_inputs", 0))
        states = len(node.input) - scans
        values = [*(v.name for v in inner.input), *(o for n in inner.node for o in n.output if o)]
        stacked = {v: self.values.get(scan_value(index, v)) for v in values}
        steps = max((a.shape[0] for a in stacked.values() if a is not None and a.ndim), default=0)
        reverse = iterations_reversed(node)
        name = node.name or node.output[0]
        order = {o: j for j, n in enumerate(inner.node) for o in n.output}
        for i in range(steps):
            local = {v: f"{name}/{v}@{i}" for v in values}
            for j, value in enumerate(inner.input):
                carried = f"{name}/{inner.output[j].name}@{i - 1}" if j < states and i else None
                parents = (carried,) if carried else self._refs([node.input[j]])
                self._scan_instance(index, name, value.name, "input", value.name, stacked, i, steps, reverse,
                                    parents, -1, carried)
            for n in inner.node:
                parents = self._refs(self._reads(n), local)
                for out in n.output:
                    if out:
                        self._scan_instance(index, name, out, n.op_type, n.name or out, stacked, i, steps, reverse,
                                            parents, order[out])
        for j, out in enumerate(node.output[:len(inner.output)]):
            if not out:
                continue
            body_out = inner.output[j].name
            parents = ((f"{name}/{body_out}@{steps - 1}",) if j < states and steps else
                       tuple(f"{name}/{body_out}@{i}" for i in range(steps)))
            location = Location("Scan", name, out)
            self._add(Instance(out, out, location, self.values.get(out), parents, (index, steps, 0)))

    def _scan_instance(self, index: int, scan: str, value: str, op: str, node: str,
                       stacked: Mapping[str, np.ndarray | None], i: int, steps: int, reverse: bool,
                       parents: tuple[str, ...], position: int, carried: str | None = None) -> None:
        array = stacked.get(value)
        location = Location(op, node, value, "scan", scan=scan, step=steps - 1 - i if reverse else i, reverse=reverse)
        self._add(Instance(f"{scan}/{value}@{i}", value, location, None if array is None else array[i], parents,
                           (index, i, position), carried=carried))

    # --- judging and walking ----------------------------------------------------------------------

    def judge(self, pool: Pool, failing: Sequence[str] = (), deadline: float = math.inf) -> bool:
        """Give each instance its status against ``pool`` (the ``failing`` outputs failed their check: diverged).

        Returns False when ``deadline`` (a ``time.perf_counter()`` value) came first: the rest stay unknown.
        """
        for number, instance in enumerate(self.instances.values()):
            if number % 64 == 0 and time.perf_counter() > deadline:
                return False
            if instance.given:
                instance.status = Status.GIVEN
            elif instance.key in failing and instance.array is not None:
                instance.status = Status.DIVERGED
            elif _informative(instance.array):
                assert instance.array is not None  # _informative
                instance.error = pool.match(instance.array)
                instance.status = Status.DIVERGED if instance.error is None else Status.MATCHED
        self._vindicate()
        return True

    def _vindicate(self) -> None:
        """Unmatched values that a matching value is computed from (through unmatched ones) are not divergences.

        Not across steps: a state carried into the next step can be wrong while that step's gates
        barely move (small recurrent weights), so a later step vouches for nothing of an earlier one.
        """
        def uncarried(instance: Instance) -> list[str]:
            return [p for p in instance.parents if p != instance.carried]

        stack = [p for i in self.instances.values() if i.status is Status.MATCHED for p in uncarried(i)]
        while stack:
            parent = self.instances[stack.pop()]
            if parent.status is Status.DIVERGED:
                parent.status = Status.UNMATCHED_FEEDS_MATCHED
                stack.extend(uncarried(parent))

    def diverged(self, outputs: Sequence[str]) -> set[str]:
        """The diverged instances that lead to ``outputs`` through diverged instances only."""
        bad: set[str] = set()
        stack = [o for o in outputs if o in self.instances and self.instances[o].status is Status.DIVERGED]
        while stack:
            key = stack.pop()
            if key in bad:
                continue
            bad.add(key)
            stack.extend(p for p in self.instances[key].parents if self.instances[p].status is Status.DIVERGED)
        return bad

    def inputs_of(self, instance: Instance) -> tuple[InputError, ...]:
        """What is known of each value ``instance`` is computed from."""
        found = []
        for key in instance.parents:
            parent = self.instances[key]
            status = {Status.GIVEN: InputStatus.GIVEN, Status.MATCHED: InputStatus.MATCHED}.get(
                parent.status, InputStatus.NOT_COMPARED)
            producer = "graph input" if parent.given else f"{parent.location.op} {parent.location.node!r}"
            if parent.location.step is not None:
                producer += f", step {parent.location.step}"
            shape = None if parent.array is None else tuple(int(d) for d in parent.array.shape)
            error = parent.error if status is InputStatus.MATCHED else None
            found.append(InputError(parent.name, producer, status, error, shape))
        return tuple(found)


def first_divergence(graph: Graph, outputs: Sequence[str]) -> Instance | None:
    """The first instance, in graph and time order, where the walk back from ``outputs`` ends; None if none."""
    bad = graph.diverged(outputs)
    starts = [graph.instances[k] for k in bad
              if not any(graph.instances[p].status is Status.DIVERGED for p in graph.instances[k].parents)]
    return min(starts, key=lambda i: i.order) if starts else None
