"""Portable int8: QuantizeLinear/DequantizeLinear pairs around every matrix product, bodies included.

A graph's matrix products with constant weights (:func:`find_sites`) are ``MatMul`` and
``Gemm`` nodes wherever they are (the main graph, Scan and Loop bodies, nested bodies) and
the ``W``/``R`` inputs of the ``LSTM``, ``GRU`` and ``RNN`` operators. :func:`quantize` rewrites
each, in the standard ONNX domain only, so that any engine that runs ONNX runs it:

- the weight is stored as 8-bit integers, one scale per output channel (symmetric), and a
  ``DequantizeLinear`` beside the product (in the same body) turns it back into float32;
- the activation (the product's other input) passes through ``QuantizeLinear`` and
  ``DequantizeLinear`` with one scale and zero point from its calibrated range (uint8);
  onnxruntime fuses such a pair and the weight's into one integer product, OpenVINO runs it
  as its FakeQuantize pattern, and engines that do neither compute in float32 what the
  integer product computes.

The ``LSTM``/``GRU``/``RNN`` operators take float weights: theirs are stored as int8 and
dequantized at load, and their ``X`` input is quantized, but their products run in float32
on every engine (no standard operator multiplies a recurrent cell's weights in int8).

Recurrent state stays float32: the graph's state inputs and outputs, and the values a body
carries from step to step, are never quantized; only the copy a product reads is.

Why uint8 weights (:class:`Scheme`): onnxruntime multiplies uint8 activations by int8 weights,
on x86 CPUs without VNNI, with ``VPMADDUBSW``, whose int16 pair sums saturate; uint8 weights
(``w + 128`` with zero point 128: the same symmetric values) take its uint8 x uint8 kernel,
which cannot. See docs/bundle.md for the measurements.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from rnnexport.core.graphs import attribute
from rnnexport.export.onnxutil import GraphBuilder, names_in
from rnnexport.export.passes.graph import drop_unused_initializers

__all__ = ["SCHEMES", "QuantizeResult", "Range", "Scheme", "Site", "activation_params", "find_sites", "graph_at", "observed",
           "quantize"]

#: The recurrent operators whose weights (inputs 1 and 2: W and R) are quantized; their axis 1 is the gate rows.
_CELLS = frozenset({"LSTM", "GRU", "RNN"})
#: What an activation is known by: the path of its graph (see :class:`Site`) and its name.
Key = tuple[tuple[tuple[int, int], ...], str]
#: Products whose weights hold fewer elements are left in float32 (a scale per channel would outweigh them).
MIN_WEIGHTS = 64
#: Products over fewer inputs are left in float32: they scale their input rather than mix it, no integer
#: kernel gains from them, and quantizing a model's raw input (a forecaster's one value) costs precision.
MIN_INNER = 8


@dataclasses.dataclass(frozen=True)
class Scheme:
    """The integer types of a quantized product.

    Attributes:
        weights: ``uint8`` (symmetric, stored ``+ 128`` with zero point 128) or ``int8``
            (symmetric, zero point 0); ``levels`` is the largest magnitude a weight takes
            (127, or 63 for the reduced range that keeps ``VPMADDUBSW``'s sums within int16).
        activations: ``uint8`` (asymmetric: the calibrated range with zero inside it).
    """

    weights: str = "uint8"
    levels: int = 127
    at_load: bool = False


#: The schemes measured (docs/bundle.md); the variant uses ``SCHEMES["uint8"]``.
SCHEMES = {"uint8": Scheme("uint8", 127), "int8": Scheme("int8", 127), "int8-reduced": Scheme("int8", 63),
           "uint8-load": Scheme("uint8", 127, True), "int8-load": Scheme("int8", 127, True)}


@dataclasses.dataclass(frozen=True)
class Range:
    """The smallest and largest value an activation took during calibration."""

    low: float
    high: float

    def merge(self, other: Range) -> Range:
        return Range(min(self.low, other.low), max(self.high, other.high))


@dataclasses.dataclass
class Site:
    """One product to quantize: ``node`` of ``graph`` reads weights at ``weights`` and an activation at ``activation``.

    ``path`` names the graph: ``()`` for the main graph, else the indices of the nodes (and
    their body attribute) that lead to it, outermost first; ``axis`` is each weight's output-channel axis.
    """

    graph: onnx.GraphProto
    path: tuple[tuple[int, int], ...]
    node: onnx.NodeProto
    weights: tuple[int, ...]
    axis: int
    activation: int | None
    #: The constants the node can read, with the graph that holds each.
    scope: Mapping[str, tuple[onnx.GraphProto, onnx.TensorProto]] = dataclasses.field(repr=False,
                                                                                      default_factory=dict)


def _initializers(graph: onnx.GraphProto, outer: Mapping[str, tuple[onnx.GraphProto, onnx.TensorProto]]
                  ) -> dict[str, tuple[onnx.GraphProto, onnx.TensorProto]]:
    """The constants ``graph`` can read: its own initializers, and its scope's that it does not shadow."""
    shadowed = {v.name for v in graph.input} | {o for n in graph.node for o in n.output}
    visible = {k: v for k, v in outer.items() if k not in shadowed}
    visible.update({t.name: (graph, t) for t in graph.initializer})
    return visible


def _float_weight(scope: Mapping[str, tuple[onnx.GraphProto, onnx.TensorProto]], name: str, rank: int,
                  inner: int | None = None) -> bool:
    """Whether ``name`` is a float32 constant of ``rank`` worth quantizing (``inner``: the axis it sums over)."""
    found = scope.get(name)
    if found is None:
        return False
    dims = list(found[1].dims)
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    return (found[1].data_type == onnx.TensorProto.FLOAT and len(dims) == rank and count >= MIN_WEIGHTS
            and (inner is None or dims[inner] >= MIN_INNER))


def _site(graph: onnx.GraphProto, path: tuple[tuple[int, int], ...], node: onnx.NodeProto,
          scope: Mapping[str, tuple[onnx.GraphProto, onnx.TensorProto]]) -> Site | None:
    inputs = list(node.input)
    if node.op_type == "MatMul" and len(inputs) == 2 and _float_weight(scope, inputs[1], 2, 0) \
            and inputs[0] not in scope:
        return Site(graph, path, node, (1,), 1, 0, scope)
    transposed = bool(attribute(node, "transB", 0))
    if node.op_type == "Gemm" and len(inputs) >= 2 and not attribute(node, "transA", 0) \
            and _float_weight(scope, inputs[1], 2, 1 if transposed else 0) and inputs[0] not in scope:
        return Site(graph, path, node, (1,), 0 if transposed else 1, 0, scope)
    if node.op_type in _CELLS and len(inputs) >= 3:
        weights = tuple(i for i in (1, 2) if _float_weight(scope, inputs[i], 3))
        if weights:
            return Site(graph, path, node, weights, 1, 0 if inputs[0] not in scope else None, scope)
    return None


def _sites(graph: onnx.GraphProto, path: tuple[tuple[int, int], ...],
           outer: Mapping[str, tuple[onnx.GraphProto, onnx.TensorProto]]) -> Iterator[Site]:
    scope = _initializers(graph, outer)
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
    """Every product of ``model`` with constant float32 weights of at least :data:`MIN_WEIGHTS` elements."""
    return list(_sites(model.graph, (), {}))


def observed(sites: list[Site]) -> list[Key]:
    """The activations to calibrate: ``(graph path, value name)``, each once, in graph order."""
    found: dict[Key, None] = {}
    for site in sites:
        if site.activation is not None and site.node.op_type not in _CELLS:
            found[(site.path, site.node.input[site.activation])] = None
    return list(found)


def _weight_scales(array: np.ndarray, axis: int, levels: int) -> np.ndarray:
    """One symmetric scale per channel along ``axis``: the channel's largest magnitude over ``levels``."""
    reduce = tuple(i for i in range(array.ndim) if i != axis)
    peak = np.abs(array).max(axis=reduce) if reduce else np.abs(array)
    return np.where(peak > 0, peak / levels, 1.0).astype(np.float32)


def _quantized_weight(array: np.ndarray, axis: int, scheme: Scheme) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(integers, scales, zero points)`` of a float weight, per channel along ``axis``."""
    scales = _weight_scales(array, axis, scheme.levels)
    shape = [1] * array.ndim
    shape[axis] = -1
    ints = np.clip(np.rint(array / scales.reshape(shape)), -scheme.levels, scheme.levels).astype(np.int16)
    if scheme.weights == "uint8":
        return (ints + 128).astype(np.uint8), scales, np.full(scales.shape, 128, np.uint8)
    return ints.astype(np.int8), scales, np.zeros(scales.shape, np.int8)


def activation_params(found: Range) -> tuple[np.float32, np.uint8] | None:
    """Scale and zero point of an activation whose calibrated range is ``found``; None when it was always 0."""
    low, high = min(found.low, 0.0), max(found.high, 0.0)
    if not high > low:
        return None
    scale = np.float32((high - low) / 255.0)
    zero = np.uint8(np.clip(np.rint(-low / float(scale)), 0, 255))
    return scale, zero


@dataclasses.dataclass
class QuantizeResult:
    """What :func:`quantize` did: products rewritten, weights stored as integers, activations quantized."""

    products: int = 0
    cells: int = 0
    weights: int = 0
    activations: int = 0


class _Rewriter:
    """The state of one :func:`quantize` run: fresh names, and what each weight and activation became."""

    def __init__(self, model: onnx.ModelProto, ranges: Mapping[Key, Range], scheme: Scheme) -> None:
        self.builder = GraphBuilder(names_in(model.graph))
        self.ranges, self.scheme = ranges, scheme
        self.result = QuantizeResult()
        self.stored: dict[tuple[int, str, int], tuple[str, str, str]] = {}  # (holder, weight, axis) -> int, scale, zero
        self.loaded: dict[tuple[int, str, int], str] = {}  # (holder, weight, axis) -> float value made at load
        self.beside: dict[tuple[int, str, int], str] = {}  # (graph, weight, axis) -> its DequantizeLinear output
        self.activations: dict[tuple[int, str], str] = {}  # (graph, activation) -> its quantize-dequantize output
        self.holders: dict[int, onnx.GraphProto] = {}

    def _store(self, holder: onnx.GraphProto, tensor: onnx.TensorProto, axis: int) -> tuple[str, str, str]:
        key = (id(holder), tensor.name, axis)
        if key not in self.stored:
            ints, scales, zeros = _quantized_weight(numpy_helper.to_array(tensor), axis, self.scheme)
            hint = tensor.name
            names = (self.builder.fresh(f"{hint}_quantized"), self.builder.fresh(f"{hint}_scale"),
                     self.builder.fresh(f"{hint}_zero_point"))
            holder.initializer.extend(numpy_helper.from_array(a, n) for a, n in zip((ints, scales, zeros), names))
            self.stored[key] = names
            self.holders[id(holder)] = holder
            self.result.weights += int(ints.size)
        return self.stored[key]

    def at_load(self, holder: onnx.GraphProto, tensor: onnx.TensorProto, axis: int) -> str:
        """The weight as float32 computed from its integers by Cast, Sub and Mul on constants (folded at load)."""
        key = (id(holder), tensor.name, axis)
        if key not in self.loaded:
            ints, scales, zeros = self._store(holder, tensor, axis)
            shape = [1] * len(tensor.dims)
            shape[axis] = -1
            b = self.builder
            cast = b.one("Cast", [ints], to=onnx.TensorProto.FLOAT)
            if self.scheme.weights == "uint8":
                cast = b.one("Sub", [cast, b.scalar(f"{tensor.name}_offset", np.float32(128))])
            column = numpy_helper.to_array(next(t for t in holder.initializer if t.name == scales)).reshape(shape)
            scale = b.const(f"{tensor.name}_scale_column", column)
            self.loaded[key] = b.one("Mul", [cast, scale], self.builder.fresh(f"{tensor.name}_dequantized"))
            holder.initializer.extend(b.initializers)
            for offset, node in enumerate(b.nodes):
                holder.node.insert(offset, node)
            b.nodes.clear()
            b.initializers.clear()
            del zeros  # zero points: 128 for uint8 (the Sub above), 0 for int8
        return self.loaded[key]

    def beside_product(self, site: Site, holder: onnx.GraphProto, tensor: onnx.TensorProto,
                       new: list[onnx.NodeProto]) -> str:
        """The weight as float32 from a DequantizeLinear in the product's own graph (what integer kernels fuse)."""
        key = (id(site.graph), tensor.name, site.axis)
        if key not in self.beside:
            stored = self._store(holder, tensor, site.axis)
            self.beside[key] = self.builder.fresh(f"{tensor.name}_dequantized")
            new.append(self.builder.make("DequantizeLinear", list(stored), [self.beside[key]],
                                         f"{tensor.name}_dequantize", axis=site.axis))
        return self.beside[key]

    def activation(self, site: Site, new: list[onnx.NodeProto]) -> str | None:
        """The product's activation through QuantizeLinear and DequantizeLinear; None without a calibrated range."""
        assert site.activation is not None
        value = site.node.input[site.activation]
        key = (id(site.graph), value)
        if key not in self.activations:
            found = self.ranges.get((site.path, value))
            params = activation_params(found) if found is not None else None
            if params is None:
                return None
            b = self.builder
            scale, zero = b.fresh(f"{value}_scale"), b.fresh(f"{value}_zero_point")
            site.graph.initializer.extend([numpy_helper.from_array(np.asarray(params[0], np.float32), scale),
                                           numpy_helper.from_array(np.asarray(params[1], np.uint8), zero)])
            q, dq = b.fresh(f"{value}_quantized"), b.fresh(f"{value}_dequantized")
            new += [b.make("QuantizeLinear", [value, scale, zero], [q], f"{value}_quantize"),
                    b.make("DequantizeLinear", [q, scale, zero], [dq], f"{value}_dequantize")]
            self.activations[key] = dq
            self.result.activations += 1
        return self.activations[key]

    def site(self, site: Site) -> None:
        new: list[onnx.NodeProto] = []
        cell = site.node.op_type in _CELLS
        for index in site.weights:
            holder, tensor = site.scope[site.node.input[index]]
            at_load = cell or self.scheme.at_load
            site.node.input[index] = (self.at_load(holder, tensor, site.axis) if at_load
                                      else self.beside_product(site, holder, tensor, new))
        if not cell and site.activation is not None:
            quantized = self.activation(site, new)
            if quantized is not None:
                site.node.input[site.activation] = quantized
        _insert_before(site.graph, site.node, new)
        if cell:
            self.result.cells += 1
        else:
            self.result.products += 1


def _insert_before(graph: onnx.GraphProto, node: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
    """``new`` into ``graph`` just before ``node`` (in place: references to its nodes stay valid)."""
    at = next(i for i, n in enumerate(graph.node) if n is node)
    for offset, made in enumerate(new):
        graph.node.insert(at + offset, made)


def quantize(model: onnx.ModelProto, ranges: Mapping[Key, Range], scheme: Scheme = SCHEMES["uint8"]
             ) -> QuantizeResult:
    """Rewrite every site of ``model`` in place (see the module docstring).

    Args:
        model: the float32 graph (a copy: it is edited).
        ranges: per :func:`observed` key, the calibrated range of that activation; an
            activation without one keeps float32 (its weights are still quantized).
        scheme: the integer types.
    """
    rewriter = _Rewriter(model, ranges, scheme)
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
