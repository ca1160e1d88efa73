"""Package attributes imported on first use: ``rnnexport``, ``.engines``, ``.serving``, ``.verification``.

A package lists ``name -> defining module`` and binds the two module hooks::

    __getattr__, __dir__ = lazy_exports(__name__, {"verify": "rnnexport.verification.run"})

so importing the package loads nothing heavy (torch, onnxruntime) until a name is used. A
name whose module needs an optional package that is missing raises
:class:`~rnnexport.core.errors.MissingExtraError` naming the install extra; a name not in
the table is looked up as a submodule (``rnnexport.cells``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

from rnnexport.core.errors import missing_extra

__all__ = ["lazy_exports"]


def lazy_exports(package: str, table: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package`` for the names in ``table``."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:  # the module hook's own name
        if name not in table:
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        try:
            value = getattr(importlib.import_module(table[name]), name)
        except ModuleNotFoundError as e:  # an optional package: say which extra brings it
            missing = missing_extra(e, f"{package}.{name}")
            if missing is None:
                raise
            raise missing from e
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
