"""Small-device variants of a float32 graph, each checked against it with its own tolerance.

- ``ort``: ORT format (onnxruntime's own converter) plus the required-operators
  config for a reduced onnxruntime build;
- ``int8``: onnxruntime dynamic quantization (LSTM becomes DynamicQuantizeLSTM), with
  uint8 weights so that no CPU runs a saturating kernel (see :func:`_unsigned_weights`);
- ``int8-qdq``: portable int8 in standard ONNX operators (:mod:`rnnexport.packaging.qdq`):
  int8 weights per channel in every lowering, Scan bodies included, and activations
  quantized with ranges calibrated on streamed sequences (:mod:`rnnexport.packaging.calibration`);
- ``fp16``: float16 weights, cast to float32 at load: it halves the file, it does
  not speed up CPU inference (the computation stays float32);
- ``openvino-stateful``: the step graph as OpenVINO IR with the state inside the model
  (:mod:`rnnexport.packaging.stateful`), streamed step by step against the step graph.

A variant that cannot be made, saves too little, or misses its tolerance is left
out with the reason, never shipped silently. Each graph of a bundle (sequence and
step) gets its own variants, beside it in ``variants/`` (``openvino-stateful`` only the step graph).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rnnexport.bundle import STATEFUL_VARIANT, VariantEntry
from rnnexport.core.compare import VARIANT_TOLERANCES, Tolerance, compare
from rnnexport.core.contract import Form, IOSpec
from rnnexport.core.cpu import this_cpu
from rnnexport.core.errors import BundleError, RunTimeout, describe
from rnnexport.core.graphs import walk, walk_graphs
from rnnexport.core.inputs import random_inputs, random_state
from rnnexport.core.io import atomic_write
from rnnexport.core.ort import run_limited, start_session
from rnnexport.core.process import start_child, stop_child
from rnnexport.engines.base import START_ALLOWANCE
from rnnexport.packaging.calibration import Calibration, calibrate
from rnnexport.packaging.qdq import find_sites, quantize, to_observe
from rnnexport.packaging.stateful import make_ir, streamed
from rnnexport.packaging.text import is_char_model, sampled_text

__all__ = ["VARIANT_FILES", "GraphContext", "applies", "check", "left_out", "make_variant", "onnxruntime_only"]

#: Each variant's (first) file name beside its graph, from the graph's stem.
VARIANT_FILES = {"ort": "{}.ort", "int8": "{}.int8.onnx", "int8-qdq": "{}.int8-qdq.onnx", "fp16": "{}.fp16.onnx",
                 STATEFUL_VARIANT: "{}.openvino-stateful.xml"}
#: Streams and time steps of the text a char model's variants are checked on.
TEXT_STREAMS, TEXT_STEPS = 4, 64


@dataclasses.dataclass(frozen=True)
class GraphContext:
    """What making and checking a variant needs to know of its graph beyond the file.

    Attributes:
        io, form, seq_len: the graph's contract, form and fixed T (None: any).
        family: the cell family from its metadata.
        prompt: for a char model, the text its checks start from (the card's prompt).
        calibration: the sequences ``int8-qdq`` takes its activation ranges from.
        timeout: seconds each call of the graph or a variant may take (None: no bound).
    """

    io: IOSpec
    form: Form
    seq_len: int | None = None
    family: str | None = None
    prompt: str | None = None
    calibration: Calibration | None = None
    timeout: float | None = None

#: At least this fraction of the float32 weights must become int8 for the variant to be worth shipping.
INT8_MIN_QUANTIZED = 0.5


def _fp16_graph(graph: onnx.GraphProto) -> int:
    """Store ``graph``'s float32 weights (and its subgraphs') as float16, cast back at load."""
    converted = 0
    for sub in list(walk_graphs(graph)):
        casts = []
        for tensor in sub.initializer:
            array = numpy_helper.to_array(tensor) if tensor.data_type == onnx.TensorProto.FLOAT else None
            if array is None or array.size < 16:
                continue
            name = tensor.name
            tensor.CopyFrom(numpy_helper.from_array(array.astype(np.float16), name + ".fp16"))
            casts.append(helper.make_node("Cast", [name + ".fp16"], [name], name=f"cast_{name}",
                                          to=onnx.TensorProto.FLOAT))
            converted += array.size
        nodes = casts + list(sub.node)
        del sub.node[:]
        sub.node.extend(nodes)
    return converted


def _fp16(source: Path, target: Path) -> str:
    model = onnx.load(source)
    converted = _fp16_graph(model.graph)
    onnx.checker.check_model(model)
    atomic_write(target, model.SerializeToString(), "fp16 variant", BundleError)
    return f"{converted} weights stored as float16 and cast to float32 at load; saves size, not compute time"


def _int8(source: Path, target: Path, family: str | None) -> str:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs advice on the root logger
    # onnxruntime writes the file itself: into a work folder inside the bundle's temporary folder
    with tempfile.TemporaryDirectory(dir=target.parent.parent, prefix=".int8-") as tmp:
        work = Path(tmp) / target.name
        try:
            quantize_dynamic(str(source), str(work), weight_type=QuantType.QUInt8, per_channel=True)
        finally:
            root.setLevel(level)
        model = onnx.load(work)
    _unsigned_weights(model)
    signed = _signed_weights(model)
    if signed:
        raise _Skip(f"{signed[0]} has weights that are not uint8 constants; onnxruntime's uint8 x int8 kernel "
                    "saturates on x86 CPUs without VNNI, so the variant would be right on some CPUs only")
    atomic_write(target, model.SerializeToString(), "int8 variant", BundleError)
    ratio = target.stat().st_size / source.stat().st_size
    original = onnx.load(source)
    floats = sum(np.prod(t.dims) for g in walk_graphs(original.graph) for t in g.initializer
                 if t.data_type == onnx.TensorProto.FLOAT)
    ints = sum(np.prod(t.dims) for g in walk_graphs(model.graph) for t in g.initializer
               if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))
    share = ints / max(floats, 1)
    if share < INT8_MIN_QUANTIZED:
        ops = {n.op_type for n in original.graph.node}
        why = ("onnxruntime has no int8 GRU kernel" if "GRU" in ops else
               "onnxruntime has no int8 RNN kernel" if "RNN" in ops else
               "dynamic quantization does not reach into the Scan body" if "Scan" in ops else
               "few weights are in quantizable operators")
        raise _Skip(f"{why}: only {share:.0%} of the weights would be int8 (the output head), so the "
                    "variant is not worth shipping")
    operators = sorted({n.op_type for n in onnx.load(target).graph.node} - {"Identity"})
    return f"{share:.0%} of the weights int8, file {ratio:.0%} of the float32 size; operators: {', '.join(operators)}"


def _int8_qdq(source: Path, target: Path, context: GraphContext) -> tuple[str, dict[str, Any]]:
    """Quantize ``source`` as :func:`rnnexport.packaging.qdq.quantize` does, ranges from ``context.calibration``."""
    model = onnx.load(source)
    floats = sum(int(np.prod(t.dims)) for g in walk_graphs(model.graph) for t in g.initializer
                 if t.data_type == onnx.TensorProto.FLOAT)
    sites = find_sites(model)
    if not sites:
        raise _Skip("the graph has no matrix product with constant weights to quantize")
    keys = to_observe(sites)
    if keys and context.calibration is None:
        raise _Skip("no calibration data")
    seen = calibrate(model, keys, context.calibration, context.io, context.form, context.seq_len, context.timeout) \
        if keys and context.calibration is not None else {}
    done = quantize(model, seen)
    share = done.weights / max(floats, 1)
    if share < INT8_MIN_QUANTIZED:
        raise _Skip(f"only {share:.0%} of the weights are in products worth quantizing, so the variant is not worth "
                    "shipping")
    onnx.checker.check_model(model)
    atomic_write(target, model.SerializeToString(), "int8-qdq variant", BundleError)
    ratio = target.stat().st_size / source.stat().st_size
    parts = [f"{share:.0%} of the weights int8 (a scale per output channel and block of inputs, dequantized at "
             f"load), file {ratio:.0%} of the float32 size"]
    if done.products and done.activations:
        calibration = context.calibration
        assert calibration is not None
        parts.append(f"{done.activations} of {done.products} matrix products with 7-bit activations, ranges from "
                     f"{calibration.source} ({len(calibration.sequences)} sequences, "
                     f"{calibration.steps(context.io)} stream steps)")
    if done.cells:
        parts.append(f"{done.cells} recurrent operator(s) with int8 weights computing in float32, so no activation "
                     "is quantized")
    record: dict[str, Any] = {"products": done.products, "recurrent_operators": done.cells, "quantized_activations": done.activations}
    if seen and context.calibration is not None:
        record.update(calibration=context.calibration.source, calibration_sequences=len(context.calibration.sequences),
                      calibration_steps=context.calibration.steps(context.io))
    return "; ".join(parts), record


#: onnxruntime's integer GEMM operators and which of their inputs hold the (constant) weights.
_WEIGHT_INPUTS = {"DynamicQuantizeLSTM": (1, 2), "MatMulInteger": (1,), "DynamicQuantizeMatMul": (1,),
                  "MatMulIntegerToFloat": (1,), "ConvInteger": (1,)}
#: DynamicQuantizeLSTM's inputs (onnxruntime's com.microsoft schema): W, R and their zero points.
_LSTM_WEIGHTS = ((1, 9), (2, 11))


def _unsigned_weights(model: onnx.ModelProto) -> None:
    """Store DynamicQuantizeLSTM's int8 weights as the same values in uint8 (``w + 128``, zero point + 128).

    Why: onnxruntime multiplies uint8 activations by int8 weights, on x86 CPUs without VNNI
    (AVX2 only, or AVX-512 without VNNI), with VPMADDUBSW, which adds each pair of products
    in saturating int16 (2 * 255 * 127 > 32767). An LSTM's recurrent input (h near +-1,
    quantized near 0 or 255) hits that limit: lstm-charlm's int8 graphs then missed their
    tolerance by far (max abs error 2.4 instead of 0.64). uint8 x uint8 widens both operands
    to int16 before multiplying and cannot saturate, so the graph computes the same on every
    CPU. ``quantize_dynamic(weight_type=QUInt8)`` makes the MatMul weights uint8 but gives the
    LSTM int8 weights whatever it is asked; this rewrites those (both W and R: the schema
    gives them and their zero points one type).
    """
    constants = {t.name: t for g in walk_graphs(model.graph) for t in g.initializer}
    for node in walk(model.graph):
        if node.op_type != "DynamicQuantizeLSTM":
            continue
        pairs = [(constants.get(node.input[w]), constants.get(node.input[z])) for w, z in _LSTM_WEIGHTS
                 if max(w, z) < len(node.input)]
        if not all(w is not None and z is not None and w.data_type == z.data_type for w, z in pairs):
            continue  # not constants: _signed_weights reports it
        for weight, zero in pairs:
            assert weight is not None and zero is not None
            if weight.data_type != onnx.TensorProto.INT8:
                continue
            for tensor in (weight, zero):
                shifted = (numpy_helper.to_array(tensor).astype(np.int16) + 128).astype(np.uint8)
                tensor.CopyFrom(numpy_helper.from_array(shifted, tensor.name))


def _signed_weights(model: onnx.ModelProto) -> list[str]:
    """The integer GEMM nodes whose weights are not uint8 constants (``"MatMulInteger 'name'"``)."""
    constants = {t.name: t.data_type for g in walk_graphs(model.graph) for t in g.initializer}
    return [f"{node.op_type} {node.name!r}" for node in walk(model.graph)
            if any(i < len(node.input) and constants.get(node.input[i]) != onnx.TensorProto.UINT8
                   for i in _WEIGHT_INPUTS.get(node.op_type, ()))]


def _ort(source: Path, target: Path, config: Path, timeout: float | None) -> str:
    # The work folder lies inside the bundle's temporary folder, so a killed run leaves nothing elsewhere;
    # the converter is started to die with this process (no orphan when the command is killed).
    budget = START_ALLOWANCE + (timeout or 0.0)
    with tempfile.TemporaryDirectory(dir=target.parent.parent, prefix=".ort-") as tmp:
        work = Path(tmp) / "model.onnx"
        shutil.copyfile(source, work)
        converter = start_child(
            [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(work),
             "--output_dir", str(Path(tmp) / "out"), "--optimization_style", "Fixed"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = converter.communicate(timeout=budget)
        except subprocess.TimeoutExpired as e:
            raise _Skip(f"onnxruntime's ORT-format converter did not finish within {budget:g} s") from e
        finally:
            stop_child(converter)
        produced = Path(tmp) / "out" / "model.ort"
        if converter.returncode != 0 or not produced.exists():
            lines = (err or out).strip().splitlines()
            raise _Skip(f"onnxruntime's ORT-format converter failed: {lines[-1] if lines else converter.returncode}")
        atomic_write(target, produced.read_bytes(), "ORT-format variant", BundleError)
        ops = [line for line in (Path(tmp) / "out" / "model.required_operators.config").read_text().splitlines()
               if line and not line.startswith("#")]
    text = (f"# operators {target.name} needs; build onnxruntime with --include_ops_by_config {config.name}\n"
            + "\n".join(ops) + "\n")
    atomic_write(config, text.encode(), "required-operators config", BundleError)
    return "ORT format for onnxruntime mobile/minimal builds; use with the required-operators config"


class _Skip(Exception):
    pass


#: Time steps of the short stream every variant is checked on (the long one has :data:`TEXT_STEPS`).
SHORT_STEPS = 17


def _cases(reference: Path, context: GraphContext) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """What a deployed model sees: streams from the zero state, and one call from a random state.

    A char model's streams are text its float32 graph writes (:func:`sampled_text`), not random
    characters: fed those, a char model's state is chaotic (any change of its weights moves its
    logits by units within a few dozen characters), whatever the variant.
    """
    io, form, seq_len = context.io, context.form, context.seq_len
    rng = np.random.default_rng(7)
    if form is Form.STEP:
        return [(random_inputs(io, form, 4, None, rng), random_state(io, 4, rng, 0.5))]
    if seq_len is not None:
        streams = [random_inputs(io, form, 4, seq_len, rng)]
    elif is_char_model(io):
        text = sampled_text(reference, io, context.prompt, 2 * TEXT_STREAMS, TEXT_STEPS, context.timeout)
        streams = [text[:SHORT_STEPS, :TEXT_STREAMS], text[:, TEXT_STREAMS:]]
    else:
        streams = [random_inputs(io, form, 4, t, rng) for t in (SHORT_STEPS, TEXT_STEPS)]
    cases = [(x, io.state.start(int(x.shape[io.batch_axis]))) for x in streams]
    return cases + [(random_inputs(io, form, 4, seq_len or 1, rng), random_state(io, 4, rng, 0.5))]


def check(reference: Path, candidate: Path, context: GraphContext, tol: Tolerance) -> dict[str, dict[str, Any]]:
    """Worst errors of ``candidate`` against ``reference`` per output on the CPU EP, by the one comparator
    (each call within ``context.timeout``: :class:`~rnnexport.core.errors.RunTimeout` past it)."""
    io, form = context.io, context.form
    ref = start_session(reference, "cpu").session
    cand = start_session(candidate, "cpu").session
    names = [s.name for s in io.outputs(form)]
    pairs = []
    for x, state in _cases(reference, context):
        feeds = io.feeds(x, state)
        want = run_limited(ref, names, feeds, context.timeout, f"a check call of the {form.value} graph")
        got = run_limited(cand, names, feeds, context.timeout, f"a check call of a variant of the {form.value} graph")
        pairs.append((got, want))
    return _figures(names, pairs, tol)


def _check_stateful(reference: Path, candidate: Path, context: GraphContext, tol: Tolerance) -> dict[str, dict[str, Any]]:
    """:func:`check` of the stateful IR ``candidate``: the same cases, streamed step by step through it and the step graph."""
    cases = _cases(reference, dataclasses.replace(context, form=Form.SEQUENCE, seq_len=None))
    pairs = streamed(reference, candidate, context.io, cases, context.timeout)
    return _figures([s.name for s in context.io.outputs(Form.STEP)], pairs, tol)


def _figures(names: list[str], pairs: list[tuple[list[np.ndarray], list[np.ndarray]]],
             tol: Tolerance) -> dict[str, dict[str, Any]]:
    """Per output, the worst figures over ``(got, want)`` pairs (outputs in ``names`` order)."""
    figures = {n: {"max_abs": 0.0, "max_rel": 0.0, "range": 0.0, "passed": True} for n in names}
    for got, want in pairs:
        for name, a, b in zip(names, got, want, strict=True):
            found = compare(a, b, tol)
            worst = figures[name]
            worst["max_abs"] = max(worst["max_abs"], found.max_abs if found.max_abs is not None else float("inf"))
            worst["max_rel"] = max(worst["max_rel"], found.max_rel if found.max_rel is not None else float("inf"))
            worst["range"] = max(worst["range"], float(np.abs(b).max()) if b.size else 0.0)
            worst["passed"] = worst["passed"] and found.passed and bool(np.isfinite(a).all())
    return figures


def applies(name: str, form: Form) -> bool:
    """Whether variant ``name`` is made of a graph of ``form`` (``openvino-stateful``: of a step graph only)."""
    return name != STATEFUL_VARIANT or form is Form.STEP


def onnxruntime_only(path: Path) -> bool:
    """Whether only onnxruntime runs the variant file: the ORT format, or operators of its own domains."""
    if path.suffix == ".ort":
        return True
    return any(node.domain not in ("", "ai.onnx") for node in walk(onnx.load(path).graph))


def make_variant(name: str, graph: str, source: Path, root: Path, context: GraphContext) -> VariantEntry:
    """Make variant ``name`` of the bundle graph ``source`` (inside ``root``) beside it in ``variants/``; check it.

    Raises:
        RunTimeout: a call of the graph or the variant ran over ``context.timeout`` (a graph that
            loops is not packaged at all).
    """
    stem = source.stem
    out = source.parent / "variants"
    out.mkdir(exist_ok=True)
    tolerance = VARIANT_TOLERANCES[name]
    target = out / VARIANT_FILES[name].format(stem)
    files = [target] + ([out / f"{stem}.required_operators.config"] if name == "ort" else []) + \
        ([target.with_suffix(".bin")] if name == STATEFUL_VARIANT else [])
    quantization: dict[str, Any] = {}
    try:
        if name == "ort":
            notes = _ort(source, target, files[1], context.timeout)
        elif name == "int8":
            notes = _int8(source, target, context.family)
        elif name == "int8-qdq":
            notes, quantization = _int8_qdq(source, target, context)
        elif name == STATEFUL_VARIANT:
            notes = make_ir(source, target, context.io)
        else:
            notes = _fp16(source, target)
        figures = (_check_stateful if name == STATEFUL_VARIANT else check)(source, target, context, tolerance)
    except RunTimeout:
        _left_out(name, graph, files, "stopped")
        raise
    except _Skip as e:
        return _left_out(name, graph, files, str(e))
    except Exception as e:  # noqa: BLE001 - a variant that fails to build is left out, not fatal
        return _left_out(name, graph, files, f"could not be made: {describe(e)}")
    cpu = this_cpu()  # the figures hold on this CPU's kernels; the manifest says which
    if not all(f["passed"] for f in figures.values()):
        worst = max(f["max_abs"] for f in figures.values())
        return dataclasses.replace(
            _left_out(name, graph, files, f"misses its tolerance on {cpu.describe()} (max abs error {worst:.3g}; "
                      f"{tolerance.describe()})", figures=figures, tolerance=_triple(tolerance)), cpu=cpu)
    rel = tuple(p.relative_to(root).as_posix() for p in files)
    size = sum(p.stat().st_size for p in files) if name == STATEFUL_VARIANT else target.stat().st_size  # the IR and its weights
    engines = ("openvino",) if name == STATEFUL_VARIANT else ("onnxruntime",) if onnxruntime_only(target) else ()
    return VariantEntry(name, graph, True, files=rel, size_bytes=size, tolerance=_triple(tolerance), figures=figures,
                        notes=notes, engines=engines, cpu=cpu, quantization=quantization)


def _triple(tol: Tolerance) -> tuple[float, float, float]:
    """The manifest's ``(atol, range_atol, rtol)``."""
    return (tol.atol, tol.range_atol, tol.rtol)


def left_out(entry: VariantEntry, root: Path, reason: str) -> VariantEntry:
    """``entry`` (made) taken out of the bundle ``root`` after all: its files deleted, the reason and CPU kept."""
    return dataclasses.replace(_left_out(entry.name, entry.of, [root / f for f in entry.files], reason,
                                         dict(entry.figures), entry.tolerance), cpu=entry.cpu)


def _left_out(name: str, graph: str, files: list[Path], reason: str,
              figures: dict[str, dict[str, Any]] | None = None,
              tolerance: tuple[float, float, float] | None = None) -> VariantEntry:
    for path in files:
        path.unlink(missing_ok=True)
    out = files[0].parent
    if out.exists() and not any(out.iterdir()):
        out.rmdir()
    return VariantEntry(name, graph, False, reason=reason, figures=figures or {},
                        tolerance=tolerance or (0.0, 0.0, 0.0))
