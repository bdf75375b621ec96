"""One MCP server for several bundles: ``mcpkit serve``.

Each bundle is served under a *key* (its name in the project's ``[tool.mcpkit.bundles]``)
and each of its tools as ``<key>__<tool>`` (:func:`hatch_mcpkit.project.exposed_name`: a
``.`` in a tool name is served as ``-``, since LLM APIs accept only ``^[A-Za-z0-9_-]{1,64}$``).
A name over 64 characters is refused at start, naming the bundle and the tool. Two tools
that would be served under one name are refused at start, naming both bundles and both
tools, never a silent pick. Every problem is reported at once, before any module is loaded.
(A project's keys are words joined by single ``-``/``_``, so between two bundles of one
project only the ``.`` mapping can collide -- tools ``a.b`` and ``a-b`` -- but a gateway
over any keys, e.g. ``a`` + tool ``b__c`` and ``a__b`` + tool ``c``, is refused the same way.)

tools/list is sorted by key, then each bundle's config order. Every bundle keeps its own
runtime (engine, policy after the project's narrowing, limits, epoch ticker) and its own
concurrency limiter, so a trap, a timeout or a hung call in one never takes a slot, a
thread or an answer from another. The server identifies as the gateway (``mcpkit-gateway``
and mcpkit's version).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatch_mcpkit.errors import GatewayError

if TYPE_CHECKING:
    from mcp.server.lowlevel import Server

    from hatch_mcpkit.config import Config
    from hatch_mcpkit.runtime import Runtime
    from hatch_mcpkit.server import ServedTool
    from hatch_mcpkit.store import BundleCache

__all__ = ["GATEWAY_NAME", "Gateway", "Member", "gateway_server", "open_gateway", "open_project", "plan_names"]

GATEWAY_NAME = "mcpkit-gateway"
_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


@dataclass(frozen=True)
class Member:
    """One bundle of a gateway: its key, its folder (module.wasm, config.yaml, shipped files).

    ``label`` says where it came from (a reference) in messages; ``config`` is the bundle's
    config as it is to be served (after a project's narrowing; default: the folder's own).
    """

    key: str
    folder: Path
    label: str = ""
    config: Config | None = None

    @property
    def where(self) -> str:
        return f"{self.key!r} ({self.label or self.folder})"


def plan_names(bundles: Sequence[tuple[Member, Config]]) -> dict[str, dict[str, str]]:
    """key -> {tool name -> exposed name}, or a :class:`GatewayError` listing every problem."""
    from hatch_mcpkit.project import exposed_name, exposed_name_problem

    problems: list[str] = []
    owners: dict[str, tuple[Member, str]] = {}
    plan: dict[str, dict[str, str]] = {}
    for member, config in sorted(bundles, key=lambda b: b[0].key):
        if member.key in plan:
            problems.append(f"bundle key {member.key!r} is given twice")
            continue
        if not _KEY.match(member.key):
            problems.append(f"bundle key {member.key!r} may hold only letters, digits, '_' and '-' "
                            "(it starts every tool name the gateway serves)")
            continue
        plan[member.key] = names = {}
        for tool in config.tools:
            name = exposed_name(member.key, tool.name)
            problem = exposed_name_problem(member.key, tool.name)
            if problem:
                problems.append(f"bundle {member.where}: {problem}")
            elif name in owners and owners[name][0] is member:
                problems.append(f"bundle {member.where}: tools {owners[name][1]!r} and {tool.name!r} would both be "
                                f"served as {name!r} (a '.' is served as '-'); leave one out with policy.tools")
            elif name in owners:
                other, other_tool = owners[name]
                problems.append(f"tool name {name!r} would be served by two bundles: {other.where} tool "
                                f"{other_tool!r} and {member.where} tool {tool.name!r} (rename one of the keys)")
            else:
                owners[name] = (member, tool.name)
                names[tool.name] = name
    if problems:
        raise GatewayError(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} with the bundles to serve:\n"
                           + "\n".join(f"  {p}" for p in problems),
                           hint="keys are the names in [tool.mcpkit.bundles]; every tool is served as <key>__<tool>")
    return plan


def gateway_server(members: Sequence[tuple[str, Runtime]], *, max_concurrency: int,
                   plan: Mapping[str, Mapping[str, str]] | None = None) -> Server[Any]:
    """The gateway's MCP server over open runtimes, each with its own limiter of ``max_concurrency``."""
    from hatch_mcpkit.__about__ import __version__
    from hatch_mcpkit.server import table_server, tool_rows

    if plan is None:
        plan = plan_names([(Member(key, runtime.bundle_dir), runtime.config) for key, runtime in members])
    rows: list[ServedTool] = []
    for key, runtime in sorted(members, key=lambda m: m[0]):
        rows += tool_rows(runtime, max_concurrency=max_concurrency, exposed=plan[key].__getitem__)
    keys = ", ".join(sorted(key for key, _ in members))
    return table_server(rows, name=GATEWAY_NAME, version=__version__,
                        description=f"mcpkit gateway serving {len(members)} bundles: {keys}")


@dataclass
class Gateway:
    """An open gateway: its server and its bundles with their runtimes, in key order."""

    server: Server[Any]
    members: list[tuple[Member, Runtime]]


@contextlib.contextmanager
def open_gateway(members: Sequence[Member], *, max_concurrency: int, **runtime_options: Any) -> Iterator[Gateway]:
    """Check every name, then load each bundle (``runtime_options`` go to every Runtime); closes them after."""
    from hatch_mcpkit.config import load_config
    from hatch_mcpkit.runtime import Runtime

    configs = [(m, m.config if m.config is not None else load_config(m.folder / "config.yaml")) for m in members]
    plan = plan_names(configs)
    with contextlib.ExitStack() as stack:
        opened: list[tuple[Member, Runtime]] = []
        for member, config in sorted(configs, key=lambda c: c[0].key):
            runtime = Runtime(config, member.folder / "module.wasm", bundle_dir=member.folder, **runtime_options)
            stack.callback(runtime.close)
            opened.append((member, runtime))
        server = gateway_server([(m.key, rt) for m, rt in opened], max_concurrency=max_concurrency, plan=plan)
        yield Gateway(server, opened)


@contextlib.contextmanager
def open_project(store: BundleCache, *, project: Path | None = None, names: Sequence[str] = (),
                 max_concurrency: int, warn: Callable[[str], None], **runtime_options: Any) -> Iterator[Gateway]:
    """The gateway over a project's locked bundles (those ``names``, else all), from the cache.

    Nothing is fetched: the lock must match pyproject.toml and every locked digest must be in
    the cache, intact (``mcpkit sync``); each must still show the signatures the trust policy
    and its entry's ``key`` require. The project's policy narrowing is applied to each.
    """
    from hatch_mcpkit.config import load_config
    from hatch_mcpkit.lock import locked_bundles
    from hatch_mcpkit.project import find_project

    found = find_project(project)
    members = []
    for locked in locked_bundles(found, store, list(names) or None, warn=warn):  # checks the trust policy
        label = f"{locked.reference}@{locked.digest}"
        config = locked.narrowing.apply(load_config(locked.path / "config.yaml"))
        members.append(Member(locked.key, locked.path, label, config))
    with open_gateway(members, max_concurrency=max_concurrency, code_cache=store.code_cache,
                      protected_paths=[store.home], **runtime_options) as gateway:
        yield gateway
