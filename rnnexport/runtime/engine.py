"""Loaded graphs that streams share: one onnxruntime session per form, checked against the contract."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import onnxruntime as ort

from rnnexport.bundle import Bundle, GraphSource, open_bundle
from rnnexport.core.contract import Declared, Form, GraphInfo, IOSpec, NanPolicy
from rnnexport.core.errors import BundleError, ContractError
from rnnexport.core.ort import Device, ProviderRequest, resolve_providers, start_session

__all__ = ["Engine", "Graph", "LoadOptions", "open_engine"]

FORMS = tuple(f.value for f in Form)


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """How to load: providers, which graphs, and onnxruntime's session options.

    Attributes:
        providers: None (CPU), a provider or a list of them (see :func:`resolve_providers`).
        form: ``"step"`` or ``"sequence"`` to load only that graph of a bundle; None loads all.
        threads: onnxruntime's intra-op threads (None: its default, one per core).
        session_options: an ``onnxruntime.SessionOptions`` to start from (``threads`` is set on it).
    """

    providers: ProviderRequest | Sequence[ProviderRequest] | None = None
    form: str | None = None
    threads: int | None = None
    session_options: ort.SessionOptions | None = None

    def __post_init__(self) -> None:
        threads = self.threads
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                    or not 1 <= threads <= 1024):
            raise ContractError(f"threads must be an int from 1 to 1024 or None, got {threads!r:.40}")


@dataclasses.dataclass(frozen=True)
class Graph:
    """One loaded graph: its session, form, tensor names, fixed T (unrolled graphs) and NaN policy."""

    session: ort.InferenceSession
    form: Form
    name: str
    x_name: str
    y_name: str
    seq_len: int | None
    #: ``refuse``: the graph carries no NaN guards, so its streams refuse non-finite input.
    nan: NanPolicy = NanPolicy.CARRY


@dataclasses.dataclass(frozen=True)
class Engine:
    """What every stream of one :meth:`StatefulSession.load` shares (sessions are thread-safe)."""

    bundle: Bundle
    contract: IOSpec
    graphs: dict[Form, Graph]
    device: Device
    providers: tuple[str, ...]
    description: str

    @property
    def refuses_nonfinite(self) -> bool:
        """Whether a loaded graph was converted with ``--nan refuse``: its input must be checked."""
        return any(g.nan is NanPolicy.REFUSE for g in self.graphs.values())


def _options(options: LoadOptions) -> ort.SessionOptions:
    so = options.session_options or ort.SessionOptions()
    if options.threads is not None:
        so.intra_op_num_threads = options.threads
    return so


def _check_names(session: ort.InferenceSession, contract: IOSpec, form: Form, name: str) -> tuple[str, str]:
    """The graph's data input and output names, once its state (and lengths) names are the contract's."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    state = contract.state
    lengths = [contract.lengths.name] if contract.lengths is not None and form is Form.SEQUENCE else []
    if inputs[1:] != [*state.names, *lengths] or outputs[1:] != list(state.output_names):
        raise ContractError(
            f"{name} does not follow its I/O contract: inputs {inputs} -> outputs {outputs}, expected "
            f"data then state {[*state.names, *lengths]} -> data then {list(state.output_names)}")
    return inputs[0], outputs[0]


#: onnxruntime's type names of the dtypes a contract can hold.
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32"}


def _declared(args: Sequence[ort.NodeArg]) -> list[Declared]:
    return [(a.name, _ORT_TYPES.get(a.type, a.type), a.shape) for a in args]


def _seq_len(session: ort.InferenceSession, contract: IOSpec, form: Form) -> int | None:
    if form is not Form.SEQUENCE:
        return None
    time = session.get_inputs()[0].shape[contract.time_axis]
    return time if isinstance(time, int) else None


def _load(source: GraphSource, bundle: Bundle, requested: list[ProviderRequest],
          options: LoadOptions) -> tuple[Graph, IOSpec, Device, str]:
    started = start_session(source.model, requested, _options(options), source.name)
    session = started.session
    try:
        info = GraphInfo.from_props(session.get_modelmeta().custom_metadata_map)
    except ContractError as e:
        raise ContractError(f"{source.name} has malformed rnnexport metadata: {e}; convert it again") from e
    form = source.form or (info.form if info is not None else None)
    if form is None or (bundle.contract is None and info is None):
        raise ContractError(f"{source.name} holds no rnnexport I/O contract (metadata rnnexport.io "
                            f"and rnnexport.form): export it with rnnexport convert")
    if source.form is not None and info is not None and info.form is not source.form:
        raise BundleError(f"{source.name} is listed as the {source.form.value} graph but is a "
                          f"{info.form.value} graph")
    contract = bundle.contract or info.io  # type: ignore[union-attr]  # one of them is set, checked above
    if info is not None and info.io.without_lengths() != contract.without_lengths():  # a step graph takes none
        raise BundleError(f"{source.name}'s metadata contract differs from the manifest's io")
    x_name, y_name = _check_names(session, contract, form, source.name)
    problem = contract.disagreement(form, _declared(session.get_inputs()), _declared(session.get_outputs()))
    if problem:
        raise ContractError(f"{source.name}'s metadata does not describe its graph: {problem}; convert it again")
    graph = Graph(session, form, source.name, x_name, y_name, _seq_len(session, contract, form),
                  info.nan if info is not None else NanPolicy.CARRY)
    return graph, contract, started.device, info.description if info is not None else ""


def open_engine(path: str | os.PathLike[str] | Bundle, options: LoadOptions) -> Engine:
    """Open, check and load a bundle or model, or an already opened one (see :meth:`StatefulSession.load`)."""
    if options.form is not None and options.form not in FORMS:
        raise ContractError(f"form must be one of {', '.join(FORMS)}, got {options.form!r}")
    wanted = Form(options.form) if options.form is not None else None
    bundle = path if isinstance(path, Bundle) else open_bundle(path)
    requested = resolve_providers(options.providers)
    sources = [s for s in bundle.graphs.values() if wanted in (None, s.form) or s.form is None]
    if not sources:
        raise BundleError(f"bundle {bundle.path} has no {options.form} graph (it has: "
                          f"{', '.join(bundle.graphs)})")
    graphs: dict[Form, Graph] = {}
    contracts: list[IOSpec] = []
    device, description = Device(), ""
    for source in sources:
        graph, contract, device, description = _load(source, bundle, requested, options)
        graphs[graph.form] = graph
        contracts.append(contract)
    if wanted is not None and wanted not in graphs:
        raise ContractError(f"{bundle.path} is a {next(iter(graphs)).value} graph, not a {options.form} graph")
    active = tuple(next(iter(graphs.values())).session.get_providers())
    return Engine(bundle, contracts[0], graphs, device, active, description)
