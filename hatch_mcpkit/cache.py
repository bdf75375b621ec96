"""The local bundle cache under ``MCPKIT_HOME`` (default ``~/.mcpkit``).

Layout::

    bundles/<registry>/<repository>/<tag or sha256-hex>/   a bundle pulled from an OCI registry
    bundles/https/<host>/<url path>/sha256-<hex>/          a bundle.tar.gz from a web server (hex: the archive)
    bundles/http/<host>/<url path>/sha256-<hex>/           the same over plain HTTP (loopback or --insecure)
    bundles/file/<name>/sha256-<hex>/                      a local module/archive/directory (hex: manifest digest)
        module.wasm  config.yaml  <extra shipped files>  metadata.json  [module.cwasm]
    bundles/registry.json    index: name -> [{reference, digest, path, pulled_at}] (path relative to bundles/)
    cache/downloads/         work directories of pulls in progress; moved into place when verified
    cache/locks/             one lock file per entry, one for the index

Every blob is checked (size and SHA-256, streamed) before an entry is moved
into place with a rename; the previous good copy survives any failure up to
that rename. Two processes pulling the same reference both succeed and leave
one consistent entry (per-entry ``flock`` + re-check under the lock).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from hatch_mcpkit.bundle import (
    CONFIG_TITLE,
    MODULE_TITLE,
    BundleLayout,
    Descriptor,
    Manifest,
    parse_bundle_config,
)
from hatch_mcpkit.config import PlaceholderEnviron
from hatch_mcpkit.errors import (
    BundleError,
    BundleNotFoundError,
    CacheError,
    IntegrityError,
    InvalidReferenceError,
    McpkitError,
)

if TYPE_CHECKING:
    from hatch_mcpkit.config import Config
    from hatch_mcpkit.reference import Reference
    from hatch_mcpkit.registry import RegistryClient

__all__ = [
    "BundleCache",
    "CacheEntry",
    "PullOptions",
    "PullResult",
    "classify",
    "copy_verified",
    "default_home",
]

METADATA = "metadata.json"
CWASM = "module.cwasm"
INDEX = "registry.json"
RESERVED_NAMES = frozenset({METADATA, CWASM, MODULE_TITLE, CONFIG_TITLE})
CHUNK = 1024 * 1024
MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024  # a bundle.tar.gz over https
MAX_EXTRACTED_BYTES = 1024 * 1024 * 1024  # its contents once unpacked
MAX_ARCHIVE_MEMBERS = 10_000
STALE_WORKDIR_SECONDS = 24 * 3600
_SAFE_PART = re.compile(r"[^A-Za-z0-9._-]")


def default_home() -> Path:
    """``$MCPKIT_HOME`` or ``~/.mcpkit``."""
    env = os.environ.get("MCPKIT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".mcpkit"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- verified copies


def copy_verified(src: IO[bytes], dest: Path, digest: str, size: int, *, where: str) -> None:
    """Stream ``src`` into ``dest`` while hashing; raise IntegrityError (and remove ``dest``) on a mismatch.

    Reading stops one byte past ``size``, so an oversized blob cannot fill the disk.
    """
    h = hashlib.sha256()
    written = 0
    try:
        with open(dest, "wb") as out:
            while True:
                chunk = src.read(min(CHUNK, size + 1 - written))
                if not chunk:
                    break
                h.update(chunk)
                out.write(chunk)
                written += len(chunk)
                if written > size:
                    break
        if written != size:
            raise IntegrityError(
                f"{where}: blob {digest} has {'more than ' if written > size else ''}{written} bytes, "
                f"the manifest says {size}",
                digest=digest,
            )
        got = f"sha256:{h.hexdigest()}"
        if got != digest:
            raise IntegrityError(
                f"{where}: blob {digest} does not match its digest (got {got})",
                digest=digest,
                hint="the registry or file holds corrupted or tampered content; nothing was installed",
            )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- entries and results


@dataclass(frozen=True)
class CacheEntry:
    """One installed bundle, as recorded in registry.json."""

    name: str
    reference: str
    digest: str
    path: Path
    pulled_at: str

    @property
    def tag(self) -> str | None:
        """The tag of an ``oci://`` reference (``None`` for digests and non-OCI sources)."""
        if not self.reference.startswith("oci://") or "@" in self.reference:
            return None
        last = self.reference.rsplit("/", 1)[-1]
        return last.rsplit(":", 1)[1] if ":" in last else None

    def metadata(self) -> dict[str, Any]:
        """The entry's metadata.json (``{}`` if it cannot be read)."""
        try:
            data = json.loads((self.path / METADATA).read_bytes())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def to_json(self, bundles_dir: Path) -> dict[str, str]:
        return {
            "reference": self.reference,
            "digest": self.digest,
            "path": self.path.relative_to(bundles_dir).as_posix(),
            "pulled_at": self.pulled_at,
        }


@dataclass(frozen=True)
class PullResult:
    entry: CacheEntry
    changed: bool  # False: the cache already held this manifest, only the manifest was fetched (or nothing)
    warnings: tuple[str, ...] = ()

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


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """What a reference text points at.

    ``kind`` is ``oci``, ``file`` (a local module, archive or directory),
    ``http`` (a ``.tar.gz`` over https, or http for loopback / --insecure) or
    ``name`` (a bundle name, looked up in the cache).
    ``key`` is the canonical reference stored in the index.
    """

    kind: str
    key: str
    path: Path | None = None
    url: str | None = None
    sha256: str | None = None
    oci: Reference | None = None


def classify(text: str, *, insecure: bool = False) -> Source:
    """Understand a reference (see :func:`hatch_mcpkit.reference.classify`) and give its index key.

    ``insecure`` also allows plain ``http://`` to a host that is not loopback.
    """
    from hatch_mcpkit import reference as refs

    text = text.strip()
    if insecure and text.lower().startswith("http://") and not refs.is_loopback(
        urllib.parse.urlsplit(text).netloc.rsplit("@", 1)[-1]
    ):
        parsed = refs.classify("https://" + text[len("http://") :])
        assert isinstance(parsed, refs.HttpsRef)
        url = "http://" + parsed.url[len("https://") :]
        return Source("http", url, url=url, sha256=parsed.sha256)
    parsed_ref = refs.classify(text)
    if isinstance(parsed_ref, refs.OciRef):
        return Source("oci", _oci_key(parsed_ref.reference), oci=parsed_ref.reference)
    if isinstance(parsed_ref, refs.HttpsRef):
        return Source("http", parsed_ref.url, url=parsed_ref.url, sha256=parsed_ref.sha256)
    if isinstance(parsed_ref, refs.NameRef):
        return Source("name", parsed_ref.name)
    path = parsed_ref.path.expanduser()
    try:
        path = path.resolve(strict=True)
    except (FileNotFoundError, RuntimeError):
        raise InvalidReferenceError(
            f"{path}: no such file or directory",
            hint="give module.wasm (with config.yaml beside it), a .mcpkit.tar archive or a bundle directory",
        ) from None
    return Source("file", path.as_uri(), path=path)


def _oci_key(ref: Reference) -> str:
    key = f"oci://{ref.registry}/{ref.repository}"
    if ref.tag and not ref.digest:
        key += f":{ref.tag}"
    if ref.digest:
        key += f"@{ref.digest}"
    return key


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
            copy_verified(fh, dest, desc.digest, desc.size, where=str(self.layout.source))


class _RegistryBlobs:
    def __init__(self, client: RegistryClient, repository: str) -> None:
        self.client = client
        self.repository = repository

    def read_blob(self, desc: Descriptor) -> bytes:
        return self.client.read_blob(self.repository, desc)

    def fetch_blob(self, desc: Descriptor, dest: Path) -> None:
        self.client.fetch_blob(self.repository, desc, dest)


_LenientEnviron = PlaceholderEnviron


def check_bundle_config_yaml(raw: bytes, label: str) -> Config:
    """Validate a bundle's config.yaml structurally (unset ``${VAR}`` are not an error here)."""
    from hatch_mcpkit.config import parse_config

    return parse_config(raw, label, _LenientEnviron())


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


class BundleCache:
    """The bundle store under ``home`` (``$MCPKIT_HOME`` or ``~/.mcpkit`` when ``None``)."""

    def __init__(self, home: Path | str | None = None) -> None:
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.bundles_dir = self.home / "bundles"
        self.downloads_dir = self.home / "cache" / "downloads"
        self.locks_dir = self.home / "cache" / "locks"
        self.index_path = self.bundles_dir / INDEX

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
            data = json.loads(self.index_path.read_bytes())
        except FileNotFoundError:
            return _Index((0, 0, 0), {}, {})
        except (OSError, ValueError) as exc:
            raise CacheError(
                f"{self.index_path}: the cache index is unreadable ({exc})",
                hint="remove the file and pull your bundles again",
            ) from None
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
                    except (KeyError, TypeError):
                        continue
                    by_name.setdefault(entry.name, []).append(entry)
                    by_ref[entry.reference] = entry
        index = _Index(stamp, by_name, by_ref)
        _INDEX_MEMO[self.index_path] = index
        return index

    def _write_index(self, entries: list[CacheEntry]) -> None:
        data: dict[str, list[dict[str, str]]] = {}
        for entry in sorted(entries, key=lambda e: (e.name, e.reference)):
            data.setdefault(entry.name, []).append(entry.to_json(self.bundles_dir))
        self.bundles_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".registry.", suffix=".tmp", dir=self.bundles_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2, sort_keys=True)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.index_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _update_index(self, *, add: CacheEntry | None = None, drop_refs: set[str] | None = None) -> list[CacheEntry]:
        """Under the index lock: drop entries by reference (and any on ``add``'s path), add one; return dropped."""
        with _flock(self.locks_dir / "index.lock"):
            current = [e for rows in self._load_index().by_name.values() for e in rows]
            drop = set(drop_refs or ())
            if add is not None:
                drop.add(add.reference)
            kept, dropped = [], []
            for e in current:
                if e.reference in drop or (add is not None and e.path == add.path):
                    dropped.append(e)
                else:
                    kept.append(e)
            if add is not None:
                kept.append(add)
            self._write_index(kept)
            return dropped

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
        if text in index.by_name:
            return list(index.by_name[text])
        # name:tag, name@sha256:...
        if "/" not in text and ":" not in text.split("@", 1)[0] and "@" in text:
            name, digest = text.split("@", 1)
            return [e for e in index.by_name.get(name, []) if e.digest == digest or e.digest.startswith(digest)]
        if "/" not in text and ":" in text and "://" not in text:
            name, tag = text.split(":", 1)
            if name in index.by_name:
                return [e for e in index.by_name[name] if e.tag == tag or e.metadata().get("version") == tag]
        # a full reference written another way (bare, docker hub, file path)
        try:
            key = classify(text).key
        except McpkitError:
            return []
        return [index.by_ref[key]] if key in index.by_ref else []

    def cached_by_name(self, text: str) -> CacheEntry | None:
        """The cached entry a short ``name``, ``name:tag`` or ``name@digest`` means, if any.

        Full references (with a ``/`` or a scheme) give ``None``: they name a registry, not the cache.
        """
        if "/" in text or "://" in text:
            return None
        base = re.split(r"[:@]", text, maxsplit=1)[0]
        if base not in self._load_index().by_name:
            return None
        return self.find_entry(text)

    def find(self, name_or_ref: str) -> Path:
        """The directory of the one cached bundle matching a name, ``name:tag`` or reference."""
        return self.find_entry(name_or_ref).path

    def find_entry(self, name_or_ref: str) -> CacheEntry:
        matches = self._matches(name_or_ref)
        if not matches:
            what = name_or_ref if "/" in name_or_ref else "oci://REGISTRY/REPOSITORY:TAG"
            raise BundleNotFoundError(
                f"no cached bundle matches {name_or_ref!r} (cache: {self.bundles_dir})",
                hint=f"pull it first: mcpkit bundle pull {what}; `mcpkit bundle list` shows the cache",
            )
        if len({e.digest for e in matches}) > 1:
            listing = "\n".join(f"    {e.reference}  ({e.digest[:19]})" for e in matches)
            raise CacheError(
                f"{name_or_ref!r} matches {len(matches)} cached bundles with different content:\n{listing}",
                hint="name one by its full reference or as name:tag",
            )
        entry = max(matches, key=lambda e: e.pulled_at)
        if not (entry.path / METADATA).is_file():
            raise BundleNotFoundError(
                f"the cache index lists {entry.reference} at {entry.path}, but the directory is gone",
                hint=f"pull it again: mcpkit bundle pull {entry.reference}",
            )
        return entry

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

    def pull(self, reference: str, options: PullOptions | None = None) -> PullResult:
        """Fetch a bundle into the cache (or find it there with ``offline``).

        A bare cached name (``weather-tool``) pulls that entry's reference again.
        """
        opts = options or PullOptions()
        source = classify(reference, insecure=opts.insecure)
        cached = self.cached_by_name(reference) if source.kind in ("name", "oci") else None
        if source.kind == "name" or cached is not None:
            entry = cached or self.find_entry(source.key)
            if opts.offline or entry.reference.startswith("file:"):
                return PullResult(entry, changed=False)
            source = classify(entry.reference, insecure=opts.insecure)
        if opts.offline and source.kind != "file":
            found = self._load_index().by_ref.get(source.key)
            if found is None or not (found.path / METADATA).is_file():
                raise BundleNotFoundError(
                    f"{source.key} is not in the cache and --offline forbids downloading it",
                    hint=f"pull it once while online: mcpkit bundle pull {reference}",
                )
            return PullResult(found, changed=False)
        if source.kind == "oci":
            return self._pull_oci(source, opts)
        if source.kind == "http":
            return self._pull_http(source, opts)
        return self._pull_file(source)

    def install_layout(self, layout: BundleLayout, reference: str, *, rel: Path | None = None,
                       meta: dict[str, Any] | None = None) -> PullResult:
        """Install a verified local bundle; by default under ``bundles/file/<name>/sha256-<manifest hex>``."""
        if rel is None:
            rel = Path("file", _safe_parts([layout.name])[0], f"sha256-{layout.manifest.digest.split(':', 1)[1]}")
        return self._install(
            manifest=layout.manifest,
            blobs=_LayoutBlobs(layout),
            reference=reference,
            rel=rel,
            meta=meta if meta is not None else {"source": "file", "path": str(layout.source)},
        )

    def _pull_oci(self, source: Source, opts: PullOptions) -> PullResult:
        ref = source.oci
        assert ref is not None
        rel = Path(*[_safe_parts([p])[0] for p in ref.cache_parts()])
        meta = {
            "source": "oci",
            "registry": ref.registry,
            "repository": ref.repository,
            "tag": ref.tag,
        }
        with _make_client(ref, opts) as client:
            manifest: Manifest = client.get_manifest(ref)
            if ref.digest and manifest.digest != ref.digest:
                raise IntegrityError(
                    f"{source.key}: the registry returned manifest {manifest.digest}, not the digest asked for",
                    digest=ref.digest,
                )
            return self._install(
                manifest=manifest, blobs=_RegistryBlobs(client, ref.repository), reference=source.key, rel=rel,
                meta=meta,
            )

    def _pull_file(self, source: Source) -> PullResult:
        assert source.path is not None
        path = source.path
        if path.is_dir():
            if (path / "oci-layout").is_file():
                with BundleLayout.open(path) as layout:
                    return self.install_layout(layout, source.key)
            module, config_path = path / MODULE_TITLE, path / CONFIG_TITLE
        elif path.suffix in (".yaml", ".yml"):
            module, config_path = path.parent / MODULE_TITLE, path
        elif path.suffix == ".wasm":
            module, config_path = path, path.parent / CONFIG_TITLE
        else:
            with BundleLayout.open(path) as layout:
                return self.install_layout(layout, source.key)
        return self._install_loose(module, config_path, source.key, {"source": "file", "path": str(path)})

    def _install_loose(self, module: Path, config_path: Path, reference: str, meta: dict[str, Any],
                       rel: Path | None = None) -> PullResult:
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
        config = load_config(config_path, _LenientEnviron())
        self.downloads_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="build-", dir=self.downloads_dir) as tmp:
            built = build_bundle(config, module, Path(tmp), source_date_epoch=0)
            with BundleLayout.open(built.path) as layout:
                return self.install_layout(layout, reference, rel=rel, meta=meta)

    def _pull_http(self, source: Source, opts: PullOptions) -> PullResult:
        from hatch_mcpkit._https import extract_tar_safely
        from hatch_mcpkit._transport import download
        from hatch_mcpkit.reference import is_loopback

        assert source.url is not None
        parsed = urllib.parse.urlsplit(source.url)
        netloc = parsed.netloc.rsplit("@", 1)[-1]
        if parsed.scheme == "http" and not (is_loopback(netloc) or opts.insecure):
            raise InvalidReferenceError(
                f"{source.url}: plain http is only used for loopback hosts",
                hint="use https://, or pass --insecure if you really trust this network",
            )
        self.downloads_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="http-", dir=self.downloads_dir) as tmp:
            archive = Path(tmp) / "bundle.tar.gz"
            hexdigest = download(source.url, archive, max_bytes=MAX_DOWNLOAD_BYTES, ca_file=opts.ca_file,
                                 insecure=opts.insecure)
            if source.sha256 is not None and hexdigest != source.sha256:
                raise IntegrityError(
                    f"{source.url}: download has sha256 {hexdigest}, the URL pins {source.sha256}",
                    digest=f"sha256:{source.sha256}",
                    hint="the file changed on the server or was tampered with; nothing was installed",
                )
            unpacked = Path(tmp) / "unpacked"
            extract_tar_safely(archive, unpacked, max_bytes=MAX_EXTRACTED_BYTES, max_members=MAX_ARCHIVE_MEMBERS,
                               where=source.url)
            root = _bundle_root(unpacked, source.url)
            rel = Path(parsed.scheme, *_safe_parts([netloc, *parsed.path.split("/")]), f"sha256-{hexdigest}")
            meta = {"source": parsed.scheme, "url": source.url, "archive_sha256": hexdigest}
            return self._install_loose(root / MODULE_TITLE, root / CONFIG_TITLE, source.key, meta, rel=rel)

    # ----------------------------------------------------------------- installing

    def _entry_lock(self, entry_dir: Path) -> Path:
        rel = entry_dir.relative_to(self.bundles_dir).as_posix()
        return self.locks_dir / f"{hashlib.sha256(rel.encode()).hexdigest()[:32]}.lock"

    def _current(self, target: Path, manifest_digest: str) -> bool:
        try:
            meta = json.loads((target / METADATA).read_bytes())
        except (OSError, ValueError):
            return False
        return (
            isinstance(meta, dict)
            and meta.get("digest") == manifest_digest
            and (target / MODULE_TITLE).is_file()
            and (target / CONFIG_TITLE).is_file()
        )

    def _install(self, *, manifest: Manifest, blobs: _BlobSource, reference: str, rel: Path,
                 meta: dict[str, Any]) -> PullResult:
        target = self.bundles_dir / rel
        if not target.resolve().is_relative_to(self.bundles_dir.resolve()):
            raise CacheError(f"{reference}: refusing a cache path outside {self.bundles_dir}")
        # Fast path: this manifest is already installed here; only the manifest was transferred.
        if self._current(target, manifest.digest):
            return self._ensure_indexed(target, reference, manifest)
        self.downloads_dir.mkdir(parents=True, exist_ok=True)
        self._sweep_downloads()
        work = Path(tempfile.mkdtemp(prefix=f"pull-{os.getpid()}-", dir=self.downloads_dir))
        try:
            staged = work / "entry"
            staged.mkdir()
            where = reference
            bundle_config = parse_bundle_config(blobs.read_blob(manifest.config), where, manifest)
            for layer in manifest.layers:
                title = layer.title or ""
                if title in RESERVED_NAMES - {MODULE_TITLE, CONFIG_TITLE} or title.split("/", 1)[0] == ".mcpkit":
                    raise BundleError(f"{where}: layer title {title!r} is reserved for the cache")
                dest = staged / title
                dest.parent.mkdir(parents=True, exist_ok=True)
                blobs.fetch_blob(layer, dest)
            config = check_bundle_config_yaml((staged / CONFIG_TITLE).read_bytes(), f"{where} {CONFIG_TITLE}")
            name = str(bundle_config["name"])
            if config.name != name:
                raise BundleError(
                    f"{where}: config.yaml names the server {config.name!r}, the bundle config says {name!r}"
                )
            metadata = {
                "reference": reference,
                **meta,
                "digest": manifest.digest,
                "name": name,
                "version": str(bundle_config.get("version", config.bundle_version)),
                "description": str(bundle_config.get("description", config.description)),
                "tools": [t.name for t in config.tools],
                "config_digest": manifest.config.digest,
                "module_digest": manifest.module_layer.digest,
                "layers": [
                    {"title": d.title, "digest": d.digest, "size": d.size, "mediaType": d.media_type}
                    for d in manifest.layers
                ],
                "size": sum(d.size for d in manifest.layers),
                "annotations": dict(manifest.annotations),
                "pulled_at": _now(),
            }
            (staged / METADATA).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            with _flock(self._entry_lock(target)):
                if self._current(target, manifest.digest):  # another process finished the same pull first
                    return self._ensure_indexed(target, reference, manifest)
                self._swap_in(staged, target, work)
                entry = CacheEntry(name, reference, manifest.digest, target, metadata["pulled_at"])
                dropped = self._update_index(add=entry)
                warnings = self._precompile(target)
            self._discard_orphans(dropped)
            return PullResult(entry, changed=True, warnings=tuple(warnings))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise CacheError(
                    f"{reference}: not enough space to install it under {self.home} ({exc.strerror})",
                    hint="free some space or set MCPKIT_HOME to a larger disk, then pull again; "
                    "the previous copy is untouched",
                ) from None
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _ensure_indexed(self, target: Path, reference: str, manifest: Manifest) -> PullResult:
        index = self._load_index()
        existing = index.by_ref.get(reference)
        if existing is not None and existing.path == target and existing.digest == manifest.digest:
            return PullResult(existing, changed=False)
        meta = json.loads((target / METADATA).read_bytes())
        entry = CacheEntry(str(meta.get("name", "")), reference, manifest.digest, target, _now())
        dropped = self._update_index(add=entry)
        self._discard_orphans(dropped)
        return PullResult(entry, changed=False)

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

    def _precompile(self, target: Path) -> list[str]:
        try:
            import wasmtime  # noqa: F401
        except ImportError:
            return []
        try:
            from hatch_mcpkit.runtime import precompile
        except ImportError:
            return []
        try:
            precompile(target, environ=_LenientEnviron())
        except Exception as exc:  # precompiling is an optimisation; the server compiles on demand
            return [f"could not precompile {target / MODULE_TITLE}: {exc} (it will be compiled when it runs)"]
        return []

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
        self.downloads_dir.mkdir(parents=True, exist_ok=True)
        trash = Path(tempfile.mkdtemp(prefix="rm-", dir=self.downloads_dir))
        try:
            os.rename(path, trash / "entry")
        finally:
            shutil.rmtree(trash, ignore_errors=True)
        # tidy empty parents up to bundles/
        parent = path.parent
        while parent != self.bundles_dir and parent.is_relative_to(self.bundles_dir):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def _sweep_downloads(self) -> None:
        """Remove work directories left behind by killed processes (older than a day)."""
        cutoff = time.time() - STALE_WORKDIR_SECONDS
        try:
            children = list(os.scandir(self.downloads_dir))
        except OSError:
            return
        for child in children:
            try:
                if child.stat(follow_symlinks=False).st_mtime < cutoff:
                    shutil.rmtree(child.path, ignore_errors=True)
            except OSError:
                continue


def _make_client(ref: Reference, opts: PullOptions) -> RegistryClient:
    from hatch_mcpkit.auth import resolve_credentials
    from hatch_mcpkit.registry import RegistryClient

    credentials = resolve_credentials(ref.registry, username=opts.username, password=opts.password)
    return RegistryClient(ref.registry, credentials=credentials, insecure=opts.insecure, ca_file=opts.ca_file)


def _bundle_root(unpacked: Path, where: str) -> Path:
    """module.wasm + config.yaml at the top of an archive, or inside its one top-level folder."""
    if (unpacked / MODULE_TITLE).is_file():
        return unpacked
    children = [c for c in unpacked.iterdir()] if unpacked.is_dir() else []
    if len(children) == 1 and children[0].is_dir() and (children[0] / MODULE_TITLE).is_file():
        return children[0]
    raise BundleError(
        f"{where}: the archive has no module.wasm (with config.yaml) at its top level",
        hint="pack it as: tar czf bundle.tar.gz module.wasm config.yaml [files...]",
    )
