"""The ``mcpkit`` builder: ``hatch build -t mcpkit`` produces only the bundle."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hatchling.builders.plugin.interface import BuilderInterface

from hatch_mcpkit.errors import McpkitError
from hatch_mcpkit.plugins._options import fail
from hatch_mcpkit.plugins.pipeline import BuildTableOptions, announce, clean_bundles, run_pipeline


class McpkitBuilder(BuilderInterface[Any, Any]):
    """Options: ``[tool.hatch.build.targets.mcpkit]``, key by key over the build hook's table."""

    PLUGIN_NAME = "mcpkit"

    def get_version_api(self) -> dict[str, Callable[..., str]]:
        return {"standard": self.build_standard}

    def get_default_versions(self) -> list[str]:
        return ["standard"]

    def clean(self, directory: str, versions: list[str]) -> None:
        for path in clean_bundles(Path(directory)):
            self.app.display_info(f"mcpkit: removed {path.name}")

    def build_standard(self, directory: str, **build_data: Any) -> str:
        hook = self.build_config.get("hooks", {}).get("mcpkit", {})
        try:
            options = BuildTableOptions.for_target(self.root, hook, self.target_config).build_options()
            result = run_pipeline(options, Path(directory), echo=self.app.display)
        except McpkitError as exc:
            fail(exc, self.app.display_error)
        announce(self.app.display_info, result, Path(self.root))
        return str(result.bundle.path)
