"""The ``mcpkit`` builder: ``hatch build -t mcpkit`` produces only the bundle."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hatchling.builders.plugin.interface import BuilderInterface

from hatch_mcpkit.errors import McpkitError
from hatch_mcpkit.plugins.build_hook import announce, report
from hatch_mcpkit.plugins.pipeline import OPTION_KEYS, clean_bundles, parse_options, run_pipeline


class McpkitBuilder(BuilderInterface[Any, Any]):
    """Options come from ``[tool.hatch.build.targets.mcpkit]``, falling back to the build hook's table."""

    PLUGIN_NAME = "mcpkit"

    def get_version_api(self) -> dict[str, Callable[..., str]]:
        return {"standard": self.build_standard}

    def get_default_versions(self) -> list[str]:
        return ["standard"]

    def clean(self, directory: str, versions: list[str]) -> None:
        for path in clean_bundles(Path(directory)):
            self.app.display_info(f"mcpkit: removed {path.name}")

    def _options(self) -> tuple[dict[str, Any], str]:
        target = {k: v for k, v in self.target_config.items() if k in OPTION_KEYS}
        if target:
            return target, "tool.hatch.build.targets.mcpkit"
        hook = self.build_config.get("hooks", {}).get("mcpkit", {})
        return {k: v for k, v in hook.items() if k in OPTION_KEYS}, "tool.hatch.build.hooks.mcpkit"

    def build_standard(self, directory: str, **build_data: Any) -> str:
        raw, table = self._options()
        try:
            options = parse_options(Path(self.root), raw, table)
            result = run_pipeline(options, Path(directory), echo=self.app.display)
        except McpkitError as exc:
            report(self.app, exc)
        announce(self.app, result, Path(self.root))
        return str(result.bundle.path)
