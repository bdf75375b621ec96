"""config.yaml's rules as data: ``schemas/config.schema.json``, and its errors in mcpkit's words.

The JSON Schema (2020-12) is shipped in the package and published in docs/config.md, so an
editor with yaml-language-server completes and checks config.yaml as it is typed. Here it is
checked with jsonschema's ``iter_errors`` (every problem at once); each error becomes a
``(key path, message)`` pair. Messages come from the schema where it says more than
jsonschema would (``title`` names what a pattern describes, ``x-errors`` maps a keyword to a
message, ``x-missing`` explains a missing required key); unknown keys get a did-you-mean.

``pattern`` is checked with JSON Schema's (ECMA-262) meaning of ``$``: the end of the text.
Python's ``re`` also lets ``$`` match before a final newline, which would let a tool named
``"t\n"`` through ``^[A-Za-z0-9_.-]{1,64}$``.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterator
from importlib import resources
from typing import TYPE_CHECKING, Any

from hatch_mcpkit._yaml import KeyPath, LineMap

if TYPE_CHECKING:
    from hatch_mcpkit.errors import Problem

__all__ = ["SCHEMA_RESOURCE", "config_schema", "document_problems", "schema_problems", "type_name"]

SCHEMA_RESOURCE = "schemas/config.schema.json"


def config_schema(resource: str = SCHEMA_RESOURCE) -> dict[str, Any]:
    """The JSON Schema of config.yaml (or another shipped schema, such as the trust policy's)."""
    return _schema(resource)


@functools.lru_cache(maxsize=4)
def _schema(resource: str) -> dict[str, Any]:
    text = resources.files("hatch_mcpkit").joinpath(resource).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.lru_cache(maxsize=4)
def _validator(resource: str) -> Any:
    from jsonschema import Draft202012Validator, validators
    from referencing import Registry

    checker = validators.extend(Draft202012Validator, {"pattern": _pattern})  # type: ignore[no-untyped-call]
    # the schema refers only to its own #/$defs; this registry has nothing else and never retrieves
    return checker(_schema(resource), registry=Registry())


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not _ecma(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.lru_cache(maxsize=256)
def _ecma(pattern: str) -> re.Pattern[str]:
    """A shipped schema's ``pattern`` for Python's ``re``, each ``$`` (outside a class) made ``\\Z``."""
    out: list[str] = []
    escaped = in_class = False
    for ch in pattern:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "[":
            in_class = True
        elif ch == "]":
            in_class = False
        elif ch == "$" and not in_class:
            out.append("\\Z")
            continue
        out.append(ch)
    return re.compile("".join(out))


def schema_problems(data: Any, resource: str = SCHEMA_RESOURCE) -> list[tuple[KeyPath, str]]:
    """Every way ``data`` (a loaded config.yaml, or the document ``resource`` describes) breaks the
    schema, in document terms."""
    found: list[tuple[KeyPath, str]] = []
    for error in _validator(resource).iter_errors(data):
        for item in _explain(error):
            if item not in found:
                found.append(item)
    return found


def document_problems(data: Any, resource: str, file: str, lines: LineMap,
                      prefix: tuple[str, ...] = ()) -> list[Problem]:
    """The schema's complaints about a document other than config.yaml (a trust policy, a pyproject.toml
    table) as :class:`Problem` s: file, key path (under ``prefix``), line of the key or its nearest parent."""
    from hatch_mcpkit._text import clean
    from hatch_mcpkit._yaml import format_path
    from hatch_mcpkit.errors import Problem

    if not isinstance(data, dict):
        return [Problem(file, format_path(prefix), f"must be a mapping, not {type_name(data)}", lines.get((), 1))]
    problems = []
    for path, message in schema_problems(data, resource):
        line = next((lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in lines), None)
        problems.append(Problem(file, format_path((*prefix, *path)), clean(message, limit=300), line))
    return problems


def _explain(error: Any) -> Iterator[tuple[KeyPath, str]]:
    path: KeyPath = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    value = error.instance
    custom = schema.get("x-errors", {}).get(error.validator)
    if custom:
        yield path, custom.replace("{value!r}", repr(value)).replace("{value}", str(value))
        return
    keyword = error.validator
    if keyword == "additionalProperties":
        allowed = tuple(schema.get("properties", {}))
        for key in value:
            if key not in allowed:
                yield (*path, key), f"unknown key{_suggest(str(key), allowed)}"
    elif keyword == "required":
        props = schema.get("properties", {})
        for key in error.validator_value:
            if isinstance(value, dict) and key not in value:
                hint = props.get(key, {}).get("x-missing")
                yield path, f"missing required key {key!r}" + (f" ({hint})" if hint else "")
    elif keyword == "type":
        yield path, _type_message(path, value, schema)
    elif keyword == "pattern":
        what = schema.get("title") or (str(path[-1]) if path else "value")
        note = "; a bundle's config.yaml is data: ${...} in it is literal text, never expanded" if "${" in str(
            value
        ) else ""
        yield path, f"{value!r} is not a valid {what} (must match {error.validator_value}){note}"
    elif keyword == "maxLength":
        yield path, f"must be at most {error.validator_value} characters"
    elif keyword == "minItems":
        yield path, f"must have at least {error.validator_value} item(s)"
    elif keyword == "enum":
        yield path, f"{value!r} is not one of: {', '.join(repr(v) for v in error.validator_value)}"
    else:
        yield path, error.message


def _type_message(path: KeyPath, value: Any, schema: dict[str, Any]) -> str:
    expected = schema.get("type")
    wanted = expected if isinstance(expected, list) else [expected]
    if "string" in wanted and isinstance(value, (int, float)) and not isinstance(value, bool):
        if str(value) in schema.get("enum", ()):
            return f'must be the string "{value}", not a number (quote it)'
        key = path[-1] if path and isinstance(path[-1], str) else "value"
        return f'must be a string, not a number (quote it: {key}: "{value}")'
    names = {
        "object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
        "number": "a number", "boolean": "true or false", "null": "empty",
    }
    want = " or ".join(names.get(str(t), str(t)) for t in wanted if t != "null") or "empty"
    return f"must be {want}, not {type_name(value)}"


def type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


def _suggest(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.7)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (expected one of: {', '.join(allowed)})"
