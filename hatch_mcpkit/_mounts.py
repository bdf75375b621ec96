"""Where a blob already is: other repositories of the same registry, for cross-repository mounts.

Pushing a bundle to a second repository should not upload blobs the registry already holds. The
registry mounts a blob from a repository we name (``?mount=<digest>&from=<repo>``), so we need a
repository that has it. Two sources, both in ``MCPKIT_HOME`` and both only hints -- a wrong one
costs one ordinary upload, never a wrong blob, because the registry mounts by digest:

* the store's pulls: an entry pulled from this registry holds its manifest's blobs (the index
  says which manifest; ``metadata.json`` lists the layers and the config); the most recently
  pulled :data:`MAX_ENTRIES` entries are looked at;
* ``cache/pushed.json`` (:attr:`BundleCache.pushed_path`): what this machine pushed where,
  ``{"registries": {host: {digest: [repository, ...]}}}``, at most :data:`MAX_DIGESTS` digests and
  :data:`MAX_REPOSITORIES` repositories each, newest kept. It is replaced atomically; two pushes
  at the same moment may lose one hint (the next push uploads that blob once more).

Nothing here is sent anywhere but the registry the blob goes to, and only names that pass the
OCI repository grammar are ever used.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hatch_mcpkit.reference import is_repository_path

if TYPE_CHECKING:
    from hatch_mcpkit.bundle import Manifest
    from hatch_mcpkit.store import BundleCache

__all__ = ["MAX_DIGESTS", "MAX_ENTRIES", "MAX_REPOSITORIES", "remember", "sources"]

log = logging.getLogger(__name__)

MAX_DIGESTS = 2048
MAX_REPOSITORIES = 4
MAX_ENTRIES = 64
MAX_BYTES = 4 * 1024 * 1024
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")


def _load(path: Path) -> dict[str, dict[str, list[str]]]:
    """The record, keeping only well-formed rows; empty when it is missing or unreadable (a hint only)."""
    from hatch_mcpkit._json import load_hint

    data = load_hint(path, max_bytes=MAX_BYTES)
    registries = data.get("registries") if isinstance(data, dict) else None
    record: dict[str, dict[str, list[str]]] = {}
    for host, digests in (registries or {}).items() if isinstance(registries, dict) else ():
        if isinstance(host, str) and isinstance(digests, dict):
            record[host] = {d: [r for r in repos if isinstance(r, str) and is_repository_path(r)][:MAX_REPOSITORIES]
                            for d, repos in digests.items()
                            if isinstance(d, str) and _DIGEST.match(d) and isinstance(repos, list)}
    return record


def _pulled(cache: BundleCache, registry: str, manifest: Manifest) -> Iterable[tuple[str, str]]:
    """``(digest, repository)`` for the blobs of the bundles pulled from ``registry`` (newest first)."""
    from hatch_mcpkit.errors import InvalidReferenceError
    from hatch_mcpkit.reference import parse_reference

    wanted = {d.digest for d in manifest.blobs}
    entries = sorted((e for e in cache.entries() if e.reference.startswith("oci://")),
                     key=lambda e: e.pulled_at, reverse=True)
    looked = 0
    for entry in entries:
        try:
            ref = parse_reference(entry.reference)
        except InvalidReferenceError:
            continue
        if ref.registry != registry:
            continue
        if entry.digest == manifest.digest:
            yield from ((d, ref.repository) for d in wanted)
            continue
        looked += 1
        if looked > MAX_ENTRIES:
            return
        meta = entry.metadata()
        layers = meta.get("layers")
        layers = layers if isinstance(layers, list) else []
        held = {meta.get("config_digest"), *(x.get("digest") for x in layers if isinstance(x, dict))}
        yield from ((d, ref.repository) for d in wanted & held)


def sources(cache: BundleCache, registry: str, repository: str, manifest: Manifest) -> dict[str, str]:
    """For each blob of ``manifest``, one other repository of ``registry`` that should hold it."""
    from hatch_mcpkit.errors import McpkitError

    wanted = {d.digest for d in manifest.blobs}
    found: dict[str, str] = {}
    for digest, repos in _load(cache.pushed_path).get(registry, {}).items():
        other = next((r for r in repos if r != repository), None) if digest in wanted else None
        if other is not None:
            found[digest] = other
    try:
        for digest, repo in _pulled(cache, registry, manifest):
            if repo != repository and is_repository_path(repo):
                found.setdefault(digest, repo)
    except (McpkitError, OSError) as exc:  # the store is a hint here; a broken index must not stop a push
        log.debug("no mount sources from the store: %s", exc)
    return found


def remember(cache: BundleCache, registry: str, repository: str, digests: Sequence[str]) -> None:
    """Record that ``registry``/``repository`` now holds ``digests`` (newest first; bounded; best effort)."""
    from hatch_mcpkit._json import save_hint

    record = _load(cache.pushed_path)
    hosts = record[registry] = record.pop(registry, {})  # this registry last: its digests are the newest
    for digest in digests:
        repos = [repository, *(r for r in hosts.pop(digest, []) if r != repository)]
        hosts[digest] = repos[:MAX_REPOSITORIES]  # (re-inserted: the newest come last)
    rows = [(h, d, r) for h, ds in record.items() for d, r in ds.items()]
    trimmed: dict[str, dict[str, list[str]]] = {}
    for host, digest, repos in rows[-MAX_DIGESTS:]:
        trimmed.setdefault(host, {})[digest] = repos
    save_hint(cache.pushed_path, {"registries": trimmed})
