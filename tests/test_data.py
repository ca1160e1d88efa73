"""Untrusted JSON (metadata, manifests, cards) is bounded before it is decoded."""

from __future__ import annotations

import json

import pytest

from rnnexport.core.contract import GraphInfo
from rnnexport.core.data import json_depth, load_json
from rnnexport.core.errors import ContractError


@pytest.mark.parametrize("text", ['{"a": [1, {"b": 2}]}', '[[[]]]', '"[[[["', '{"k": "\\"[{"}', "3"])
def test_depth_matches_the_decoded_structure(text):
    def depth(value):
        if isinstance(value, dict):
            return 1 + max(map(depth, value.values()), default=0)
        if isinstance(value, list):
            return 1 + max(map(depth, value), default=0)
        return 0

    assert json_depth(text, 100) == depth(json.loads(text))


@pytest.mark.parametrize("levels", [1_000, 100_000])
def test_deep_documents_are_refused_before_decoding(levels):
    with pytest.raises(ContractError, match="nests deeper than 32 levels"):
        load_json("[" * levels + "]" * levels, "state structure")


def test_a_deep_state_structure_in_graph_metadata_is_one_contract_error():
    """The I/O contract of a graph holds the state's nested structure; a deep one is malformed, not a crash."""
    props = {"rnnexport.io": '{"x_features": [4], "x_dtype": "float32", "y_features": [4], "state": '
                             '{"names": ["h"], "dims": [[4]], "batch_axis": 0, "structure": '
             + "[" * 100_000 + "]" * 100_000 + "}}",
             "rnnexport.form": "step", "rnnexport.lowering": "native"}
    with pytest.raises(ContractError, match="nests deeper"):
        GraphInfo.from_props(props)


def test_oversized_and_broken_json_are_one_line():
    with pytest.raises(ContractError, match="over the limit"):
        load_json(b"[" + b"0," * 100 + b"0]", "manifest", max_bytes=50)
    with pytest.raises(ContractError, match="not JSON"):
        load_json(b"\xff\xfe", "manifest")
    with pytest.raises(ContractError, match="not JSON"):
        load_json("{not json", "manifest")
