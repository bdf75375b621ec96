"""A project's bundles: ``[tool.mcpkit.bundles]`` in ``pyproject.toml``.

::

    [tool.mcpkit.bundles]
    weather = "oci://ghcr.io/org/weather-tool:1"

    [tool.mcpkit.bundles.notes]
    ref = "oci://ghcr.io/org/notes:2"
    key = "keys/notes.pub"                                # or a list: any one of them
    policy = { storage = ["/notes"], read_only = true, environment = [], limits = { timeout_ms = 2000 } }

Each key names a bundle and prefixes its tools' names when the project's bundles are served
together (``<key>__<tool>``, :func:`exposed_name`), so it is ``[A-Za-z0-9]`` words joined by
single ``-`` or ``_``. ``policy`` only narrows what the bundle's own config.yaml asks for
(:class:`Narrowing`: lists keep a subset, limits become ceilings): it has no way to add a grant.
``key`` adds a signature requirement to the trust policy's (``trust.py``); nothing here can
remove one.

A cloned project's pyproject.toml is written by someone else. Its references must be registry
references (``oci://`` or ``host/repository:tag``): a ``file://`` URL, a path, an ``https://``
archive or a bare cache name is refused, so a project cannot make ``mcpkit sync`` read files
elsewhere on the machine, and a lock means the same bytes on every machine. The rules are
``schemas/project.schema.json`` (all problems at once, with key paths and lines).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatch_mcpkit._pyproject import PYPROJECT, ToolTable, nearest, read_tool_table
from hatch_mcpkit._yaml import KeyPath, format_path
from hatch_mcpkit.errors import ConfigError, InvalidReferenceError, Problem, UsageError

if TYPE_CHECKING:
    from hatch_mcpkit.config import Config, Limits
    from hatch_mcpkit.reference import Reference

__all__ = [
    "KEY_RE",
    "LOCK_FILE",
    "MAX_TOOL_NAME",
    "BundleSpec",
    "Narrowing",
    "Project",
    "exposed_name",
    "find_project",
    "load_project",
]

LOCK_FILE = "mcpkit.lock"
MAX_TOOL_NAME = 64  # what every LLM API accepts for a tool name
SEPARATOR = "__"
KEY_RE = re.compile(r"^[A-Za-z0-9]+(?:[_-][A-Za-z0-9]+)*\Z")
_EXPOSED_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_SCHEMA = "schemas/project.schema.json"
_HINT = "see docs/project-bundles.md"
_LIMITS = ("timeout_ms", "memory_mb", "fuel", "max_output_kb")


def exposed_name(key: str, tool: str) -> str:
    """The name a project's tool is served under: ``<key>__<tool>``, a ``.`` in the tool name made ``-``."""
    return f"{key}{SEPARATOR}{tool.replace('.', '-')}"


def exposed_name_problem(key: str, tool: str) -> str | None:
    """Why ``<key>__<tool>`` cannot be served (too long or not ``[A-Za-z0-9_-]``), or None."""
    name = exposed_name(key, tool)
    if len(name) > MAX_TOOL_NAME:
        return (f"tool {tool!r} would be served as {name!r}, {len(name)} characters; LLM APIs accept at most "
                f"{MAX_TOOL_NAME} (shorten the key {key!r})")
    if not _EXPOSED_RE.match(name):
        return f"tool {tool!r} would be served as {name!r}, which is not [A-Za-z0-9_-]"
    return None


# --------------------------------------------------------------------------- narrowing


@dataclass(frozen=True)
class Narrowing:
    """What a project takes away from a bundle's own policy (``None``: keep the bundle's as it is)."""

    tools: tuple[str, ...] | None = None
    storage: tuple[str, ...] | None = None  # guest paths of the storage grants kept
    read_only: bool = False
    environment: tuple[str, ...] | None = None
    limits: Mapping[str, int] = field(default_factory=dict)  # ceilings, by config.yaml's limit names
    where: str = ""  # "pyproject.toml:LINE: tool.mcpkit.bundles.KEY.policy", for errors
    file: str = ""
    lines: Mapping[KeyPath, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def empty(self) -> bool:
        return (self.tools is None and self.storage is None and not self.read_only and self.environment is None
                and not self.limits)

    def as_data(self) -> dict[str, Any]:
        """The narrowing as plain data (sorted lists), as the lock fingerprints it."""
        data: dict[str, Any] = {}
        for name in ("tools", "storage", "environment"):
            value = getattr(self, name)
            if value is not None:
                data[name] = sorted(value)
        if self.read_only:
            data["read_only"] = True
        if self.limits:
            data["limits"] = dict(sorted(self.limits.items()))
        return data

    def problems(self, config: Config) -> list[Problem]:
        """What this narrowing names that the bundle does not have (a typo, or the bundle changed)."""
        found = []
        checks = (
            ("tools", self.tools, [t.name for t in config.tools], "a tool"),
            ("storage", self.storage, [g.guest for g in config.policy.storage], "a storage grant (guest path)"),
            ("environment", self.environment, list(config.policy.env_keys), "an environment variable"),
        )
        for name, kept, have, what in checks:
            for n, item in enumerate(kept or ()):
                if item not in have:
                    offer = ", ".join(have) if have else "none"
                    found.append(self._problem((name, n), f"{item!r} is not {what} of bundle {config.name!r} "
                                                          f"(it has: {offer}); a policy here can only take away"))
        return found

    def _problem(self, path: KeyPath, message: str) -> Problem:
        line = next((self.lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in self.lines), None)
        return Problem(self.file, f"{self.where}.{format_path(path)}", message, line)

    def apply(self, config: Config) -> Config:
        """``config`` with this narrowing applied (fewer tools, grants, variables; lower limits).

        Raises :class:`ConfigError` (pyproject.toml, key path, line) when it names something the
        bundle does not have, or leaves no tool to serve.
        """
        problems = self.problems(config)
        tools = tuple(t for t in config.tools if self.tools is None or t.name in self.tools)
        if not tools:
            problems.append(self._problem(("tools",), "leaves no tool to serve"))
        if problems:
            raise ConfigError(problems, hint=_HINT)
        policy = config.policy
        storage = tuple(g for g in policy.storage if self.storage is None or g.guest in self.storage)
        if self.read_only:
            storage = tuple(replace(g, access=tuple(a for a in g.access if a != "write") or ("read",))
                            for g in storage)
        environment = tuple(e for e in policy.environment if self.environment is None or e.key in self.environment)
        from hatch_mcpkit.config import DEFAULT_LIMITS

        policy = replace(policy, storage=storage, environment=environment,
                         limits=self._ceil(policy.limits.merged_over(DEFAULT_LIMITS)))
        tools = tuple(replace(t, limits=self._ceil(t.limits, only_set=True)) for t in tools)
        return replace(config, tools=tools, policy=policy)

    def _ceil(self, limits: Limits, *, only_set: bool = False) -> Limits:
        """Each limit the smaller of its own and the ceiling (an unset tool limit stays unset: it inherits)."""
        values = {}
        for name in _LIMITS:
            own = getattr(limits, name)
            ceiling = self.limits.get(name)
            if ceiling is None or (own is None and only_set):
                values[name] = own
            else:
                values[name] = ceiling if own is None else min(own, ceiling)
        return replace(limits, **values)


# --------------------------------------------------------------------------- the project


@dataclass(frozen=True)
class BundleSpec:
    """One ``[tool.mcpkit.bundles]`` entry."""

    key: str
    reference: str  # as written
    ref: Reference  # parsed (oci only)
    keys: tuple[Path, ...] = ()  # public keys of which one must have signed (absolute)
    key_text: tuple[str, ...] = ()  # as written, for the lock's fingerprint
    narrowing: Narrowing = field(default_factory=Narrowing)
    where: str = ""  # "pyproject.toml:LINE: tool.mcpkit.bundles.KEY"

    def fingerprint(self) -> str:
        """What the lock remembers of this entry (reference, keys, policy) to tell when it is stale."""
        data = {"reference": self.reference, "key": list(self.key_text), "policy": self.narrowing.as_data()}
        raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        return f"sha256:{hashlib.sha256(raw).hexdigest()}"


@dataclass(frozen=True)
class Project:
    pyproject: Path
    bundles: dict[str, BundleSpec]  # sorted by key

    @property
    def root(self) -> Path:
        return self.pyproject.parent

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_FILE

    def select(self, names: list[str] | tuple[str, ...] | None) -> list[BundleSpec]:
        """The bundles named (all when ``names`` is empty or None); an unknown name is a UsageError."""
        if not names:
            return list(self.bundles.values())
        from hatch_mcpkit.errors import did_you_mean

        unknown = [n for n in names if n not in self.bundles]
        if unknown:
            raise UsageError(f"{self.pyproject}: no bundle {unknown[0]!r} in [tool.mcpkit.bundles]"
                             f"{did_you_mean(unknown[0], list(self.bundles))}")
        return [self.bundles[n] for n in dict.fromkeys(names)]


def find_project(start: Path | None = None) -> Project:
    """The project of the nearest pyproject.toml at or above ``start`` (default: the working directory)."""
    here = (start or Path.cwd()).resolve()
    pyproject = here if here.name == PYPROJECT and here.is_file() else nearest(here)
    if pyproject is None:
        raise UsageError(f"no {PYPROJECT} in {here} or any folder above it",
                         hint="run this in a project, with its bundles in [tool.mcpkit.bundles]; " + _HINT)
    return load_project(pyproject)


def load_project(pyproject: Path) -> Project:
    """The bundles of ``pyproject`` (a ConfigError lists every problem; a UsageError when it names none)."""
    table = read_tool_table(pyproject, "bundles", error_if_unreadable=True)
    if table is None or (isinstance(table.data, dict) and not table.data):
        raise UsageError(f"{pyproject}: no bundles in [tool.mcpkit.bundles]",
                         hint='add one, e.g. weather = "oci://ghcr.io/org/weather-tool:1"; ' + _HINT)
    from hatch_mcpkit._configschema import document_problems

    problems = document_problems(table.data, _SCHEMA, str(pyproject), table.lines, table.prefix)
    bundles: dict[str, BundleSpec] = {}
    if isinstance(table.data, dict):
        flagged = {p.path for p in problems}
        for key in sorted(table.data):
            spec = _spec(table, key, table.data[key], problems, flagged)
            if spec is not None:
                bundles[key] = spec
    if problems:
        raise ConfigError(problems, hint=_HINT)
    return Project(pyproject, bundles)


def _problem(table: ToolTable, path: KeyPath, message: str) -> Problem:
    return Problem(str(table.file), format_path((*table.prefix, *path)), message, table.line(path))


def _spec(table: ToolTable, key: str, value: Any, problems: list[Problem], flagged: set[str]) -> BundleSpec | None:
    start = len(problems)
    if not KEY_RE.match(key) or len(key) > MAX_TOOL_NAME - len(SEPARATOR) - 1:
        problems.append(_problem(table, (key,), f"{key!r} is not a usable bundle key: its tools are served as "
                                 f"<key>__<tool>, so a key is letters and digits, words joined by one - or _, "
                                 f"at most {MAX_TOOL_NAME - len(SEPARATOR) - 1} characters"))
    entry = {"ref": value} if isinstance(value, str) else value
    if not isinstance(entry, dict) or not isinstance(entry.get("ref"), str):
        return None
    ref_path: KeyPath = (key,) if isinstance(value, str) else (key, "ref")
    ref = _reference(table, ref_path, entry["ref"], problems, flagged)
    key_text = entry.get("key", ())
    key_text = (key_text,) if isinstance(key_text, str) else tuple(k for k in key_text if isinstance(k, str)) \
        if isinstance(key_text, list) else ()
    keys = tuple(_key_path(table.file.parent, k) for k in key_text)
    for n, path in enumerate(keys):
        if not path.is_file():
            at: KeyPath = (key, "key") if isinstance(entry.get("key"), str) else (key, "key", n)
            problems.append(_problem(table, at, f"no public key file at {path}"))
    narrowing = _narrowing(table, key, entry.get("policy"))
    if ref is None or len(problems) > start:
        return None
    where = f"{table.file}:{table.line((key,))}: {format_path((*table.prefix, key))}"
    return BundleSpec(key, entry["ref"], ref, keys, key_text, narrowing, where)


def _reference(table: ToolTable, path: KeyPath, text: str, problems: list[Problem],
               flagged: set[str]) -> Reference | None:
    from hatch_mcpkit.reference import OciRef, classify

    if format_path((*table.prefix, *path)) in flagged:
        return None
    try:
        parsed = classify(text)
    except InvalidReferenceError as exc:
        problems.append(_problem(table, path, exc.message))
        return None
    if not isinstance(parsed, OciRef):
        problems.append(_problem(table, path, f"{text!r} is not a registry reference: a project's bundles come from "
                                 "an OCI registry (oci://REGISTRY/REPOSITORY:TAG), so the lock pins the same bytes "
                                 "everywhere; local paths, file://, https:// and cache names are refused here"))
        return None
    return parsed.reference


def _key_path(base: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _narrowing(table: ToolTable, key: str, data: Any) -> Narrowing:
    if not isinstance(data, dict):
        return Narrowing()
    prefix: KeyPath = (key, "policy")
    lines = {path[len(prefix):]: line for path, line in table.lines.items() if path[: len(prefix)] == prefix}
    at = table.line(prefix)
    if () not in lines and at is not None:
        lines[()] = at

    def listed(name: str) -> tuple[str, ...] | None:
        value = data.get(name)
        return tuple(str(v) for v in value) if isinstance(value, list) else None

    limits = data["limits"] if isinstance(data.get("limits"), dict) else {}
    return Narrowing(
        tools=listed("tools"), storage=listed("storage"), read_only=data.get("read_only") is True,
        environment=listed("environment"),
        limits={k: int(v) for k, v in limits.items() if k in _LIMITS and isinstance(v, int)},
        where=format_path((*table.prefix, *prefix)), file=str(table.file), lines=lines,
    )
