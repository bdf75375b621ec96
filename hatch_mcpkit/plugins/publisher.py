"""The ``mcpkit`` publisher: ``hatch publish -p mcpkit`` pushes ``dist/*.mcpkit.tar``.

Options, from ``[tool.hatch.publish.mcpkit]`` (project), ``[publish.mcpkit]`` (hatch's
config file) or ``-o key=value`` (command line, which wins):

- ``registry``: push here instead of ``distribution.registry`` (``oci://host/org/tool``)
- ``tags``: comma-separated tags instead of ``distribution.tags``
- ``username`` / ``password``: credentials; prefer ``MCPKIT_REGISTRY_USERNAME`` /
  ``MCPKIT_REGISTRY_PASSWORD`` or ``~/.docker/config.json`` so no secret sits in a file
- ``insecure``: allow plain HTTP to a non-loopback registry
- ``ca-file``: a PEM bundle to verify the registry's TLS certificate
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatch.publish.plugin.interface import PublisherInterface

from hatch_mcpkit.errors import McpkitError
from hatch_mcpkit.publish import find_archives, push_archive

OPTIONS = ("registry", "tags", "username", "password", "insecure", "ca-file", "disable")
# hatch passes these to every publisher; they are not ours to validate
HATCH_OPTIONS = ("no_prompt", "initialize_auth")


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


class McpkitPublisher(PublisherInterface):
    PLUGIN_NAME = "mcpkit"

    def _options(self, cli: dict[str, Any]) -> dict[str, Any]:
        ours = {k: v for k, v in cli.items() if k not in HATCH_OPTIONS}
        merged: dict[str, Any] = {**self.plugin_config, **self.project_config, **ours}
        unknown = sorted(k for k in merged if k.replace("_", "-") not in OPTIONS)
        if unknown:
            self.app.abort(
                f"mcpkit: unknown publish option(s) {', '.join(unknown)} "
                f"(tool.hatch.publish.mcpkit / -o accept: {', '.join(OPTIONS[:-1])})"
            )
        return {k.replace("_", "-"): v for k, v in merged.items()}

    def publish(self, artifacts: list[str], options: dict[str, Any]) -> None:
        opts = self._options(options)
        tags = opts.get("tags") or ()
        if isinstance(tags, str):
            tags = tuple(t.strip() for t in tags.split(",") if t.strip())
        try:
            archives = find_archives(artifacts, Path(self.root))
            for archive in archives:
                result = push_archive(
                    archive,
                    target=opts.get("registry"),
                    tags=tuple(tags),
                    username=opts.get("username"),
                    password=opts.get("password"),
                    insecure=_truthy(opts.get("insecure", False)),
                    ca_file=opts.get("ca-file"),
                    echo=self.app.display_waiting,
                )
                self.app.display_success(f"mcpkit: pushed {archive.name}")
                self.app.display_info(f"  digest {result.digest}")
                for ref in result.references:
                    self.app.display_info(f"  {ref}")
        except McpkitError as exc:
            self.app.abort(f"mcpkit: {exc}", code=exc.exit_code)
