"""tract (Sonos's Rust inference engine, through its Python binding) as a runner.

tract names a graph's outputs after the nodes that produce them, so outputs are
taken by position; rnnexport's graphs name each output's producer after the output.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rnnexport.core.errors import describe
from rnnexport.core.io import scratch_folder
from rnnexport.engines.base import (
    EngineFailure,
    EngineUnavailable,
    Runner,
    graph_tensors,
    standard_graph,
)
from rnnexport.engines.openvino import INSTALL_HINT, installed

__all__ = ["TractRunner"]


class TractRunner(Runner):
    """A tract runnable model; inputs and outputs in graph order, in this process.

    A call cannot be stopped here (and a panic in tract aborts the process): verify runs it in a
    child process (:class:`~rnnexport.engines.child.ChildRunner`).
    """

    name = "tract"

    def __init__(self, model: str | os.PathLike[str] | bytes) -> None:
        super().__init__()
        self.model = model
        self.runnable: Any = None

    @classmethod
    def prepare(cls, model: str | os.PathLike[str] | bytes) -> onnx.ModelProto:
        """The graph, once the cheap checks pass (also run before a child process is started for it).

        Raises:
            EngineUnavailable: tract is not installed, or the graph has onnxruntime's own operators.
        """
        if not installed("tract"):
            raise EngineUnavailable(cls.name, f"the tract package is not installed ({INSTALL_HINT})")
        return standard_graph(model, cls.name)

    def _activate(self) -> None:
        proto = self.prepare(self.model)
        import shutil

        import tract

        self.inputs, self.outputs = graph_tensors(proto)
        folder = scratch_folder("tract")  # tract reads a graph from a file only
        try:
            path = folder / "model.onnx"
            if isinstance(self.model, (str, os.PathLike)):
                path = Path(self.model)  # tract reads its external data (a bundle's shared weights) itself
            else:
                path.write_bytes(proto.SerializeToString())
            try:
                self.runnable = tract.onnx().load(str(path)).into_model().into_runnable()
            except Exception as e:  # tract raises its own errors for what it cannot load
                lines = [line.strip() for line in str(e).splitlines() if line.strip()]
                raise EngineUnavailable(self.name, f"tract cannot load this graph: {' / '.join(lines[:3])[:300]}") from e
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _deactivate(self) -> None:
        self.runnable = None

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.runnable.run([np.ascontiguousarray(feeds[t.name]) for t in self.inputs])
            return {t.name: np.asarray(results[i].to_numpy()) for i, t in enumerate(self.outputs)}
        except Exception as e:  # the graph failing on valid feeds is a finding
            raise EngineFailure(f"{self.name} raised {describe(e)}") from e
