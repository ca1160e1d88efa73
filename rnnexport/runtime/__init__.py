"""The torch-free runtime: load a bundle or an exported graph and stream through it.

Imports only the torch-free core (:mod:`rnnexport.core.contract`, :mod:`rnnexport.bundle`,
:mod:`rnnexport.core.ort`, :mod:`rnnexport.io`), onnxruntime, numpy and the standard
library, so an app can embed it without PyTorch or onnx::

    from rnnexport.runtime import StatefulSession

    session = StatefulSession.load("bundle/")      # or bundle.zip, or model.onnx
    for x_t in frames:                            # x_t: (B, I) float32
        y_t = session.step(x_t)                   # the state carries over
    saved = session.state                         # {"h": ..., "c": ...}: save, resume later

Many streams at once (a server): :class:`StreamBatcher` runs every stream that has an
input this tick in one call. See docs/embedding.md for the state-handling rules.
"""

from __future__ import annotations

from rnnexport.bundle import SCHEMA, Bundle, GraphSource, Manifest, VectorEntry, open_bundle
from rnnexport.core.contract import IOSpec, StateSpec
from rnnexport.core.errors import (
    BundleError,
    ContractError,
    ProviderError,
    RnnexportError,
    RunError,
    RuntimeContractError,
)
from rnnexport.runtime.batcher import BatcherStats, StreamBatcher
from rnnexport.runtime.files import RunSummary, run_files
from rnnexport.runtime.session import StatefulSession, load

#: The names earlier releases gave the contract classes.
IOContract = IOSpec
StateContract = StateSpec
TestVector = VectorEntry

__all__ = [
    "SCHEMA",
    "BatcherStats",
    "Bundle",
    "BundleError",
    "ContractError",
    "GraphSource",
    "IOContract",
    "IOSpec",
    "Manifest",
    "ProviderError",
    "RnnexportError",
    "RunError",
    "RunSummary",
    "RuntimeContractError",
    "StateContract",
    "StateSpec",
    "StatefulSession",
    "StreamBatcher",
    "TestVector",
    "VectorEntry",
    "load",
    "open_bundle",
    "run_files",
]
