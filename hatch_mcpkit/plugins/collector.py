"""The ``mcpkit`` environment collector: ``hatch run mcpkit:pull oci://...`` and friends.

Enable it in a project with ``[tool.hatch.env.collectors.mcpkit]``. It adds an
environment named ``mcpkit`` whose scripts ``pull``, ``run``, ``list``,
``push``, ``inspect``, ``rm``, ``server`` and, for a project's bundles, ``lock``, ``sync`` and
``serve`` call ``mcpkit <cmd> {args}``. The scripts run the
mcpkit installed beside hatch (where this plugin lives), so the environment
needs nothing installed (its virtualenv stays empty); a user's own scripts of the same name win.
"""

from __future__ import annotations

import shlex
import sys
from functools import cached_property
from typing import Any

from hatch.env.collectors.plugin.interface import EnvironmentCollectorInterface

from hatch_mcpkit.errors import McpkitError
from hatch_mcpkit.plugins._options import COLLECTOR_OPTIONS, PluginOptions, Source, fail

COMMANDS = ("pull", "run", "list", "push", "inspect", "rm", "server", "lock", "sync", "serve")
TABLE = "env.collectors.mcpkit"  # under tool.hatch in pyproject.toml, or in hatch.toml


def default_command() -> str:
    """``mcpkit`` as run from the Python that hatch (and so this plugin) runs in."""
    return f"{shlex.quote(sys.executable)} -m hatch_mcpkit"


class CollectorOptions(PluginOptions):
    OPTIONS = COLLECTOR_OPTIONS

    @cached_property
    def environment(self) -> str:
        return str(self.value("environment"))

    @cached_property
    def command(self) -> str:
        return self.text("command") or default_command()


class McpkitEnvironmentCollector(EnvironmentCollectorInterface):
    """Options: ``[tool.hatch.env.collectors.mcpkit]`` (see :data:`hatch_mcpkit.plugins._options.COLLECTOR_OPTIONS`)."""

    PLUGIN_NAME = "mcpkit"

    @cached_property
    def options(self) -> CollectorOptions:
        try:
            return CollectorOptions(Source.project(self.config, self.root, TABLE), root=self.root).check()
        except McpkitError as exc:
            fail(exc)  # hatch has no display here: stderr, then exit without a traceback

    def scripts(self) -> dict[str, str]:
        return {name: f"{self.options.command} {name} {{args}}" for name in COMMANDS}

    def get_initial_config(self) -> dict[str, dict[str, Any]]:
        return {
            self.options.environment: {
                "type": "virtual",
                "skip-install": True,
                "detached": True,
                "scripts": self.scripts(),
            }
        }

    def finalize_config(self, config: dict[str, dict[str, Any]]) -> None:
        env = config.setdefault(self.options.environment, {})
        # A user's [tool.hatch.envs.mcpkit.scripts] replaces our table wholesale; put ours back
        # underneath so every command exists and the user's definitions still win.
        user_scripts = env.get("scripts") or {}
        env["scripts"] = {**self.scripts(), **user_scripts}
        env.setdefault("type", "virtual")
        env.setdefault("skip-install", True)
        env.setdefault("detached", True)
