"""The torch-free runtime: load a bundle or an exported graph and stream through it.

Imports only onnxruntime, numpy and the standard library, so an app can embed
it without PyTorch or onnx::

    from rnnexport.runtime import StatefulSession

    session = StatefulSession.load("bundle/")      # or bundle.zip, or model.onnx
    for x_t in frames:                            # x_t: (B, I) float32
        y_t = session.step(x_t)                   # the state carries over
    saved = session.state                         # {"h": ..., "c": ...}: save, resume later

See docs/embedding.md for the state-handling rules.
"""

from __future__ import annotations

from rnnexport.errors import BundleError, RnnexportError, RuntimeContractError
from rnnexport.runtime.bundle import SCHEMA, Bundle, GraphSource, TestVector, open_bundle
from rnnexport.runtime.contract import IOContract, StateContract
from rnnexport.runtime.files import RunSummary, run_files
from rnnexport.runtime.providers import ProviderError
from rnnexport.runtime.session import StatefulSession, load

__all__ = [
    "SCHEMA",
    "Bundle",
    "BundleError",
    "GraphSource",
    "IOContract",
    "ProviderError",
    "RnnexportError",
    "RunSummary",
    "RuntimeContractError",
    "StateContract",
    "StatefulSession",
    "TestVector",
    "load",
    "open_bundle",
    "run_files",
]
