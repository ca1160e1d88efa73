"""The bundle format: a typed manifest, the one reader, and the deterministic zip writer.

Torch-free. :mod:`rnnexport.bundle.vectors` (test sets as ONNX TensorProtos) needs onnx
and is imported on its own.
"""

from __future__ import annotations

from rnnexport.bundle.archive import write_zip
from rnnexport.bundle.manifest import (
    DEFAULT_VARIANTS,
    MANIFEST,
    SCHEMA,
    SCHEMA_SELF_CONTAINED,
    SCHEMAS,
    STATEFUL_VARIANT,
    VARIANT_NAMES,
    CheckStatus,
    EngineCheck,
    FileEntry,
    GraphEntry,
    Manifest,
    VariantEntry,
    VectorEntry,
    safe_path,
)
from rnnexport.bundle.proven import cpu_difference
from rnnexport.bundle.reader import (
    DEFAULT_LIMITS,
    Bundle,
    GraphSource,
    ZipLimits,
    is_bundle,
    open_bundle,
)

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_VARIANTS",
    "MANIFEST",
    "SCHEMA",
    "SCHEMAS",
    "SCHEMA_SELF_CONTAINED",
    "STATEFUL_VARIANT",
    "VARIANT_NAMES",
    "Bundle",
    "CheckStatus",
    "EngineCheck",
    "FileEntry",
    "GraphEntry",
    "GraphSource",
    "Manifest",
    "VariantEntry",
    "VectorEntry",
    "ZipLimits",
    "cpu_difference",
    "is_bundle",
    "open_bundle",
    "safe_path",
    "write_zip",
]
