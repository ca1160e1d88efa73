"""Every graph rewrite of the exporter, as a pass: ``pass_(model) -> PassResult(model, modified)``.

Each keeps results equal and applies only where its conditions can be established from
the graph and its inferred shapes. The protocol is :mod:`~rnnexport.export.passes.base`;
the primitives they share (who reads a value, renaming, cleanup, inferred types) are
:mod:`~rnnexport.export.passes.graph`, new nodes and fresh names come from
:class:`rnnexport.export.onnxutil.GraphBuilder`. The lowerings list which passes they run
(:data:`rnnexport.export.scan.SCAN_PASSES`).

On a traced step (``onnx.ModelProto``): ``views.drop_identity_views``,
``algebra.lift_biases``, ``algebra.fuse_matmuls``, ``splits.fuse_split_gates``,
``graph.remove_dead_nodes``. On the scan lowering's :class:`~rnnexport.export.passes.loop.Loop`:
``hoist.hoist_inputs``, ``carry.carry_states``, ``head.hoist_head``. On a finished graph:
``weights.weights_into_bodies``, ``nan.CarryNan``. Submodules are imported where they are used.
"""

from __future__ import annotations
