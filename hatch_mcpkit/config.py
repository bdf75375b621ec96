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
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from hatch_mcpkit._configschema import schema_problems, type_name
from hatch_mcpkit._files import read_regular
from hatch_mcpkit._yaml import KeyPath, LineMap, SpanMap, format_path, load_yaml
from hatch_mcpkit.errors import ConfigError, McpkitError, Problem

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
    "check_bundle_grants",
    "expand_vars",
    "load_config",
    "parse_config",
]

MAX_CONFIG_BYTES = 16 * 1024 * 1024  # a config.yaml is read into memory whole
GUEST_PATH_RE = re.compile(r"^/[A-Za-z0-9._/-]*\Z")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
VAR_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{([^}]*)\}?")


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
    try:  # a regular file only: a FIFO or a symlink to /dev/zero in a cloned folder is an error, not a hang
        raw = read_regular(p, limit=MAX_CONFIG_BYTES, where="cannot read file", error=McpkitError)
    except FileNotFoundError:
        raise ConfigError([Problem(str(p), "", "file not found")]) from None
    except OSError as exc:
        raise ConfigError([Problem(str(p), "", f"cannot read file: {exc.strerror}")]) from None
    except McpkitError as exc:
        raise ConfigError([Problem(str(p), "", exc.message)]) from None
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
    if not isinstance(data, dict):
        raise ConfigError([*problems, Problem(file, "", f"must be a mapping, not {type_name(data)}", 1)])
    where = _Where(file, lines)
    found: list[tuple[KeyPath, str]] = schema_problems(data)
    flagged = {kp for kp, _ in found}
    found += [item for item in _semantic_problems(data, flagged) if item not in found]
    problems += [Problem(file, _where_text(kp), message, _line_of(kp, where)) for kp, message in found]
    if problems:
        if broken:  # an unset variable is reported once, not again as a bad value
            problems = [q for q in problems if q.path not in broken or "is not set" in q.message]
        raise ConfigError(sorted(problems, key=lambda q: q.line or 0))
    config = _build(data, p, raw, lines)
    if expanded:
        config = replace(config, expanded_raw=_render(text, spans, expanded, data).encode("utf-8"))
    return config


# Strings that are never expanded while loading: schemas are the tool's own text, and
# distribution.auth is expanded only at push time (Auth.resolve).
_VERBATIM: tuple[KeyPath, ...] = (("version",), ("distribution", "auth"))
_VERBATIM_TOOL_KEYS = ("input_schema", "output_schema")


def _line_of(kp: KeyPath, where: _Where) -> int | None:
    """The line of a key path; a written path inside a tool schema is looked up among its keys."""
    if not kp or not isinstance(kp[-1], _SchemaPath):
        return where.line(kp)
    from hatch_mcpkit._toolschema import dotted

    parent = kp[:-1]
    inside = {dotted(p[len(parent) :]): p for p in where.lines if p[: len(parent)] == parent}
    return where.line(inside.get(str(kp[-1]), parent))


def _where_text(kp: KeyPath) -> str:
    if kp and isinstance(kp[-1], _SchemaPath):
        head, sub = format_path(kp[:-1]), str(kp[-1])
        return head + ("" if not sub or sub.startswith("[") else ".") + sub
    return format_path(kp)


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


# --------------------------------------------------------------------------- checks the schema cannot express


def _semantic_problems(data: dict[str, Any], flagged: set[KeyPath]) -> Iterator[tuple[KeyPath, str]]:
    """Unique names, tool schemas, storage paths, the registry: on data that may still be invalid.

    ``flagged`` holds the key paths the schema already reported; they are not reported again.
    """
    tools = _items(_get(data, "mcp", "tools"))
    seen: dict[str, int] = {}
    for i, tool in tools:
        name = tool.get("name")
        if isinstance(name, str) and ("mcp", "tools", i, "name") not in flagged:
            if name in seen:
                yield ("mcp", "tools", i, "name"), f"duplicate tool name {name!r} (first defined at mcp.tools[{seen[name]}])"
            else:
                seen[name] = i
        for key in ("input_schema", "output_schema"):
            if isinstance(tool.get(key), dict) and ("mcp", "tools", i, key) not in flagged:
                yield from _tool_schema(tool[key], ("mcp", "tools", i, key))
    guests: dict[str, int] = {}
    for i, grant in _items(_get(data, "policy", "storage", "allow")):
        kp: KeyPath = ("policy", "storage", "allow", i)
        yield from _grant(grant, kp, flagged)
        guest = grant.get("guest")
        if isinstance(guest, str) and (*kp, "guest") not in flagged:
            normal = str(PurePosixPath(guest))
            if normal in guests:
                where = format_path(("policy", "storage", "allow", guests[normal]))
                yield (*kp, "guest"), f"guest path {normal} is already granted by {where}"
            guests[normal] = i
    dist = data.get("distribution")
    if isinstance(dist, dict):
        yield from _distribution(dist, data.get("server"), flagged)


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _items(value: Any) -> list[tuple[int, dict[str, Any]]]:
    return [(i, v) for i, v in enumerate(value) if isinstance(v, dict)] if isinstance(value, list) else []


def _tool_schema(schema: dict[str, Any], kp: KeyPath) -> Iterator[tuple[KeyPath, str]]:
    from hatch_mcpkit._toolschema import problems

    found = problems(schema)
    if found:
        for sub, message in found:
            yield (*kp, _SchemaPath(sub)), message
    elif schema.get("type") != "object":
        yield (*kp, "type") if "type" in schema else kp, "MCP tool schemas must have type: object"


class _SchemaPath(str):
    """A path inside a tool schema, already written (``properties.a.$ref``)."""


def _grant(grant: dict[str, Any], kp: KeyPath, flagged: set[KeyPath]) -> Iterator[tuple[KeyPath, str]]:
    uri, guest, access = grant.get("uri"), grant.get("guest"), grant.get("access")
    if isinstance(uri, str) and (*kp, "uri") not in flagged:
        if not uri.isprintable():
            yield (*kp, "uri"), f"{uri!r}: control or formatting characters are not allowed in a grant"
        elif uri.startswith("fs://"):
            host = uri[len("fs://") :]
            if not (host.startswith("/") or host == "~" or host.startswith("~/")):
                yield (*kp, "uri"), (
                    f"{uri!r}: fs:// grants need an absolute or ~/ path (fs:///abs/path or fs://~/path)"
                    + _literal_note(uri)
                )
        elif uri.startswith("bundle:"):
            if _unsafe_relative(uri[len("bundle:") :].strip("/") or "."):
                yield (*kp, "uri"), f"{uri!r}: bundle: paths must stay inside the bundle"
            if isinstance(access, list) and "write" in access:
                yield (*kp, "access"), "files shipped in a bundle are read-only; remove write"
    if isinstance(guest, str) and (*kp, "guest") not in flagged:
        parts = PurePosixPath(guest)
        if ".." in parts.parts or str(parts) == "/" or not GUEST_PATH_RE.match(guest):
            yield (*kp, "guest"), (
                f"{guest!r}: guest paths are absolute, not '/', have no '..' and use only letters, digits "
                "and . _ - / (e.g. /data)"
            )


def _distribution(
    dist: dict[str, Any], server: Any, flagged: set[KeyPath]
) -> Iterator[tuple[KeyPath, str]]:
    registry = dist.get("registry")
    if isinstance(registry, str) and ("distribution", "registry") not in flagged:
        from hatch_mcpkit.errors import InvalidReferenceError
        from hatch_mcpkit.reference import parse_repository

        try:
            parse_repository(registry)
        except InvalidReferenceError as exc:
            yield ("distribution", "registry"), exc.message + _literal_note(registry)
    version = _get(server, "version")
    if "version" not in dist and isinstance(version, str) and not TAG_RE.match(version):
        yield ("server", "version"), f"{version!r} cannot be used as an OCI tag (must match {TAG_RE.pattern})"
    for i, item in enumerate(dist.get("include") or []):
        if isinstance(item, str) and (PurePosixPath(item).is_absolute() or _unsafe_relative(item)):
            yield ("distribution", "include", i), (
                f"{item!r}: include paths are relative to config.yaml and stay inside its folder"
            )


def _literal_note(value: str) -> str:
    if "${" in value:  # only left after expansion when the file is data
        return "; a bundle's config.yaml is data: ${...} in it is literal text, never expanded"
    return ""


# --------------------------------------------------------------------------- building the model


def _build(data: dict[str, Any], path: Path, raw: bytes, lines: LineMap) -> Config:
    """The model of a config.yaml that passed every check."""
    server = data["server"]
    policy = data.get("policy") or {}
    return Config(
        path=path,
        raw=raw,
        version=data["version"],
        name=server["name"],
        server_version=server["version"],
        description=server.get("description") or "",
        tools=tuple(_tool(t) for t in data["mcp"]["tools"]),
        policy=Policy(
            storage=tuple(_storage(g) for g in _get(policy, "storage", "allow") or ()),
            environment=tuple(
                EnvGrant(e if isinstance(e, str) else e["key"]) for e in _get(policy, "environment", "allow") or ()
            ),
            limits=_limits(policy.get("limits")).merged_over(DEFAULT_LIMITS),
        ),
        distribution=_dist(data["distribution"], server["version"], str(path)) if data.get("distribution") else None,
        lines=lines,
    )


def _tool(t: dict[str, Any]) -> Tool:
    return Tool(
        name=t["name"],
        description=t.get("description") or "",
        input_schema=t["input_schema"],
        output_schema=t.get("output_schema"),
        limits=_limits(t.get("limits")),
        title=t.get("title"),
        annotations=dict(t["annotations"]) if t.get("annotations") is not None else None,
    )


def _limits(m: dict[str, Any] | None) -> Limits:
    m = m or {}
    return Limits(m.get("timeout_ms"), m.get("memory_mb"), m.get("fuel"), m.get("max_output_kb"))


def _storage(g: dict[str, Any]) -> StorageGrant:
    access = tuple(dict.fromkeys(g.get("access") or ("read",)))
    return StorageGrant(uri=g["uri"], guest=str(PurePosixPath(g["guest"])), access=access)


def _dist(d: dict[str, Any], server_version: str, file: str) -> Distribution:
    version = d.get("version") or server_version
    md = d.get("metadata") or {}
    auth = d.get("auth")
    return Distribution(
        registry=d["registry"],
        version=version,
        tags=tuple(d["tags"]) if d.get("tags") else (version,),
        metadata=Metadata(
            authors=tuple(md.get("authors") or ()),
            license=md.get("license"),
            repository=md.get("repository"),
            homepage=md.get("homepage"),
            documentation=md.get("documentation"),
            keywords=tuple(md.get("keywords") or ()),
        ),
        include=tuple(d.get("include") or ()),
        auth=Auth(auth.get("username"), auth.get("password"), file=file) if auth is not None else None,
    )


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
    if problems:
        raise ConfigError(problems)
    check_bundle_grants(config, files)
    return sorted(files.items())


def check_bundle_grants(config: Config, shipped: Iterable[str]) -> None:
    """Every ``bundle:`` grant names a folder among ``shipped`` (relative file names), or ConfigError.

    Checked when a bundle is built or pushed, so the publisher hears of it -- not the user at serve time.
    """
    where = _Where(str(config.path), config.lines)
    problems = _unshipped_grants(config, set(shipped), where)
    if problems:
        raise ConfigError(problems)


def _unshipped_grants(config: Config, files: Collection[str], where: _Where) -> list[Problem]:
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
