"""What a module may touch: directory grants, host-side limit ceilings, the launch summary.

Two rules hold whatever a bundle's config says:

* a ``bundle:`` grant opens only what lies inside the bundle folder once every symlink is
  resolved (a cloned repository's ``data -> ~`` is refused);
* a writable grant (config ``fs://`` with ``write`` or ``--allow-dir ...:rw``) is refused when
  its resolved path contains or lies inside ``MCPKIT_HOME`` or the bundle folder, so a module
  can never plant code or records for the next run.

The effective limit of each kind is the smaller of the bundle's and the host's
(:class:`HostLimits`: options, ``MCPKIT_MAX_*`` environment variables, defaults).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from hatch_mcpkit.config import DEFAULT_LIMITS, Config, Limits, StorageGrant
from hatch_mcpkit.errors import SandboxError, UsageError

if TYPE_CHECKING:
    from hatch_mcpkit.runtime._runtime import Runtime

__all__ = ["HostLimits", "Preopen", "effective_grants", "format_policy", "parse_allow_dir"]


# --------------------------------------------------------------------------- host ceilings


_ENV = {
    "memory_mb": "MCPKIT_MAX_MEMORY_MB",
    "timeout_ms": "MCPKIT_MAX_TIMEOUT_MS",
    "max_output_kb": "MCPKIT_MAX_OUTPUT_KB",
    "fuel": "MCPKIT_MAX_FUEL",
}


@dataclass(frozen=True)
class HostLimits:
    """The host's ceilings: no bundle gets more than these, whatever its config.yaml says.

    ``fuel=None`` means no fuel ceiling (a bundle without fuel runs unmetered).
    """

    memory_mb: int = 512
    timeout_ms: int = 60_000
    max_output_kb: int = 4096
    fuel: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HostLimits:
        """Defaults, lowered or raised by ``MCPKIT_MAX_MEMORY_MB`` / ``_TIMEOUT_MS`` / ``_OUTPUT_KB`` / ``_FUEL``."""
        env = os.environ if environ is None else environ
        values = {field: _positive(var, env[var]) for field, var in _ENV.items() if env.get(var, "").strip()}
        return cls(**values)

    def with_options(self, **options: int | None) -> HostLimits:
        """These ceilings with the command-line options that were given (``None`` = not given)."""
        given = {k: v for k, v in options.items() if v is not None}
        for key, value in given.items():
            if value <= 0:
                raise UsageError(f"--max-{key.replace('_', '-')} {value}: expected a whole number above 0")
        return replace(self, **given)

    def cap(self, limits: Limits) -> Limits:
        """``limits`` (already merged with the defaults), each lowered to this ceiling."""
        return Limits(
            timeout_ms=min(limits.timeout_ms or self.timeout_ms, self.timeout_ms),
            memory_mb=min(limits.memory_mb or self.memory_mb, self.memory_mb),
            max_output_kb=min(limits.max_output_kb or self.max_output_kb, self.max_output_kb),
            fuel=self.fuel if limits.fuel is None else min(limits.fuel, self.fuel or limits.fuel),
        )


def _positive(var: str, raw: str) -> int:
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        value = 0
    if value <= 0:
        raise UsageError(f"{var}={raw!r}: expected a whole number above 0",
                         hint=f"unset {var} to use the default, or set it to e.g. {var}=1000")
    return value


# --------------------------------------------------------------------------- directory grants


def parse_allow_dir(spec: str, *, cwd: Path | None = None) -> StorageGrant:
    """``HOST[:GUEST][:ro|rw]`` (the ``--allow-dir`` option) as a storage grant.

    GUEST defaults to the absolute host path; access defaults to read-only.
    """
    parts = spec.split(":")
    access: tuple[str, ...] = ("read",)
    if len(parts) > 1 and parts[-1] in ("ro", "rw"):
        access = ("read", "write") if parts.pop() == "rw" else ("read",)
    if not parts or not parts[0] or len(parts) > 2:
        raise SandboxError(
            f"--allow-dir {spec!r}: expected HOST[:GUEST][:ro|rw]",
            hint="for example --allow-dir ~/notes:/notes:rw",
        )
    host = Path(os.path.expanduser(parts[0]))
    if not host.is_absolute():
        host = (cwd or Path.cwd()) / host
    host = Path(os.path.normpath(host))
    guest = parts[1] if len(parts) == 2 and parts[1] else host.as_posix()
    gp = PurePosixPath(guest)
    if not gp.is_absolute() or ".." in gp.parts or str(gp) == "/":
        raise SandboxError(f"--allow-dir {spec!r}: the guest path {guest!r} must be absolute, not '/', without '..'")
    return StorageGrant(uri=f"fs://{host.as_posix()}", guest=str(gp), access=access)


@dataclass(frozen=True)
class Preopen:
    host: Path  # resolved: no symlink left in it
    guest: str
    writable: bool
    kind: str  # "bundle" or "fs"
    uri: str


def effective_grants(
    config: Config, bundle_dir: Path, extra: Iterable[StorageGrant], deny_guests: Iterable[str],
    protected: Iterable[Path],
) -> list[Preopen]:
    """The directories to preopen, checked against the two rules above."""
    by_guest: dict[str, StorageGrant] = {g.guest: g for g in config.policy.storage}
    for grant in extra:  # a launch-time grant for the same guest path replaces the config's
        by_guest[str(PurePosixPath(grant.guest))] = grant
    for guest in deny_guests:
        by_guest.pop(str(PurePosixPath(guest)), None)
    bundle_real = Path(os.path.realpath(bundle_dir))
    fences = [(bundle_real, "the bundle folder")]
    fences += [(Path(os.path.realpath(p)), "MCPKIT_HOME") for p in protected]
    out = [_check(grant, bundle_dir, bundle_real, fences) for grant in by_guest.values()]
    return sorted(out, key=lambda p: p.guest)


def _check(grant: StorageGrant, bundle_dir: Path, bundle_real: Path, fences: list[tuple[Path, str]]) -> Preopen:
    where = f"storage grant {grant.uri} (guest {grant.guest})"
    host = grant.host_path(bundle_dir)
    if not host.is_dir():
        place = "shipped in the bundle" if grant.kind == "bundle" else "on this machine"
        raise SandboxError(f"{where}: {host} is not a directory {place}",
                           hint="create the directory, or remove the grant from policy.storage (or --allow-dir)")
    real = Path(os.path.realpath(host))
    if grant.kind == "bundle" and not real.is_relative_to(bundle_real):
        raise SandboxError(
            f"{where}: {host} resolves to {real}, outside the bundle folder {bundle_real}; refused",
            hint="a bundle: grant opens only files shipped in the bundle; remove the symlink",
        )
    if grant.writable:
        for fence, label in fences:
            if real == fence or real.is_relative_to(fence) or fence.is_relative_to(real):
                how = "lies inside" if real.is_relative_to(fence) else "contains"
                raise SandboxError(
                    f"{where}: write access to {real} refused: it {how} {label} ({fence})",
                    hint="a module must not write where bundles and compiled code live; grant another "
                         "folder, or make this grant read-only",
                )
    return Preopen(real, grant.guest, grant.writable, grant.kind, grant.uri)


# --------------------------------------------------------------------------- launch summary


def format_policy(runtime: Runtime) -> list[str]:
    """Human-readable lines describing what the module may touch (printed at launch)."""
    lines = []
    if not runtime.preopens:
        lines.append("storage: none")
    for p in runtime.preopens:
        mode = "read-write" if p.writable else "read-only"
        lines.append(f"storage: {p.guest} -> {p.host} ({mode}, {'shipped in the bundle' if p.kind == 'bundle' else p.uri})")
    if runtime.env_keys:
        env = runtime.environ
        shown = ", ".join(f"{k}{'' if k in env else ' (unset)'}" for k in runtime.env_keys)
        lines.append(f"environment: MCPKIT_TOOL, {shown}")
    else:
        lines.append("environment: MCPKIT_TOOL only")
    base = runtime.host_limits.cap(runtime.config.policy.limits.merged_over(DEFAULT_LIMITS))
    lines.append(f"limits: {_limits_text(base)}")
    for tool in runtime.config.tools:
        own = runtime.limits(tool.name)
        if own != base:
            lines.append(f"limits for {tool.name}: {_limits_text(own)}")
    return lines


def _limits_text(lim: Limits) -> str:
    return (f"timeout {lim.timeout_ms} ms, memory {lim.memory_mb} MiB, output {lim.max_output_kb} KiB, "
            f"fuel {lim.fuel if lim.fuel else 'unlimited'}")
