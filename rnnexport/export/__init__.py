"""Lowerings from a RecurrentModel to ONNX: native, scan, unrolled, and the step form.

:func:`rnnexport.export.convert.convert` is ``rnnexport.convert``. Submodules are
imported where they are used; this package's import loads nothing else.
"""

from __future__ import annotations
