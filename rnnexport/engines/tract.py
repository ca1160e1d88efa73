"""tract (Sonos's Rust inference engine, through its Python binding) as a runner.

tract names a graph's outputs after the nodes that produce them, so outputs are
taken by position; rnnexport's graphs name each output's producer after the output.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from rnnexport.core.errors import describe
from rnnexport.engines.base import (
    EngineFailure,
    EngineUnavailable,
    Runner,
    graph_tensors,
    standard_graph,
)
from rnnexport.engines.openvino import INSTALL_HINT

__all__ = ["TractRunner"]


class TractRunner(Runner):
    """A tract runnable model, optimised once; inputs and outputs in graph order."""

    name = "tract"

    def __init__(self, model: str | os.PathLike[str] | bytes) -> None:
        super().__init__()
        self.model = model
        self.runnable: Any = None

    def _activate(self) -> None:
        try:
            import tract
        except ImportError as e:
            raise EngineUnavailable(self.name, f"the tract package is not installed ({INSTALL_HINT})") from e
        proto = standard_graph(self.model, self.name)
        self.inputs, self.outputs = graph_tensors(proto)
        import tempfile

        with tempfile.TemporaryDirectory(prefix="rnnexport-tract-") as tmp:
            path = os.path.join(tmp, "model.onnx")
            with open(path, "wb") as f:
                f.write(proto.SerializeToString())
            try:
                self.runnable = tract.onnx().load(path).into_model().into_runnable()
            except Exception as e:  # noqa: BLE001 - tract raises its own errors for what it cannot load
                lines = [line.strip() for line in str(e).splitlines() if line.strip()]
                raise EngineUnavailable(self.name, f"tract cannot load this graph: {' / '.join(lines[:3])[:300]}") from e

    def _deactivate(self) -> None:
        self.runnable = None

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.runnable.run([np.ascontiguousarray(feeds[t.name]) for t in self.inputs])
            return {t.name: np.asarray(results[i].to_numpy()) for i, t in enumerate(self.outputs)}
        except Exception as e:  # noqa: BLE001 - the graph failing on valid feeds is a finding
            raise EngineFailure(f"{self.name} raised {describe(e)}") from e
