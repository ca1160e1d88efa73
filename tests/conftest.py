"""Session-wide caches: every configuration is built and exported once per test session."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from rnnexport.export.convert import ConvertResult, convert
from tests.configs import build


class ExportCache:
    """Builds models and exports them on first use; later requests reuse the file."""

    def __init__(self, root) -> None:
        self.root = root
        self._models = {}
        self._exports: dict[tuple, ConvertResult] = {}
        self._sessions: dict[str, ort.InferenceSession] = {}

    def model(self, name: str):
        if name not in self._models:
            self._models[name] = build(name)
        return self._models[name]

    def export(self, name: str, form: str = "sequence", lowering: str = "auto",
               seq_len: int | None = None) -> ConvertResult:
        key = (name, form, lowering, seq_len)
        if key not in self._exports:
            path = self.root / f"{name}.{form}.{lowering}.{seq_len or 'T'}.onnx"
            self._exports[key] = convert(self.model(name), path, form=form, lowering=lowering,
                                         seq_len=seq_len)
        return self._exports[key]

    def session(self, result: ConvertResult) -> ort.InferenceSession:
        key = str(result.path)
        if key not in self._sessions:
            self._sessions[key] = ort.InferenceSession(key, providers=["CPUExecutionProvider"])
        return self._sessions[key]


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> ExportCache:
    return ExportCache(tmp_path_factory.mktemp("exports"))
