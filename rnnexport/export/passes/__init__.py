"""Rewrites of a traced step graph that cut the work a Scan body does per step.

Each is a generic graph transformation that keeps results equal and applies only
where its conditions can be established from the graph and its inferred shapes.
"""

from __future__ import annotations

from rnnexport.export.rewrites.rowwise import rowwise
from rnnexport.export.rewrites.splits import fuse_split_gates
from rnnexport.export.rewrites.views import drop_identity_views

__all__ = ["drop_identity_views", "fuse_split_gates", "rowwise"]
