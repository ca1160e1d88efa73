"""Small-device variants of a float32 graph, each checked against it with its own tolerance.

- ``ort``: ORT format (onnxruntime's own converter) plus the required-operators
  config for a reduced onnxruntime build;
- ``int8``: onnxruntime dynamic quantization (LSTM becomes DynamicQuantizeLSTM);
- ``fp16``: float16 weights, cast to float32 at load: it halves the file, it does
  not speed up CPU inference (the computation stays float32).

A variant that cannot be made, saves too little, or misses its tolerance is left
out with the reason, never shipped silently.
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
import onnxruntime as ort
from onnx import helper, numpy_helper

from rnnexport.errors import describe
from rnnexport.model import Form, IOSpec
from rnnexport.testing import feeds, max_errors, random_inputs, random_state

__all__ = ["TOLERANCES", "VARIANTS", "VariantResult", "make_variant"]

VARIANTS = ("ort", "int8", "fp16")
#: (atol, range_atol, rtol) each variant must meet against the float32 graph: every element
#: has ``|a - b| <= atol + range_atol * max|b| + rtol * |b|``, where ``max|b|`` is the output's
#: largest magnitude in that case (quantization error scales with it).
TOLERANCES = {"ort": (1e-5, 0.0, 1e-4), "int8": (5e-2, 5e-2, 1e-1), "fp16": (1e-2, 1e-2, 1e-2)}
#: At least this fraction of the float32 weights must become int8 for the variant to be worth shipping.
INT8_MIN_QUANTIZED = 0.5


@dataclasses.dataclass(frozen=True)
class VariantResult:
    """One variant: made and verified (``ok``), or left out with the reason."""

    name: str
    of: str
    ok: bool
    reason: str = ""
    files: tuple[str, ...] = ()
    size_bytes: int = 0
    tolerance: tuple[float, float, float] = (0.0, 0.0, 0.0)
    figures: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    notes: str = ""

    def to_json(self) -> dict[str, Any]:
        data = {"name": self.name, "of": self.of, "status": "ok" if self.ok else "skipped"}
        if self.reason:
            data["reason"] = self.reason
        if self.files:
            data["files"] = list(self.files)
            data["size_bytes"] = self.size_bytes
        if self.figures:
            data["tolerance"] = dict(zip(("atol", "range_atol", "rtol"), self.tolerance))
            data["figures"] = self.figures
        if self.notes:
            data["notes"] = self.notes
        return data


def _fp16_graph(graph: onnx.GraphProto) -> int:
    """Store ``graph``'s float32 weights (and its subgraphs') as float16, cast back at load."""
    casts, converted = [], 0
    for tensor in graph.initializer:
        array = numpy_helper.to_array(tensor) if tensor.data_type == onnx.TensorProto.FLOAT else None
        if array is None or array.size < 16:
            continue
        name = tensor.name
        tensor.CopyFrom(numpy_helper.from_array(array.astype(np.float16), name + ".fp16"))
        casts.append(helper.make_node("Cast", [name + ".fp16"], [name], name=f"cast_{name}", to=onnx.TensorProto.FLOAT))
        converted += array.size
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                converted += _fp16_graph(sub)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return converted


def _fp16(source: Path, target: Path) -> str:
    model = onnx.load(source)
    converted = _fp16_graph(model.graph)
    onnx.checker.check_model(model)
    onnx.save(model, target)
    return f"{converted} weights stored as float16 and cast to float32 at load; saves size, not compute time"


def _int8(source: Path, target: Path, family: str | None) -> str:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs advice on the root logger
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
    ratio = target.stat().st_size / source.stat().st_size
    original = onnx.load(source)
    floats = sum(np.prod(t.dims) for t in original.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    ints = sum(np.prod(t.dims) for t in onnx.load(target).graph.initializer
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
    ops = sorted({n.op_type for n in onnx.load(target).graph.node} - {"Identity"})
    return f"{share:.0%} of the weights int8, file {ratio:.0%} of the float32 size; operators: {', '.join(ops)}"


def _ort(source: Path, target: Path, config: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "model.onnx"
        shutil.copyfile(source, work)
        proc = subprocess.run(
            [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(work),
             "--output_dir", str(Path(tmp) / "out"), "--optimization_style", "Fixed"],
            capture_output=True, text=True,
        )
        produced = Path(tmp) / "out" / "model.ort"
        if proc.returncode != 0 or not produced.exists():
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            raise _Skip(f"onnxruntime's ORT-format converter failed: {lines[-1] if lines else proc.returncode}")
        shutil.copyfile(produced, target)
        ops = [line for line in (Path(tmp) / "out" / "model.required_operators.config").read_text().splitlines()
               if line and not line.startswith("#")]
    config.write_text(f"# operators {target.name} needs; build onnxruntime with --include_ops_by_config "
                      f"{config.name}\n" + "\n".join(ops) + "\n")
    return "ORT format for onnxruntime mobile/minimal builds; use with the required-operators config"


class _Skip(Exception):
    pass


def _cases(io: IOSpec, form: Form, seq_len: int | None) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """What a deployed model sees: streams from the zero state, and one step from a random state."""
    rng = np.random.default_rng(7)
    if form is Form.STEP:
        return [(random_inputs(io, form, 4, None, rng), random_state(io, 4, rng, 0.5))]
    lengths = [seq_len] if seq_len else [17, 64]
    cases = [(random_inputs(io, form, 4, t, rng), io.state.zeros(4)) for t in lengths]
    return cases + [(random_inputs(io, form, 4, seq_len or 1, rng), random_state(io, 4, rng, 0.5))]


def compare(reference: Path, candidate: Path, io: IOSpec, form: Form, seq_len: int | None,
            atol: float, range_atol: float, rtol: float) -> dict[str, dict[str, Any]]:
    """Worst errors of ``candidate`` against ``reference`` per output on the CPU EP.

    An output passes when every element has ``|a - b| <= atol + range_atol * max|b| + rtol * |b|``.
    """
    ref = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"])
    cand = ort.InferenceSession(str(candidate), providers=["CPUExecutionProvider"])
    names = [s.name for s in io.outputs(form)]
    figures = {n: {"max_abs": 0.0, "max_rel": 0.0, "range": 0.0, "passed": True} for n in names}
    for x, state in _cases(io, form, seq_len):
        for name, a, b in zip(names, cand.run(names, feeds(io, x, state)), ref.run(names, feeds(io, x, state))):
            abs_err, rel_err = max_errors(a, b)
            if not np.isfinite(a).all():
                abs_err = rel_err = float("inf")
            figures[name]["max_abs"] = max(figures[name]["max_abs"], abs_err)
            figures[name]["max_rel"] = max(figures[name]["max_rel"], rel_err)
            scale = float(np.abs(b).max()) if b.size else 0.0
            figures[name]["range"] = max(figures[name]["range"], scale)
            bound = atol + range_atol * scale + rtol * np.abs(b)
            ok = bool(np.all(np.abs(a.astype(np.float64) - b) <= bound))
            figures[name]["passed"] = figures[name]["passed"] and ok and bool(np.isfinite(a).all())
    return figures


def make_variant(name: str, graph: str, source: Path, folder: Path, io: IOSpec, form: Form,
                 seq_len: int | None, family: str | None) -> VariantResult:
    """Make variant ``name`` of the graph file ``source`` into ``folder/variants``; verify it."""
    stem = source.stem
    out = folder / "variants"
    out.mkdir(exist_ok=True)
    tolerance = TOLERANCES[name]
    target = out / {"ort": f"{stem}.ort", "int8": f"{stem}.int8.onnx", "fp16": f"{stem}.fp16.onnx"}[name]
    files = [target] + ([out / f"{stem}.required_operators.config"] if name == "ort" else [])
    try:
        if name == "ort":
            notes = _ort(source, target, files[1])
        elif name == "int8":
            notes = _int8(source, target, family)
        else:
            notes = _fp16(source, target)
        figures = compare(source, target, io, form, seq_len, *tolerance)
    except _Skip as e:
        return _left_out(name, graph, files, str(e))
    except Exception as e:  # noqa: BLE001 - a variant that fails to build is left out, not fatal
        return _left_out(name, graph, files, f"could not be made: {describe(e)}")
    if not all(f["passed"] for f in figures.values()):
        worst = max(f["max_abs"] for f in figures.values())
        return _left_out(name, graph, files, f"misses its tolerance (max abs error {worst:.3g} > {tolerance[0]:g})",
                         figures=figures, tolerance=tolerance)
    rel = tuple(p.relative_to(folder).as_posix() for p in files)
    return VariantResult(name, graph, True, files=rel, size_bytes=target.stat().st_size,
                         tolerance=tolerance, figures=figures, notes=notes)


def _left_out(name: str, graph: str, files: list[Path], reason: str, **extra) -> VariantResult:
    for path in files:
        path.unlink(missing_ok=True)
    out = files[0].parent
    if out.exists() and not any(out.iterdir()):
        out.rmdir()
    return VariantResult(name, graph, False, reason=reason, **extra)
