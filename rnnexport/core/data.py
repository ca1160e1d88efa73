"""Reading untrusted data: JSON decoded only after its size and nesting are known to be in bounds.

Graph metadata, manifests, model cards and state structures come from files a user may not
have made. ``json.loads`` recurses once per nesting level, so a deep document fails inside
the decoder (or exhausts the stack) before any bound written after it can apply; here the
depth is counted first, in one pass over the text that skips string contents.

Text from such a file is printed through :func:`printable`: a description holding a newline,
a carriage return or a terminal escape must not make a command show a line it did not write.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rnnexport.core.errors import ContractError, RnnexportError

__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "json_depth", "load_json", "printable"]

#: Characters that move the cursor or change how a terminal shows what follows: C0 and C1 controls
#: (newline, carriage return, escape, ...), DEL, Unicode line separators and bidirectional overrides.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every control character written as an escape (a newline as ``\\x0a``, an escape as
    ``\\x1b``, a right-to-left override as ``\\u202e``): one line that shows what it holds."""
    return _UNPRINTABLE.sub(_escape, text)

#: Deeper than anything rnnexport writes (a manifest is ~6 levels, a state structure at most 8 + 2).
MAX_JSON_DEPTH = 32
MAX_JSON_BYTES = 16 * 2**20


def json_depth(text: str, limit: int) -> int:
    """The bracket nesting depth of JSON ``text`` (strings skipped), counting stops past ``limit``."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif char in "]}":
            depth -= 1
    return deepest


def load_json(data: str | bytes, what: str, error: type[RnnexportError] = ContractError,
              max_depth: int = MAX_JSON_DEPTH, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Decode ``data`` after checking its size and nesting depth.

    Raises:
        ``error``: too large, nested deeper than ``max_depth``, or not JSON (one line naming ``what``).
    """
    if len(data) > max_bytes:
        raise error(f"{what} is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        text = data.decode() if isinstance(data, bytes) else data
    except UnicodeDecodeError as e:
        raise error(f"{what} is not JSON: {e}") from e
    if json_depth(text, max_depth) > max_depth:
        raise error(f"{what} nests deeper than {max_depth} levels; it was not written by rnnexport")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise error(f"{what} is not JSON: {e}") from e
