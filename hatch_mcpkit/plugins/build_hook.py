"""The ``mcpkit`` build hook: ``hatch build`` also writes ``dist/<name>-<version>.mcpkit.tar``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

from hatch_mcpkit.errors import McpkitError
from hatch_mcpkit.plugins._options import fail
from hatch_mcpkit.plugins.pipeline import BuildTableOptions, announce, clean_bundles, run_pipeline


class McpkitBuildHook(BuildHookInterface[Any]):
    """Options: ``[tool.hatch.build.hooks.mcpkit]`` (see :data:`hatch_mcpkit.plugins._options.BUILD_OPTIONS`)."""

    PLUGIN_NAME = "mcpkit"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name == "mcpkit":  # the mcpkit builder runs the same pipeline itself
            return
        try:
            options = BuildTableOptions.for_hook(self.root, self.config).build_options()
            result = run_pipeline(options, Path(self.directory), echo=self.app.display)
        except McpkitError as exc:
            fail(exc, self.app.display_error)
        announce(self.app.display_info, result, Path(self.root))

    def clean(self, versions: list[str]) -> None:
        for path in clean_bundles(Path(self.directory)):
            self.app.display_info(f"mcpkit: removed {path.name}")
