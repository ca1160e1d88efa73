"""Session-wide fixtures: every configuration is built and exported once per test session, a bundle built once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnxruntime as ort
import pytest

from rnnexport.engines.child import shared_workers
from rnnexport.export.convert import ConvertResult, convert
from tests.bundles import make_bundle
from tests.cli import snapshot
from tests.configs import build
from tests.nodejs import node_binary


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


@pytest.fixture(scope="session", autouse=True)
def engine_processes() -> Iterator[None]:
    """One process per child engine kind (the ReferenceEvaluator, OpenVINO, tract) for the whole session:
    every verification's own block uses it (a killed one is replaced), and it ends at teardown."""
    with shared_workers():
        yield


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> ExportCache:
    return ExportCache(tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="session")
def bundle(exports: ExportCache, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A ``rnnexport.bundle/1`` folder of ``seed_lstm`` (both graphs, test vectors), built once, by hand.

    Shared by every test that reads a bundle: a test that changes one works on
    ``copy_bundle(bundle, tmp_path)``. Teardown checks that no test wrote into it.
    """
    folder = make_bundle(exports, "seed_lstm", tmp_path_factory.mktemp("shared") / "bundle")
    before = snapshot(folder)
    yield folder
    assert snapshot(folder) == before, "a test changed the shared bundle: change a copy_bundle() instead"


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with the Node example's npm packages installed (a skip where node or npm is missing)."""
    return node_binary()
