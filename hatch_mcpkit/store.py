"""The store under ``MCPKIT_HOME`` (default ``~/.mcpkit``): the only code that knows its layout.

Layout::

    bundles/<registry>/<repository>/<tag or sha256-hex>/   a bundle pulled from an OCI registry
    bundles/https/<host>/<url path>/sha256-<hex>/          a bundle.tar.gz from a web server (hex: the archive)
    bundles/http/<host>/<url path>/sha256-<hex>/           the same over plain HTTP (loopback or --insecure)
    bundles/file/<name>/sha256-<hex>/                      a local module/archive/directory (hex: manifest digest)
        module.wasm  config.yaml  <extra shipped files>  metadata.json
    bundles/registry.json    index: name -> [{reference, digest, path, pulled_at}] (path relative to bundles/)
    compiled/<engine fingerprint>/<wasm sha256>.cwasm      native code, written and read only by CodeCache
    cache/downloads/         work directories of pulls in progress (<kind>-<pid>-*); moved into place when verified
    cache/locks/             one lock file per entry, one for the index
    cache/pushed.json        registry -> blob digest -> repositories this machine pushed it to (a bounded
                             hint for cross-repository mounts, read and written by _mounts.py only)

Every blob is checked (size and SHA-256, streamed) before an entry is moved into place with a
rename; the previous good copy survives any failure up to that rename. Two processes pulling the
same reference both succeed and leave one consistent entry (per-entry ``flock`` + re-check under
the lock). A batch of pulls (:meth:`BundleCache.batch`, what ``mcpkit sync`` uses) installs each
entry the same way but writes the index rows of all of them once, at the end. Before anything is
fetched, the sizes the manifest declares are checked against the maximum bundle size. A re-pull of an installed manifest re-checks the files on disk against the
manifest's digests (it does not trust ``metadata.json``) and repairs the entry when anything was
changed or added. Work directories of processes that are gone are swept on the next pull.

Compiled code lives in one place, ``compiled/``, keyed by the SHA-256 of the module bytes the
runtime actually read and by the fingerprint of the engine that will load it. Only
:class:`CodeCache` writes there, and nothing that arrives with a bundle is ever loaded: a
bundle can neither choose the key nor write into this folder. The store never imports the
runtime; the command line asks the runtime to precompile after a pull.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hatch_mcpkit import _json
from hatch_mcpkit._files import DigestCheck, atomic_write, file_chunks, write_verified
from hatch_mcpkit.bundle import (
    CONFIG_TITLE,
    MODULE_TITLE,
    BundleLayout,
    Descriptor,
    Manifest,
    check_declared_sizes,
    derive_bundle_config,
    local_bundle,
    max_bundle_size,
    parse_bundle_config,
)
from hatch_mcpkit.errors import (
    AmbiguousNameError,
    BundleError,
    BundleNotFoundError,
    CacheError,
    IntegrityError,
    InvalidReferenceError,
    McpkitError,
)
from hatch_mcpkit.reference import (
    AnyRef,
    FileRef,
    HttpsRef,
    NameRef,
    OciRef,
    classify,
    parse_cache_name,
    parse_reference,
)

if TYPE_CHECKING:
    from hatch_mcpkit.auth import Credentials
    from hatch_mcpkit.config import Config
    from hatch_mcpkit.reference import Reference
    from hatch_mcpkit.registry import RegistryClient

__all__ = [
    "BundleCache",
    "CacheEntry",
    "CodeCache",
    "PullOptions",
    "PullResult",
    "default_home",
    "every_home",
    "in_a_cache",
    "read_metadata",
    "registry_client",
]

METADATA = "metadata.json"
INDEX = "registry.json"
MAX_INDEX_BYTES = 256 * 1024 * 1024
MAX_METADATA_BYTES = 16 * 1024 * 1024
STALE_WORKDIR_SECONDS = 24 * 3600
MAX_LISTED_CANDIDATES = 20  # an ambiguous name's error lists this many
_WORKDIR_RE = re.compile(r"^[a-z]+-(\d+)-")
_SAFE_PART = re.compile(r"[^A-Za-z0-9._-]")
_KEY_PART = re.compile(r"^[A-Za-z0-9._-]{1,128}\Z")


def default_home() -> Path:
    """``$MCPKIT_HOME`` or ``~/.mcpkit``."""
    env = os.environ.get("MCPKIT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".mcpkit"


def every_home(given: Iterable[Path | str] = ()) -> list[Path]:
    """Every MCPKIT_HOME mcpkit may use here: those ``given`` (the one in use), ``$MCPKIT_HOME`` and
    ``~/.mcpkit``. No module may write into any of them (a run with ``--home`` elsewhere must not plant
    code for the usual runs), and a file in one of them came from someone else."""
    return list(dict.fromkeys([*map(Path, given), default_home(), Path(os.path.expanduser("~")) / ".mcpkit"]))


def in_a_cache(path: Path | str, home: Path | str | None = None) -> bool:
    """Whether ``path`` lies among the bundles of a cache (any of :func:`every_home`): a file there was
    pulled from someone else, so a config.yaml there is data, never the publisher's own."""
    real = Path(os.path.realpath(path))
    homes = every_home([home] if home is not None else [])
    return any(real.is_relative_to(os.path.realpath(h / "bundles")) for h in homes)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# --------------------------------------------------------------------------- compiled code


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


# --------------------------------------------------------------------------- entries and results


@dataclass(frozen=True)
class CacheEntry:
    """One installed bundle, as recorded in registry.json."""

    name: str
    reference: str
    digest: str
    path: Path
    pulled_at: str

    @functools.cached_property
    def tag(self) -> str | None:
        """The tag of an ``oci://`` reference (``None`` for digests and non-OCI sources)."""
        if not self.reference.startswith("oci://"):
            return None
        try:
            ref = parse_reference(self.reference)
        except InvalidReferenceError:
            return None
        return None if ref.digest else ref.tag

    def metadata(self) -> dict[str, Any]:
        """The entry's metadata.json (``{}`` if it cannot be read)."""
        return _read_metadata(self.path)

    def to_json(self, bundles_dir: Path) -> dict[str, str]:
        return {
            "reference": self.reference,
            "digest": self.digest,
            "path": self.path.relative_to(bundles_dir).as_posix(),
            "pulled_at": self.pulled_at,
        }


def read_metadata(entry_dir: Path) -> dict[str, Any]:
    """An entry folder's metadata.json (``{}`` if it cannot be read)."""
    return _read_metadata(entry_dir)


def _read_metadata(entry_dir: Path) -> dict[str, Any]:
    try:
        data = _json.load((entry_dir / METADATA).read_bytes(), where=str(entry_dir / METADATA), error=CacheError,
                          max_bytes=MAX_METADATA_BYTES)
    except (OSError, CacheError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class PullResult:
    entry: CacheEntry
    changed: bool  # False: the cache already held this manifest, only the manifest was fetched (or nothing)
    warnings: tuple[str, ...] = ()
    repaired: bool = False  # the entry on disk no longer matched its manifest and was installed again

    @property
    def path(self) -> Path:
        return self.entry.path

    @property
    def digest(self) -> str:
        return self.entry.digest


@dataclass(frozen=True)
class PullOptions:
    offline: bool = False
    insecure: bool = False
    ca_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    max_bundle_size: int | None = None  # None: $MCPKIT_MAX_BUNDLE_SIZE, else 1 GiB
    transfer_deadline: float | None = None  # seconds per transfer; None: $MCPKIT_TRANSFER_DEADLINE, else 900
    # called for a registry pull with the manifest digest about to be installed, after the manifest and
    # before any blob is fetched; raises to refuse (the cache stays as it was) or returns the
    # ``signature`` record for metadata.json (see hatch_mcpkit.trust.verifier)
    verify: Callable[[RegistryClient, Reference, str], dict[str, Any] | None] | None = field(
        default=None, compare=False)
    # told (bytes received, bytes in all; 0 when a web server does not say) as a pull downloads, from a
    # registry or an https:// archive; never called when the cache already holds the manifest's files
    progress: Callable[[int, int], None] | None = field(default=None, compare=False)

    @property
    def size_limit(self) -> int:
        return max_bundle_size(self.max_bundle_size)


def _safe_parts(parts: list[str]) -> list[str]:
    out = []
    for part in parts:
        part = _SAFE_PART.sub("_", part)
        if part in ("", ".", ".."):
            continue
        out.append(part[:100])
    return out


class _BlobSource(Protocol):
    def read_blob(self, desc: Descriptor) -> bytes: ...

    def fetch_blob(self, desc: Descriptor, dest: Path) -> None: ...


class _LayoutBlobs:
    """Blobs of a local OCI layout, copied with verification."""

    def __init__(self, layout: BundleLayout) -> None:
        self.layout = layout

    def read_blob(self, desc: Descriptor) -> bytes:
        return self.layout.read_blob(desc.digest)

    def fetch_blob(self, desc: Descriptor, dest: Path) -> None:
        with self.layout.open_blob(desc.digest) as fh:
            write_verified(file_chunks(fh), dest, digest=desc.digest, size=desc.size, where=str(self.layout.source))


class _RegistryBlobs:
    def __init__(self, client: RegistryClient, repository: str, *,
                 progress: Callable[[int, int], None] | None = None, total: int = 0) -> None:
        self.client = client
        self.repository = repository
        self._early: dict[str, bytes] = {}
        self._progress = progress
        self._total = total
        self._done = 0  # bytes of the layers fetched whole

    def prefetch(self, desc: Descriptor) -> None:
        """Read a small blob now (while a signature is checked); a failure is left for read_blob to raise."""
        try:
            self._early[desc.digest] = self.client.read_blob(self.repository, desc)
        except McpkitError:  # read again, and fail there, if the pull goes on
            pass

    def read_blob(self, desc: Descriptor) -> bytes:
        early = self._early.pop(desc.digest, None)
        return early if early is not None else self.client.read_blob(self.repository, desc)

    def fetch_blob(self, desc: Descriptor, dest: Path) -> None:
        report = None
        if self._progress is not None:
            progress, done, total = self._progress, self._done, max(self._total, self._done + desc.size)
            report = lambda received: progress(min(done + received, total), total)  # noqa: E731
        self.client.fetch_blob(self.repository, desc, dest, progress=report)
        self._done += desc.size


def check_bundle_config_yaml(raw: bytes, label: str) -> Config:
    """Validate a bundle's config.yaml as data (``${...}`` in it is literal text, never expanded)."""
    from hatch_mcpkit.config import parse_config

    return parse_config(raw, label)


def _file_matches(path: Path, desc: Descriptor) -> bool:
    """Streamed size + SHA-256 check of one installed file against its layer descriptor."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size != desc.size:
            return False
        check = DigestCheck(desc.digest, desc.size, where=str(path))
        with open(path, "rb") as fh:
            for chunk in file_chunks(fh):
                check.update(chunk)
        check.finish()
    except (OSError, IntegrityError):
        return False
    return True


def _holds(target: Path, digest: str, files: Iterable[tuple[str, Descriptor]]) -> bool:
    """``target`` holds manifest ``digest``'s files (name, layer) and nothing else, byte for byte."""
    files = list(files)
    if _read_metadata(target).get("digest") != digest:
        return False
    if _entry_files(target) - {name for name, _ in files} - {METADATA}:
        return False
    return all(_file_matches(target / name, d) for name, d in files)


def _entry_files(target: Path) -> set[str]:
    """Relative paths of every file (and link) under an entry."""
    out = set()
    for root, dirs, files in os.walk(target):
        rel = Path(root).relative_to(target)
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            out.add((rel / name).as_posix())
    return out


# --------------------------------------------------------------------------- locks


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --------------------------------------------------------------------------- the cache


@dataclass
class _Index:
    stamp: tuple[int, int, int]
    by_name: dict[str, list[CacheEntry]]
    by_ref: dict[str, CacheEntry]


_INDEX_MEMO: dict[Path, _Index] = {}


@dataclass
class _Batch:
    """What the installs inside :meth:`BundleCache.batch` share: index rows to write, registry clients."""

    rows: list[CacheEntry] = field(default_factory=list)
    clients: dict[tuple[Any, ...], RegistryClient] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class BundleCache:
    """The bundle store under ``home`` (``$MCPKIT_HOME`` or ``~/.mcpkit`` when ``None``)."""

    def __init__(self, home: Path | str | None = None) -> None:
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.bundles_dir = self.home / "bundles"
        self.downloads_dir = self.home / "cache" / "downloads"
        self.locks_dir = self.home / "cache" / "locks"
        self.index_path = self.bundles_dir / INDEX
        self.pushed_path = self.home / "cache" / "pushed.json"
        self.code_cache = CodeCache(self.home)
        self._batch: _Batch | None = None

    # ----------------------------------------------------------------- index

    def _load_index(self) -> _Index:
        try:
            st = self.index_path.stat()
        except FileNotFoundError:
            return _Index((0, 0, 0), {}, {})
        except OSError as exc:
            raise CacheError(f"{self.index_path}: cannot read the cache index ({exc.strerror})") from None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        memo = _INDEX_MEMO.get(self.index_path)
        if memo is not None and memo.stamp == stamp:
            return memo
        try:
            raw = self.index_path.read_bytes()
        except FileNotFoundError:
            return _Index((0, 0, 0), {}, {})
        except OSError as exc:
            raise CacheError(f"{self.index_path}: cannot read the cache index ({exc.strerror})") from None
        try:
            data = _json.load(raw, where=f"{self.index_path}: the cache index", error=CacheError,
                              max_bytes=MAX_INDEX_BYTES)
        except CacheError as exc:
            raise CacheError(exc.message, hint="remove the file and pull your bundles again") from None
        index = self._index_from(data, stamp)
        _INDEX_MEMO[self.index_path] = index
        return index

    def _index_from(self, data: Any, stamp: tuple[int, int, int]) -> _Index:
        by_name: dict[str, list[CacheEntry]] = {}
        by_ref: dict[str, CacheEntry] = {}
        if isinstance(data, dict):
            for name, rows in data.items():
                if not isinstance(rows, list):
                    continue
                for row in rows:
                    try:
                        entry = CacheEntry(
                            name=str(name),
                            reference=str(row["reference"]),
                            digest=str(row["digest"]),
                            path=self.bundles_dir / str(row["path"]),
                            pulled_at=str(row.get("pulled_at", "")),
                        )
                    except (KeyError, TypeError, AttributeError):
                        continue
                    by_name.setdefault(entry.name, []).append(entry)
                    by_ref[entry.reference] = entry
        return _Index(stamp, by_name, by_ref)

    def _write_index(self, entries: list[CacheEntry]) -> None:
        data: dict[str, list[dict[str, str]]] = {}
        for entry in sorted(entries, key=lambda e: (e.name, e.reference)):
            data.setdefault(entry.name, []).append(entry.to_json(self.bundles_dir))
        self.bundles_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.index_path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), mode=0o644)

    def _update_index(self, *, add: Sequence[CacheEntry] = (), drop_refs: set[str] | None = None) -> list[CacheEntry]:
        """Under the index lock: drop entries by reference (and any on a path in ``add``), add those; return dropped."""
        adds = list({e.reference: e for e in add}.values())  # one row per reference: the last one given
        with _flock(self.locks_dir / "index.lock"):
            current = [e for rows in self._load_index().by_name.values() for e in rows]
            drop = set(drop_refs or ()) | {e.reference for e in adds}
            paths = {e.path for e in adds}
            kept, dropped = [], []
            for e in current:
                if e.reference in drop or e.path in paths:
                    dropped.append(e)
                else:
                    kept.append(e)
            self._write_index(kept + adds)
            return dropped

    def _index_add(self, entry: CacheEntry) -> list[CacheEntry]:
        """Index an entry just installed (its entry lock held) and return the rows dropped for it;
        inside :meth:`batch` the row is written at the batch's end (nothing is dropped now)."""
        batch = self._batch
        if batch is None:
            return self._update_index(add=[entry])
        with batch.lock:
            batch.rows.append(entry)
        return []

    @contextlib.contextmanager
    def batch(self) -> Iterator[BundleCache]:
        """Many pulls as one (``mcpkit sync``): one index write for all of them, one client per registry.

        Yields a view of this cache to pull through (from any number of threads). Each pull installs
        its entry as always -- verified, renamed into place under the entry's lock -- but its index row
        is written with the others' on the way out, once (also when some pulls failed). Until then
        other processes (and other views) do not list those entries; one that pulls the same bundle
        meanwhile finds it intact and indexes it. At the end each entry is checked to be still in
        place, under its lock, before it is indexed. Pulls through this object itself are not batched.
        """
        if self._batch is not None:  # a view already: its own batch writes
            yield self
            return
        view = copy.copy(self)
        batch = view._batch = _Batch()
        try:
            yield view
        finally:
            view._batch = None
            for client in batch.clients.values():
                client.close()
            self._commit(batch.rows)

    def _commit(self, rows: list[CacheEntry]) -> None:
        """Index ``rows`` in one write, each only if its folder still holds its digest (checked under its lock)."""
        if not rows:
            return
        with contextlib.ExitStack() as held:
            for lock_path in sorted({self._entry_lock(e.path) for e in rows}):  # one order: no deadlock
                held.enter_context(_flock(lock_path))
            kept = [e for e in rows if _read_metadata(e.path).get("digest") == e.digest]
            dropped = self._update_index(add=kept)
        self._discard_orphans(dropped)
        gone = sorted({e.reference for e in rows} - {e.reference for e in kept})
        if gone:
            raise CacheError(f"{', '.join(gone)}: removed from {self.bundles_dir} by another process while "
                             "being installed; nothing of it is indexed", hint="pull it again")

    # ----------------------------------------------------------------- lookup

    def entries(self) -> list[CacheEntry]:
        """Every cached bundle, sorted by name then reference."""
        index = self._load_index()
        return sorted((e for rows in index.by_name.values() for e in rows), key=lambda e: (e.name, e.reference))

    def _matches(self, name_or_ref: str) -> list[CacheEntry]:
        text = name_or_ref.strip()
        index = self._load_index()
        if text in index.by_ref:
            return [index.by_ref[text]]
        if text in index.by_name:  # the common case: a bare name
            return list(index.by_name[text])
        short = parse_cache_name(text)
        if short is not None and short.name in index.by_name:
            rows = index.by_name[short.name]
            if short.digest:
                return [e for e in rows if e.digest.startswith(short.digest)]
            if short.tag:  # the tag it was pulled by; else the version it declares (read only then)
                tagged = [e for e in rows if e.tag == short.tag]
                return tagged or [e for e in rows if e.metadata().get("version") == short.tag]
            return list(rows)
        # a full reference written another way (bare, docker hub, file path)
        try:
            ref = classify(text)
            key = ref.resolved().key if isinstance(ref, FileRef) else ref.key
        except InvalidReferenceError:
            return []
        return [index.by_ref[key]] if key in index.by_ref else []

    def cached_by_name(self, text: str) -> CacheEntry | None:
        """The cached entry a short ``name``, ``name:tag`` or ``name@digest`` means, if any.

        Full references (with a ``/`` or a scheme) give ``None``: they name a registry, not the cache.
        """
        short = parse_cache_name(text)
        if short is None or short.name not in self._load_index().by_name:
            return None
        return self.find_entry(text)

    def find(self, name_or_ref: str) -> Path:
        """The directory of the one cached bundle matching a name, ``name:tag`` or reference."""
        return self.find_entry(name_or_ref).path

    def find_entry(self, name_or_ref: str) -> CacheEntry:
        """The one cached bundle a name, ``name:tag``, ``name@digest`` or reference means.

        Entries that hold the same content (one digest under several references) are one bundle:
        the most recently pulled is given. Different content under one name is an ambiguity error
        listing the candidates; an unknown name is suggested the closest cached name.
        """
        matches = self._matches(name_or_ref)
        if not matches:
            raise self._not_found(name_or_ref)
        if len({e.digest for e in matches}) > 1:
            raise self._ambiguous(name_or_ref, matches)
        # pulled_at has one-second resolution; in a tie the row indexed later (the index appends) wins
        entry = max(reversed(matches), key=lambda e: e.pulled_at)
        if not (entry.path / METADATA).is_file():
            raise BundleNotFoundError(
                f"the cache index lists {entry.reference} at {entry.path}, but the directory is gone",
                hint=f"pull it again: mcpkit bundle pull {entry.reference}",
            )
        return entry

    def _ambiguous(self, name_or_ref: str, matches: list[CacheEntry]) -> AmbiguousNameError:
        """Different bundles under one name: each with the ways that name it alone."""
        lines = []
        ordered = sorted(matches, key=lambda e: (e.reference, e.digest))
        for e in ordered[:MAX_LISTED_CANDIDATES]:
            ways = [e.reference, f"{e.name}@{e.digest}"]
            if e.tag is not None and len({m.digest for m in self._matches(f"{e.name}:{e.tag}")}) == 1:
                ways.insert(1, f"{e.name}:{e.tag}")
            lines.append(f"    {'  or  '.join(ways)}")
        if len(ordered) > MAX_LISTED_CANDIDATES:
            lines.append(f"    ... and {len(ordered) - MAX_LISTED_CANDIDATES} more (`mcpkit bundle list` shows them all)")
        return AmbiguousNameError(
            f"{name_or_ref!r} is ambiguous: it matches {len(matches)} cached bundles with different content:\n"
            + "\n".join(lines),
            hint="name the one you mean as shown (its full reference, name:tag or name@digest)",
        )

    def _not_found(self, name_or_ref: str) -> BundleNotFoundError:
        """Nothing matches: say what is close (a misspelt name, the tags a known name has)."""
        from hatch_mcpkit.errors import closest

        message = f"no cached bundle matches {name_or_ref!r} (cache: {self.bundles_dir})"
        short = parse_cache_name(name_or_ref)
        by_name = self._load_index().by_name
        if short is not None and short.name in by_name:  # the name is cached, the tag or digest is not
            shown = sorted({f"{e.name}:{e.tag}" if e.tag else e.reference for e in by_name[short.name]})
            more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
            return BundleNotFoundError(f"{message}; cached as {', '.join(shown[:5])}{more}",
                                       hint="pull that tag first, or use one of those; `mcpkit bundle list` shows the cache")
        near = closest(short.name, by_name) if short is not None else None
        if short is not None and near is not None:
            suggestion = near + name_or_ref.strip()[len(short.name):]
            return BundleNotFoundError(f"{message}; did you mean {suggestion!r}?",
                                       hint="`mcpkit bundle list` shows the cache")
        what = name_or_ref if "/" in name_or_ref else "oci://REGISTRY/REPOSITORY:TAG"
        return BundleNotFoundError(
            message, hint=f"pull it first: mcpkit bundle pull {what}; `mcpkit bundle list` shows the cache")

    def remove(self, name_or_ref: str) -> list[CacheEntry]:
        """Remove a bundle (all its index rows); the directory goes once nothing else points at it."""
        entry = self.find_entry(name_or_ref)
        victims = [e for e in self._matches(name_or_ref) if e.digest == entry.digest]
        removed: list[CacheEntry] = []
        for victim in victims:
            with _flock(self._entry_lock(victim.path)):
                removed += [e for e in self._update_index(drop_refs={victim.reference}) if e.reference == victim.reference]
                if not any(e.path == victim.path for e in self.entries()):
                    self._discard_dir(victim.path)
        return removed

    # ----------------------------------------------------------------- pulling

    def pull(self, reference: str | AnyRef, options: PullOptions | None = None) -> PullResult:
        """Fetch a bundle into the cache (or find it there with ``offline``).

        A bare cached name (``weather-tool``) pulls that entry's reference again.
        """
        opts = options or PullOptions()
        if not opts.offline:
            self._sweep_downloads()  # what killed pulls left behind
        text = reference if isinstance(reference, str) else reference.key
        source = classify(reference, insecure=opts.insecure) if isinstance(reference, str) else reference
        cached = self.cached_by_name(text) if isinstance(source, (NameRef, OciRef)) else None
        if isinstance(source, NameRef) or cached is not None:
            entry = cached or self.find_entry(source.key)
            if opts.offline or entry.reference.startswith("file:"):
                return PullResult(entry, changed=False)
            source = classify(entry.reference, insecure=opts.insecure)
        if isinstance(source, FileRef):
            return self._pull_file(source.resolved(), opts)
        if opts.offline:
            found = self._load_index().by_ref.get(source.key)
            if found is None or not (found.path / METADATA).is_file():
                raise BundleNotFoundError(
                    f"{source.key} is not in the cache and --offline forbids downloading it",
                    hint=f"pull it once while online: mcpkit bundle pull {text}",
                )
            return PullResult(found, changed=False)
        if isinstance(source, OciRef):
            return self._pull_oci(source, opts)
        assert isinstance(source, HttpsRef)
        return self._pull_http(source, opts)

    def install_layout(self, layout: BundleLayout, reference: str, *, rel: Path | None = None,
                       meta: dict[str, Any] | None = None, limit: int | None = None,
                       config: Config | None = None) -> PullResult:
        """Install a verified local bundle; by default under ``bundles/file/<name>/sha256-<manifest hex>``."""
        if rel is None:
            rel = Path("file", _safe_parts([layout.name])[0], f"sha256-{layout.manifest.digest.split(':', 1)[1]}")
        return self._install(
            manifest=layout.manifest,
            blobs=_LayoutBlobs(layout),
            reference=reference,
            rel=rel,
            meta=meta if meta is not None else {"source": "file", "path": str(layout.source)},
            limit=max_bundle_size(limit),
            config=config,
        )

    def _pull_oci(self, source: OciRef, opts: PullOptions) -> PullResult:
        ref = source.reference
        rel = Path(*[_safe_parts([p])[0] for p in ref.cache_parts()])
        meta: dict[str, Any] = {
            "source": "oci",
            "registry": ref.registry,
            "repository": ref.repository,
            "tag": ref.tag,
        }
        limit = opts.size_limit
        with self._registry(ref, opts) as client:
            manifest: Manifest = client.get_manifest(ref)
            if ref.digest and manifest.digest != ref.digest:
                raise IntegrityError(
                    f"{source.key}: the registry returned manifest {manifest.digest}, not the digest asked for",
                    digest=ref.digest,
                )
            check_declared_sizes(manifest, limit, source.key)  # before anything else is fetched
            blobs = _RegistryBlobs(client, ref.repository, progress=opts.progress,
                                   total=sum(d.size for d in manifest.layers))
            if opts.verify is not None:  # by the digest installed below: the tag is not resolved again
                check = opts.verify
                # side by side with the small config blob (read into memory, used only once this passes)
                signature, _ = client.both(lambda: check(client, ref, manifest.digest),
                                           lambda: None if manifest.derived else blobs.prefetch(manifest.config))
                if signature is not None:
                    meta["signature"] = signature
            return self._install(
                manifest=manifest, blobs=blobs, reference=source.key, rel=rel, meta=meta, limit=limit,
            )

    def _pull_file(self, source: FileRef, opts: PullOptions) -> PullResult:
        found = local_bundle(source.path, str(source.path))
        if found.layout is not None:
            with BundleLayout.open(found.layout, max_bytes=opts.size_limit) as layout:
                return self.install_layout(layout, source.key, limit=opts.size_limit)
        assert found.module is not None and found.config is not None
        return self._install_loose(found.module, found.config, source.key,
                                   {"source": "file", "path": str(source.path)}, limit=opts.size_limit)

    def _install_loose(self, module: Path, config_path: Path, reference: str, meta: dict[str, Any],
                       rel: Path | None = None, *, limit: int) -> PullResult:
        """Build a bundle from module.wasm + config.yaml (reproducibly) and install it."""
        from hatch_mcpkit.bundle import build_bundle
        from hatch_mcpkit.config import load_config

        if not module.is_file():
            raise BundleError(f"{module}: module.wasm is missing", hint="a bundle is module.wasm + config.yaml")
        if not config_path.is_file():
            raise BundleError(
                f"{config_path}: config.yaml is missing (it must sit beside {module.name})",
                hint="a bundle is module.wasm + config.yaml",
            )
        config = load_config(config_path)  # a folder's config.yaml is data
        with self._workdir("build") as tmp:
            built = build_bundle(config, module, tmp, source_date_epoch=0)
            with BundleLayout.open(built.path, max_bytes=limit) as layout:
                return self.install_layout(layout, reference, rel=rel, meta=meta, limit=limit, config=config)

    def _pull_http(self, source: HttpsRef, opts: PullOptions) -> PullResult:
        from hatch_mcpkit._archive import extract
        from hatch_mcpkit._transport import download

        parsed = urllib.parse.urlsplit(source.url)
        netloc = parsed.netloc.rsplit("@", 1)[-1]
        limit = opts.size_limit
        with self._workdir("http") as tmp:
            archive = tmp / "bundle.tar.gz"
            hexdigest = download(source.url, archive, max_bytes=limit, ca_file=opts.ca_file, insecure=opts.insecure,
                                 deadline=opts.transfer_deadline, progress=opts.progress)
            if source.sha256 is not None and hexdigest != source.sha256:
                raise IntegrityError(
                    f"{source.url}: download has sha256 {hexdigest}, the URL pins {source.sha256}",
                    digest=f"sha256:{source.sha256}",
                    hint="the file changed on the server or was tampered with; nothing was installed",
                )
            unpacked = tmp / "unpacked"
            extract(archive, unpacked, where=source.url, max_bytes=limit)
            root = _bundle_root(unpacked, source.url)
            rel = Path(parsed.scheme, *_safe_parts([netloc, *parsed.path.split("/")]), f"sha256-{hexdigest}")
            meta = {"source": parsed.scheme, "url": source.url, "archive_sha256": hexdigest}
            return self._install_loose(root / MODULE_TITLE, root / CONFIG_TITLE, source.key, meta, rel=rel,
                                       limit=limit)

    @contextlib.contextmanager
    def _registry(self, ref: Reference, opts: PullOptions) -> Iterator[RegistryClient]:
        """A client for ``ref``'s registry; inside :meth:`batch` one per registry and credentials, shared
        by the pulls (one connection pool, one scheme probe, tokens kept per scope) and closed at the end."""
        batch = self._batch
        if batch is None:
            with registry_client(ref, opts) as client:
                yield client
            return
        credentials = _credentials(ref, opts)
        key = (ref.registry, credentials, opts.insecure, opts.ca_file, opts.transfer_deadline)
        with batch.lock:
            if key not in batch.clients:
                batch.clients[key] = _client(ref, opts, credentials)
            client = batch.clients[key]
        yield client

    # ----------------------------------------------------------------- installing

    @contextlib.contextmanager
    def _workdir(self, kind: str) -> Iterator[Path]:
        """A work directory under cache/downloads named ``<kind>-<pid>-…`` (so a sweep can tell its owner)."""
        self.downloads_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{kind}-{os.getpid()}-", dir=self.downloads_dir))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _entry_lock(self, entry_dir: Path) -> Path:
        rel = entry_dir.relative_to(self.bundles_dir).as_posix()
        return self.locks_dir / f"{hashlib.sha256(rel.encode()).hexdigest()[:32]}.lock"

    def _current(self, target: Path, manifest: Manifest) -> bool:
        """The entry holds exactly this manifest's files, byte for byte (re-hashed, not taken from metadata.json)."""
        return _holds(target, manifest.digest, manifest.files)

    def holds(self, reference: str, digest: str, layers: Sequence[Descriptor]) -> CacheEntry | None:
        """The entry indexed under ``reference`` if it holds exactly manifest ``digest`` with these layers
        (files re-hashed, as a re-pull checks them); None otherwise. Never fetches anything."""
        entry = self._load_index().by_ref.get(reference)
        if entry is None or entry.digest != digest or not _holds(entry.path, digest, [(d.title or "", d) for d in layers]):
            return None
        return entry

    def _install(self, *, manifest: Manifest, blobs: _BlobSource, reference: str, rel: Path,
                 meta: dict[str, Any], limit: int, config: Config | None = None) -> PullResult:
        target = self.bundles_dir / rel
        if not target.resolve().is_relative_to(self.bundles_dir.resolve()):
            raise CacheError(f"{reference}: refusing a cache path outside {self.bundles_dir}")
        check_declared_sizes(manifest, limit, reference)
        existed = target.exists()
        # Fast path: this manifest is already installed here, intact; only the manifest was transferred.
        if existed and self._current(target, manifest):
            return self._ensure_indexed(target, reference, manifest, meta)
        try:
            with self._workdir("pull") as work:
                return self._fetch_and_swap(manifest, blobs, reference, target, work, meta, repaired=existed,
                                            config=config)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise CacheError(
                    f"{reference}: not enough space to install it under {self.home} ({exc.strerror})",
                    hint="free some space or set MCPKIT_HOME to a larger disk, then pull again; "
                    "the previous copy is untouched",
                ) from None
            raise

    def _fetch_and_swap(self, manifest: Manifest, blobs: _BlobSource, reference: str, target: Path, work: Path,
                        meta: dict[str, Any], *, repaired: bool, config: Config | None) -> PullResult:
        """Fetch every blob into a staged entry, check it, swap it in. ``config`` is config.yaml already
        parsed by the caller (a local folder), used when its bytes are the staged file's: parsed once per pull."""
        staged = work / "entry"
        staged.mkdir()
        bundle_config = None if manifest.derived else parse_bundle_config(blobs.read_blob(manifest.config),
                                                                             reference, manifest)
        for file_name, layer in manifest.files:  # titles were checked (safe, not reserved) by Manifest.parse
            dest = staged / file_name
            dest.parent.mkdir(parents=True, exist_ok=True)
            blobs.fetch_blob(layer, dest)
        config_raw = (staged / CONFIG_TITLE).read_bytes()
        if config is None or config.raw != config_raw:
            config = check_bundle_config_yaml(config_raw, f"{reference} {CONFIG_TITLE}")
        if bundle_config is None:  # no mcpkit config blob (oras' empty one): config.yaml, verified, says it
            bundle_config = derive_bundle_config(manifest, config)
        name = str(bundle_config["name"])
        if config.name != name:
            raise BundleError(
                f"{reference}: config.yaml names the server {config.name!r}, the bundle config says {name!r}"
            )
        metadata = _metadata(reference, meta, manifest, bundle_config, config)
        atomic_write(staged / METADATA, (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode(), mode=0o644)
        with _flock(self._entry_lock(target)):
            if self._current(target, manifest):  # another process finished the same pull first
                return self._ensure_indexed(target, reference, manifest, meta, locked=True)
            self._swap_in(staged, target, work)
            entry = CacheEntry(name, reference, manifest.digest, target, metadata["pulled_at"])
            dropped = self._index_add(entry)
        self._discard_orphans(dropped)
        return PullResult(entry, changed=True, repaired=repaired)

    def _ensure_indexed(self, target: Path, reference: str, manifest: Manifest, meta: dict[str, Any] | None = None,
                        *, locked: bool = False) -> PullResult:
        if meta is not None and "signature" in meta:  # verified now: record it on the entry already there
            with contextlib.nullcontext() if locked else _flock(self._entry_lock(target)):
                self._record_signature(target, manifest, meta["signature"])
        index = self._load_index()
        existing = index.by_ref.get(reference)
        if existing is not None and existing.path == target and existing.digest == manifest.digest:
            return PullResult(existing, changed=False)
        meta = _read_metadata(target)
        entry = CacheEntry(str(meta.get("name", "")), reference, manifest.digest, target, _now())
        self._discard_orphans(self._index_add(entry))
        return PullResult(entry, changed=False)

    def _record_signature(self, target: Path, manifest: Manifest, signature: dict[str, Any]) -> None:
        metadata = _read_metadata(target)
        if metadata.get("digest") == manifest.digest and metadata.get("signature") != signature:
            metadata["signature"] = signature
            atomic_write(target / METADATA, (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode(),
                         mode=0o644)

    def _swap_in(self, staged: Path, target: Path, work: Path) -> None:
        """Rename the old entry aside, the new one in; put the old one back if that fails."""
        target.parent.mkdir(parents=True, exist_ok=True)
        old = work / "old"
        had_old = target.exists()
        if had_old:
            os.rename(target, old)
        try:
            os.rename(staged, target)
        except BaseException:
            if had_old and not target.exists():
                os.rename(old, target)
            raise
        # ``old`` is deleted with ``work``

    def _discard_orphans(self, dropped: list[CacheEntry]) -> None:
        """Delete directories that no index row points at any more (a reference that moved)."""
        live = {e.path for e in self.entries()}
        for entry in dropped:
            if entry.path not in live:
                with _flock(self._entry_lock(entry.path)):
                    if entry.path not in {e.path for e in self.entries()}:
                        self._discard_dir(entry.path)

    def _discard_dir(self, path: Path) -> None:
        if not path.exists():
            return
        with self._workdir("rm") as trash:
            os.rename(path, trash / "entry")
        # tidy empty parents up to bundles/
        parent = path.parent
        while parent != self.bundles_dir and parent.is_relative_to(self.bundles_dir):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def _sweep_downloads(self) -> None:
        """Remove work directories and partial files whose owner process is gone (or older than a day)."""
        cutoff = time.time() - STALE_WORKDIR_SECONDS
        try:
            children = list(os.scandir(self.downloads_dir))
        except OSError:
            return
        for child in children:
            m = _WORKDIR_RE.match(child.name)
            try:
                orphan = (m is not None and not _pid_alive(int(m.group(1)))) or (
                    child.stat(follow_symlinks=False).st_mtime < cutoff
                )
                if not orphan:
                    continue
                if child.is_dir(follow_symlinks=False):
                    shutil.rmtree(child.path, ignore_errors=True)
                else:
                    os.unlink(child.path)
            except OSError:
                continue


def _metadata(reference: str, meta: dict[str, Any], manifest: Manifest, bundle_config: dict[str, Any],
              config: Config) -> dict[str, Any]:
    return {
        "reference": reference,
        **meta,
        "digest": manifest.digest,
        "name": str(bundle_config["name"]),
        "version": str(bundle_config.get("version", config.bundle_version)),
        "description": str(bundle_config.get("description", config.description)),
        "tools": [t.name for t in config.tools],
        "config_digest": manifest.config.digest,
        "module_digest": manifest.module_layer.digest,
        "layers": [
            {"title": name, "digest": d.digest, "size": d.size, "mediaType": d.media_type}
            for name, d in manifest.files
        ],
        "size": manifest.size,
        "annotations": dict(manifest.annotations),
        "pulled_at": _now(),
    }


def registry_client(ref: Reference, opts: PullOptions) -> RegistryClient:
    """A client for ``ref``'s registry with the credential chain and the pull's transport options."""
    return _client(ref, opts, _credentials(ref, opts))


def _credentials(ref: Reference, opts: PullOptions) -> Credentials | None:
    from hatch_mcpkit.auth import resolve_credentials

    return resolve_credentials(ref.registry, username=opts.username, password=opts.password,
                               repository=ref.repository)


def _client(ref: Reference, opts: PullOptions, credentials: Credentials | None) -> RegistryClient:
    from hatch_mcpkit.registry import RegistryClient

    return RegistryClient(ref.registry, credentials=credentials, insecure=opts.insecure, ca_file=opts.ca_file,
                          deadline=opts.transfer_deadline)


def _bundle_root(unpacked: Path, where: str) -> Path:
    """module.wasm + config.yaml at the top of an archive, or inside its one top-level folder."""
    if (unpacked / MODULE_TITLE).is_file():
        return unpacked
    children = list(unpacked.iterdir()) if unpacked.is_dir() else []
    if len(children) == 1 and children[0].is_dir() and (children[0] / MODULE_TITLE).is_file():
        return children[0]
    raise BundleError(
        f"{where}: the archive has no module.wasm (with config.yaml) at its top level",
        hint="pack it as: tar czf bundle.tar.gz module.wasm config.yaml [files...]",
    )
