"""The ``mcpkit`` build hook: ``hatch build`` also writes ``dist/<name>-<version>.mcpkit.tar``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

from hatch_mcpkit.errors import McpkitError
from hatch_mcpkit.plugins.pipeline import PipelineResult, clean_bundles, parse_options, run_pipeline

TABLE = "tool.hatch.build.hooks.mcpkit"


def report(app: Any, exc: McpkitError) -> None:
    """Show an mcpkit error through hatch's display and stop the build (no traceback)."""
    app.display_error(f"mcpkit: {exc}")
    raise SystemExit(getattr(exc, "exit_code", 1))


def announce(app: Any, result: PipelineResult, root: Path) -> None:
    bundle = result.bundle
    try:
        shown = bundle.path.relative_to(root)
    except ValueError:
        shown = bundle.path
    state = "up to date" if result.reused else "built"
    app.display_info(f"mcpkit: {state} {shown}")
    app.display_info(f"mcpkit: digest {bundle.digest}")


class McpkitBuildHook(BuildHookInterface[Any]):
    PLUGIN_NAME = "mcpkit"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name == "mcpkit":  # the mcpkit builder runs the same pipeline itself
            return
        try:
            options = parse_options(Path(self.root), self.config, TABLE)
            result = run_pipeline(options, Path(self.directory), echo=self.app.display)
        except McpkitError as exc:
            report(self.app, exc)
        announce(self.app, result, Path(self.root))

    def clean(self, versions: list[str]) -> None:
        for path in clean_bundles(Path(self.directory)):
            self.app.display_info(f"mcpkit: removed {path.name}")
