"""``rnnexport.verification``: prove an exported graph computes what PyTorch computes, with figures.

Six contracts, each reported on its own, per engine, case and output:

1. the graph == the PyTorch source, on every case of the grid;
2. chunked calls with carried state == one call over the whole sequence;
3. a step graph streamed == the sequence graph (or PyTorch's sequence);
4. declared output shapes and dtypes == the actual ones;
5. no NaN or Inf anywhere;
6. every execution provider == the CPU execution provider.

:func:`verify` (also ``rnnexport.verify``) is the one entry point: a graph (and its source),
or a bundle, with one :class:`VerifyOptions`. It returns a :class:`Report` (data), with the
diagnosis of a contract-1 failure (``verification/diagnose.py``); ``rnnexport.verification.render``
turns it into a text table, JSON, markdown or a plot, ``render_html`` into a page to open.
"""

from __future__ import annotations

from rnnexport.core.lazy import lazy_exports

#: Public names, imported on first use: ``rnnexport.core.compare`` and ``.inputs``
#: stay importable without torch (bundle verification and the runtime's users need no PyTorch).
_LAZY = {
    "CONTRACT_TITLES": "rnnexport.verification.report",
    "DEFAULT_TOLERANCES": "rnnexport.core.compare",
    "GRIDS": "rnnexport.verification.options",
    "Case": "rnnexport.verification.cases",
    "Check": "rnnexport.verification.report",
    "Contract": "rnnexport.verification.report",
    "EngineStatus": "rnnexport.verification.report",
    "Grid": "rnnexport.verification.options",
    "InputKind": "rnnexport.verification.cases",
    "Note": "rnnexport.verification.report",
    "Report": "rnnexport.verification.report",
    "ReportKind": "rnnexport.verification.report",
    "StateKind": "rnnexport.verification.cases",
    "Tick": "rnnexport.verification.options",
    "Tolerance": "rnnexport.core.compare",
    "VerifyOptions": "rnnexport.verification.options",
    "verify": "rnnexport.verification.run",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
