"""Untrusted text on the user's terminal, and in logs.

Registry tags and error messages, repository names, annotations, config-blob fields, guest
stderr, tool descriptions and paths from a bundle can carry terminal control sequences: an
OSC 52 sequence writes the clipboard, a carriage return or a cursor move can overwrite the
line before it, a bidi override can reorder what the user reads. :func:`clean` makes such a
string inert before mcpkit prints or logs it: C0 controls (except a plain newline or tab when
asked for), DEL, C1 controls and the Unicode bidi controls become visible ``\\xNN`` /
``\\uNNNN`` escapes, and overlong text is cut with a marker.
"""

from __future__ import annotations

import re

__all__ = ["clean", "clean_block"]

_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_UNSAFE = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{_BIDI}\u2028\u2029]")
_UNSAFE_KEEP_LINES = re.compile(f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f{_BIDI}\u2028\u2029]")
DEFAULT_MAX = 4096


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _cut(text: str, limit: int | None) -> str:
    if limit is not None and len(text) > limit:
        return text[:limit] + f"... [{len(text) - limit} more characters]"
    return text


def clean(value: object, *, limit: int | None = DEFAULT_MAX) -> str:
    """One line of untrusted text, safe to print: every control character escaped."""
    return _UNSAFE.sub(_escape, _cut(str(value), limit))


def clean_block(value: object, *, limit: int | None = DEFAULT_MAX) -> str:
    """Several lines of untrusted text (guest stderr): newlines and tabs kept, other controls escaped."""
    return _UNSAFE_KEEP_LINES.sub(_escape, _cut(str(value), limit))
