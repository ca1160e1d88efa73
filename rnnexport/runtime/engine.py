"""Loaded graphs that streams share: one onnxruntime session per form, checked against the contract."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import onnxruntime as ort

from rnnexport.errors import BundleError, RuntimeContractError, describe
from rnnexport.runtime.bundle import Bundle, GraphSource, open_bundle
from rnnexport.runtime.contract import FORMS, SEQUENCE, IOContract
from rnnexport.runtime.providers import Device, ProviderRequest, check_started, resolve_providers

__all__ = ["Engine", "Graph", "LoadOptions", "open_engine"]

META_PREFIX = "rnnexport."


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


@dataclasses.dataclass(frozen=True)
class Graph:
    """One loaded graph: its session, form, tensor names and fixed T (unrolled graphs)."""

    session: ort.InferenceSession
    form: str
    name: str
    x_name: str
    y_name: str
    seq_len: int | None


@dataclasses.dataclass(frozen=True)
class Engine:
    """What every stream of one :meth:`StatefulSession.load` shares (sessions are thread-safe)."""

    bundle: Bundle
    contract: IOContract
    graphs: dict[str, Graph]
    device: Device
    providers: tuple[str, ...]
    description: str


def _options(options: LoadOptions) -> ort.SessionOptions:
    so = options.session_options or ort.SessionOptions()
    if options.threads is not None:
        so.intra_op_num_threads = options.threads
    return so


def _metadata(session: ort.InferenceSession) -> dict[str, str]:
    meta = session.get_modelmeta().custom_metadata_map
    return {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}


def _check_names(session: ort.InferenceSession, contract: IOContract, name: str) -> tuple[str, str]:
    """The graph's data input and output names, once its state names are the contract's."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    state = contract.state
    if inputs[1:] != list(state.names) or outputs[1:] != list(state.output_names):
        raise RuntimeContractError(
            f"{name} does not follow its I/O contract: inputs {inputs} -> outputs {outputs}, expected "
            f"data then state {list(state.names)} -> data then {list(state.output_names)}")
    return inputs[0], outputs[0]


def _seq_len(session: ort.InferenceSession, contract: IOContract, form: str) -> int | None:
    if form != SEQUENCE:
        return None
    time = session.get_inputs()[0].shape[contract.time_axis]
    return time if isinstance(time, int) else None


def _load(source: GraphSource, bundle: Bundle, requested: list, options: LoadOptions):
    try:
        session = ort.InferenceSession(source.model, _options(options), providers=requested)
    except Exception as e:  # onnxruntime's own exception types, raised for a bad model file
        raise BundleError(f"onnxruntime cannot load {source.name}: {describe(e)}") from e
    device = check_started(session, requested)
    meta = _metadata(session)
    form = source.form or meta.get("form")
    if form not in FORMS or (bundle.contract is None and "io" not in meta):
        raise RuntimeContractError(f"{source.name} holds no rnnexport I/O contract (metadata rnnexport.io "
                                   f"and rnnexport.form): export it with rnnexport convert")
    if source.form and meta.get("form", form) != form:
        raise BundleError(f"{source.name} is listed as the {form} graph but is a {meta['form']} graph")
    contract = bundle.contract or IOContract.from_json(meta["io"])
    if "io" in meta and IOContract.from_json(meta["io"]) != contract:
        raise BundleError(f"{source.name}'s metadata contract differs from the manifest's io")
    x_name, y_name = _check_names(session, contract, source.name)
    graph = Graph(session, form, source.name, x_name, y_name, _seq_len(session, contract, form))
    return graph, contract, device, meta.get("description", "")


def open_engine(path: str | os.PathLike, options: LoadOptions) -> Engine:
    """Open, check and load a bundle or model (see :meth:`StatefulSession.load`)."""
    if options.form is not None and options.form not in FORMS:
        raise RuntimeContractError(f"form must be one of {', '.join(FORMS)}, got {options.form!r}")
    bundle = open_bundle(path)
    requested = resolve_providers(options.providers)
    sources = [s for s in bundle.graphs.values() if options.form in (None, s.form) or s.form is None]
    if not sources:
        raise BundleError(f"bundle {bundle.path} has no {options.form} graph (it has: "
                          f"{', '.join(bundle.graphs)})")
    graphs, contracts, device, description = {}, [], None, ""
    for source in sources:
        graph, contract, device, description = _load(source, bundle, requested, options)
        graphs[graph.form] = graph
        contracts.append(contract)
    if options.form is not None and options.form not in graphs:
        raise RuntimeContractError(f"{bundle.path} is a {next(iter(graphs))} graph, not a {options.form} graph")
    active = tuple(next(iter(graphs.values())).session.get_providers())
    return Engine(bundle, contracts[0], graphs, device, active, description)
