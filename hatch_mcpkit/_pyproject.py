"""``[tool.mcpkit.*]`` tables of a project's ``pyproject.toml``: found, read and located by line.

The one reader of pyproject.toml for mcpkit's own tables (``[tool.mcpkit.trust]`` for
:mod:`hatch_mcpkit.trust`, ``[tool.mcpkit.bundles]`` for :mod:`hatch_mcpkit.project`). A cloned
project's pyproject.toml is written by someone else: it is read only if it is a regular file of
at most 1 MiB, and a table is handed on as data together with the line of each key (tomllib
keeps none), so every problem can be reported as ``pyproject.toml:LINE: tool.mcpkit.x.y: ...``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hatch_mcpkit._yaml import KeyPath, LineMap
from hatch_mcpkit.errors import ConfigError, McpkitError, Problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - hatchling brings tomli on 3.10
    import tomli as tomllib

__all__ = ["PYPROJECT", "ToolTable", "load_toml", "nearest", "read_tool_table", "toml_lines", "tomllib"]

PYPROJECT = "pyproject.toml"
MAX_PYPROJECT_BYTES = 1024 * 1024

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r"\"(?:[^\"\\]|\\.)*\"|'[^']*'"
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER_RE = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_ASSIGN_RE = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART_RE = re.compile(rf"\s*({_BARE}|{_QUOTED})\s*(?:\.|$)")


@dataclass(frozen=True)
class ToolTable:
    """``[tool.mcpkit.<name>]`` as data, with the line of each key path (relative to the table)."""

    file: Path
    data: Any
    lines: LineMap
    prefix: tuple[str, ...]  # ("tool", "mcpkit", name)

    @property
    def where(self) -> str:
        return ".".join(self.prefix)

    def line(self, path: KeyPath) -> int | None:
        """The line of ``path``, else of its nearest parent that has one."""
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return None


def load_toml(text: str) -> dict[str, Any]:
    """``tomllib.loads``, with values nested too deeply for its recursive reader (a cloned file may hold
    ``x = [[[[...`` 100,000 deep) reported as the :class:`tomllib.TOMLDecodeError` it is, not a crash."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise tomllib.TOMLDecodeError("values are nested too deeply to read") from None


def nearest(start: Path) -> Path | None:
    """The pyproject.toml at or above ``start`` (the project mcpkit runs in), if any."""
    start = start.resolve()
    for folder in (start, *start.parents):
        candidate = folder / PYPROJECT
        if candidate.is_file():
            return candidate
    return None


def read_tool_table(path: Path, name: str, *, error_if_unreadable: bool = False) -> ToolTable | None:
    """``[tool.mcpkit.<name>]`` of ``path``; None when the file has no such table.

    A file that cannot be read or parsed is not mcpkit's business unless it mentions the table
    (then it is a :class:`ConfigError` naming the file); ``error_if_unreadable`` makes an unreadable
    file an error in any case (a command that was asked to read this file).
    """
    file = str(path)
    dotted = f"tool.mcpkit.{name}"
    try:
        from hatch_mcpkit._files import read_regular

        text = read_regular(path, limit=MAX_PYPROJECT_BYTES, where=file, error=McpkitError).decode("utf-8")
    except (OSError, UnicodeDecodeError, McpkitError) as exc:
        if not error_if_unreadable:
            return None  # not readable: not a policy (a broken pyproject.toml is someone else's error)
        why = exc.message if isinstance(exc, McpkitError) else getattr(exc, "strerror", None) or str(exc)
        raise ConfigError([Problem(file, "", f"cannot read: {why}")]) from None
    if "mcpkit" not in text:
        return None
    try:
        document = load_toml(text)
    except tomllib.TOMLDecodeError as exc:
        if dotted not in text and not error_if_unreadable:
            return None
        raise ConfigError([Problem(file, dotted, f"cannot read: {exc}")]) from None
    tool = document.get("tool")
    mcpkit = tool.get("mcpkit") if isinstance(tool, dict) else None
    table = mcpkit.get(name) if isinstance(mcpkit, dict) else None
    if table is None:
        return None
    prefix = ("tool", "mcpkit", name)
    lines = {key[len(prefix):]: line for key, line in toml_lines(text).items() if key[: len(prefix)] == prefix}
    return ToolTable(path, table, lines, prefix)


def _parts(dotted: str) -> tuple[str, ...]:
    out = []
    for m in _PART_RE.finditer(dotted):
        part = m.group(1)
        if part[:1] == '"':
            part = part[1:-1].encode().decode("unicode_escape")
        elif part[:1] == "'":
            part = part[1:-1]
        out.append(part)
    return tuple(out)


def toml_lines(text: str) -> LineMap:
    """The line of every table header and key assignment, by key path (arrays of tables get indices)."""
    lines: LineMap = {}
    table: KeyPath = ()
    arrays: dict[tuple[str, ...], int] = {}
    in_string = False
    for number, line in enumerate(text.splitlines(), 1):
        quotes = line.count('"""') + line.count("'''")
        if in_string:
            in_string = quotes % 2 == 0
            continue
        if (m := _HEADER_RE.match(line)) is not None:
            keys = _parts(m.group(2))
            table = _indexed(keys, arrays, new_array=m.group(1) == "[[")
            lines.setdefault(table, number)
        elif (m := _ASSIGN_RE.match(line)) is not None:
            lines.setdefault((*table, *_parts(m.group(1))), number)
        in_string = quotes % 2 == 1
    return lines


def _indexed(keys: tuple[str, ...], arrays: dict[tuple[str, ...], int], *, new_array: bool) -> KeyPath:
    """``a.b.c`` as a key path, with the current index after every array of tables it passes through."""
    if new_array:
        arrays[keys] = arrays.get(keys, -1) + 1
        for other in [k for k in arrays if len(k) > len(keys) and k[: len(keys)] == keys]:
            del arrays[other]  # a new [[a]] starts its own [[a.b]] count
    path: list[str | int] = []
    for n in range(1, len(keys) + 1):
        path.append(keys[n - 1])
        if keys[:n] in arrays:
            path.append(arrays[keys[:n]])
    return tuple(path)
