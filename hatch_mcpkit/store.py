"""The store under ``MCPKIT_HOME``: the only code that knows its layout.

(Being moved here from ``cache.py``: entries, ``metadata.json``, the index, compiled code.)

Compiled code lives in one place, ``MCPKIT_HOME/compiled/<engine fingerprint>/<wasm sha256>.cwasm``,
keyed by the SHA-256 of the module bytes the runtime actually read and by the fingerprint of
the engine that will load it. Only :class:`CodeCache` writes there, and nothing that arrives with
a bundle (a ``module.cwasm`` in an archive, a folder or a cache entry) is ever loaded: a bundle
can neither choose the key nor write into this folder (write grants that reach ``MCPKIT_HOME``
are refused by the runtime).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hatch_mcpkit._files import atomic_write

__all__ = ["CodeCache", "default_home"]

_KEY_PART = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def default_home() -> Path:
    """``$MCPKIT_HOME`` or ``~/.mcpkit``."""
    env = os.environ.get("MCPKIT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".mcpkit"


class CodeCache:
    """Native code compiled by this machine's wasmtime, keyed by ``(engine fingerprint, wasm sha256)``.

    The runtime asks :meth:`load` before compiling and hands the result to :meth:`save`; nothing
    else reads or writes ``compiled/``.
    """

    def __init__(self, home: Path | str | None = None) -> None:
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.root = self.home / "compiled"

    def _path(self, fingerprint: str, wasm_sha256: str) -> Path:
        for part in (fingerprint, wasm_sha256):
            if not _KEY_PART.match(part):
                raise ValueError(f"invalid code cache key part {part!r}")
        return self.root / fingerprint / f"{wasm_sha256}.cwasm"

    def load(self, fingerprint: str, wasm_sha256: str) -> bytes | None:
        """The compiled code for this module and engine, or ``None``."""
        try:
            return self._path(fingerprint, wasm_sha256).read_bytes()
        except OSError:
            return None

    def save(self, fingerprint: str, wasm_sha256: str, code: bytes) -> None:
        """Keep compiled code for next time (atomically; best effort on a read-only home)."""
        path = self._path(fingerprint, wasm_sha256)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, code, mode=0o644)
        except OSError:
            pass

    def discard(self, fingerprint: str, wasm_sha256: str) -> None:
        """Forget code that failed to load (a different engine build wrote it)."""
        self._path(fingerprint, wasm_sha256).unlink(missing_ok=True)
