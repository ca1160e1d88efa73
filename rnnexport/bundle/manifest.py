"""The bundle manifest (schemas ``rnnexport.bundle/1`` and ``/2``, documented in docs/bundle.md) as typed data.

:meth:`Manifest.from_json` is the only parser of ``manifest.json``: it checks
every field's type, bounds every count and size, and keeps every named path
inside the bundle before anything else reads it. Torch-free (standard library).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from rnnexport.core.contract import MAX_DIM, Form, IOSpec, NanPolicy
from rnnexport.core.cpu import Cpu
from rnnexport.core.errors import BundleError, ContractError

__all__ = [
    "DEFAULT_VARIANTS",
    "MANIFEST",
    "MAX_ENTRIES",
    "SCHEMA",
    "SCHEMAS",
    "SCHEMA_SELF_CONTAINED",
    "STATEFUL_VARIANT",
    "VARIANT_NAMES",
    "CheckStatus",
    "EngineCheck",
    "EpCoverage",
    "FileEntry",
    "GraphEntry",
    "Manifest",
    "MobileCoverage",
    "VariantEntry",
    "VectorEntry",
    "safe_path",
]

MANIFEST = "manifest.json"
#: The schema of a bundle whose graphs share one weights file (``GraphEntry.weights``); older readers refuse
#: it rather than load a graph without its weights.
SCHEMA = "rnnexport.bundle/2"
#: The schema of a bundle of self-contained graphs, which every reader loads.
SCHEMA_SELF_CONTAINED = "rnnexport.bundle/1"
#: The schemas this reader reads.
SCHEMAS = (SCHEMA_SELF_CONTAINED, SCHEMA)
#: The most entries any list of a manifest may hold.
MAX_ENTRIES = 4096
#: The variant whose file is OpenVINO IR with the state inside the model (``.xml`` and ``.bin``), of a step graph.
STATEFUL_VARIANT = "openvino-stateful"
#: The variants a bundle may hold, in the order they are made.
VARIANT_NAMES = ("ort", "int8", "int8-qdq", "fp16", STATEFUL_VARIANT)
#: The variants made when none are named (``openvino-stateful`` needs OpenVINO, an optional extra: by name only).
DEFAULT_VARIANTS = ("ort", "int8", "int8-qdq", "fp16")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CPU_WORD = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class CheckStatus(str, enum.Enum):
    """What one engine gave on a graph's (or variant's) test vectors when the bundle was made."""

    PASSED = "passed"
    FAILED = "failed"
    UNAVAILABLE = "unavailable"  # the engine could not run that graph there


_CHECK_STATUS = tuple(s.value for s in CheckStatus)


def safe_path(name: Any, what: str = "manifest") -> str:
    """``name`` as a normalised relative POSIX path inside the bundle, or a :class:`BundleError`."""
    if not isinstance(name, str) or not name or len(name) > 512:
        raise BundleError(f"{what} names a file {name!r:.80}: expected a relative path")
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute() or ".." in path.parts or "\\" in name \
            or ":" in path.parts[0] or "\0" in name:
        raise BundleError(f"{what} names an unsafe path {name!r:.80}: only paths inside the bundle are allowed")
    return str(path)


def _list(data: Mapping[str, Any], key: str, required: bool = False) -> list[Any]:
    value = data.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise BundleError(f"manifest: {key} must be a list, got {type(value).__name__}")
    if len(value) > MAX_ENTRIES:
        raise BundleError(f"manifest: {key} lists {len(value)} entries, over the limit of {MAX_ENTRIES}")
    return value


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BundleError(f"manifest has a malformed {what} entry {value!r:.80}: expected an object")
    return value


def _int(value: Any, what: str, low: int = 0, high: int = 1 << 40, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BundleError(f"manifest: {what} must be an int from {low} to {high}, got {value!r:.40}")
    return value


def _number(value: Any, what: str, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise BundleError(f"manifest: {what} must be a finite number of at least 0, got {value!r:.40}")
    return float(value)


def _str(value: Any, what: str, optional: bool = True, limit: int = 4096) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise BundleError(f"manifest: {what} must be a string, got {value!r:.40}")
    return value


@dataclasses.dataclass(frozen=True)
class EngineCheck:
    """What one engine gave on a graph's (or a variant's) test vectors when the bundle was made.

    ``status`` is ``passed``, ``failed`` (with ``reason``) or ``unavailable`` (the engine
    could not run that graph here, with ``reason``); ``max_abs`` is the largest
    ``|got - expected|`` over ``sets`` test sets, as the one comparator measures it.
    """

    engine: str
    status: CheckStatus
    max_abs: float | None = None
    sets: int = 0
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"engine": self.engine, "status": self.status.value}
        if self.status is not CheckStatus.UNAVAILABLE:
            data.update(max_abs=self.max_abs, sets=self.sets)
        if self.reason:
            data["reason"] = self.reason
        return data

    @classmethod
    def from_json(cls, data: Any) -> EngineCheck:
        data = _object(data, "checked_on")
        status = data.get("status")
        if status not in _CHECK_STATUS:
            raise BundleError(f"manifest: checked_on status {status!r:.40} is not one of {', '.join(_CHECK_STATUS)}")
        return cls(_str(data.get("engine"), "checked_on engine", optional=False, limit=64), CheckStatus(status),
                   _number(data.get("max_abs"), "checked_on max_abs"),
                   _int(data.get("sets"), "checked_on sets", 0, MAX_ENTRIES) or 0, _str(data.get("reason"), "reason"))


def _checks(data: Mapping[str, Any]) -> tuple[EngineCheck, ...]:
    return tuple(EngineCheck.from_json(c) for c in _list(data, "checked_on"))


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One file of the bundle with its size and SHA-256."""

    path: str
    size: int | None
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Any) -> FileEntry:
        data = _object(data, "files")
        if "path" not in data or "sha256" not in data:
            raise BundleError(f"manifest has a malformed files entry {dict(data)!r:.80}: needs path and sha256")
        digest = _str(data["sha256"], "files sha256", optional=False).lower()
        entry = cls(safe_path(data["path"]), _int(data.get("size"), "files size"), digest)
        if not _SHA256.fullmatch(digest):
            raise BundleError(f"manifest: {entry.path} has a malformed SHA-256 {digest!r:.80}")
        return entry


#: The most execution providers a graph's ``mobile`` record may list, and the most operators per provider.
MAX_MOBILE_EPS, MAX_BLOCKING = 8, 64
_NAN_POLICIES = tuple(p.value for p in NanPolicy)


@dataclasses.dataclass(frozen=True)
class EpCoverage:
    """How many of a graph's nodes one mobile execution provider would take (onnxruntime's own estimate).

    ``nodes`` counts the graph as onnxruntime's basic optimizations leave it (bodies included);
    ``as_is`` the nodes the provider takes with the graph's symbolic batch and time; ``fixed``
    those it would take once every shape is fixed, in ``partitions`` pieces; ``blocked_by`` the
    operators not in its list (and those of an unsupported rank).
    """

    nodes: int
    as_is: int
    fixed: int
    partitions: int
    blocked_by: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "as_is": self.as_is, "fixed": self.fixed, "partitions": self.partitions,
                "blocked_by": list(self.blocked_by)}

    @classmethod
    def from_json(cls, ep: str, data: Any) -> EpCoverage:
        data = _object(data, f"mobile {ep}")
        nodes = _int(data.get("nodes"), f"mobile {ep} nodes", 0, MAX_DIM, optional=False) or 0
        as_is, fixed, partitions = (_int(data.get(k), f"mobile {ep} {k}", 0, nodes, optional=False) or 0
                                    for k in ("as_is", "fixed", "partitions"))
        blocked = _list(data, "blocked_by")
        if len(blocked) > MAX_BLOCKING:
            raise BundleError(f"manifest: mobile {ep} blocked_by lists over {MAX_BLOCKING} operators")
        return cls(nodes, as_is, fixed, partitions,
                   tuple(_str(o, f"mobile {ep} blocked_by", optional=False, limit=128) for o in blocked))


@dataclasses.dataclass(frozen=True)
class MobileCoverage:
    """What onnxruntime's mobile usability check said of a graph when the bundle was made.

    ``eps`` by provider (``nnapi``, ``coreml_mlprogram``, ``coreml_neuralnetwork``), ``checker``
    the onnxruntime that judged, ``note`` one sentence on what blocks full assignment.
    """

    eps: dict[str, EpCoverage]
    checker: str = ""
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"eps": {k: v.to_json() for k, v in self.eps.items()}, "checker": self.checker, "note": self.note}

    @classmethod
    def from_json(cls, data: Any) -> MobileCoverage:
        data = _object(data, "mobile")
        eps = _object(data.get("eps") or {}, "mobile eps")
        if len(eps) > MAX_MOBILE_EPS or not all(isinstance(k, str) and _CPU_WORD.fullmatch(k) for k in eps):
            raise BundleError(f"manifest: mobile eps must map at most {MAX_MOBILE_EPS} provider names "
                              "(1 to 32 letters, digits, '_', '.', '-') to their coverage")
        return cls({str(k): EpCoverage.from_json(str(k), v) for k, v in eps.items()},
                   _str(data.get("checker"), "mobile checker", limit=128), _str(data.get("note"), "mobile note"))


@dataclasses.dataclass(frozen=True)
class GraphEntry:
    """One graph of the bundle: its file, form, and what the manifest records about it."""

    file: str
    form: Form
    lowering: str = ""
    seq_len: int | None = None
    ir_version: int | None = None
    opset: dict[str, int] = dataclasses.field(default_factory=dict)
    operators: tuple[str, ...] = ()
    inputs: tuple[dict[str, Any], ...] = ()
    outputs: tuple[dict[str, Any], ...] = ()
    #: The engines its test vectors ran on when the bundle was made, with their figures.
    checked_on: tuple[EngineCheck, ...] = ()
    #: ``refuse``: converted with ``--nan refuse`` (no NaN guards): an app must refuse NaN and Inf input
    #: to it. Bundles written before it was recorded carry NaN.
    nan: NanPolicy = NanPolicy.CARRY
    #: How many nodes the mobile execution providers would take (None in bundles written before, or
    #: where the check could not run).
    mobile: MobileCoverage | None = None
    #: The bundle file the graph reads its external data from, in the graph's own folder (the weights the
    #: sequence and step graphs share); None: the graph holds all its weights.
    weights: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = {"file": self.file, "form": self.form.value, "lowering": self.lowering, "seq_len": self.seq_len,
                "ir_version": self.ir_version, "opset": dict(self.opset), "operators": list(self.operators),
                "inputs": list(self.inputs), "outputs": list(self.outputs), "nan": self.nan.value}
        if self.weights is not None:
            data["weights"] = self.weights
        if self.checked_on:
            data["checked_on"] = [c.to_json() for c in self.checked_on]
        if self.mobile is not None:
            data["mobile"] = self.mobile.to_json()
        return data

    @classmethod
    def from_json(cls, key: str, data: Any) -> GraphEntry:
        data = _object(data, f"graphs {key}")
        form = data.get("form", key)
        if form not in [f.value for f in Form]:
            raise BundleError(f"manifest: graph {key!r:.40} has form {form!r:.40}; expected step or sequence")
        opset = data.get("opset") or {}
        if not isinstance(opset, Mapping) or not all(isinstance(v, int) for v in opset.values()):
            raise BundleError(f"manifest: graph {key} has a malformed opset {opset!r:.80}")
        operators = data.get("operators") or []
        if not isinstance(operators, list) or not all(isinstance(o, str) for o in operators):
            raise BundleError(f"manifest: graph {key} has malformed operators")
        tensors = {k: data.get(k) or [] for k in ("inputs", "outputs")}
        if not all(isinstance(v, list) and len(v) <= 64 for v in tensors.values()):
            raise BundleError(f"manifest: graph {key} has malformed inputs or outputs")
        nan = data.get("nan", NanPolicy.CARRY.value)
        if nan not in _NAN_POLICIES:
            raise BundleError(f"manifest: graph {key} has nan {nan!r:.40}; expected one of {', '.join(_NAN_POLICIES)}")
        mobile = MobileCoverage.from_json(data["mobile"]) if data.get("mobile") is not None else None
        file = safe_path(data.get("file"), f"manifest graph {key}")
        weights = data.get("weights")
        if weights is not None:
            weights = safe_path(weights, f"manifest graph {key} weights")
            if PurePosixPath(weights).parent != PurePosixPath(file).parent or weights == file:
                raise BundleError(f"manifest: graph {key}'s weights {weights!r:.80} must be another file in the "
                                  f"graph's own folder")
        return cls(file, Form(form), _str(data.get("lowering"), "lowering"),
                   _int(data.get("seq_len"), "graph seq_len", 1, MAX_DIM), _int(data.get("ir_version"), "ir_version"),
                   dict(opset), tuple(operators), tuple(tensors["inputs"]), tuple(tensors["outputs"]), _checks(data),
                   NanPolicy(nan), mobile, weights)


@dataclasses.dataclass(frozen=True)
class VectorEntry:
    """One test data set: ``input_K.pb`` / ``output_K.pb`` in graph input/output order.

    ``kind`` is ``"single"`` (a call on its own, with the state its inputs hold)
    or ``"stream"``: call number ``call`` of stream ``stream``, whose state inputs
    are the state outputs of the stream's previous call.
    """

    dir: str
    graph: str
    kind: str = "single"
    stream: int | None = None
    call: int | None = None
    batch: int | None = None
    seq_len: int | None = None
    expected_from: str = ""
    #: How close an engine must come to the expected outputs: every element within
    #: ``atol + rtol * |expected|``. ``atol`` holds three times the expected outputs' own
    #: float32 rounding error (``float32_error``, against a float64 run of the source)
    #: on top of the float32 default, as verify's contract 1 allows. Empty: the defaults.
    tolerance: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"dir": self.dir, "graph": self.graph, "kind": self.kind, "batch": self.batch,
                                "seq_len": self.seq_len}
        if self.kind == "stream":
            data.update(stream=self.stream, call=self.call)
        if self.expected_from:
            data["expected_from"] = self.expected_from
        if self.tolerance:
            data["tolerance"] = dict(self.tolerance)
        return data

    @classmethod
    def from_json(cls, data: Any) -> VectorEntry:
        data = _object(data, "test_vectors")
        if "dir" not in data or "graph" not in data:
            raise BundleError(f"manifest has a malformed test_vectors entry {dict(data)!r:.80}: needs dir and graph")
        kind = data.get("kind", "single")
        if kind not in ("single", "stream"):
            raise BundleError(f"manifest: test set kind {kind!r:.40} is neither single nor stream")
        return cls(safe_path(data["dir"]), _str(data["graph"], "test_vectors graph", optional=False, limit=64), kind,
                   _int(data.get("stream"), "test_vectors stream", 0, MAX_ENTRIES),
                   _int(data.get("call"), "test_vectors call", 0, MAX_ENTRIES),
                   _int(data.get("batch"), "test_vectors batch", 1, MAX_DIM),
                   _int(data.get("seq_len"), "test_vectors seq_len", 1, MAX_DIM),
                   _str(data.get("expected_from"), "expected_from", limit=64), _tolerance(data.get("tolerance")))


def _tolerance(value: Any) -> dict[str, float]:
    if value is None:
        return {}
    value = _object(value, "test_vectors tolerance")
    parsed = {k: _number(value.get(k), f"test_vectors tolerance {k}") for k in ("atol", "rtol", "float32_error")}
    return {k: v for k, v in parsed.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class VariantEntry:
    """One variant: made and verified (``ok``), or left out with the reason."""

    name: str
    of: str
    ok: bool
    reason: str = ""
    files: tuple[str, ...] = ()
    size_bytes: int = 0
    tolerance: tuple[float, float, float] = (0.0, 0.0, 0.0)  # (atol, range_atol, rtol)
    figures: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    notes: str = ""
    #: The only engines that can run it (``("onnxruntime",)`` for the ORT format and for
    #: onnxruntime's own operators, as int8 uses); empty: any ONNX engine.
    engines: tuple[str, ...] = ()
    checked_on: tuple[EngineCheck, ...] = ()
    #: What it changes in the model's task against the float32 graph (see docs/bundle.md): for char
    #: models how far its greedy text agrees, for forecasters the error of its forecasts.
    agreement: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: The CPU its figures and checks came from (onnxruntime picks int8 kernels by its features);
    #: None in manifests written before it was recorded, and for a variant that was never run.
    cpu: Cpu | None = None
    #: For ``int8-qdq``: what was quantized (products, recurrent operators, activations) and
    #: where the activation ranges came from (calibration source, sequences, stream steps).
    quantization: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "of": self.of, "status": "ok" if self.ok else "skipped"}
        if self.reason:
            data["reason"] = self.reason
        if self.files:
            data["files"] = list(self.files)
            data["size_bytes"] = self.size_bytes
        if self.figures:
            data["tolerance"] = dict(zip(("atol", "range_atol", "rtol"), self.tolerance, strict=True))
            data["figures"] = self.figures
        if self.notes:
            data["notes"] = self.notes
        if self.engines:
            data["engines"] = list(self.engines)
        if self.checked_on:
            data["checked_on"] = [c.to_json() for c in self.checked_on]
        if self.agreement:
            data["agreement"] = dict(self.agreement)
        if self.cpu is not None:
            data["cpu"] = {"machine": self.cpu.machine, "features": list(self.cpu.features)}
        if self.quantization:
            data["quantization"] = dict(self.quantization)
        return data

    @classmethod
    def from_json(cls, data: Any) -> VariantEntry:
        data = _object(data, "variants")
        status = data.get("status")
        if status not in ("ok", "skipped"):
            raise BundleError(f"manifest: variant status {status!r:.40} is neither ok nor skipped")
        files = [safe_path(f, "manifest variant") for f in _list(data, "files")]
        if data.get("name") == STATEFUL_VARIANT and status == "ok" and \
                (len(files) != 2 or not files[0].endswith(".xml") or not files[1].endswith(".bin")):
            raise BundleError(f"manifest: variant {STATEFUL_VARIANT} must list its IR as two files, the .xml then the "
                              f".bin, got {files!r:.120}")
        tol = _object(data.get("tolerance") or {}, "variant tolerance")
        for key in ("atol", "range_atol", "rtol"):
            _number(tol.get(key), f"variant tolerance {key}")
        figures = data.get("figures") or {}
        if not isinstance(figures, Mapping):
            raise BundleError("manifest: a variant has malformed figures")
        return cls(_str(data.get("name"), "variant name", optional=False, limit=64),
                   _str(data.get("of"), "variant of", limit=64), status == "ok", _str(data.get("reason"), "reason"),
                   tuple(files), _int(data.get("size_bytes"), "variant size_bytes") or 0,
                   (float(tol.get("atol", 0.0)), float(tol.get("range_atol", 0.0)), float(tol.get("rtol", 0.0))),
                   {str(k): dict(v) for k, v in figures.items() if isinstance(v, Mapping)},
                   _str(data.get("notes"), "notes"),
                   tuple(_str(e, "variant engines", optional=False, limit=64) for e in _list(data, "engines")),
                   _checks(data), _figures(data.get("agreement"), "agreement"), _cpu(data.get("cpu")),
                   _figures(data.get("quantization"), "quantization"))


def _figures(value: Any, what: str) -> dict[str, Any]:
    """A variant's ``agreement`` or ``quantization``: at most 16 names, each a number or a string."""
    if value is None:
        return {}
    value = _object(value, f"variant {what}")
    if len(value) > 16 or not all(isinstance(v, (int, float, str)) and not isinstance(v, bool)
                                  for v in value.values()):
        raise BundleError(f"manifest: a variant's {what} must map at most 16 names to numbers or strings")
    return {str(k): v if not isinstance(v, str) else v[:4096] for k, v in value.items()}


def _cpu(value: Any) -> Cpu | None:
    if value is None:
        return None
    value = _object(value, "variant cpu")
    machine, features = value.get("machine"), _list(value, "features")
    if not isinstance(machine, str) or not _CPU_WORD.fullmatch(machine):
        raise BundleError(f"manifest: a variant's cpu machine {machine!r:.40} must be a name of 1 to 32 characters")
    if len(features) > 32 or not all(isinstance(f, str) and _CPU_WORD.fullmatch(f) for f in features):
        raise BundleError("manifest: a variant's cpu features must list at most 32 names of 1 to 32 characters")
    return Cpu(machine, tuple(features))


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A parsed ``manifest.json``.

    Attributes:
        io: the I/O contract (the state's shapes and initial value included).
        graphs: by form name (``"sequence"``, ``"step"``).
        files: every file but the manifest, with size and SHA-256.
        created_by, model: provenance, as written (versions; description, source kind,
            cell family, parameter hash, origin).
    """

    io: IOSpec
    graphs: dict[str, GraphEntry]
    files: tuple[FileEntry, ...]
    test_vectors: tuple[VectorEntry, ...] = ()
    variants: tuple[VariantEntry, ...] = ()
    created_by: dict[str, str] = dataclasses.field(default_factory=dict)
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Empty when built: :data:`SCHEMA` when a graph reads shared weights, else :data:`SCHEMA_SELF_CONTAINED`.
    schema: str = ""

    def __post_init__(self) -> None:
        if not self.schema:
            shared = any(g.weights is not None for g in self.graphs.values())
            object.__setattr__(self, "schema", SCHEMA if shared else SCHEMA_SELF_CONTAINED)

    @property
    def description(self) -> str:
        return str(self.model.get("description", ""))

    def file(self, path: str) -> FileEntry | None:
        """The files entry of ``path``, or None when the manifest lists no such file."""
        return next((f for f in self.files if f.path == path), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "created_by": dict(self.created_by),
            "model": dict(self.model),
            "io": self.io.to_json(),
            "state": self.io.state.to_json(),
            "graphs": {k: g.to_json() for k, g in self.graphs.items()},
            "variants": [v.to_json() for v in self.variants],
            "test_vectors": [t.to_json() for t in self.test_vectors],
            "files": [f.to_json() for f in self.files],
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "the bundle") -> Manifest:
        """Parse and check a manifest.

        Raises:
            BundleError: unknown schema, a missing or malformed field, an unsafe path,
                or a count over :data:`MAX_ENTRIES`.
        """
        if not isinstance(data, Mapping):
            raise BundleError(f"{MANIFEST} of {where} is not a JSON object")
        schema = data.get("schema")
        if schema not in SCHEMAS:
            raise BundleError(f"bundle {where} has schema {schema!r:.60}; this runtime reads "
                              f"{' and '.join(map(repr, SCHEMAS))} (upgrade rnnexport, or repackage the model)")
        if "io" not in data:
            raise BundleError(f"manifest of {where} holds no I/O contract ('io')")
        try:
            io = IOSpec.from_json(data["io"])
        except ContractError as e:
            raise BundleError(f"manifest of {where}: {e}") from e
        files = tuple(FileEntry.from_json(f) for f in _list(data, "files"))
        if not files:
            raise BundleError(f"manifest of {where} lists no files to check")
        graphs = data.get("graphs")
        if not isinstance(graphs, Mapping) or not graphs:
            raise BundleError(f"manifest of {where} lists no graphs")
        if len(graphs) > 16:
            raise BundleError(f"manifest of {where} lists {len(graphs)} graphs (at most 16)")
        parsed = {str(k): GraphEntry.from_json(str(k), v) for k, v in graphs.items()}
        if schema == SCHEMA_SELF_CONTAINED and any(g.weights for g in parsed.values()):
            raise BundleError(f"manifest of {where}: a {SCHEMA_SELF_CONTAINED} bundle holds self-contained graphs, "
                              f"but a graph names shared weights (that is {SCHEMA}); the manifest is malformed")
        created_by = data.get("created_by") or {}
        model = data.get("model") or {}
        if not isinstance(created_by, Mapping) or not isinstance(model, Mapping):
            raise BundleError(f"manifest of {where}: created_by and model must be objects")
        return cls(io, parsed, files,
                   tuple(VectorEntry.from_json(v) for v in _list(data, "test_vectors")),
                   tuple(VariantEntry.from_json(v) for v in _list(data, "variants")),
                   {str(k): str(v) for k, v in created_by.items()}, dict(model), str(schema))
