"""``rnnexport.verification``: prove an exported graph computes what PyTorch computes, with figures.

Six contracts, each reported on its own, per engine, case and output:

1. the graph == the PyTorch source, on every case of the grid;
2. chunked calls with carried state == one call over the whole sequence;
3. a step graph streamed == the sequence graph (or PyTorch's sequence);
4. declared output shapes and dtypes == the actual ones;
5. no NaN or Inf anywhere;
6. every execution provider == the CPU execution provider.

:func:`verify` (also ``rnnexport.verify``) returns a :class:`Report` (data);
``rnnexport.verification.render`` turns
it into a text table, JSON or a plot.
"""

from __future__ import annotations

from rnnexport.verification.cases import Case, InputKind, StateKind
from rnnexport.verification.compare import DEFAULT_TOLERANCES, Tolerance
from rnnexport.verification.report import CONTRACT_TITLES, Check, Contract, EngineStatus, Report
from rnnexport.verification.run import DEFAULT_CHUNK_SIZES, VerifyOptions, verify

__all__ = [
    "CONTRACT_TITLES",
    "DEFAULT_CHUNK_SIZES",
    "DEFAULT_TOLERANCES",
    "Case",
    "Check",
    "Contract",
    "EngineStatus",
    "InputKind",
    "Report",
    "StateKind",
    "Tolerance",
    "VerifyOptions",
    "verify",
]

