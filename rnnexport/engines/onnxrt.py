"""onnxruntime on one execution provider, through the one adapter :mod:`rnnexport.core.ort`.

``OrtRunner(path, "cuda")`` asks for the CUDA provider alone. A provider that is
not in this build, or that did not start (the session fell back to CPU), makes
the runner unavailable with onnxruntime's reason, never a CPU run counted as CUDA.
A call over the runner's ``timeout`` is stopped through onnxruntime's own
``RunOptions.terminate`` (:func:`rnnexport.core.ort.time_limit`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from rnnexport.core.errors import ProviderError, describe
from rnnexport.core.external import ExternalModel
from rnnexport.core.ort import LoadError, full_name, short_name, start_session, time_limit
from rnnexport.engines.base import (
    EngineFailure,
    EngineTimeout,
    EngineUnavailable,
    GraphTensor,
    Runner,
)

__all__ = ["OrtRunner"]

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}


class OrtRunner(Runner):
    """An onnxruntime session on exactly one execution provider.

    Args:
        model: path of the ``.onnx`` (or ``.ort``) file, its serialized bytes, or those with the
            external data files it reads (onnxruntime takes them from memory).
        provider: ``cpu``, ``cuda``, ``tensorrt`` or a full provider name.
        threads: onnxruntime's intra-op threads (None: its default).
        timeout: seconds one call may take (None: no bound).
    """

    def __init__(self, model: str | os.PathLike[str] | bytes | ExternalModel, provider: str = "cpu",
                 threads: int | None = None, timeout: float | None = None) -> None:
        super().__init__(timeout)
        self.threads = threads
        self.model = model if isinstance(model, (bytes, ExternalModel)) else os.fspath(model)
        self.provider = full_name(provider)
        self.name = f"onnxruntime:{short_name(self.provider)}"
        self.session: ort.InferenceSession | None = None

    def _activate(self) -> None:
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3  # errors only: shape warnings are the verifier's to report
            if self.threads is not None:
                options.intra_op_num_threads = self.threads
            session = start_session(self.model, [self.provider], options).session
        except ProviderError as e:
            raise EngineUnavailable(self.name, str(e)) from e
        except LoadError as e:
            raise EngineUnavailable(self.name, f"session did not start: {e}") from e
        self.session = session
        self.inputs = tuple(_tensor(a) for a in session.get_inputs())
        self.outputs = tuple(_tensor(a) for a in session.get_outputs())

    def _deactivate(self) -> None:
        self.session = None

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.session is not None  # activate() ran: Runner.infer checks
        names = [t.name for t in self.outputs]
        with time_limit(self.timeout) as limit:
            try:
                results = self.session.run(names, dict(feeds), limit.options)
            except Exception as e:  # the graph failing on valid feeds is a finding
                if limit.expired:
                    raise EngineTimeout(self.name, limit.seconds or 0.0) from e
                raise EngineFailure(f"{self.name} raised {describe(e)}") from e
        return dict(zip(names, results, strict=True))


def _tensor(arg: Any) -> GraphTensor:
    shape = arg.shape if isinstance(arg.shape, Sequence) else None
    dims = None if shape is None else tuple(d if isinstance(d, (int, str)) else None for d in shape)
    return GraphTensor(arg.name, _ORT_TYPES.get(arg.type, arg.type), dims)
