"""JSON from outside (manifests, config blobs, indexes, guest output), with size and depth bounds.

``json.loads`` on hostile input fails in ways a user should never see: a document nested a
hundred thousand levels deep is a ``RecursionError``, a huge one eats memory. :func:`load`
checks the size first, parses (the C parser stops at the interpreter's recursion limit, which
becomes a clear error), then checks the nesting depth of the result with an iterative walk --
several times faster than scanning the text for brackets outside strings -- and turns every
failure into the error class the caller names, with ``where``. :func:`load_hint` and
:func:`save_hint` keep mcpkit's own small records in ``MCPKIT_HOME`` (read back as JSON from outside).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hatch_mcpkit.errors import McpkitError

__all__ = ["MAX_DEPTH", "load", "load_hint", "save_hint"]

log = logging.getLogger(__name__)

MAX_DEPTH = 64


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists/objects in ``value`` nest more than ``limit`` levels (level by level; stops early)."""
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [c for x in level for c in (x.values() if isinstance(x, dict) else x) if isinstance(c, (dict, list))]
    return False


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
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{where}: JSON document is nested more than {max_depth} levels deep") from None
    except ValueError as exc:
        raise error(f"{where}: not valid JSON ({exc})") from None
    if _deeper_than(value, max_depth):
        raise error(f"{where}: JSON document is nested more than {max_depth} levels deep")
    return value


def load_hint(path: Path, *, max_bytes: int) -> Any:
    """A small record mcpkit keeps for itself in ``MCPKIT_HOME`` (push hints, synced locks): only a hint,
    so ``None`` when it is missing, not a regular file, too large or not JSON -- never an error."""
    from hatch_mcpkit._files import read_regular

    try:
        return load(read_regular(path, limit=max_bytes, where=str(path), error=McpkitError),
                    where=str(path), error=McpkitError, max_bytes=max_bytes)
    except (OSError, McpkitError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.debug("ignoring %s: %s", path, exc)
        return None


def save_hint(path: Path, value: Any) -> None:
    """Replace the record at ``path`` with ``value`` atomically; best effort (a hint that cannot be
    written only costs what it would have saved)."""
    from hatch_mcpkit._files import atomic_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(value, indent=1).encode() + b"\n", mode=0o644)
    except OSError as exc:
        log.debug("cannot write %s: %s", path, exc.strerror)
