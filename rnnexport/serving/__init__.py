"""Serving step graphs at scale: a Triton model with implicit state, its checks, and a batcher emulator.

- :func:`triton_repository` (``rnnexport triton``) writes ``REPOSITORY/NAME/config.pbtxt``
  and ``REPOSITORY/NAME/1/model.onnx`` for Triton's sequence batcher.
- :func:`batch_first` is the serving form: every tensor with the batch axis first;
  :func:`expose_state` adds copies of the new state as outputs (``--expose-state``).
- :func:`check_model_folder` / :func:`check_config` check a configuration against its
  graph offline; :func:`emulate_sequence_batcher` runs a folder as the batcher would.

Triton's configuration schema comes with ``tritonclient`` (see docs/serving.md).
Names are imported lazily, so ``import rnnexport.serving`` loads nothing heavy.
"""

from __future__ import annotations

from rnnexport.core.lazy import lazy_exports

_LAZY: dict[str, str] = {
    "CheckReport": "rnnexport.serving.checks",
    "EmulatedRun": "rnnexport.serving.emulator",
    "InstanceKind": "rnnexport.serving.config",
    "Problem": "rnnexport.serving.checks",
    "ServingForm": "rnnexport.serving.form",
    "StepGraph": "rnnexport.serving.triton",
    "Strategy": "rnnexport.serving.config",
    "TritonOptions": "rnnexport.serving.config",
    "TritonResult": "rnnexport.serving.triton",
    "batch_first": "rnnexport.serving.form",
    "check_config": "rnnexport.serving.checks",
    "check_model_folder": "rnnexport.serving.checks",
    "emulate_sequence_batcher": "rnnexport.serving.emulator",
    "expose_state": "rnnexport.serving.form",
    "load_step_graph": "rnnexport.serving.triton",
    "model_config": "rnnexport.serving.config",
    "parse_config": "rnnexport.serving.config",
    "read_config": "rnnexport.serving.checks",
    "render_config": "rnnexport.serving.config",
    "triton_repository": "rnnexport.serving.triton",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
