"""Portable int8: weights stored as int8 per channel, activations quantized with calibrated ranges.

The rewrite (:func:`quantize`) uses standard ONNX operators only, so every engine that runs
ONNX runs it. Its sites (:func:`find_sites`) are the matrix products with constant float32
weights, wherever they are: ``MatMul`` and ``Gemm`` nodes of the main graph and of Scan and
Loop bodies (nested ones too), and the ``W``/``R`` inputs of the ``LSTM``, ``GRU`` and ``RNN``
operators.

- Every weight is stored as int8, symmetric (zero point 0), with one scale per output channel
  and block of about :data:`BLOCK` inputs (:func:`quantized_weight`): one scale per channel alone
  lets a channel's largest input rows set the step of all of them, as when a step graph
  multiplies the concatenated input and state by one matrix (rnn-charlm's step graph: state
  off by 0.18 after 17 characters with a scale per channel, 0.04 with one per block). ``Cast``,
  ``Reshape`` and ``Mul`` on constants turn it back into float32, which onnxruntime, OpenVINO and tract fold
  once when they load the graph. (A ``DequantizeLinear`` beside the product, the form integer
  kernels fuse, is never folded by onnxruntime: where no fusion takes it, as in a Scan body
  whose MatMul and bias it first fuses into a float Gemm, it dequantizes the weight again at
  every step, 4 to 14 times slower than float32; docs/bundle.md.)
- Every ``MatMul``/``Gemm`` activation (the product's other input) is clipped to its
  calibrated range and passes through ``QuantizeLinear`` and ``DequantizeLinear`` (uint8 from
  0 to :data:`ACTIVATION_LEVELS`, one scale and zero point, :func:`activation_params`), in the
  product's own graph: inside a Scan body, at every step. An engine with int8 kernels may run
  such a product in int8 (OpenVINO does); the others compute in float32 what the integer
  product computes. 7 bits, not 8: an x86 CPU without VNNI adds pairs of uint8 x int8
  products in saturating int16 (``VPMADDUBSW``), and OpenVINO's int8 product of rnn-charlm's
  Scan body was off by 3.6 on an emulated Haswell with 8-bit activations near the top of
  their range; with 127 levels no pair can reach 32767.
- The recurrent operators take float weights, and no standard operator runs their products
  in int8: their weights are stored as int8 and computed in float32. A graph that holds one
  gets no activation quantization at all: OpenVINO's int8 transformations mis-handle a
  recurrent operator whose weights are dequantized once a graph holds any QuantizeLinear
  (measured: an LSTM that does not compile or is off by 4.7, a GRU that does not compile).

Recurrent state stays float32: a graph's state inputs and outputs, and the values a body
carries from step to step, are never quantized; only the copy a product reads is.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from rnnexport.core.graphs import attribute
from rnnexport.export.onnxutil import GraphBuilder, names_in
from rnnexport.export.passes.graph import drop_unused_initializers

__all__ = ["BLOCK", "CELLS", "LEVELS", "MIN_INNER", "MIN_WEIGHTS", "Key", "Observed", "QuantizeResult", "Range",
           "Site", "activation_params", "block_size", "dequantized", "find_sites", "graph_at", "quantize", "quantized_weight",
           "to_observe"]

#: The recurrent operators whose weights (inputs 1 and 2: W and R, ``[directions, gates x hidden, inputs]``) are quantized.
CELLS = frozenset({"LSTM", "GRU", "RNN"})
#: What an activation is known by: the path of its graph (see :class:`Site`) and its name.
Key = tuple[tuple[tuple[int, int], ...], str]
#: Products whose weights hold fewer elements are left in float32 (their scales would outweigh them).
MIN_WEIGHTS = 64
#: Products over fewer inputs are left in float32: they scale their input rather than mix it, no integer
#: kernel gains from them, and quantizing a model's raw input (a forecaster's one value) costs precision.
MIN_INNER = 8
#: The largest magnitude of a stored weight (symmetric int8).
LEVELS = 127
#: The largest quantized activation (uint8 from 0): 7 bits, so that no pair of products a CPU without VNNI
#: adds in 16 bits (``VPMADDUBSW``: 2 x 127 x 127 = 32258) can overflow (docs/bundle.md).
ACTIVATION_LEVELS = 127
#: Inputs per scale along the axis a product sums over, at least (see :func:`block_size`).
BLOCK = 32

_Scope = Mapping[str, tuple[onnx.GraphProto, onnx.TensorProto]]


@dataclasses.dataclass(frozen=True)
class Range:
    """The smallest and largest value an activation took during calibration."""

    low: float
    high: float


class Observed:
    """What calibration saw of one activation: the smallest and largest finite value."""

    def __init__(self) -> None:
        self.low, self.high = math.inf, -math.inf

    def add(self, value: np.ndarray) -> None:
        """Take in one call's values (a call with a non-finite value is left out)."""
        if value.size and np.isfinite(value).all():
            self.low, self.high = min(self.low, float(value.min())), max(self.high, float(value.max()))

    @property
    def range(self) -> Range | None:
        return Range(self.low, self.high) if self.low <= self.high else None


@dataclasses.dataclass
class Site:
    """One product to quantize: ``node`` of ``graph`` reads weights at ``weights`` and an activation at ``activation``.

    ``path`` names the graph: ``()`` for the main graph, else the indices of the nodes (and
    of their body attribute) that lead to it, outermost first; with the activation's name it
    makes the activation's :data:`Key`. ``inner`` is each weight's axis the product sums over;
    ``scope`` the constants the node can read, with the graph holding each.
    """

    graph: onnx.GraphProto
    path: tuple[tuple[int, int], ...]
    node: onnx.NodeProto
    weights: tuple[int, ...]
    inner: int
    activation: int | None
    scope: _Scope = dataclasses.field(repr=False, default_factory=dict)

    @property
    def cell(self) -> bool:
        return self.node.op_type in CELLS


def _visible(graph: onnx.GraphProto, outer: _Scope) -> dict[str, tuple[onnx.GraphProto, onnx.TensorProto]]:
    """The constants ``graph`` can read: its own initializers, and its scope's that it does not shadow."""
    shadowed = {v.name for v in graph.input} | {o for n in graph.node for o in n.output}
    visible = {k: v for k, v in outer.items() if k not in shadowed}
    visible.update({t.name: (graph, t) for t in graph.initializer})
    return visible


def _weight(scope: _Scope, name: str, rank: int, inner: int) -> bool:
    """Whether ``name`` is a float32 constant of ``rank`` worth quantizing, summed over its axis ``inner``."""
    found = scope.get(name)
    if found is None:
        return False
    dims = list(found[1].dims)
    return (found[1].data_type == onnx.TensorProto.FLOAT and len(dims) == rank
            and int(np.prod(dims, dtype=np.int64)) >= MIN_WEIGHTS and dims[inner] >= MIN_INNER)


def _site(graph: onnx.GraphProto, path: tuple[tuple[int, int], ...], node: onnx.NodeProto, scope: _Scope
          ) -> Site | None:
    inputs = list(node.input)
    if node.op_type == "MatMul" and len(inputs) == 2 and _weight(scope, inputs[1], 2, 0) and inputs[0] not in scope:
        return Site(graph, path, node, (1,), 0, 0, scope)
    inner = 1 if attribute(node, "transB", 0) else 0
    if node.op_type == "Gemm" and len(inputs) >= 2 and not attribute(node, "transA", 0) \
            and _weight(scope, inputs[1], 2, inner) and inputs[0] not in scope:
        return Site(graph, path, node, (1,), inner, 0, scope)
    if node.op_type in CELLS and len(inputs) >= 3:
        weights = tuple(i for i in (1, 2) if _weight(scope, inputs[i], 3, 2))
        if weights:
            return Site(graph, path, node, weights, 2, None, scope)
    return None


def _sites(graph: onnx.GraphProto, path: tuple[tuple[int, int], ...], outer: _Scope) -> Iterator[Site]:
    scope = _visible(graph, outer)
    for index, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        site = _site(graph, path, node, scope)
        if site is not None:
            yield site
        for attr_index, attr in enumerate(node.attribute):
            if attr.HasField("g"):
                yield from _sites(attr.g, (*path, (index, attr_index)), scope)


def find_sites(model: onnx.ModelProto) -> list[Site]:
    """Every product of ``model`` whose weights are float32 constants worth quantizing (see the bounds above)."""
    return list(_sites(model.graph, (), {}))


def to_observe(sites: list[Site]) -> list[Key]:
    """The activations to calibrate, each once, in graph order: none when a recurrent operator is among ``sites``."""
    if any(site.cell for site in sites):
        return []
    found: dict[Key, None] = {}
    for site in sites:
        if site.activation is not None:
            found[(site.path, site.node.input[site.activation])] = None
    return list(found)


def block_size(inputs: int) -> int:
    """Inputs per scale for a product over ``inputs``: the smallest divisor of it from :data:`BLOCK` on (all of
    them when fewer), so that blocks tile the axis without padding."""
    return next((d for d in range(BLOCK, inputs + 1) if inputs % d == 0), inputs)


def quantized_weight(array: np.ndarray, inner: int) -> tuple[np.ndarray, np.ndarray]:
    """``(integers, scales)`` of a float weight: int8, symmetric, one scale per block of :func:`block_size` along
    ``inner`` and per index of every other axis (so per output channel).

    ``scales`` has the weight's shape with ``inner`` counting blocks.
    """
    size = block_size(array.shape[inner])
    moved = np.moveaxis(array, inner, -1).astype(np.float32)
    split = moved.reshape(*moved.shape[:-1], -1, size)
    peak = np.abs(split).max(axis=-1)
    scales = np.where(peak > 0, peak / LEVELS, 1.0).astype(np.float32)
    ints = np.clip(np.rint(split / scales[..., None]), -LEVELS, LEVELS).astype(np.int8)
    return np.moveaxis(ints.reshape(moved.shape), -1, inner), np.moveaxis(scales, -1, inner)


def dequantized(ints: np.ndarray, scales: np.ndarray, inner: int) -> np.ndarray:
    """What the graph computes from :func:`quantized_weight`'s result: the float32 weight."""
    moved = np.moveaxis(ints, inner, -1).astype(np.float32)
    split = moved.reshape(*moved.shape[:-1], scales.shape[inner], -1) * np.moveaxis(scales, inner, -1)[..., None]
    return np.moveaxis(split.reshape(moved.shape), -1, inner)


def activation_params(found: Range, levels: int = ACTIVATION_LEVELS) -> tuple[np.float32, np.uint8] | None:
    """uint8 scale and zero point mapping ``found`` (widened to hold 0) onto 0 .. ``levels``.

    None when the range is empty (the value was always 0) or not finite.
    """
    low, high = min(found.low, 0.0), max(found.high, 0.0)
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        return None
    scale = np.float32((high - low) / levels)
    zero = np.uint8(np.clip(np.rint(-low / float(scale)), 0, levels))
    return scale, zero


@dataclasses.dataclass
class QuantizeResult:
    """What :func:`quantize` did: products and recurrent operators rewritten, int8 weights, activations."""

    products: int = 0
    cells: int = 0
    weights: int = 0
    activations: int = 0


class _Rewriter:
    """One :func:`quantize` run: fresh names, and what each weight and activation became."""

    def __init__(self, model: onnx.ModelProto, observed: Mapping[Key, Observed], levels: int) -> None:
        self.builder = GraphBuilder(names_in(model.graph))
        self.observed, self.levels = observed, levels
        self.result = QuantizeResult()
        self.loaded: dict[tuple[int, str, int], str] = {}
        self.activations: dict[tuple[int, str], str | None] = {}
        self.holders: dict[int, onnx.GraphProto] = {}

    def weight(self, holder: onnx.GraphProto, tensor: onnx.TensorProto, inner: int) -> str:
        """The weight in float32, computed from its integers by nodes on constants placed first in ``holder``:
        ``Cast`` to float32, ``Reshape`` to split ``inner`` into blocks, ``Mul`` by the scales, ``Reshape`` back
        (one ``Mul`` when a block is the whole axis)."""
        key = (id(holder), tensor.name, inner)
        if key in self.loaded:
            return self.loaded[key]
        array = numpy_helper.to_array(tensor)
        ints, scales = quantized_weight(array, inner)
        b = self.builder
        last = b.fresh(f"{tensor.name}_dequantized")
        value = b.one("Cast", [b.const(f"{tensor.name}_quantized", ints)], to=onnx.TensorProto.FLOAT)
        if scales.shape[inner] == 1:
            value = b.one("Mul", [value, b.const(f"{tensor.name}_scales", scales)], last)
        else:
            split = [*ints.shape[:inner], scales.shape[inner], -1, *ints.shape[inner + 1:]]
            value = b.one("Reshape", [value, b.ints(f"{tensor.name}_blocks", split)])
            value = b.one("Mul", [value, b.const(f"{tensor.name}_scales", np.expand_dims(scales, inner + 1))])
            value = b.one("Reshape", [value, b.ints(f"{tensor.name}_shape", list(ints.shape))], last)
        holder.initializer.extend(b.initializers)
        for offset, node in enumerate(b.nodes):
            holder.node.insert(offset, node)  # constants only: first in its graph is in order
        b.nodes.clear()
        b.initializers.clear()
        self.loaded[key] = value
        self.holders[id(holder)] = holder
        self.result.weights += int(array.size)
        return value

    def activation(self, site: Site, new: list[onnx.NodeProto]) -> str | None:
        """The activation through ``QuantizeLinear`` and ``DequantizeLinear``; None without a usable range."""
        assert site.activation is not None
        value = site.node.input[site.activation]
        key = (id(site.graph), value)
        if key not in self.activations:
            seen = self.observed.get((site.path, value))
            found = seen.range if seen is not None else None
            params = activation_params(found, self.levels) if found is not None else None
            self.activations[key] = None
            if params is not None:
                b = self.builder
                step, at = float(params[0]), int(params[1])
                bounds = [np.float32(-at * step), np.float32((self.levels - at) * step)]
                names = [b.fresh(f"{value}_{what}") for what in ("scale", "zero_point", "low", "high")]
                site.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), n) for v, n in
                                              zip([params[0], params[1], *bounds], names, strict=True))
                clipped, q, dq = (b.fresh(f"{value}_{what}") for what in ("clipped", "quantized", "dequantized"))
                new += [b.make("Clip", [value, names[2], names[3]], [clipped], f"{value}_clip"),
                        b.make("QuantizeLinear", [clipped, names[0], names[1]], [q], f"{value}_quantize"),
                        b.make("DequantizeLinear", [q, names[0], names[1]], [dq], f"{value}_dequantize")]
                self.activations[key] = dq
                self.result.activations += 1
        return self.activations[key]

    def site(self, site: Site) -> None:
        new: list[onnx.NodeProto] = []
        for index in site.weights:
            holder, tensor = site.scope[site.node.input[index]]
            site.node.input[index] = self.weight(holder, tensor, site.inner)
        if site.activation is not None:
            quantized = self.activation(site, new)
            if quantized is not None:
                site.node.input[site.activation] = quantized
        at = next(i for i, n in enumerate(site.graph.node) if n is site.node)
        for offset, node in enumerate(new):
            site.graph.node.insert(at + offset, node)  # in place: the other sites' nodes stay valid
        if site.cell:
            self.result.cells += 1
        else:
            self.result.products += 1


def quantize(model: onnx.ModelProto, observed: Mapping[Key, Observed],
             activation_levels: int = ACTIVATION_LEVELS) -> QuantizeResult:
    """Rewrite every site of ``model`` in place, as the module docstring says.

    Args:
        model: the float32 graph (a copy: it is edited).
        observed: what calibration saw of each activation :func:`to_observe` names; an
            activation without a range stays float32 (its product's weights are quantized
            all the same).
        activation_levels: the largest quantized activation (at most 255); values are
            clipped to the calibrated range first, so none goes above it.
    """
    if not 1 <= activation_levels <= 255:
        raise ValueError(f"activation_levels must be from 1 to 255, got {activation_levels}")
    rewriter = _Rewriter(model, observed, activation_levels)
    for site in find_sites(model):
        rewriter.site(site)
    for holder in rewriter.holders.values():
        drop_unused_initializers(holder)
    return rewriter.result


def graph_at(model: onnx.ModelProto, path: tuple[tuple[int, int], ...]) -> onnx.GraphProto:
    """The graph of ``model`` at ``path`` (see :class:`Site`)."""
    graph = model.graph
    for node_index, attr_index in path:
        graph = graph.node[node_index].attribute[attr_index].g
    return graph
