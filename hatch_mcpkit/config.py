"""The config.yaml model: loading, ``${VAR}`` expansion and validation.

``load_config(path, environ=None)`` returns a :class:`Config` or raises one
:class:`~hatch_mcpkit.errors.ConfigError` listing *every* problem with file,
key path and line.

Two modes, chosen by ``environ``:

* ``environ=None`` (the default): the file is **data** -- a pulled bundle's or any
  other foreign config.yaml. Nothing is expanded from anyone's environment; a
  ``${...}`` is literal text and is validated as such.
* ``environ=os.environ`` (the publisher's own config.yaml, on ``hatch build`` and
  ``mcpkit bundle push``): ``${VAR}`` and ``${VAR:-default}`` expand from it, and an
  unset variable without default is an error naming it.

The file's original bytes are kept (``Config.raw``); ``distribution.auth`` is never
expanded while loading (``Auth.resolve`` does that at push time, given an environment).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from hatch_mcpkit._yaml import KeyPath, LineMap, SpanMap, format_path, load_yaml
from hatch_mcpkit.errors import ConfigError, Problem

__all__ = [
    "DEFAULT_LIMITS",
    "Auth",
    "Config",
    "Distribution",
    "EnvGrant",
    "Limits",
    "Metadata",
    "Policy",
    "StorageGrant",
    "Tool",
    "expand_vars",
    "load_config",
    "parse_config",
]

SERVER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
GUEST_PATH_RE = re.compile(r"^/[A-Za-z0-9._/-]*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
VAR_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{([^}]*)\}?")
SUPPORTED_VERSIONS = ("1.0",)


@dataclass(frozen=True)
class Limits:
    """Resource limits; ``None`` means "inherit" (per tool) or "unlimited" (fuel)."""

    timeout_ms: int | None = None
    memory_mb: int | None = None
    fuel: int | None = None
    max_output_kb: int | None = None

    def merged_over(self, base: Limits) -> Limits:
        """These limits, falling back to ``base`` for anything unset."""
        return Limits(
            timeout_ms=self.timeout_ms if self.timeout_ms is not None else base.timeout_ms,
            memory_mb=self.memory_mb if self.memory_mb is not None else base.memory_mb,
            fuel=self.fuel if self.fuel is not None else base.fuel,
            max_output_kb=self.max_output_kb if self.max_output_kb is not None else base.max_output_kb,
        )


DEFAULT_LIMITS = Limits(timeout_ms=10_000, memory_mb=128, fuel=None, max_output_kb=1024)


ANNOTATION_HINTS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None
    limits: Limits = field(default_factory=Limits)
    title: str | None = None
    # MCP tool annotations as declared, by their MCP names (``readOnlyHint``: True, ...);
    # hints for clients, never trusted for anything
    annotations: dict[str, bool] | None = None


@dataclass(frozen=True)
class StorageGrant:
    """One directory the module may see. ``uri`` is ``fs://<path>`` or ``bundle:<path>``."""

    uri: str
    guest: str
    access: tuple[str, ...] = ("read",)

    @property
    def kind(self) -> str:
        return "bundle" if self.uri.startswith("bundle:") else "fs"

    @property
    def writable(self) -> bool:
        return "write" in self.access

    def host_path(self, bundle_dir: Path) -> Path:
        """The host directory this grant opens (``bundle:`` paths are inside the bundle)."""
        if self.kind == "bundle":
            rel = self.uri[len("bundle:") :].strip("/")
            return bundle_dir / rel if rel else bundle_dir
        return Path(os.path.expanduser(self.uri[len("fs://") :]))


@dataclass(frozen=True)
class EnvGrant:
    key: str


@dataclass(frozen=True)
class Policy:
    storage: tuple[StorageGrant, ...] = ()
    environment: tuple[EnvGrant, ...] = ()
    limits: Limits = DEFAULT_LIMITS

    @property
    def env_keys(self) -> tuple[str, ...]:
        return tuple(grant.key for grant in self.environment)


@dataclass(frozen=True)
class Metadata:
    authors: tuple[str, ...] = ()
    license: str | None = None
    repository: str | None = None
    homepage: str | None = None
    documentation: str | None = None
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class Auth:
    """Registry credentials as written (``${VAR}`` templates, expanded only when used).

    Expansion is lazy so that building or running a bundle never needs the
    publisher's token; ``resolve()`` expands at push time.
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    file: str = field(default="", compare=False)

    def resolve(self, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
        """Expand the templates from ``environ`` -- the publisher's, never a consumer's."""
        env = environ
        problems: list[Problem] = []
        user = (
            expand_vars(self.username, env, "distribution.auth.username", problems, self.file)
            if self.username
            else None
        )
        password = (
            expand_vars(self.password, env, "distribution.auth.password", problems, self.file)
            if self.password
            else None
        )
        if problems:
            raise ConfigError(problems)
        return user, password


@dataclass(frozen=True)
class Distribution:
    registry: str
    version: str
    tags: tuple[str, ...]
    metadata: Metadata = field(default_factory=Metadata)
    include: tuple[str, ...] = ()
    auth: Auth | None = None


@dataclass(frozen=True)
class Config:
    path: Path
    raw: bytes = field(repr=False)
    version: str
    name: str
    server_version: str
    description: str
    tools: tuple[Tool, ...]
    policy: Policy = field(default_factory=Policy)
    distribution: Distribution | None = None
    # what a bundle ships as config.yaml: ``raw`` with the publisher's ${VAR}s expanded in
    # place (except distribution.auth); empty means "the same as raw"
    expanded_raw: bytes = field(default=b"", repr=False)
    lines: LineMap = field(default_factory=dict, repr=False, compare=False)  # key path -> line

    @property
    def shipped(self) -> bytes:
        """config.yaml as a bundle carries it (consumers read it as data, never expanded)."""
        return self.expanded_raw or self.raw

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def tool(self, name: str) -> Tool | None:
        for tool in self.tools:
            if tool.name == name:
                return tool
        return None

    def limits_for(self, tool: Tool) -> Limits:
        """Effective limits of one tool: its own, then the policy's, then the defaults."""
        return tool.limits.merged_over(self.policy.limits.merged_over(DEFAULT_LIMITS))

    @property
    def bundle_version(self) -> str:
        return self.distribution.version if self.distribution else self.server_version

    @property
    def include_files(self) -> list[tuple[str, Path]]:
        """Extra files to ship: ``(relative posix name, absolute path)``, sorted, folders expanded."""
        return expand_include(self)


# --------------------------------------------------------------------------- ${VAR}


def expand_vars(
    value: str,
    environ: Mapping[str, str],
    where: str,
    problems: list[Problem],
    file: str = "",
    line: int | None = None,
) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; ``$$`` is a literal ``$``.

    An unset variable without default is a problem naming the variable, never
    an empty string.
    """

    def repl(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "$$":
            return "$"
        name, default, bad = match.group(1), match.group(2), match.group(3)
        if name is None:
            problems.append(
                Problem(
                    file,
                    where,
                    f"malformed variable reference {text!r} (use ${{NAME}} or ${{NAME:-default}})",
                    line,
                )
            )
            return text
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        del bad
        problems.append(
            Problem(
                file,
                where,
                f"environment variable {name} is not set (give a default with ${{{name}:-value}})",
                line,
            )
        )
        return ""

    if "$" not in value:
        return value
    return VAR_RE.sub(repl, value)


# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config.yaml; raise ConfigError with every problem found.

    ``environ=None`` reads the file as data (no ``${VAR}`` expansion); the publisher
    passes ``os.environ`` for its own config.yaml.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError([Problem(str(p), "", "file not found")]) from None
    except OSError as exc:
        raise ConfigError([Problem(str(p), "", f"cannot read file: {exc.strerror}")]) from None
    return parse_config(raw, p, environ)


def parse_config(
    raw: bytes, path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> Config:
    p = Path(path)
    file = str(p)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(file, "", f"file is not UTF-8 (byte {exc.start})")]) from None
    spans: SpanMap = {}
    data, lines, problems = load_yaml(text, file, spans)
    if data is None and problems:
        raise ConfigError(problems)
    expanded: dict[KeyPath, str] = {}
    broken: set[str] = set()
    if environ is not None:
        data = _expand_document(data, (), environ, _Where(file, lines), problems, expanded, broken)
    v = _Validator(file, lines, problems)
    config = v.config(data, p, raw)
    if v.problems:
        if broken:  # an unset variable is reported once, not again as a bad value
            v.problems = [q for q in v.problems if q.path not in broken or q in problems]
        raise ConfigError(v.problems)
    assert config is not None
    if expanded:
        config = replace(config, expanded_raw=_render(text, spans, expanded, data).encode("utf-8"))
    return config


# Strings that are never expanded while loading: schemas are the tool's own text, and
# distribution.auth is expanded only at push time (Auth.resolve).
_VERBATIM: tuple[KeyPath, ...] = (("version",), ("distribution", "auth"))
_VERBATIM_TOOL_KEYS = ("input_schema", "output_schema")


@dataclass(frozen=True)
class _Where:
    file: str
    lines: LineMap

    def line(self, path: KeyPath) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


def _verbatim(path: KeyPath) -> bool:
    if any(path[: len(v)] == v for v in _VERBATIM):
        return True
    return len(path) >= 4 and path[:2] == ("mcp", "tools") and path[3] in _VERBATIM_TOOL_KEYS


def _expand_document(
    value: Any,
    path: KeyPath,
    environ: Mapping[str, str],
    where: _Where,
    problems: list[Problem],
    expanded: dict[KeyPath, str],
    broken: set[str],
) -> Any:
    """The document with ``${VAR}`` expanded in every string value outside ``_VERBATIM``."""
    if _verbatim(path):
        return value
    if isinstance(value, dict):
        return {
            k: _expand_document(v, (*path, k), environ, where, problems, expanded, broken)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _expand_document(v, (*path, i), environ, where, problems, expanded, broken)
            for i, v in enumerate(value)
        ]
    if not isinstance(value, str) or "$" not in value:
        return value
    before = len(problems)
    out = expand_vars(value, environ, format_path(path), problems, where.file, where.line(path))
    if len(problems) > before:
        broken.add(format_path(path))
        return value
    if out != value:
        expanded[path] = out
    return out


def _render(text: str, spans: SpanMap, expanded: dict[KeyPath, str], data: Any) -> str:
    """config.yaml as a bundle ships it: the publisher's file with expanded values in place.

    Each expanded scalar's source text is replaced by a double-quoted YAML string (JSON is
    one); comments and layout stay. ``distribution.auth`` keeps its ``${...}`` text. If the
    edit cannot be made faithfully (anchors, odd scalars), the document is re-serialised.
    """
    import json

    import yaml

    edits = sorted({spans[kp]: v for kp, v in expanded.items() if kp in spans}.items())
    out: list[str] = []
    pos = 0
    ok = len(edits) == len(expanded)
    for (start, end), value in edits:
        if start < pos:
            ok = False
            break
        source = text[start:end]
        out += [text[pos:start], json.dumps(value, ensure_ascii=False), source[len(source.rstrip()) :]]
        pos = end
    out.append(text[pos:])
    rendered = "".join(out)
    if ok:
        again, _, problems = load_yaml(rendered, "")
        if not problems and again == data:
            return rendered
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


class _Validator:
    """Walks the loaded document, collecting problems instead of stopping at the first."""

    def __init__(self, file: str, lines: LineMap, problems: list[Problem]) -> None:
        self.file = file
        self.lines = lines
        self.problems = list(problems)

    # -- helpers
    def line(self, path: KeyPath) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())

    def error(self, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(self.file, format_path(path), message, self.line(path)))

    def mapping(
        self, value: Any, path: KeyPath, allowed: tuple[str, ...], *, deny: Mapping[str, str] | None = None
    ) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, not {_type_name(value)}")
            return None
        for key in value:
            if deny and key in deny:
                self.error((*path, key), deny[key])
            elif key not in allowed:
                self.error((*path, key), f"unknown key{_suggest(key, allowed)}")
        return value

    def str_(
        self,
        m: dict[str, Any],
        key: str,
        path: KeyPath,
        *,
        required: bool = False,
        default: str | None = None,
        pattern: re.Pattern[str] | None = None,
        what: str = "",
    ) -> str | None:
        if key not in m or m[key] is None:
            if required:
                self.error(
                    path if key not in m else (*path, key),
                    f"missing required key {key!r}" if key not in m else f"{key!r} must not be empty",
                )
            return default
        value = m[key]
        kp = (*path, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self.error(kp, f'must be a string, not a number (quote it: {key}: "{value}")')
            return default
        if not isinstance(value, str):
            self.error(kp, f"must be a string, not {_type_name(value)}")
            return default
        if pattern is not None and not pattern.match(value):
            self.error(
                kp,
                f"{value!r} is not a valid {what or key} (must match {pattern.pattern})" + self.literal_note(value),
            )
        return value

    def literal_note(self, value: str) -> str:
        if "${" in value:  # only left after expansion when the file is data
            return "; a bundle's config.yaml is data: ${...} in it is literal text, never expanded"
        return ""

    def int_(self, m: dict[str, Any], key: str, path: KeyPath) -> int | None:
        value = m.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            self.error((*path, key), f"must be a positive integer, not {value!r}")
            return None
        return value

    def str_list(
        self,
        m: dict[str, Any],
        key: str,
        path: KeyPath,
        *,
        pattern: re.Pattern[str] | None = None,
        what: str = "",
    ) -> tuple[str, ...] | None:
        if key not in m or m[key] is None:
            return None
        value = m[key]
        kp = (*path, key)
        if not isinstance(value, list):
            self.error(kp, f"must be a list of strings, not {_type_name(value)}")
            return None
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.error((*kp, i), f"must be a string, not {_type_name(item)}")
                continue
            if pattern is not None and not pattern.match(item):
                self.error((*kp, i), f"{item!r} is not a valid {what} (must match {pattern.pattern})")
            out.append(item)
        return tuple(out)

    # -- sections
    def config(self, data: Any, path: Path, raw: bytes) -> Config | None:
        top = self.mapping(data, (), ("version", "server", "mcp", "policy", "distribution"))
        if top is None:
            return None
        version = top.get("version")
        if "version" not in top:
            self.error((), "missing required key 'version' (use version: \"1.0\")")
        elif isinstance(version, float) and str(version) in SUPPORTED_VERSIONS:
            self.error(("version",), f'must be the string "{version}", not a number (quote it)')
        elif version not in SUPPORTED_VERSIONS:
            self.error(("version",), f'unsupported version {version!r}; this mcpkit reads version "1.0"')

        name, server_version, description = "", "", ""
        if "server" not in top:
            self.error((), "missing required key 'server'")
        else:
            server = self.mapping(top["server"], ("server",), ("name", "version", "description"))
            if server is not None:
                name = (
                    self.str_(
                        server, "name", ("server",), required=True, pattern=SERVER_NAME_RE, what="server name"
                    )
                    or ""
                )
                if len(name) > 128:
                    self.error(("server", "name"), "must be at most 128 characters")
                server_version = self.str_(server, "version", ("server",), required=True) or ""
                description = self.str_(server, "description", ("server",), default="") or ""

        tools: tuple[Tool, ...] = ()
        if "mcp" not in top:
            self.error((), "missing required key 'mcp' (with at least one tool under mcp.tools)")
        else:
            mcp = self.mapping(top["mcp"], ("mcp",), ("tools",))
            if mcp is not None:
                tools = self.tools(mcp, ("mcp",))

        policy = self.policy(top["policy"], ("policy",)) if top.get("policy") is not None else Policy()
        distribution = (
            self.distribution(top["distribution"], ("distribution",), server_version)
            if top.get("distribution") is not None
            else None
        )
        return Config(
            path=path,
            raw=raw,
            version=str(version),
            name=name,
            server_version=server_version,
            description=description,
            tools=tools,
            policy=policy,
            distribution=distribution,
            lines=self.lines,
        )

    def tools(self, mcp: dict[str, Any], path: KeyPath) -> tuple[Tool, ...]:
        raw_tools = mcp.get("tools")
        kp = (*path, "tools")
        if raw_tools is None:
            self.error(path if "tools" not in mcp else kp, "at least one tool is required under mcp.tools")
            return ()
        if not isinstance(raw_tools, list):
            self.error(kp, f"must be a list of tools, not {_type_name(raw_tools)}")
            return ()
        if not raw_tools:
            self.error(kp, "at least one tool is required")
        seen: dict[str, int] = {}
        tools: list[Tool] = []
        for i, item in enumerate(raw_tools):
            tp = (*kp, i)
            m = self.mapping(
                item, tp, ("name", "title", "description", "input_schema", "output_schema", "annotations", "limits")
            )
            if m is None:
                continue
            name = self.str_(m, "name", tp, required=True, pattern=TOOL_NAME_RE, what="tool name")
            if name is not None:
                if name in seen:
                    self.error(
                        (*tp, "name"),
                        f"duplicate tool name {name!r} (first defined at mcp.tools[{seen[name]}])",
                    )
                else:
                    seen[name] = i
            description = self.str_(m, "description", tp, default="") or ""
            input_schema = self.schema(m, "input_schema", tp, required=True)
            output_schema = self.schema(m, "output_schema", tp, required=False)
            limits = (
                self.limits(m["limits"], (*tp, "limits"), allow_output=True)
                if m.get("limits") is not None
                else Limits()
            )
            title = self.str_(m, "title", tp)
            annotations = self.annotations(m.get("annotations"), (*tp, "annotations"))
            tools.append(
                Tool(
                    name or "",
                    description,
                    input_schema or {"type": "object"},
                    output_schema,
                    limits,
                    title=title,
                    annotations=annotations,
                )
            )
        return tuple(tools)

    def annotations(self, value: Any, path: KeyPath) -> dict[str, bool] | None:
        if value is None:
            return None
        m = self.mapping(value, path, ANNOTATION_HINTS)
        if m is None:
            return None
        hints: dict[str, bool] = {}
        for key, hint in m.items():
            if key not in ANNOTATION_HINTS:
                continue  # reported by mapping()
            if isinstance(hint, bool):
                hints[key] = hint
            else:
                self.error((*path, key), f"must be true or false, not {_type_name(hint)}")
        return hints

    def schema(self, m: dict[str, Any], key: str, path: KeyPath, *, required: bool) -> dict[str, Any] | None:
        kp = (*path, key)
        if key not in m or m[key] is None:
            if required:
                self.error(path, f"missing required key {key!r} (a JSON Schema with type: object)")
            return None
        schema = m[key]
        if not isinstance(schema, dict):
            self.error(kp, f"must be a JSON Schema mapping, not {_type_name(schema)}")
            return None
        from hatch_mcpkit._toolschema import dotted, problems

        found = problems(schema)
        if found:
            inside = {dotted(p[len(kp) :]): p for p in self.lines if p[: len(kp)] == kp}
            for sub, message in found:
                where = inside.get(sub, kp)
                text = format_path(kp) + ("" if not sub or sub.startswith("[") else ".") + sub
                self.problems.append(Problem(self.file, text, message, self.line(where)))
            return None
        if schema.get("type") != "object":
            self.error((*kp, "type") if "type" in schema else kp, "MCP tool schemas must have type: object")
        return schema

    def limits(self, value: Any, path: KeyPath, *, allow_output: bool) -> Limits:
        keys = ("timeout_ms", "memory_mb", "fuel", "max_output_kb")
        m = self.mapping(value, path, keys)
        if m is None:
            return Limits()
        return Limits(
            timeout_ms=self.int_(m, "timeout_ms", path),
            memory_mb=self.int_(m, "memory_mb", path),
            fuel=self.int_(m, "fuel", path),
            max_output_kb=self.int_(m, "max_output_kb", path),
        )

    def policy(self, value: Any, path: KeyPath) -> Policy:
        m = self.mapping(
            value,
            path,
            ("storage", "environment", "limits"),
            deny={
                "network": "network access is not supported: WASI preview 1 modules have no sockets; remove policy.network"
            },
        )
        if m is None:
            return Policy()
        storage: list[StorageGrant] = []
        if m.get("storage") is not None:
            sp = (*path, "storage")
            s = self.mapping(m["storage"], sp, ("allow",))
            if s is not None and s.get("allow") is not None:
                ap = (*sp, "allow")
                if not isinstance(s["allow"], list):
                    self.error(ap, f"must be a list of grants, not {_type_name(s['allow'])}")
                else:
                    guests: dict[str, int] = {}
                    for i, item in enumerate(s["allow"]):
                        grant = self.storage_grant(item, (*ap, i))
                        if grant is None:
                            continue
                        if grant.guest in guests:
                            self.error(
                                (*ap, i, "guest"),
                                f"guest path {grant.guest} is already granted by {format_path((*ap, guests[grant.guest]))}",
                            )
                        guests[grant.guest] = i
                        storage.append(grant)
        environment: list[EnvGrant] = []
        if m.get("environment") is not None:
            ep = (*path, "environment")
            e = self.mapping(m["environment"], ep, ("allow",))
            if e is not None and e.get("allow") is not None:
                ap = (*ep, "allow")
                if not isinstance(e["allow"], list):
                    self.error(ap, f"must be a list of {{key: NAME}} entries, not {_type_name(e['allow'])}")
                else:
                    for i, item in enumerate(e["allow"]):
                        if isinstance(item, str):  # shorthand: allow: [API_KEY]
                            item = {"key": item}
                        g = self.mapping(item, (*ap, i), ("key",))
                        if g is None:
                            continue
                        key = self.str_(
                            g,
                            "key",
                            (*ap, i),
                            required=True,
                            pattern=ENV_KEY_RE,
                            what="environment variable name",
                        )
                        if key:
                            environment.append(EnvGrant(key))
        limits = (
            self.limits(m["limits"], (*path, "limits"), allow_output=True).merged_over(DEFAULT_LIMITS)
            if m.get("limits") is not None
            else DEFAULT_LIMITS
        )
        return Policy(tuple(storage), tuple(environment), limits)

    def storage_grant(self, value: Any, path: KeyPath) -> StorageGrant | None:
        m = self.mapping(value, path, ("uri", "guest", "access"))
        if m is None:
            return None
        uri = self.str_(m, "uri", path, required=True)
        guest = self.str_(m, "guest", path, required=True)
        access = self.str_list(m, "access", path) or ("read",)
        ok = True
        for i, a in enumerate(access):
            if a not in ("read", "write"):
                self.error((*path, "access", i), f"unknown access {a!r} (use read and/or write)")
                ok = False
        if uri is not None:
            if uri.startswith("fs://"):
                host = uri[len("fs://") :]
                if not (host.startswith("/") or host == "~" or host.startswith("~/")):
                    self.error(
                        (*path, "uri"),
                        f"{uri!r}: fs:// grants need an absolute or ~/ path (fs:///abs/path or fs://~/path)"
                        + self.literal_note(uri),
                    )
                    ok = False
            elif uri.startswith("bundle:"):
                rel = uri[len("bundle:") :]
                if _unsafe_relative(rel.strip("/") or "."):
                    self.error((*path, "uri"), f"{uri!r}: bundle: paths must stay inside the bundle")
                    ok = False
                if "write" in access:
                    self.error((*path, "access"), "files shipped in a bundle are read-only; remove write")
                    ok = False
            else:
                self.error(
                    (*path, "uri"),
                    f"{uri!r}: storage grants start with fs:// (host path) or bundle: (shipped files)",
                )
                ok = False
        if uri is not None and not uri.isprintable():
            self.error((*path, "uri"), f"{uri!r}: control or formatting characters are not allowed in a grant")
            ok = False
        if guest is not None:
            gp = PurePosixPath(guest)
            if not GUEST_PATH_RE.match(guest) or ".." in gp.parts or str(gp) == "/":
                self.error(
                    (*path, "guest"),
                    f"{guest!r}: guest paths are absolute, not '/', have no '..' and use only letters, digits "
                    "and . _ - / (e.g. /data)",
                )
                ok = False
        if not ok or uri is None or guest is None:
            return None
        return StorageGrant(uri=uri, guest=str(PurePosixPath(guest)), access=tuple(dict.fromkeys(access)))

    def distribution(self, value: Any, path: KeyPath, server_version: str) -> Distribution | None:
        m = self.mapping(value, path, ("registry", "version", "tags", "metadata", "include", "auth"))
        if m is None:
            return None
        registry = self.str_(m, "registry", path, required=True)
        if registry is not None:
            self.check_registry(registry, (*path, "registry"))
        version = self.str_(m, "version", path, default=server_version) or server_version
        if version and not TAG_RE.match(version):
            self.error(
                (*path, "version") if "version" in m else ("server", "version"),
                f"{version!r} cannot be used as an OCI tag (must match {TAG_RE.pattern})",
            )
        tags = self.str_list(m, "tags", path, pattern=TAG_RE, what="OCI tag")
        if tags is not None and not tags:
            self.error((*path, "tags"), "at least one tag is needed (or leave tags out to use the version)")
        metadata = Metadata()
        if m.get("metadata") is not None:
            mp = (*path, "metadata")
            md = self.mapping(
                m["metadata"],
                mp,
                ("authors", "license", "repository", "homepage", "documentation", "keywords"),
            )
            if md is not None:
                metadata = Metadata(
                    authors=self.str_list(md, "authors", mp) or (),
                    license=self.str_(md, "license", mp),
                    repository=self.str_(md, "repository", mp),
                    homepage=self.str_(md, "homepage", mp),
                    documentation=self.str_(md, "documentation", mp),
                    keywords=self.str_list(md, "keywords", mp) or (),
                )
        include = self.str_list(m, "include", path) or ()
        for i, item in enumerate(include):
            if PurePosixPath(item).is_absolute() or _unsafe_relative(item):
                self.error(
                    (*path, "include", i),
                    f"{item!r}: include paths are relative to config.yaml and stay inside its folder",
                )
        auth = None
        if m.get("auth") is not None:
            ap = (*path, "auth")
            a = self.mapping(m["auth"], ap, ("username", "password"))
            if a is not None:
                raw_user, raw_pass = a.get("username"), a.get("password")
                for key, val in (("username", raw_user), ("password", raw_pass)):
                    if val is not None and not isinstance(val, str):
                        self.error((*ap, key), f"must be a string, not {_type_name(val)}")
                    elif isinstance(val, str) and key == "password" and "${" not in val:
                        self.error(
                            (*ap, key),
                            "write the password as ${VARIABLE}: a literal secret in config.yaml would be published in the bundle",
                        )
                auth = Auth(
                    raw_user if isinstance(raw_user, str) else None,
                    raw_pass if isinstance(raw_pass, str) else None,
                    file=self.file,
                )
        return Distribution(
            registry=registry or "",
            version=version,
            tags=tags if tags else (version,),
            metadata=metadata,
            include=include,
            auth=auth,
        )

    def check_registry(self, registry: str, kp: KeyPath) -> None:
        from hatch_mcpkit.errors import InvalidReferenceError as RefError
        from hatch_mcpkit.reference import parse_repository

        try:
            parse_repository(registry)
        except RefError as exc:
            self.error(kp, exc.message + self.literal_note(registry))


# --------------------------------------------------------------------------- include


def _unsafe_relative(rel: str) -> bool:
    p = PurePosixPath(rel.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts


RESERVED_NAMES = ("module.wasm", "config.yaml")


def expand_include(config: Config) -> list[tuple[str, Path]]:
    """The files ``distribution.include`` ships; every ``bundle:`` grant must name a folder among them."""
    base = config.base_dir.resolve()
    files: dict[str, Path] = {}
    problems: list[Problem] = []
    where = _Where(str(config.path), config.lines)
    include = config.distribution.include if config.distribution is not None else ()
    for i, item in enumerate(include):
        if item in RESERVED_NAMES:
            continue  # always shipped as layers 0 and 1
        target = (base / item).resolve()
        kp: KeyPath = ("distribution", "include", i)
        if base != target and base not in target.parents:
            problems.append(Problem(where.file, format_path(kp), f"{item!r} resolves outside {base}", where.line(kp)))
            continue
        if target.is_dir():
            for sub in sorted(target.rglob("*")):
                if sub.is_file() and not sub.is_symlink():
                    files[sub.relative_to(base).as_posix()] = sub
        elif target.is_file():
            files[target.relative_to(base).as_posix()] = target
        else:
            problems.append(
                Problem(where.file, format_path(kp), f"{item!r} does not exist (relative to {base})", where.line(kp))
            )
    if not problems:
        problems += _unshipped_grants(config, files, where)
    if problems:
        raise ConfigError(problems)
    return sorted(files.items())


def _unshipped_grants(config: Config, files: Mapping[str, Path], where: _Where) -> list[Problem]:
    """A ``bundle:`` grant whose folder the bundle does not ship fails for the publisher, not at serve time."""
    problems: list[Problem] = []
    for i, grant in enumerate(config.policy.storage):
        rel = grant.uri[len("bundle:") :].strip("/") if grant.kind == "bundle" else ""
        if not rel or any(name.startswith(rel + "/") for name in files):
            continue
        kp: KeyPath = ("policy", "storage", "allow", i, "uri")
        shipped = ", ".join(sorted(files)) or "only module.wasm and config.yaml"
        if rel in files:
            message = f"{grant.uri!r}: {rel} is a file; a bundle: grant opens a folder the bundle ships"
        else:
            message = (
                f"{grant.uri!r}: the bundle ships nothing under {rel}/, so the module would find no folder "
                f"there; add {rel} to distribution.include (shipped now: {shipped})"
            )
        problems.append(Problem(where.file, format_path(kp), message, where.line(kp)))
    return problems


# --------------------------------------------------------------------------- helpers


def _type_name(value: Any) -> str:
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
    import difflib

    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.7)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (expected one of: {', '.join(allowed)})"
