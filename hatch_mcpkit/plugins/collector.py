"""The ``mcpkit`` environment collector: ``hatch run mcpkit:pull oci://...`` and friends.

Enable it in a project with ``[tool.hatch.env.collectors.mcpkit]``. It adds an
environment named ``mcpkit`` whose scripts ``pull``, ``run``, ``list``,
``push`` and ``inspect`` call ``mcpkit <cmd> {args}``. The scripts run the
mcpkit installed beside hatch (where this plugin lives), so the environment
needs nothing installed (its virtualenv stays empty); a user's own scripts of the same name win.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

from hatch.env.collectors.plugin.interface import EnvironmentCollectorInterface

ENV_NAME = "mcpkit"
COMMANDS = ("pull", "run", "list", "push", "inspect", "rm", "server")


def default_command() -> str:
    """``mcpkit`` as run from the Python that hatch (and so this plugin) runs in."""
    return f"{shlex.quote(sys.executable)} -m hatch_mcpkit"


class McpkitEnvironmentCollector(EnvironmentCollectorInterface):
    """Options (``[tool.hatch.env.collectors.mcpkit]``): ``environment`` (name, default ``mcpkit``),
    ``command`` (how to invoke mcpkit, default: the interpreter running hatch with ``-m hatch_mcpkit``)."""

    PLUGIN_NAME = "mcpkit"

    @property
    def env_name(self) -> str:
        name = self.config.get("environment", ENV_NAME)
        if not isinstance(name, str) or not name:
            raise TypeError("Field `tool.hatch.env.collectors.mcpkit.environment` must be a non-empty string")
        return name

    def scripts(self) -> dict[str, str]:
        command = self.config.get("command", default_command())
        if not isinstance(command, str) or not command:
            raise TypeError("Field `tool.hatch.env.collectors.mcpkit.command` must be a non-empty string")
        return {name: f"{command} {name} {{args}}" for name in COMMANDS}

    def get_initial_config(self) -> dict[str, dict[str, Any]]:
        return {
            self.env_name: {
                "type": "virtual",
                "skip-install": True,
                "detached": True,
                "scripts": self.scripts(),
            }
        }

    def finalize_config(self, config: dict[str, dict[str, Any]]) -> None:
        env = config.setdefault(self.env_name, {})
        # A user's [tool.hatch.envs.mcpkit.scripts] replaces our table wholesale; put ours back
        # underneath so every command exists and the user's definitions still win.
        user_scripts = env.get("scripts") or {}
        env["scripts"] = {**self.scripts(), **user_scripts}
        env.setdefault("type", "virtual")
        env.setdefault("skip-install", True)
        env.setdefault("detached", True)
