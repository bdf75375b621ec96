"""hatch-mcpkit: WebAssembly MCP tool servers, built, shipped through OCI registries and run from Hatch."""

from __future__ import annotations

from hatch_mcpkit.__about__ import __version__
from hatch_mcpkit.config import Config, load_config
from hatch_mcpkit.errors import (
    AmbiguousNameError,
    AuthError,
    BuildError,
    BundleError,
    BundleNotFoundError,
    CacheError,
    ConfigError,
    IntegrityError,
    InvalidReferenceError,
    McpkitError,
    ModuleError,
    Problem,
    RegistryError,
    RegistryNotFoundError,
    SandboxError,
    StaleLockError,
    ToolCallError,
    UsageError,
)

__all__ = [
    "AmbiguousNameError",
    "AuthError",
    "BuildError",
    "BundleError",
    "BundleNotFoundError",
    "CacheError",
    "Config",
    "ConfigError",
    "IntegrityError",
    "InvalidReferenceError",
    "McpkitError",
    "ModuleError",
    "Problem",
    "RegistryError",
    "RegistryNotFoundError",
    "SandboxError",
    "StaleLockError",
    "ToolCallError",
    "UsageError",
    "__version__",
    "load_config",
]
