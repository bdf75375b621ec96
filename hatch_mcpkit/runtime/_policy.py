"""What a module may touch: directory grants, host-side limit ceilings, the launch summary.

These rules hold whatever a bundle's config says:

* a ``bundle:`` grant opens only what lies inside the bundle folder once every symlink is
  resolved (a cloned repository's ``data -> ~`` is refused);
* no grant's path passes a symlink inside a writable grant (the module could re-point it);
* a writable grant (config ``fs://`` with ``write`` or ``--allow-dir ...:rw``) is refused when
  its resolved path contains or lies inside a protected folder -- every ``MCPKIT_HOME`` mcpkit may
  use (the one in use, ``$MCPKIT_HOME``, ``~/.mcpkit``) and the bundle folder -- or contains any
  place the way to one passes through (the path as given, each symlink on the way), so a module
  can never plant code or records for the next run, nor re-point the way to them.

Each granted directory is opened once, at launch, and checked as opened; every call preopens
that open directory (``/proc/self/fd/N``), never the path again: a guest that swaps a granted
folder (or a folder on the way to it) for a symlink between calls reaches nothing new.

The effective limit of each kind is the smaller of the bundle's and the host's
(:class:`HostLimits`: options, ``MCPKIT_MAX_*`` environment variables, defaults).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from hatch_mcpkit.config import DEFAULT_LIMITS, Config, Limits, StorageGrant
from hatch_mcpkit.errors import SandboxError, UsageError

if TYPE_CHECKING:
    from hatch_mcpkit.runtime._runtime import Runtime

__all__ = ["Grants", "HostLimits", "Preopen", "effective_grants", "format_policy", "parse_allow_dir"]


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
    host: Path  # resolved at launch: no symlink left in it
    guest: str
    writable: bool
    kind: str  # "bundle" or "fs"
    uri: str
    fd: int  # that directory, opened at launch: what every call preopens


class Grants:
    """The granted directories, held open from launch to :meth:`close`.

    Thread-safe; after ``close`` no call gets a preopen any more (a closed fd number may name
    another file by then).
    """

    def __init__(self, preopens: list[Preopen]) -> None:
        self.preopens = preopens
        self._lock = threading.Lock()
        self._closed = False

    def each(self, preopen: Callable[[str, Preopen], None]) -> None:
        """``preopen(path, grant)`` for each grant, ``path`` naming the directory opened at launch."""
        with self._lock:
            if self._closed:
                raise SandboxError("this runtime is closed: its granted directories are no longer open",
                                   hint="make calls only between launch and close")
            for p in self.preopens:
                preopen(_held(p.fd), p)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                for p in self.preopens:
                    os.close(p.fd)


def effective_grants(
    config: Config, bundle_dir: Path, extra: Iterable[StorageGrant], deny_guests: Iterable[str],
    protected: Iterable[Path],
) -> Grants:
    """The directories to preopen, checked against the rules above and held open."""
    by_guest: dict[str, StorageGrant] = {g.guest: g for g in config.policy.storage}
    for grant in extra:  # a launch-time grant for the same guest path replaces the config's
        by_guest[str(PurePosixPath(grant.guest))] = grant
    for guest in deny_guests:
        by_guest.pop(str(PurePosixPath(guest)), None)
    fences = _fences(bundle_dir, "the bundle folder")
    bundle_real = fences[0].place
    for path in protected:
        fences += _fences(path, "MCPKIT_HOME")
    out = Grants([])
    try:
        passed = []
        for grant in sorted(by_guest.values(), key=lambda g: g.guest):
            preopen, links = _check(grant, bundle_dir, bundle_real, fences)
            out.preopens.append(preopen)
            passed.append((grant, links))
        for grant, links in passed:
            _not_through_a_writable_grant(grant, links, out.preopens)
    except BaseException:
        out.close()
        raise
    return out


def _not_through_a_writable_grant(grant: StorageGrant, links: list[Path], preopens: list[Preopen]) -> None:
    """Refuse a grant whose path passes a symlink the module may re-point (one inside a writable grant)."""
    for link in links:
        for w in preopens:
            if w.writable and link.is_relative_to(w.host):
                raise SandboxError(
                    f"storage grant {grant.uri} (guest {grant.guest}): its path passes through the symlink "
                    f"{link}, inside the writable grant {w.uri} (guest {w.guest}); refused",
                    hint=f"the module could re-point that symlink (it can write {w.guest}); grant the folder "
                         f"it leads to directly, or make {w.guest} read-only",
                )


# ---------------------------------------------------------------- looking a path up


_STEP = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_PATH", os.O_RDONLY)


@dataclass(frozen=True)
class _Walk:
    real: Path  # where the path leads, no symlink left (the rest as written from a missing component on)
    links: list[Path]  # every symlink passed on the way (where the link itself is), in order
    fd: int | None  # the folder reached, open; None when the path does not lead to a folder
    problem: str = ""  # why not, when fd is None


def _walk(path: Path, max_links: int = 40) -> _Walk:
    """Look ``path`` up one component at a time, reading each symlink instead of following it unseen.

    The folder it yields is the one the recorded symlinks lead to, whatever changes meanwhile.
    """
    raw = path if path.is_absolute() else Path.cwd() / path  # ".." kept: it follows the symlinks before it
    here, fd = Path("/"), os.open("/", _STEP)
    links: list[Path] = []
    todo = list(raw.parts[1:])
    try:
        while todo:
            part = todo.pop(0)
            try:
                step = os.open(part, _STEP, dir_fd=fd)
            except OSError as exc:
                target = _link_target(part, fd)
                if target is None or len(links) >= max_links:
                    os.close(fd)
                    rest = Path(os.path.normpath(here.joinpath(part, *todo)))
                    return _Walk(rest, links, None, exc.strerror or "not a directory")
                links.append(here / part)
                parts = PurePosixPath(target).parts
                if parts[:1] == ("/",):
                    root = os.open("/", _STEP)
                    os.close(fd)
                    here, parts, fd = Path("/"), parts[1:], root
                todo = [*parts, *todo]
                continue
            os.close(fd)
            fd, here = step, here.parent if part == ".." else here / part
    except BaseException:
        os.close(fd)
        raise
    return _Walk(here, links, fd)


def _link_target(name: str, dir_fd: int) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:  # not a symlink, or not there
        return None


@dataclass(frozen=True)
class _Fence:
    place: Path  # where the protected folder is, or a place the way to it passes through
    protected: Path  # the protected folder, as given
    label: str  # "MCPKIT_HOME" or "the bundle folder"
    resolved: bool  # place is the protected folder itself (no symlink left in it)


def _fences(path: Path, label: str) -> list[_Fence]:
    """``path`` where it leads, then every place on the way to it: as given, each symlink passed."""
    walk = _walk(Path(path))
    if walk.fd is not None:
        os.close(walk.fd)
    given = Path(os.path.abspath(path))
    places = [p for p in dict.fromkeys([given, *walk.links]) if p != walk.real]
    return [_Fence(walk.real, Path(path), label, True), *(_Fence(p, Path(path), label, False) for p in places)]


def _check(grant: StorageGrant, bundle_dir: Path, bundle_real: Path,
           fences: list[_Fence]) -> tuple[Preopen, list[Path]]:
    """The grant checked and held open, and the symlinks on its way."""
    where = f"storage grant {grant.uri} (guest {grant.guest})"
    host = grant.host_path(bundle_dir)
    walk = _walk(host)
    if walk.fd is None:
        place = "shipped in the bundle" if grant.kind == "bundle" else "on this machine"
        raise SandboxError(f"{where}: {host} is not a directory {place} ({walk.problem})",
                           hint="create the directory, or remove the grant from policy.storage (or --allow-dir)")
    try:
        real = walk.real
        if grant.kind == "bundle" and not real.is_relative_to(bundle_real):
            raise SandboxError(
                f"{where}: {host} resolves to {real}, outside the bundle folder {bundle_real}; refused",
                hint="a bundle: grant opens only files shipped in the bundle; remove the symlink",
            )
        if grant.writable:
            for fence in fences:
                _fence(where, real, fence)
        fd = _hold(where, real, walk.fd)
    finally:
        os.close(walk.fd)
    return Preopen(real, grant.guest, grant.writable, grant.kind, grant.uri, fd), walk.links


def _fence(where: str, real: Path, fence: _Fence) -> None:
    place = fence.place
    hint = ("a module must not write where bundles and compiled code live, nor re-point the way to them; "
            "grant another folder, or make this grant read-only")
    if fence.resolved and (real == place or real.is_relative_to(place) or place.is_relative_to(real)):
        how = "lies inside" if real.is_relative_to(place) else "contains"
        raise SandboxError(f"{where}: write access to {real} refused: it {how} {fence.label} ({place})", hint=hint)
    if not fence.resolved and place.is_relative_to(real):
        raise SandboxError(f"{where}: write access to {real} refused: it contains {place}, on the way to "
                           f"{fence.label} ({fence.protected})", hint=hint)


def _held(fd: int) -> str:
    """A path naming the directory open as ``fd`` itself, whatever has become of its path since."""
    return f"{_fd_dir()}/{fd}"


@functools.cache
def _fd_dir() -> str:
    return "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"


def _hold(where: str, real: Path, looked_up: int) -> int:
    """The folder ``looked_up`` opened for reading through its fd path (as every call will open it)."""
    held = _held(looked_up)
    try:
        fd = os.open(held, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxError(f"{where}: cannot hold {real} open for the module's calls ({held}: {exc.strerror})",
                           hint="mcpkit needs /proc (Linux) or /dev/fd, and read access to the folder") from None
    if os.path.islink(held) and os.readlink(held) != str(real):  # Linux: the kernel's own path of it
        os.close(fd)
        raise SandboxError(f"{where}: {real} was moved while it was being checked; refused",
                           hint="something is moving folders on the way to this grant; run again when it stops")
    return fd


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

