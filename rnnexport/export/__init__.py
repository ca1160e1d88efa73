"""Lowerings from a RecurrentModel to ONNX: native, scan, unrolled, and the step form."""

from __future__ import annotations

from rnnexport.export.lowerings import Attempt, NotApplicable, lower
from rnnexport.export.metadata import GraphInfo, read_info, write_info

__all__ = ["Attempt", "GraphInfo", "NotApplicable", "lower", "read_info", "write_info"]
