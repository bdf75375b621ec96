"""Writing files safely: atomic replacement and verified streaming (standard library only).

Every place that writes bytes that matter goes through here:

* :func:`atomic_write` -- write a temporary file beside the target, fsync, rename over it.
  A reader sees the old file or the new one, never half of either.
* :func:`write_verified` -- stream chunks (an HTTP body, a file, a tar member) into a
  temporary file beside ``dest`` while counting and hashing them; reading stops as soon as
  the declared size is exceeded, and ``dest`` appears (by rename) only when size and SHA-256
  both match. On any failure the temporary file is gone and ``dest`` is untouched.
* :func:`read_verified` -- the same check for a small blob kept in memory.
* :func:`open_regular` / :func:`read_regular` -- open a file from outside (a layout folder, a
  cloned repository) only if it is a regular file: a symlink to ``/dev/zero``, a FIFO nobody
  writes or a socket is refused without blocking, and a read has a byte cap.

The digest format is ``sha256:<64 lowercase hex>``; anything else is an
:class:`~hatch_mcpkit.errors.IntegrityError`.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, BinaryIO

from hatch_mcpkit.errors import IntegrityError, McpkitError

__all__ = [
    "CHUNK",
    "DigestCheck",
    "atomic_write",
    "file_chunks",
    "open_regular",
    "read_regular",
    "read_verified",
    "write_verified",
]

CHUNK = 1024 * 1024
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")


def atomic_write(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _not_regular(path: Path, mode: int, where: str, error: type[McpkitError]) -> McpkitError:
    kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
        "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special"
    return error(f"{where}: {path.name} is {kind}, not a regular file; refusing to read it",
                 hint="a bundle's files are plain files (a symlink may only point at one)")


def open_regular(path: Path, *, where: str, error: type[McpkitError] = IntegrityError) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file (symlinks followed).

    Anything else is ``error``, found without blocking: the file is checked before it is opened,
    opened non-blocking (a FIFO with no writer cannot hold the open) and checked again on the
    open descriptor. A missing file is ``FileNotFoundError``, as with :func:`open`.
    """
    path = Path(path)
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise _not_regular(path, mode, where, error)
    nonblock = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDONLY | nonblock | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode, where, error)
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, *, limit: int, where: str, error: type[McpkitError] = IntegrityError) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`), refusing more than ``limit``."""
    with open_regular(path, where=where, error=error) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise error(f"{where}: {Path(path).name} is larger than {limit} bytes; refusing to read it")
    return data


def file_chunks(fh: IO[bytes], size: int = CHUNK) -> Iterable[bytes]:
    """The chunks of an open binary file."""
    while chunk := fh.read(size):
        yield chunk


class DigestCheck:
    """Count and hash bytes as they arrive; refuse the first byte past the declared size."""

    def __init__(self, digest: str, size: int, *, where: str) -> None:
        if not _DIGEST_RE.match(digest):
            raise IntegrityError(f"{where}: unsupported digest {digest!r}: only sha256:<64 hex> is supported",
                                 digest=digest)
        if size < 0:
            raise IntegrityError(f"{where}: blob {digest} declares a negative size ({size})", digest=digest)
        self.digest = digest
        self.size = size
        self.where = where
        self.seen = 0
        self._hash = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        if self.seen > self.size:
            raise IntegrityError(
                f"{self.where}: blob {self.digest} is larger than the {self.size} bytes its descriptor says",
                digest=self.digest,
            )
        self._hash.update(chunk)

    def finish(self) -> None:
        if self.seen != self.size:
            raise IntegrityError(
                f"{self.where}: blob {self.digest} has {self.seen} bytes, its descriptor says {self.size}",
                digest=self.digest,
            )
        got = f"sha256:{self._hash.hexdigest()}"
        if got != self.digest:
            raise IntegrityError(
                f"{self.where}: blob {self.digest} does not match its digest (got {got})",
                digest=self.digest,
                hint="the source holds corrupted or tampered content; nothing was installed",
            )


def write_verified(chunks: Iterable[bytes], dest: Path, *, digest: str, size: int, where: str,
                   progress: Callable[[int], None] | None = None) -> None:
    """Stream ``chunks`` into ``dest`` (by way of a temporary file beside it), checking size and digest.

    ``progress`` is told the bytes written so far after each chunk (from 0 again on every call).
    """
    dest = Path(dest)
    check = DigestCheck(digest, size, where=where)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                check.update(chunk)
                out.write(chunk)
                if progress is not None:
                    written += len(chunk)
                    progress(written)
        check.finish()
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_verified(chunks: Iterable[bytes], *, digest: str, size: int, where: str) -> bytes:
    """Collect a small blob in memory, checking size (as it arrives) and digest."""
    check = DigestCheck(digest, size, where=where)
    buf = bytearray()
    for chunk in chunks:
        check.update(chunk)
        buf += chunk
    check.finish()
    return bytes(buf)
