"""Unpacking a downloaded ``bundle.tar.gz`` safely (standard library only); downloads are in ``_transport``."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path, PurePosixPath

from hatch_mcpkit.errors import BundleError

__all__ = ["extract_tar_safely"]

CHUNK = 1024 * 1024


def extract_tar_safely(archive: Path, dest: Path, *, max_bytes: int, max_members: int, where: str) -> list[Path]:
    """Unpack regular files and folders only: no absolute paths, no ``..``, no links, no devices; size-capped."""
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    total = 0
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for count, member in enumerate(tar, start=1):
                if count > max_members:
                    raise BundleError(f"{where}: archive has more than {max_members} entries")
                name = member.name
                parts = PurePosixPath(name).parts
                if name.startswith("/") or ".." in parts or "\\" in name:
                    raise BundleError(f"{where}: unsafe path in archive: {name!r}")
                parts = tuple(p for p in parts if p != ".")
                if not parts:
                    continue
                target = dest.joinpath(*parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise BundleError(
                        f"{where}: archive entry {name!r} is not a regular file (links and devices are refused)"
                    )
                total += member.size
                if total > max_bytes:
                    raise BundleError(f"{where}: archive unpacks to more than {max_bytes} bytes")
                target.parent.mkdir(parents=True, exist_ok=True)
                fh = tar.extractfile(member)
                assert fh is not None
                with fh, open(target, "xb") as out:
                    shutil.copyfileobj(fh, out, CHUNK)
                written.append(target)
    except FileExistsError as exc:
        raise BundleError(f"{where}: archive holds {exc.filename} twice") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{where}: not a readable .tar.gz archive ({exc})") from None
    return written
