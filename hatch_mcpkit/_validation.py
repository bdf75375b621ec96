"""Tool arguments against ``input_schema``, guest results against ``output_schema``.

Both schemas come from a bundle's config.yaml, so they are data from a stranger:

* **Self-contained.** A ``$ref`` may only point inside its own schema (``#...``);
  :func:`schema_problems` refuses anything else before a validator is built, and the
  validators resolve references through a ``referencing.Registry`` that never
  retrieves: no URL is fetched and no file is read, whatever a schema says.
* **Linear-time patterns.** ``pattern``, ``patternProperties`` and the
  ``additionalProperties`` check that depends on them run on RE2 (``google-re2``),
  which cannot backtrack catastrophically; Python's ``re`` would hold the GIL for
  hours on ``^(a+)+$``. A pattern RE2 cannot compile (look-around, back-references)
  is refused with the pattern named, not run on another engine.
* **Known dialects only.** An unknown ``$schema`` is refused, not validated as 2020-12.

* **Bounded time.** ``uniqueItems`` is checked in linear time (jsonschema's own is
  quadratic for objects), every keyword checks the call's budget (a deadline and a
  cancel flag) before it runs, so a schema built to explode (nested ``anyOf`` through
  ``$ref``) stops with :class:`ValidationTimeout`; a self-referencing schema that
  recurses for ever is reported, not raised.

The server runs validation in a worker thread (never on the event loop), so even
while a check runs ``ping`` is answered and end of input stops the server.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from hatch_mcpkit.errors import ConfigError, Problem

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

    from hatch_mcpkit.config import Config, Tool

__all__ = ["DEFAULT_BUDGET_S", "ToolSchemas", "UnsafeSchemaError", "ValidationTimeout", "json_path",
           "schema_problems"]

DEFAULT_BUDGET_S = 2.0  # wall-clock seconds one validation may take

# keywords whose value is a schema / a list of schemas / a mapping of name -> schema
_SCHEMA_KEYS = ("additionalProperties", "additionalItems", "unevaluatedProperties", "unevaluatedItems",
                "contains", "propertyNames", "not", "if", "then", "else", "items")
_SCHEMA_LIST_KEYS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_SCHEMA_MAP_KEYS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies")
_REF_KEYS = ("$ref", "$dynamicRef", "$recursiveRef")


class UnsafeSchemaError(ValueError):
    """A schema asked for something validation never does (a remote ``$ref``, a pattern RE2 refuses)."""


class ValidationTimeout(Exception):
    """A validation ran out of its time budget, or its call was cancelled."""


class _Budget(threading.local):
    deadline: float | None = None
    cancelled: Callable[[], bool] | None = None


_BUDGET = _Budget()


def _spend() -> None:
    """Raise :class:`ValidationTimeout` when this thread's validation is over its budget."""
    budget = _BUDGET
    if budget.deadline is not None and time.monotonic() > budget.deadline:
        raise ValidationTimeout("took too long")
    if budget.cancelled is not None and budget.cancelled():
        raise ValidationTimeout("cancelled")


def json_path(root: str, parts: Iterable[Any]) -> str:
    """``arguments.items[2].name`` from a root name and a jsonschema path."""
    out = root
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


# --------------------------------------------------------------------------- checking a schema


def _walk(schema: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], dict[str, Any]]]:
    """Every subschema object with its key path (following schema keywords only, not data)."""
    if not isinstance(schema, dict):
        return
    yield path, schema
    for key in _SCHEMA_KEYS:
        if isinstance(schema.get(key), dict):
            yield from _walk(schema[key], (*path, key))
    for key in _SCHEMA_LIST_KEYS:
        if isinstance(schema.get(key), list):
            for i, sub in enumerate(schema[key]):
                yield from _walk(sub, (*path, key, i))
    for key in _SCHEMA_MAP_KEYS:
        if isinstance(schema.get(key), dict):
            for name, sub in schema[key].items():
                yield from _walk(sub, (*path, key, name))


def _dotted(path: Iterable[str | int]) -> str:
    return json_path("", path).lstrip(".")


def schema_problems(schema: Any) -> list[tuple[str, str]]:
    """What makes ``schema`` unsafe to validate with, as ``(key path, message)`` pairs.

    Checks: ``$ref`` outside the schema, an unknown ``$schema`` dialect, patterns RE2
    cannot compile (only when ``google-re2`` is installed: it is in the ``run`` extra,
    so a plain ``hatch build`` environment skips that one), and ``unevaluatedProperties``
    combined with ``patternProperties`` (jsonschema evaluates that pair with Python's
    ``re``). Does not import anything beyond jsonschema.
    """
    problems: list[tuple[str, str]] = []
    if isinstance(schema, dict) and "$schema" in schema and _dialect(schema) is None:
        problems.append(("$schema", f"unknown JSON Schema dialect {schema['$schema']!r}; use "
                         "https://json-schema.org/draft/2020-12/schema (or leave $schema out)"))
    patterns: list[tuple[tuple[str | int, ...], str]] = []
    uses_unevaluated = uses_pattern_props = False
    for path, sub in _walk(schema):
        for key in _REF_KEYS:
            ref = sub.get(key)
            if isinstance(ref, str) and not ref.startswith("#"):
                problems.append((_dotted((*path, key)), f"{key} {ref!r} points outside this schema; schemas must be "
                                 "self-contained (use \"#/$defs/...\" and put the definition in the schema)"))
        if isinstance(sub.get("pattern"), str):
            patterns.append(((*path, "pattern"), sub["pattern"]))
        if isinstance(sub.get("patternProperties"), dict):
            uses_pattern_props = True
            patterns += [((*path, "patternProperties", p), p) for p in sub["patternProperties"]]
        uses_unevaluated = uses_unevaluated or "unevaluatedProperties" in sub
    if uses_unevaluated and uses_pattern_props:
        problems.append(("unevaluatedProperties", "unevaluatedProperties together with patternProperties is not "
                         "supported (it would run the patterns on a backtracking regex engine); use "
                         "additionalProperties instead"))
    if _have_re2():
        for path, pattern in patterns:
            try:
                _regex(pattern)
            except UnsafeSchemaError as exc:
                problems.append((_dotted(path), str(exc)))
    return problems


def _dialect(schema: dict[str, Any]) -> type[Validator] | None:
    from jsonschema import validators

    if "$schema" not in schema:
        return validators.Draft202012Validator
    found: type[Validator] | None = validators.validator_for(schema, default=None)  # type: ignore[arg-type]
    return found


# --------------------------------------------------------------------------- RE2 patterns


def _have_re2() -> bool:
    try:
        import re2  # noqa: F401
    except ImportError:
        return False
    return True


def _ecma_to_re2(pattern: str) -> str:
    """ECMA-262 escapes RE2 spells differently: ``\\uXXXX`` becomes ``\\x{XXXX}``."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            hexpart = pattern[i + 2 : i + 6]
            if nxt == "u" and len(hexpart) == 4 and all(c in "0123456789abcdefABCDEF" for c in hexpart):
                out.append("\\x{" + hexpart + "}")
                i += 6
                continue
            out.append(pattern[i : i + 2])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def _regex(pattern: str) -> Any:
    """``pattern`` compiled by RE2, or :class:`UnsafeSchemaError` naming it."""
    try:
        import re2
    except ImportError:  # pragma: no cover - google-re2 is in the run extra
        raise UnsafeSchemaError(
            f"pattern {pattern!r} needs the google-re2 package to be checked safely; "
            "install hatch-mcpkit[run]") from None
    options = re2.Options()
    options.log_errors = False
    options.never_capture = True
    try:
        return re2.compile(_ecma_to_re2(pattern), options)
    except re2.error as exc:
        why = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise UnsafeSchemaError(
            f"pattern {pattern!r} is not supported: {why} (patterns run on RE2, which has no look-around "
            "or back-references, so it cannot be made to backtrack for ever)") from None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not _regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        rx = _regex(pattern)
        for key, value in instance.items():
            if rx.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any, schema: Any) -> Iterator[Any]:
    """jsonschema's additionalProperties, with the patternProperties test on RE2."""
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "object"):
        return
    known = schema.get("properties", {})
    regexes = [_regex(p) for p in schema.get("patternProperties", {})]
    extras = [k for k in instance if k not in known and not any(rx.search(k) for rx in regexes)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(e) for e in sorted(extras))
            patterns = ", ".join(repr(p) for p in sorted(schema["patternProperties"]))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {patterns}")
        else:
            were = "was" if len(extras) == 1 else "were"
            yield ValidationError(f"Additional properties are not allowed ({', '.join(map(repr, extras))} {were} "
                                  "unexpected)")


def _canonical(value: Any) -> Any:
    """A hashable key equal for JSON-equal values (1 == 1.0, True != 1, key order ignored)."""
    if isinstance(value, bool) or value is None:
        return ("c", value)
    if isinstance(value, (int, float)):
        return ("n", value)  # int and float hash and compare alike when equal
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, dict):
        return ("o", frozenset((k, _canonical(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("a", tuple(_canonical(v) for v in value))
    return ("x", repr(value))


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[Any]:
    """uniqueItems in linear time (jsonschema's falls back to comparing every pair)."""
    from jsonschema.exceptions import ValidationError

    if unique and validator.is_type(instance, "array") and len({_canonical(v) for v in instance}) < len(instance):
        yield ValidationError(f"{_short(instance)} has non-unique elements")


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _metered(keyword: Callable[..., Any]) -> Callable[..., Any]:
    def check(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        _spend()
        return keyword(validator, value, instance, schema)

    return check


# --------------------------------------------------------------------------- validators


def _refuse_retrieval(uri: str) -> Any:
    from referencing.exceptions import NoSuchResource

    raise NoSuchResource(uri)


@functools.lru_cache(maxsize=8)
def _safe_class(base: type[Validator]) -> type[Validator]:
    from jsonschema import validators

    keywords: dict[str, Callable[..., Any]] = dict(base.VALIDATORS)
    keywords.update(pattern=_pattern, patternProperties=_pattern_properties, uniqueItems=_unique_items)
    if "additionalProperties" in keywords:
        keywords["additionalProperties"] = _additional_properties
    extended: type[Validator] = validators.extend(  # type: ignore[no-untyped-call]
        base, {k: _metered(fn) for k, fn in keywords.items()})
    return extended


def build_validator(schema: dict[str, Any]) -> Validator:
    """A validator for ``schema`` that never retrieves a reference and matches patterns on RE2.

    Raises :class:`UnsafeSchemaError` listing everything :func:`schema_problems` finds.
    """
    from referencing import Registry

    problems = schema_problems(schema)
    if problems:
        raise UnsafeSchemaError("; ".join(f"{where}: {message}" if where else message for where, message in problems))
    base = _dialect(schema)
    assert base is not None  # schema_problems refused an unknown dialect
    registry: Registry[Any] = Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]
    return _safe_class(base)(schema, registry=registry)


def _problems(validator: Validator, instance: Any, root: str, budget: float | None,
              cancelled: Callable[[], bool] | None) -> list[str]:
    from referencing.exceptions import Unresolvable

    out = []
    _BUDGET.deadline = None if budget is None else time.monotonic() + budget
    _BUDGET.cancelled = cancelled
    try:
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    except ValidationTimeout as exc:
        if str(exc) == "cancelled":
            raise
        return [f"{root}: validation took longer than {budget:g} s and was stopped; the tool's schema is too "
                "expensive to check"]
    except RecursionError:
        return [f"{root}: the schema refers to itself without end (a $ref loop); it cannot be checked"]
    except Unresolvable as exc:  # the second wall: a reference schema_problems did not see
        return [f"{root}: the schema refers to {getattr(exc, 'ref', '?')!r}, which is not part of it; "
                "nothing is ever fetched (schemas must be self-contained)"]
    except UnsafeSchemaError as exc:
        return [f"{root}: {exc}"]
    finally:
        _BUDGET.deadline = _BUDGET.cancelled = None
    for err in errors:
        path = list(err.absolute_path)
        if err.validator == "required" and isinstance(err.instance, dict):
            missing = [p for p in err.validator_value if p not in err.instance]  # type: ignore[union-attr]
            path = [*path, missing[0]] if len(missing) == 1 else path
        out.append(f"{json_path(root, path)}: {err.message}")
    return out


def _non_finite(value: Any, root: str, limit: int = 5) -> list[str]:
    """Where ``value`` holds NaN or an infinity (at most ``limit`` places).

    JSON has neither, but parsers accept ``NaN``/``Infinity`` and turn a number past the
    float range (``1e400``) into an infinity; such a value cannot be passed on to a module
    as JSON, and a schema's ``type: number`` does not refuse it.
    """
    out: list[str] = []
    stack: list[tuple[Any, list[Any]]] = [(value, [])]
    while stack and len(out) < limit:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            what = "NaN" if math.isnan(item) else "a number beyond the range of a 64-bit float"
            out.append(f"{json_path(root, path)}: {what} is not a JSON number this tool can be given")
        elif isinstance(item, dict):
            stack.extend((v, [*path, k]) for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((v, [*path, i]) for i, v in reversed(list(enumerate(item))))
    return out


class ToolSchemas:
    """Every tool's input and output validators, built (and refused) once, up front.

    Thread-safe after construction: validators are immutable and ``_regex`` is cached.
    """

    def __init__(self, config: Config) -> None:
        self._inputs: dict[str, Validator] = {}
        self._outputs: dict[str, Validator] = {}
        found: list[Problem] = []
        for i, tool in enumerate(config.tools):
            for key, schema, into in (("input_schema", tool.input_schema, self._inputs),
                                      ("output_schema", tool.output_schema, self._outputs)):
                if schema is None:
                    continue
                problems = schema_problems(schema)
                found += [Problem(str(config.path), _dotted(("mcp", "tools", i, key, *([w] if w else []))), m)
                          for w, m in problems]
                if not problems:
                    into[tool.name] = build_validator(schema)
        if found:
            raise ConfigError(found, hint="this bundle's schemas are refused; ask its publisher to fix them")

    def arguments(self, tool: Tool, arguments: Any, *, budget: float | None = DEFAULT_BUDGET_S,
                  cancelled: Callable[[], bool] | None = None) -> list[str]:
        """Every way ``arguments`` fails the tool's input_schema, as ``arguments.x.y: message``.

        A check that runs over ``budget`` seconds is stopped and reported as a problem;
        when ``cancelled()`` turns true it stops with :class:`ValidationTimeout`.
        """
        validator = self._inputs.get(tool.name)
        odd = _non_finite(arguments, "arguments")
        return odd + ([] if validator is None else _problems(validator, arguments, "arguments", budget, cancelled))

    def output(self, tool: Tool, value: Any, *, budget: float | None = DEFAULT_BUDGET_S,
               cancelled: Callable[[], bool] | None = None) -> str | None:
        """Why ``value`` fails the tool's output_schema, or None (also when it declares none)."""
        validator = self._outputs.get(tool.name)
        if validator is None:
            return None
        errors = _problems(validator, value, "output", budget, cancelled)
        if errors:
            return f"{tool.name} returned output that does not match its output_schema: " + "; ".join(errors)
        return None
