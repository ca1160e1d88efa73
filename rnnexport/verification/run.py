"""``verify``: the one entry point, for a graph against its PyTorch source or for a bundle."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rnnexport.core.errors import VerifyError
from rnnexport.verification.environment import environment
from rnnexport.verification.options import Progress, VerifyOptions
from rnnexport.verification.report import Report

if TYPE_CHECKING:
    from rnnexport.verification.target import SourceLike

__all__ = ["LOG", "is_bundle_path", "verify"]

#: Where the Python warnings raised while verify runs go, once each, at INFO: numpy's overflow
#: in the ReferenceEvaluator's float32 sigmoid, PyTorch's notes on its kernels, ...
LOG = logging.getLogger("rnnexport.verification")


def is_bundle_path(target: str | os.PathLike[str]) -> bool:
    """Whether ``target`` names a bundle (a folder or ``.zip``) or an ONNX test folder, not a graph file."""
    return Path(target).is_dir() or os.fspath(target).endswith(".zip")


@contextlib.contextmanager
def _logged_warnings() -> Iterator[None]:
    """Python warnings raised inside the block go to :data:`LOG`, not to the user's terminal."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield
        finally:
            for text in dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught):
                LOG.info("during verify: %s", text)


def _options(options: VerifyOptions | None, kwargs: dict[str, Any]) -> VerifyOptions:
    if options is not None and kwargs:
        raise TypeError("give either options= or keyword options, not both")
    if options is not None:
        return options
    known = {f.name for f in dataclasses.fields(VerifyOptions)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"verify() got unknown option {unknown[0]!r}; options are {', '.join(sorted(known))}")
    return VerifyOptions(**kwargs)


def verify(
    target: str | os.PathLike[str],
    source: SourceLike | None = None,
    *,
    options: VerifyOptions | None = None,
    progress: Progress | None = None,
    **kwargs: Any,
) -> Report:
    """Check that a graph computes what its PyTorch source computes, or re-check a bundle.

    Every engine is started before the first case; a requested one that cannot start ends
    the run there (a report that fails, with the reason), unless ``allow_missing``. Python
    warnings raised meanwhile go to the ``rnnexport.verification`` logger (:data:`LOG`).

    Args:
        target: an ``.onnx`` graph (sequence or step form), checked against ``source`` on the
            case grid (six contracts); or a bundle folder or ``.zip`` (``rnnexport package``)
            or an ONNX test folder, whose test sets run with no PyTorch, after every file's
            SHA-256 is checked.
        source: a graph's PyTorch reference: anything :func:`rnnexport.convert` takes
            (``"lstm"``, a :class:`~rnnexport.SourceSpec`, a model name, ``"file.py:factory"``,
            a torch.nn module, a :class:`~rnnexport.RecurrentModel`). None: rebuilt from
            the graph's metadata, when it records a built-in cell or a trained model.
        options: a :class:`~rnnexport.verification.options.VerifyOptions`; or give its fields
            as keyword arguments.
        progress: called with a :class:`~rnnexport.verification.options.Tick` after each
            case (graph) or engine (bundle).

    Returns:
        A :class:`~rnnexport.verification.report.Report`: every check with its figures, and
        the engines that could not run, with reasons. ``report.passed`` says all passed;
        ``report.diagnosis`` says where a failing graph first parts from PyTorch (``diagnose``
        option); ``report.environment`` where the report was made.

    Raises:
        VerifyError: the file is not an ONNX model or lacks the I/O contract, the source
            does not match the graph (shapes, parameter hash) or cannot be rebuilt, or an
            option is invalid (an unknown engine name, a bad grid, a graph's option given
            for a bundle).
        BundleError: the bundle is unreadable, unsafe, tampered with or malformed.
    """
    opts = _options(options, kwargs)
    with _logged_warnings():
        if not is_bundle_path(target):
            # the PyTorch side, imported only for a graph: a bundle's verification needs no torch
            from rnnexport.verification.graph import verify_graph

            report = verify_graph(target, source, opts, progress)
        else:
            report = _bundle(target, source, opts, progress)
    return dataclasses.replace(report, environment=environment())


def _bundle(target: str | os.PathLike[str], source: SourceLike | None, opts: VerifyOptions,
            progress: Progress | None) -> Report:
    """A bundle's verification, once nothing only a graph takes was given."""
    refused = [*(["SOURCE"] if source is not None else []), *opts.graph_only()]
    if refused:
        raise VerifyError(f"a bundle carries its own graphs, test sets and expected outputs: {', '.join(refused)} "
                          "does not apply to DIR or ZIP (it takes --engines, --allow-missing, "
                          "--no-reference-evaluator, --atol, --rtol, --threads, --timeout, --json, --quiet)")
    # the bundle side, imported only for a bundle: its reader and the runtime
    from rnnexport.verification.bundle import verify_bundle

    return verify_bundle(target, opts, progress)
