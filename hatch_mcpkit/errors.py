"""One error hierarchy for everything mcpkit reports to a user.

Every error says what went wrong, where (file, key path, line, reference or
digest) and, where there is one, what to do about it (``hint``). The command
line prints ``str(error)`` and exits with ``error.exit_code``; nothing else
is shown, so a message must stand on its own and must never contain a secret.

Exit codes (the table in docs/troubleshooting.md): ``1`` a failure, ``2`` a bad
configuration, reference or command line (:data:`EXIT_USAGE`), ``3`` the bundle
named does not exist, in the cache or in the registry (:data:`EXIT_NOT_FOUND`),
``4`` a project's mcpkit.lock is missing or stale (:data:`EXIT_STALE_LOCK`);
the command line adds ``130`` (interrupted), ``141`` (standard output closed)
and ``70`` (an internal error: a bug).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "AmbiguousNameError",
    "AuthError",
    "BuildError",
    "BundleError",
    "BundleNotFoundError",
    "CacheError",
    "ConfigError",
    "GatewayError",
    "IntegrityError",
    "InvalidReferenceError",
    "McpkitError",
    "ModuleError",
    "Problem",
    "RegistryError",
    "RegistryNotFoundError",
    "SandboxError",
    "SignatureError",
    "StaleLockError",
    "ToolCallError",
    "UsageError",
    "closest",
    "did_you_mean",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_STALE_LOCK = 4


class McpkitError(Exception):
    """Base class of every error mcpkit raises on purpose."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration file.

    ``path`` is the key path (``mcp.tools[1].name``), ``line`` is 1-based or
    ``None`` when the key does not exist in the file (a missing required key
    is reported at its parent's line).
    """

    file: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        """One line: the file, key path and message may quote what a cloned file holds (a key with a
        newline in a TOML or YAML file), so every control character in them is shown escaped."""
        from hatch_mcpkit._text import clean

        where = clean(self.file, limit=None) if self.line is None else f"{clean(self.file, limit=None)}:{self.line}"
        key = f" {clean(self.path, limit=None)}:" if self.path else ""
        return f"{where}:{key} {clean(self.message, limit=None)}"


def closest(key: str, allowed: Iterable[str]) -> str | None:
    """The one of ``allowed`` that ``key`` is most likely a misspelling of, if any is close enough."""
    import difflib

    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.7)
    return close[0] if close else None


def did_you_mean(key: str, allowed: Sequence[str]) -> str:
    """The tail of an "unknown key" message: `` (did you mean 'x'?)`` or `` (expected one of: ...)``."""
    close = closest(key, allowed)
    if close is not None:
        return f" (did you mean {close!r}?)"
    return f" (expected one of: {', '.join(allowed)})"


class ConfigError(McpkitError):
    """config.yaml (or a tool.hatch... table) is invalid; carries every problem found."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: Sequence[Problem] | Iterable[Problem], *, hint: str | None = None) -> None:
        self.problems: list[Problem] = sorted(
            problems, key=lambda p: (p.file, p.line if p.line is not None else 0, p.path)
        )
        count = len(self.problems)
        head = (
            f"{count} problem{'s' if count != 1 else ''} in configuration:"
            if count
            else "invalid configuration"
        )
        body = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{head}\n{body}" if body else head, hint=hint)


class InvalidReferenceError(McpkitError):
    """A bundle reference (oci://, file://, https://, bare name) cannot be understood."""

    exit_code = EXIT_USAGE


class UsageError(McpkitError):
    """A command line that asks for something impossible (nothing to serve, conflicting options)."""

    exit_code = EXIT_USAGE


class GatewayError(McpkitError):
    """The bundles given to one gateway cannot be served together (a name collision, a name too long)."""

    exit_code = 2


class BuildError(McpkitError):
    """cargo failed or could not be run."""


class ModuleError(McpkitError):
    """A WebAssembly module is not a valid mcpkit guest (wrong magic, imports, exports)."""


class BundleError(McpkitError):
    """A bundle archive or OCI layout is malformed or cannot be written."""


class IntegrityError(McpkitError):
    """Content does not match the digest or size that names it."""

    def __init__(self, message: str, *, digest: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.digest = digest


class RegistryError(McpkitError):
    """An OCI registry refused a request or could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        registry_message: str | None = None,
        hint: str | None = None,
    ) -> None:
        if status is not None:
            message = f"{message} (HTTP {status}"
            message += f": {registry_message})" if registry_message else ")"
        elif registry_message:
            message = f"{message}: {registry_message}"
        super().__init__(message, hint=hint)
        self.status = status
        self.registry_message = registry_message


class RegistryNotFoundError(RegistryError):
    """The registry has no such repository, tag or digest (HTTP 404 for a manifest or a tag listing)."""

    exit_code = EXIT_NOT_FOUND


class AuthError(RegistryError):
    """The registry refused the credentials (or none were found)."""


class CacheError(McpkitError):
    """The local bundle cache (MCPKIT_HOME) cannot be read or written."""


class AmbiguousNameError(CacheError):
    """A short name matches several different cached bundles; the message lists how to name each alone."""

    exit_code = EXIT_USAGE


class BundleNotFoundError(CacheError):
    """No cached bundle matches a name or reference."""

    exit_code = EXIT_NOT_FOUND


class SignatureError(McpkitError):
    """A signing key cannot be used, or a signature does not prove what it must.

    ``reason`` says which: ``key`` (a key file is missing, unreadable, of the wrong type or
    its password is missing or wrong), ``format`` (not a Sigstore bundle we can read),
    ``wrong-key`` (signed by another key), ``tampered`` (the signature does not match the
    signed content), ``statement`` (signed content of another kind), ``digest`` (a valid
    signature over another manifest digest), ``missing`` (no signature at all) or ``policy``
    (the trust policy requires a signature the bundle or the cached entry does not show).
    """

    def __init__(self, message: str, *, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class StaleLockError(McpkitError):
    """``mcpkit.lock`` is missing, unreadable or no longer matches ``[tool.mcpkit.bundles]`` (``--frozen``)."""

    exit_code = EXIT_STALE_LOCK


class SandboxError(McpkitError):
    """The wasmtime sandbox could not be set up (bad policy, missing grant, engine error)."""


class ToolCallError(McpkitError):
    """A tool call failed inside the sandbox (trap, exit code, timeout, limits).

    The MCP server turns this into ``isError: true``; it never stops the server.
    """

    def __init__(self, message: str, *, reason: str, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.stderr_tail = stderr_tail
