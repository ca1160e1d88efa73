"""The scan lowering hoists input-only work out of the loop without changing results."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from rnnexport.export.lowerings import trace_step
from rnnexport.export.scan import wrap_in_scan
from rnnexport.model import Form
from rnnexport.testing import feeds, random_inputs, random_state
from tests.configs import VOCABULARY


def _body(model_proto):
    scan = next(n for n in model_proto.graph.node if n.op_type == "Scan")
    return next(a.g for a in scan.attribute if a.name == "body")


@pytest.mark.parametrize("name", ["seed_lstm", "wrapped_token_lm", "wrapped_batch_first_gru", "user_leaky_cell"])
def test_hoisted_scan_is_smaller_per_step_and_equal(exports, name):
    model = exports.model(name)
    step = trace_step(model)
    plain, hoisted = wrap_in_scan(model, step, hoist=False), wrap_in_scan(model, step, hoist=True)
    assert len(_body(hoisted).node) < len(_body(plain).node)
    assert "x" not in [i.name for i in _body(hoisted).input] or name == "user_leaky_cell"
    rng = np.random.default_rng(5)
    x = random_inputs(model.io, Form.SEQUENCE, 3, 9, rng, vocabulary=VOCABULARY.get(name))
    state = random_state(model.io, 3, rng, 0.5)
    results = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
               .run(None, feeds(model.io, x, state)) for m in (plain, hoisted)]
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=1e-6)
