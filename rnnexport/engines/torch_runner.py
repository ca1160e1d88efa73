"""The PyTorch reference as a runner: a :class:`~rnnexport.source.model.RecurrentModel` on numpy feeds."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rnnexport.core.compare import rounding_error
from rnnexport.core.contract import Form
from rnnexport.core.errors import VerifyError, describe
from rnnexport.engines.base import Runner
from rnnexport.source.model import RecurrentModel

__all__ = ["TorchRunner"]


class TorchRunner(Runner):
    """Runs the PyTorch reference of ``model`` in ``form``: a whole sequence, or one step.

    Feeds and outputs are named by the model's I/O contract (``x``, ``h``, ``c`` in;
    ``y``, ``h_out``, ``c_out`` out).
    """

    name = "pytorch"

    def __init__(self, model: RecurrentModel, form: Form | str = Form.SEQUENCE) -> None:
        super().__init__()
        self.model = model
        self.form = Form(form)

    def exact(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The sequence reference computed in float64, outputs by name; None when the model does not run so."""
        io = self.model.io
        x = np.asarray(feeds[io.inputs(Form.SEQUENCE)[0].name])
        state = [np.asarray(feeds[n], dtype=io.state.dtype) for n in io.state.names]
        exact = self.model.run_sequence_float64(x, state, self._lengths(feeds, x))
        if exact is None:
            return None
        return dict(zip((s.name for s in io.outputs(Form.SEQUENCE)), exact, strict=True))

    def rounding_error(self, feeds: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> float | None:
        """Max abs difference between the float32 reference ``want`` and a float64 run, or None."""
        exact = self.exact(feeds)
        if exact is None:
            return None
        return rounding_error([want[name] for name in exact], list(exact.values()))

    def _lengths(self, feeds: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray | None:
        """A sequence's lengths feed when some stream stops before the end (each runs alone then), else None."""
        io = self.model.io
        if io.lengths is None or io.lengths.name not in feeds:
            return None
        lengths = np.asarray(feeds[io.lengths.name])
        return lengths if (lengths < x.shape[io.time_axis]).any() else None

    def _activate(self) -> None:
        return None

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        io = self.model.io
        x_name = io.inputs(self.form)[0].name
        missing = [n for n in (x_name, *io.state.names) if n not in feeds]
        if missing:
            raise VerifyError(f"{self.name}: feed lacks {missing[0]!r}")
        state = [np.asarray(feeds[n], dtype=io.state.dtype) for n in io.state.names]
        x = np.asarray(feeds[x_name], dtype=io.x_dtype)
        try:
            if self.form is Form.SEQUENCE:
                outputs = self.model.run_sequence(x, state, self._lengths(feeds, x))
            else:
                outputs = self.model.run_step(x, state)
        except Exception as e:  # the user's module failing is a user error
            raise VerifyError(f"the PyTorch reference failed on x of shape {x.shape}: {describe(e)}") from e
        names = [s.name for s in io.outputs(self.form)]
        return dict(zip(names, outputs, strict=True))
