"""What config.yaml demands of a tool's ``input_schema`` / ``output_schema``.

* What makes a schema unsafe to validate with -- a ``$ref`` outside the schema, an
  unknown ``$schema`` dialect, a pattern the linear-time engine refuses -- is decided in
  one place, :func:`hatch_mcpkit._validation.schema_problems`, used here at build and
  load time and by the server when it builds its validators.
* The schema must itself be valid JSON Schema for its dialect, checked against the
  dialect's meta-schema with a registry that holds only the bundled meta-schemas: nothing
  is ever fetched.
* ``properties`` values are schema objects, never ``true``/``false``: those are valid JSON
  Schema, but MCP's TypeScript SDK rejects the whole ``tools/list`` of a server that sends one.

``problems(schema)`` returns ``(path inside the schema, message)`` pairs, every problem at
once; paths are written like ``properties.a.$ref`` / ``items[0]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["dotted", "problems"]

_SCHEMA_MAPS = ("properties", "patternProperties")
# values that are data, not subschemas
_DATA_KEYWORDS = ("const", "enum", "default", "examples")


def dotted(parts: Iterable[str | int]) -> str:
    """``properties.a.items[0]`` -- the way :mod:`hatch_mcpkit._validation` writes schema paths."""
    from hatch_mcpkit._validation import json_path

    return json_path("", parts).lstrip(".")


def problems(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """Everything wrong with one tool schema (empty when it is fine)."""
    from hatch_mcpkit._validation import schema_problems

    found = list(schema_problems(schema))
    found += [(dotted(path), message) for path, message in _boolean_properties(schema, ())]
    if not found:  # the dialect is known and nothing refers outside: check it is valid JSON Schema
        found += _against_meta_schema(schema)
    return found


def _against_meta_schema(schema: dict[str, Any]) -> list[tuple[str, str]]:
    from jsonschema import validators

    # the meta-schemas jsonschema bundles (its own dependency); this registry never retrieves
    from jsonschema_specifications import REGISTRY  # type: ignore[import-untyped]

    dialect = validators.validator_for(schema, default=validators.Draft202012Validator)
    meta = dialect.META_SCHEMA
    checker = validators.validator_for(meta)(meta, registry=REGISTRY)
    errors = sorted(checker.iter_errors(schema), key=lambda e: [str(p) for p in e.absolute_path])
    return [(dotted(e.absolute_path), f"invalid JSON Schema: {e.message}") for e in errors]


def _boolean_properties(node: Any, path: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _boolean_properties(item, (*path, i))
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in _DATA_KEYWORDS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                if isinstance(sub, bool):
                    hint = "{} for any value" if sub else "{not: {}} for no value"
                    yield (*path, key, name), (
                        f"a boolean schema ({str(sub).lower()}) is valid JSON Schema, but MCP clients built on "
                        f"the TypeScript SDK reject the whole tools/list for it; write {hint}"
                    )
                else:
                    yield from _boolean_properties(sub, (*path, key, name))
        else:
            yield from _boolean_properties(value, (*path, key))
