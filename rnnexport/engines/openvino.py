"""OpenVINO on the CPU as a runner, in float32.

OpenVINO's CPU plugin defaults to bfloat16 inference on processors that have it
(errors of 8e-3 on an LSTM, 5e-2 through a Scan); the runner forces
``INFERENCE_PRECISION_HINT=f32`` and reports the precision the compiled model uses. OpenVINO
2026.4 ignores a dynamic ``sequence_lens`` of the ONNX RNN/LSTM/GRU operators (a native graph
converted with ``--lengths``): such a graph is refused with that reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from rnnexport.core.errors import describe
from rnnexport.engines.base import (
    EngineFailure,
    EngineUnavailable,
    Runner,
    graph_tensors,
    standard_graph,
)

__all__ = ["INSTALL_HINT", "OpenVinoRunner", "installed"]

INSTALL_HINT = "pip install 'rnnexport[engines]'"


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class OpenVinoRunner(Runner):
    """An OpenVINO ``CompiledModel`` on the CPU device, one inference thread, float32, in this process.

    A call (or a compile) cannot be stopped here: verify runs it in a child process
    (:class:`~rnnexport.engines.child.ChildRunner`).
    """

    name = "openvino"

    def __init__(self, model: str | os.PathLike[str] | bytes) -> None:
        super().__init__()
        self.model = model
        self.compiled: Any = None
        self.precision = ""

    @classmethod
    def prepare(cls, model: str | os.PathLike[str] | bytes) -> onnx.ModelProto:
        """The graph, once the cheap checks pass (also run before a child process is started for it).

        Raises:
            EngineUnavailable: openvino is not installed, the graph has onnxruntime's own operators, or
                recurrent operators with sequence_lens (which OpenVINO ignores).
        """
        if not installed("openvino"):
            raise EngineUnavailable(cls.name, f"the openvino package is not installed ({INSTALL_HINT})")
        proto = standard_graph(model, cls.name)  # OpenVINO reads com.microsoft ops with other arithmetic
        lengths = sorted({n.op_type for n in proto.graph.node
                          if n.op_type in ("RNN", "LSTM", "GRU") and len(n.input) > 4 and n.input[4]})
        if lengths:
            raise EngineUnavailable(cls.name, f"OpenVINO ignores the sequence_lens of ONNX {', '.join(lengths)} "
                                              "(every stream runs to the padded end): convert with --lowering scan "
                                              "to run a lengths graph here")
        return proto

    def _activate(self) -> None:
        proto = self.prepare(self.model)
        import openvino

        self.inputs, self.outputs = graph_tensors(proto)
        core = openvino.Core()
        try:
            # from a file, OpenVINO reads its external data (a bundle's shared weights) itself
            path = os.fspath(self.model) if isinstance(self.model, (str, os.PathLike)) else None
            read = core.read_model(path) if path else core.read_model(proto.SerializeToString(), b"")
            self.compiled = core.compile_model(read, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                             "INFERENCE_NUM_THREADS": 1})
        except Exception as e:  # OpenVINO raises untyped errors for what it cannot compile
            raise EngineUnavailable(self.name, f"OpenVINO cannot compile this graph: {describe(e)}") from e
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = precision.to_string() if hasattr(precision, "to_string") else str(precision)
        self.detail = f"inference precision {self.precision} (forced; OpenVINO's CPU default may be bf16)"

    def _deactivate(self) -> None:
        self.compiled = None

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.compiled.create_infer_request().infer(dict(feeds))
            # after compile, an output's name may be an internal alias: look outputs up by graph name
            return {t.name: np.asarray(results[self.compiled.output(t.name)]) for t in self.outputs}
        except Exception as e:  # the graph failing on valid feeds is a finding
            raise EngineFailure(f"{self.name} raised {describe(e)}") from e
