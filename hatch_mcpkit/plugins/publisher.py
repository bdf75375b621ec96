"""The ``mcpkit`` publisher: ``hatch publish -p mcpkit`` pushes ``dist/*.mcpkit.tar``.

Options (:data:`hatch_mcpkit.plugins._options.PUBLISH_OPTIONS`) come from
``[tool.hatch.publish.mcpkit]`` (project), ``[publish.mcpkit]`` (hatch's config file) and
``-o key=value`` (command line), the later winning key by key. Prefer
``MCPKIT_REGISTRY_USERNAME`` / ``MCPKIT_REGISTRY_PASSWORD`` or ``~/.docker/config.json`` to a
password option, so no secret sits in a file.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatch.publish.plugin.interface import PublisherInterface

from hatch_mcpkit.errors import McpkitError
from hatch_mcpkit.plugins._options import PUBLISH_OPTIONS, PluginOptions, Source

if TYPE_CHECKING:
    from hatch_mcpkit.config import Config

# hatch passes these to every publisher; they are not ours to check
HATCH_OPTIONS = frozenset({"no_prompt", "initialize_auth"})


class PublishOptions(PluginOptions):
    OPTIONS = PUBLISH_OPTIONS
    UNDERSCORES = True

    @cached_property
    def registry(self) -> str | None:
        return self.text("registry")

    @cached_property
    def tags(self) -> tuple[str, ...]:
        return tuple(self.value("tags"))

    @cached_property
    def username(self) -> str | None:
        return self.text("username")

    @cached_property
    def password(self) -> str | None:
        return self.text("password")

    @cached_property
    def insecure(self) -> bool:
        return bool(self.value("insecure"))

    @cached_property
    def ca_file(self) -> str | None:
        return self.text("ca-file")

    @cached_property
    def sign_key(self) -> str | None:
        return self.text("sign-key")

    @cached_property
    def disable(self) -> bool:
        return bool(self.value("disable"))


class McpkitPublisher(PublisherInterface):
    PLUGIN_NAME = "mcpkit"

    def _config_file(self) -> str:
        """Where hatch's own config file is (``hatch config find``), to name it in a message."""
        path = getattr(getattr(self.app, "config_file", None), "path", None)
        return str(path) if path else "hatch's config.toml"

    def _options(self, cli: dict[str, Any]) -> PublishOptions:
        return PublishOptions(
            Source(self.plugin_config, "publish.mcpkit", self._config_file()),
            Source.project(self.project_config, self.root, "publish.mcpkit"),
            Source({k: v for k, v in cli.items() if k not in HATCH_OPTIONS}, "-o", "command line"),
            root=self.root,
        ).check()

    def _own_config(self) -> Config | None:
        """The project's own config.yaml (the build hook's ``config``), read with this environment.

        Its ``distribution`` says where the archives go and with which credentials (``auth`` is
        expanded at push time); the config.yaml inside an archive is never used for that (an
        archive in dist/ may come from anyone).
        """
        import os

        from hatchling.metadata.core import load_toml

        from hatch_mcpkit.config import load_config
        from hatch_mcpkit.plugins.pipeline import BuildTableOptions

        root = Path(self.root)
        hook: Any = None
        for name, keys in (("hatch.toml", ("build", "hooks", "mcpkit")),
                           ("pyproject.toml", ("tool", "hatch", "build", "hooks", "mcpkit"))):
            if hook is None and (root / name).is_file():
                hook = load_toml(str(root / name))
                for key in keys:
                    hook = hook.get(key) if isinstance(hook, dict) else None
        path = BuildTableOptions.for_hook(root, hook if isinstance(hook, dict) else {}).config
        return load_config(path, os.environ) if path.is_file() else None

    def publish(self, artifacts: list[str], options: dict[str, Any]) -> None:
        from hatch_mcpkit.publish import find_archives, push_archive

        try:
            opts = self._options(options)
            own_config = self._own_config()
            sign_key = None
            if opts.sign_key:  # loaded first: a missing or wrong password fails before anything is pushed
                from hatch_mcpkit.signing import load_private_key

                sign_key = load_private_key(Path(self.root, opts.sign_key).expanduser())
            for archive in find_archives(artifacts, Path(self.root)):
                result = push_archive(
                    archive,
                    target=opts.registry,
                    tags=opts.tags,
                    username=opts.username,
                    password=opts.password,
                    insecure=opts.insecure,
                    ca_file=opts.ca_file,
                    environ=os.environ,  # the publisher's own archives: its own ${VAR}s
                    echo=self.app.display_waiting,
                    publisher_config=own_config,
                    sign_key=sign_key,
                )
                self.app.display_success(f"mcpkit: pushed {archive.name}")
                self.app.display_info(f"  digest {result.digest}")
                if result.signature:
                    self.app.display_info(f"  signed {result.digest} (signature {result.signature})")
                for ref in result.references:
                    self.app.display_info(f"  {ref}")
        except McpkitError as exc:
            self.app.abort(f"mcpkit: {exc}", code=exc.exit_code)

