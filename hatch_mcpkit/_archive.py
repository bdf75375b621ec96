"""The one safe tar extractor, for every archive that comes from outside.

``.mcpkit.tar`` files (``mcpkit run|server|inspect|pull x.mcpkit.tar``) and ``bundle.tar.gz``
downloads are unpacked only through :func:`extract`:

* regular files and folders only -- no symbolic or hard links, devices or FIFOs;
* no absolute names, no ``..``, no backslashes, no name twice;
* no reserved name (``module.cwasm``, ``metadata.json``, ``.mcpkit/``) anywhere in a path: such
  files belong to the cache, and an archive that ships one is refused, not filtered;
* a cap on the number of members and on the bytes they unpack to, counted from each member's
  declared size *before* anything is written (a sparse member counts at its full size, so a
  10 KB archive declaring a 4 GiB file is refused at once) and again as bytes are written;
* a cap on the tar stream itself, decompressed by this module (gzip, bzip2, xz) and read by
  tarfile only through :class:`_Stream`: everything that is not member data -- headers, PAX
  records, GNU long names, sparse maps, which tarfile reads whole into memory -- may take
  :data:`MAX_METADATA_BYTES` in all, and a read or seek past that or past the byte cap is
  refused *before* it happens (a 400 KB gzip file whose PAX header declares 400 MiB is refused
  without inflating it).

Every failure is a :class:`~hatch_mcpkit.errors.BundleError` naming the archive and the member.
"""

from __future__ import annotations

import contextlib
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO, Protocol, cast

from hatch_mcpkit._files import CHUNK, open_regular
from hatch_mcpkit.errors import BundleError

__all__ = ["DEFAULT_MAX_MEMBERS", "MAX_METADATA_BYTES", "RESERVED_NAMES", "extract", "reserved_part"]

DEFAULT_MAX_MEMBERS = 10_000
# Everything in a tar stream that is not member data (512-byte headers, PAX records, GNU long
# names, sparse maps), for the whole archive: tarfile keeps all of it in memory.
MAX_METADATA_BYTES = 8 * 1024 * 1024
_HINT = "raise --max-bundle-size / MCPKIT_MAX_BUNDLE_SIZE if you trust this archive"
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
    """Unpack ``archive`` (plain, gzip, bzip2 or xz) under ``dest``; return the files written.

    ``keep(parts)`` may skip members a reader has no use for (they are still checked and counted).
    """
    import lzma
    import zlib

    max_members = DEFAULT_MAX_MEMBERS if max_members is None else max_members
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    total = 0
    try:
        with contextlib.ExitStack() as stack:
            raw = stack.enter_context(open_regular(archive, where=where, error=BundleError))
            plain = _decompressed(raw)
            stack.callback(plain.close)
            stream = _Stream(plain, max_bytes + max_members * tarfile.BLOCKSIZE, where)
            tar = stack.enter_context(tarfile.open(fileobj=cast("IO[bytes]", stream), mode="r:"))
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
                        hint=_HINT,
                    )
                if keep is not None and not keep(parts):
                    continue
                with stream.member_data():
                    written.append(_write_member(tar, member, dest.joinpath(*parts), where))
    except FileExistsError as exc:
        raise BundleError(f"{where}: archive holds {exc.filename} twice") from None
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError) as exc:
        raise BundleError(f"{where}: not a readable tar archive ({exc})") from None
    return written


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...

    def close(self) -> None: ...


def _decompressed(raw: BinaryIO) -> _Readable:
    """``raw`` as a tar stream: gzip, bzip2 and xz are inflated here (lazily, as tarfile reads)."""
    head = raw.read(6)
    raw.seek(0)
    if head.startswith(b"\x1f\x8b"):
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(b"BZh"):
        import bz2

        return bz2.BZ2File(raw)
    if head.startswith(b"\xfd7zXZ\x00"):
        import lzma

        return lzma.LZMAFile(raw)
    return raw


class _Stream:
    """The tar stream as tarfile sees it, with every read and seek checked *before* it happens.

    Reads outside :meth:`member_data` are headers and what tarfile parses with them (PAX records,
    GNU long names, sparse maps -- it reads each whole into memory): they may take
    :data:`MAX_METADATA_BYTES` in all. Nothing is read or sought past ``limit`` (the member byte
    cap plus block padding), so a compressed archive is never inflated past what it may unpack to.
    """

    def __init__(self, raw: _Readable, limit: int, where: str) -> None:
        self.raw = raw
        self.limit = limit + MAX_METADATA_BYTES
        self.where = where
        self.metadata = 0
        self._in_data = False

    @contextlib.contextmanager
    def member_data(self) -> Iterator[None]:
        self._in_data = True
        try:
            yield
        finally:
            self._in_data = False

    def read(self, size: int = -1) -> bytes:
        pos = self.raw.tell()
        if size is None or size < 0:
            size = self.limit - pos + 1
        if not self._in_data:
            self.metadata += size
            if self.metadata > MAX_METADATA_BYTES:
                raise BundleError(
                    f"{self.where}: archive headers (PAX records, long names, sparse maps) take more than "
                    f"{MAX_METADATA_BYTES} bytes (a header asks for {size} bytes at offset {pos}); refusing to read them",
                    hint="a bundle archive has a handful of members with short names; this one is malformed or hostile",
                )
        self._check(pos + size)
        return self.raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self._check(offset)
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def _check(self, end: int) -> None:
        if end > self.limit:
            raise BundleError(f"{self.where}: archive unpacks to more than {self.limit} bytes of tar stream",
                              hint=_HINT)


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
