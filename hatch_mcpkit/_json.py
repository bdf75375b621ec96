"""JSON from outside (manifests, config blobs, indexes, guest output), with size and depth bounds.

``json.loads`` on hostile input fails in ways a user should never see: a document nested a
hundred thousand levels deep is a ``RecursionError``, a huge one eats memory. :func:`load`
checks the size first and the nesting depth before parsing (a linear scan that skips
strings), and turns every failure into the error class the caller names, with ``where``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hatch_mcpkit.errors import McpkitError

__all__ = ["MAX_DEPTH", "load"]

MAX_DEPTH = 64


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


def _depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` outside strings (an upper bound for malformed input)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:  # the common case: nothing to scan
        return text.count("[") + text.count("{")
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def load(
    raw: bytes | str,
    *,
    where: str,
    error: type[McpkitError] = McpkitError,
    max_bytes: int,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Parse ``raw`` as JSON or raise ``error`` saying what is wrong with the document at ``where``."""
    if len(raw) > max_bytes:
        raise error(f"{where}: JSON document is {len(raw)} bytes, more than the {max_bytes} byte limit")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise error(f"{where}: JSON document is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if _depth(text) > max_depth:
        raise error(f"{where}: JSON document is nested more than {max_depth} levels deep")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise error(f"{where}: not valid JSON ({exc})") from None
