"""The one options checker behind the four Hatch plugins.

Each plugin describes its options as data (:class:`Option`: a kind, a default, one line of help)
and gets one small :class:`PluginOptions` subclass with one memoised property per option.
:meth:`PluginOptions.check` reports every unknown or mistyped option at once, each with its key
path (``tool.hatch.build.targets.mcpkit.crat``) and a did-you-mean, through one
:class:`~hatch_mcpkit.errors.ConfigError`. Options may come from several tables (the publisher's
project table, hatch's config file, ``-o key=value``): each :class:`Source` names where its
values came from, and a later source wins.

Nothing here imports more than the standard library and :mod:`hatch_mcpkit.errors`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, NoReturn, TypeVar

from hatch_mcpkit.errors import ConfigError, McpkitError, Problem, did_you_mean

__all__ = [
    "BUILD_OPTIONS",
    "COLLECTOR_OPTIONS",
    "HATCH_BUILD_HOOK_KEYS",
    "HATCH_TARGET_KEYS",
    "PUBLISH_OPTIONS",
    "Option",
    "PluginOptions",
    "Source",
    "fail",
]

_MISSING: Final = object()
_T = TypeVar("_T", bound="PluginOptions")

# keys hatchling itself reads from a [tool.hatch.build.hooks.<name>] table
HATCH_BUILD_HOOK_KEYS = frozenset(
    {"dependencies", "require-runtime-dependencies", "require-runtime-features", "enable-by-default"}
)
# keys hatchling itself reads from any [tool.hatch.build.targets.<name>] table
HATCH_TARGET_KEYS = frozenset({
    "artifacts", "dependencies", "dev-mode-dirs", "dev-mode-exact", "directory", "exclude",
    "force-include", "hooks", "ignore-vcs", "include", "only-include", "only-packages", "packages",
    "reproducible", "require-runtime-dependencies", "require-runtime-features", "skip-excluded-dirs",
    "sources", "versions",
})

_FALSE = ("0", "false", "no", "off")
_TRUE = ("1", "true", "yes", "on")


def _string(value: Any) -> Any:
    if isinstance(value, str) and value:
        return value
    return _MISSING


def _strings(value: Any) -> Any:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return _MISSING


def _words(value: Any) -> Any:
    """An array of strings, or one comma-separated string (what ``-o tags=a,b`` gives)."""
    if isinstance(value, str):
        return tuple(w.strip() for w in value.split(",") if w.strip())
    return _strings(value)


def _flag(value: Any) -> Any:
    """A boolean, or its spelling in a string (what ``-o insecure=true`` gives)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in (*_TRUE, *_FALSE):
        return value.strip().lower() in _TRUE
    return _MISSING


_KINDS: Mapping[str, tuple[Callable[[Any], Any], str]] = {
    "string": (_string, "a non-empty string"),
    "strings": (_strings, "an array of strings"),
    "words": (_words, "an array of strings or a comma-separated string"),
    "flag": (_flag, "true or false"),
}


@dataclass(frozen=True)
class Option:
    """One option: its ``kind`` (string, strings, words, flag), ``default`` and one line of ``help``.

    A ``secret`` option's value is never shown in a message.
    """

    kind: str
    help: str
    default: Any = None
    secret: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown option kind {self.kind!r}")


@dataclass(frozen=True)
class Source:
    """Option values from one place: ``file`` names it, ``table`` is the key path of its table.

    A ``table`` that starts with ``-`` is a command-line flag: keys are shown as ``-o key``.
    """

    values: Mapping[str, Any]
    table: str
    file: str = "pyproject.toml"
    hatch_keys: frozenset[str] = frozenset()  # keys hatch itself reads from this table (not ours to check)

    def path(self, key: str) -> str:
        return f"{self.table} {key}" if self.table.startswith("-") else f"{self.table}.{key}"

    @classmethod
    def project(cls, values: Mapping[str, Any], root: Path | str, table: str,
                hatch_keys: frozenset[str] = frozenset()) -> Source:
        """Values of the project's hatch ``table`` (``build.hooks.mcpkit``...), named as hatch read them:
        a top-level table of ``hatch.toml`` replaces pyproject.toml's ``tool.hatch`` one."""
        hatch_toml = Path(root) / "hatch.toml"
        if hatch_toml.is_file():
            from hatchling.metadata.core import load_toml

            try:
                if table.split(".", 1)[0] in load_toml(str(hatch_toml)):
                    return cls(values, table, "hatch.toml", hatch_keys)
            except (OSError, ValueError):
                pass  # hatch itself reports an unreadable hatch.toml
        return cls(values, f"tool.hatch.{table}", "pyproject.toml", hatch_keys)


def _shown(value: Any, option: Option) -> str:
    kind = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)
    if option.secret or isinstance(value, (list, dict)):
        return kind
    return f"{kind} ({value!r})" if not (isinstance(value, str) and not value) else "an empty string"


class PluginOptions:
    """Base of one plugin's options. Subclasses set ``OPTIONS`` and add a memoised property per option.

    With ``UNDERSCORES`` a key may be spelled with ``_`` for ``-`` (``-o ca_file=...``).
    """

    OPTIONS: ClassVar[Mapping[str, Option]] = {}
    UNDERSCORES: ClassVar[bool] = False

    def __init__(self, *sources: Source, root: Path | str = ".") -> None:
        self.sources = sources
        self.root = Path(root)
        self.problems: list[Problem] = []

    def _key(self, key: str) -> str:
        return key.replace("_", "-") if self.UNDERSCORES else key

    def _find(self, name: str) -> tuple[Source, Any] | None:
        for source in reversed(self.sources):
            for key, value in source.values.items():
                if self._key(key) == name:
                    return source, value
        return None

    def problem(self, name: str, message: str) -> None:
        """Record a problem with option ``name`` (at the source its value came from)."""
        found = self._find(name)
        source = found[0] if found else self.sources[-1]
        self.problems.append(Problem(source.file, source.path(name), message))

    def value(self, name: str) -> Any:
        """Option ``name`` checked against its kind; a wrong value is recorded and the default returned."""
        option = self.OPTIONS[name]
        found = self._find(name)
        if found is None:
            return option.default
        convert, expected = _KINDS[option.kind]
        value = convert(found[1])
        if value is _MISSING:
            self.problem(name, f"must be {expected}, not {_shown(found[1], option)}")
            return option.default
        return value

    def text(self, name: str) -> str | None:
        """A string option's checked value (``None`` when unset)."""
        value = self.value(name)
        return None if value is None else str(value)

    def _unknown(self) -> Iterable[Problem]:
        allowed = tuple(self.OPTIONS)
        for source in self.sources:
            for key in source.values:
                name = self._key(key)
                if name not in self.OPTIONS and key not in source.hatch_keys:
                    yield Problem(source.file, source.path(key), f"unknown option{did_you_mean(name, allowed)}")

    def validate(self) -> None:
        """Checks across options (files that must exist...); record problems with :meth:`problem`."""

    def check(self: _T) -> _T:
        """Read every option once; raise one ConfigError with every problem found."""
        self.problems.extend(self._unknown())
        for name in self.OPTIONS:
            getattr(self, name.replace("-", "_"))
        self.validate()
        if self.problems:
            raise ConfigError(self.problems)
        return self


def fail(exc: McpkitError, display: Callable[[str], Any] | None = None) -> NoReturn:
    """Show an mcpkit error (through hatch's display when there is one) and stop without a traceback."""
    message = f"mcpkit: {exc}"
    if display is None:
        print(message, file=sys.stderr)
    else:
        display(message)
    raise SystemExit(exc.exit_code)


# --------------------------------------------------------------------------- every plugin's options

# [tool.hatch.build.hooks.mcpkit] and [tool.hatch.build.targets.mcpkit]
BUILD_OPTIONS: Mapping[str, Option] = {
    "crate": Option("string", "folder with Cargo.toml", "."),
    "config": Option("string", "the config.yaml to bundle (default: config.yaml in the crate folder)"),
    "profile": Option("string", "cargo profile", "release"),
    "features": Option("strings", "cargo features to enable", ()),
    "cargo-args": Option("strings", 'extra cargo arguments, e.g. ["--locked"]', ()),
    "bin": Option("string", "which bin target, when the crate has several"),
}

# [tool.hatch.publish.mcpkit], [publish.mcpkit] in hatch's config file, -o key=value
PUBLISH_OPTIONS: Mapping[str, Option] = {
    "registry": Option("string", "push here instead of distribution.registry (oci://host/org/tool)"),
    "tags": Option("words", "tags instead of distribution.tags (an array, or comma-separated)", ()),
    "username": Option("string", "registry user name"),
    "password": Option("string", "registry password or token (prefer the environment)", secret=True),
    "insecure": Option("flag", "allow plain HTTP to a non-loopback registry", False),
    "ca-file": Option("string", "PEM file to verify the registry's TLS certificate"),
    "sign-key": Option("string", "sign every pushed digest with this private key (PREFIX.key; "
                       "MCPKIT_KEY_PASSWORD when encrypted)"),
    "disable": Option("flag", "hatch asks for confirmation before publishing (read by hatch)", False),
}

# [tool.hatch.env.collectors.mcpkit]
COLLECTOR_OPTIONS: Mapping[str, Option] = {
    "environment": Option("string", "the environment's name", "mcpkit"),
    "command": Option("string", "how to call mcpkit (default: the Python running hatch, -m hatch_mcpkit)"),
}
