"""Hatch plugin registrations (entry point group ``hatch``).

hatchling imports this module in build environments that have neither hatch,
oras nor wasmtime, so it imports nothing heavy at module level: each hook
imports its class only when hatch asks for it.
"""

from __future__ import annotations

from typing import Any

from hatchling.plugin import hookimpl


@hookimpl
def hatch_register_build_hook() -> Any:
    from hatch_mcpkit.plugins.build_hook import McpkitBuildHook

    return McpkitBuildHook


@hookimpl
def hatch_register_builder() -> Any:
    from hatch_mcpkit.plugins.builder import McpkitBuilder

    return McpkitBuilder


@hookimpl
def hatch_register_publisher() -> Any:
    from hatch_mcpkit.plugins.publisher import McpkitPublisher

    return McpkitPublisher


@hookimpl
def hatch_register_environment_collector() -> Any:
    from hatch_mcpkit.plugins.collector import McpkitEnvironmentCollector

    return McpkitEnvironmentCollector
