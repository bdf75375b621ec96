"""The one safe tar extractor, for every archive that comes from outside.

``.mcpkit.tar`` files (``mcpkit run|server|inspect|pull x.mcpkit.tar``) and ``bundle.tar.gz``
downloads are unpacked only through :func:`extract`:

* regular files and folders only -- no symbolic or hard links, devices or FIFOs;
* no absolute names, no ``..``, no backslashes, no name twice;
* no reserved name (``module.cwasm``, ``metadata.json``, ``.mcpkit/``) anywhere in a path: such
  files belong to the cache, and an archive that ships one is refused, not filtered;
* a cap on the number of members and on the bytes they unpack to, counted from each member's
  declared size *before* anything is written (a sparse member counts at its full size, so a
  10 KB archive declaring a 4 GiB file is refused at once) and again as bytes are written.

Every failure is a :class:`~hatch_mcpkit.errors.BundleError` naming the archive and the member.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from hatch_mcpkit._files import CHUNK
from hatch_mcpkit.errors import BundleError

__all__ = ["DEFAULT_MAX_MEMBERS", "RESERVED_NAMES", "extract", "reserved_part"]

DEFAULT_MAX_MEMBERS = 10_000
# Names a bundle may never carry: the cache writes these itself (compiled code, its records).
RESERVED_NAMES = frozenset({"module.cwasm", "metadata.json", ".mcpkit"})


def reserved_part(name: str) -> str | None:
    """The first component of the relative path ``name`` that is reserved for the cache, if any."""
    for part in PurePosixPath(name).parts:
        if part.casefold() in RESERVED_NAMES:
            return part
    return None


def _member_parts(member: tarfile.TarInfo, where: str) -> tuple[str, ...]:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts or "\\" in name or "\0" in name:
        raise BundleError(f"{where}: unsafe path in archive: {name!r}")
    parts = tuple(p for p in parts if p != ".")
    reserved = reserved_part("/".join(parts)) if parts else None
    if reserved is not None:
        raise BundleError(
            f"{where}: archive member {name!r} uses the reserved name {reserved!r}",
            hint="module.cwasm, metadata.json and .mcpkit/ belong to the mcpkit cache; a bundle may not ship them",
        )
    return parts


def extract(
    archive: Path,
    dest: Path,
    *,
    where: str,
    max_bytes: int,
    max_members: int | None = None,
    keep: Callable[[tuple[str, ...]], bool] | None = None,
) -> list[Path]:
    """Unpack ``archive`` (any compression tarfile reads) under ``dest``; return the files written.

    ``keep(parts)`` may skip members a reader has no use for (they are still checked and counted).
    """
    max_members = DEFAULT_MAX_MEMBERS if max_members is None else max_members
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    total = 0
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for count, member in enumerate(tar, start=1):
                if count > max_members:
                    raise BundleError(f"{where}: archive has more than {max_members} entries")
                parts = _member_parts(member, where)
                if member.isdir() or not parts:
                    if parts:
                        dest.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise BundleError(
                        f"{where}: archive entry {member.name!r} is not a regular file "
                        "(links and devices are refused)"
                    )
                total += member.size  # the full size, also for a sparse member
                if total > max_bytes:
                    raise BundleError(
                        f"{where}: archive unpacks to more than {max_bytes} bytes "
                        f"(at {member.name!r}, {member.size} bytes)",
                        hint="raise --max-bundle-size / MCPKIT_MAX_BUNDLE_SIZE if you trust this archive",
                    )
                if keep is not None and not keep(parts):
                    continue
                written.append(_write_member(tar, member, dest.joinpath(*parts), where))
    except FileExistsError as exc:
        raise BundleError(f"{where}: archive holds {exc.filename} twice") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{where}: not a readable tar archive ({exc})") from None
    return written


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, where: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fh = tar.extractfile(member)
    if fh is None:  # pragma: no cover - isfile() members always have data
        raise BundleError(f"{where}: cannot read archive member {member.name!r}")
    seen = 0
    with fh, open(target, "xb") as out:
        while chunk := fh.read(CHUNK):
            seen += len(chunk)
            if seen > member.size:
                raise BundleError(f"{where}: archive member {member.name!r} is larger than it declares")
            out.write(chunk)
    return target
