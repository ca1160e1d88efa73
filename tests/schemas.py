"""The JSON schemas rnnexport ships (``docs/NAME.schema.json``, in the wheel as ``rnnexport/schemas``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

DOCS = Path(__file__).resolve().parent.parent / "docs"


def schema(name: str) -> dict[str, Any]:
    """The schema ``docs/NAME.schema.json``, parsed."""
    loaded: dict[str, Any] = json.loads((DOCS / f"{name}.schema.json").read_text())
    return loaded


def validate(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """``doc``, once it validates against schema ``name`` and names its format ``rnnexport.NAME/1``."""
    jsonschema.Draft202012Validator(schema(name)).validate(doc)
    assert doc["format"] == f"rnnexport.{name}/1"
    return doc
