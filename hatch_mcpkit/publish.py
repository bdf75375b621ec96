"""Pushing a built bundle: the one path behind ``hatch publish -p mcpkit`` and ``mcpkit bundle push``.

The archive's own blobs and manifest bytes are pushed, so the digest printed
by ``hatch build`` is the digest in the registry. Where it goes and with which
tags comes from, in order: the explicit target/tags, the ``distribution``
section of the *publisher's own* config.yaml (``publisher_config``, loaded by the
caller from the project with the publisher's environment). Credentials follow the
chain in :mod:`hatch_mcpkit.auth`.

An archive may come from anyone, so the config.yaml inside it is data: it is
checked but never expanded from this environment, and its ``distribution`` --
registry, tags and ``auth`` -- is never used. Pushing an archive without an
explicit target or a publisher config is refused (its registry could be anyone's,
and so could the credentials a ``${VAR}`` in its ``auth`` would pick up here).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hatch_mcpkit.bundle import ARCHIVE_SUFFIX, BundleLayout
from hatch_mcpkit.config import Config, check_bundle_grants, parse_config
from hatch_mcpkit.errors import BundleError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["PushResult", "find_archives", "push_archive"]


@dataclass(frozen=True)
class PushResult:
    archive: Path
    digest: str
    repository: str  # host/repository
    tags: tuple[str, ...]
    signature: str | None = None  # the signature referrer's digest when the push was signed
    uploaded: int = 0  # blobs sent
    mounted: int = 0  # blobs the registry mounted from another of its repositories
    present: int = 0  # blobs the repository already held

    @property
    def references(self) -> list[str]:
        return [f"{self.repository}:{tag}" for tag in self.tags] + [f"{self.repository}@{self.digest}"]


def find_archives(paths: Sequence[str | os.PathLike[str]], root: Path) -> list[Path]:
    """Bundle archives named by ``paths`` (files or folders); ``dist/`` when none are given."""
    found: list[Path] = []
    for item in paths or ["dist"]:
        path = Path(root, item)
        if path.is_dir():
            found.extend(sorted(path.glob(f"*{ARCHIVE_SUFFIX}")))
        elif path.is_file():
            found.append(path)
        else:
            raise BundleError(f"{path}: no such file or folder", hint="run `hatch build` first")
    if not found:
        where = ", ".join(str(Path(root, p)) for p in (paths or ["dist"]))
        raise BundleError(
            f"no *{ARCHIVE_SUFFIX} bundle in {where}",
            hint="run `hatch build` (or `hatch build -t mcpkit`) first",
        )
    return found


def bundle_config_of(layout: BundleLayout) -> Config:
    """The archive's config.yaml, checked as data: no ``${VAR}`` is taken from this environment."""
    raw = layout.read_blob(layout.manifest.config_layer.digest)
    config = parse_config(raw, f"{layout.source}!config.yaml")
    check_bundle_grants(config, (name for name, _ in layout.manifest.files))
    return config


def _target(target: str) -> tuple[str, str, tuple[str, ...]]:
    """``(host, repository, tags)`` of an explicit push target (``oci://host/repo[:tag]``)."""
    from hatch_mcpkit.reference import parse_reference, parse_repository, written_tag

    text = target.removeprefix("oci://")
    if written_tag(text) is not None or "@" in text:
        ref = parse_reference(text)
        if ref.digest:
            raise BundleError(f"{target}: push to a tag, not a digest (the digest comes from the bundle)")
        return ref.registry, ref.repository, (ref.tag,) if ref.tag else ()
    repo = parse_repository(text)
    return repo.registry, repo.repository, ()


def push_archive(
    archive: Path,
    *,
    target: str | None = None,
    tags: Sequence[str] = (),
    username: str | None = None,
    password: str | None = None,
    insecure: bool = False,
    ca_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    echo: Callable[[str], None] | None = None,
    publisher_config: Config | None = None,
    deadline: float | None = None,
    sign_key: ec.EllipticCurvePrivateKey | None = None,
    home: Path | None = None,
) -> PushResult:
    """Push one ``.mcpkit.tar`` (or layout directory) and apply every tag; idempotent.

    ``publisher_config`` is the publisher's own config.yaml: its ``distribution`` (registry,
    tags, ``auth`` expanded from ``environ``) is used when no ``target`` is given. With
    ``sign_key``, the pushed manifest digest (what every tag names) is signed and the signature
    pushed as its referrer, through the same client.

    Blobs the registry holds in another repository this machine pushed to or pulled from
    (``home``: the MCPKIT_HOME whose record is used, default ``$MCPKIT_HOME``) are mounted from
    there rather than uploaded again (:mod:`hatch_mcpkit._mounts`).
    """
    from hatch_mcpkit import _mounts
    from hatch_mcpkit.auth import resolve_credentials
    from hatch_mcpkit.reference import parse_repository
    from hatch_mcpkit.registry import RegistryClient
    from hatch_mcpkit.store import BundleCache

    with BundleLayout.open(archive) as layout:
        bundled = bundle_config_of(layout)
        dist = publisher_config.distribution if publisher_config is not None else None
        if target:
            repo_host, repository, target_tags = _target(target)
            push_tags = tuple(tags) or target_tags
        elif dist is not None and dist.registry:
            repo = parse_repository(dist.registry)
            repo_host, repository, push_tags = repo.registry, repo.repository, tuple(tags)
        elif publisher_config is not None:
            raise BundleError(
                f"{archive.name}: config.yaml has no distribution.registry and no target was given",
                hint="add distribution.registry to config.yaml, or pass a target such as oci://ghcr.io/org/tool",
            )
        else:
            raise BundleError(
                f"{archive.name}: no target given; an archive's own distribution.registry and distribution.auth "
                "are never used (the archive may come from anyone)",
                hint=f"pass where to push: mcpkit bundle push {archive.name} --to oci://HOST/REPOSITORY:TAG",
            )
        if not push_tags:
            push_tags = dist.tags if dist is not None else (layout.version or bundled.server_version,)
        # the publisher's distribution.auth belongs to its distribution.registry's host, not elsewhere
        config_auth = None
        if dist is not None and dist.auth is not None and parse_repository(dist.registry).registry == repo_host:
            config_auth = dist.auth
        credentials = resolve_credentials(
            repo_host,
            username=username,
            password=password,
            config_auth=config_auth,
            environ=environ,
            repository=repository,
        )
        if echo is not None:
            who = f" as {credentials.username} ({credentials.source})" if credentials else ""
            echo(f"pushing {archive.name} to {repo_host}/{repository}{who}")
        cache = BundleCache(home)
        mount_from = _mounts.sources(cache, repo_host, repository, layout.manifest)
        with RegistryClient(repo_host, credentials=credentials, insecure=insecure, ca_file=ca_file,
                            deadline=deadline) as client:
            digest = client.push_layout(layout, repository, push_tags, mount_from=mount_from)
            _mounts.remember(cache, repo_host, repository, [d.digest for d in layout.manifest.blobs])
            blobs = client.stats.blobs_uploaded, client.stats.blobs_mounted, client.stats.blobs_skipped
            if digest != layout.manifest.digest:  # pragma: no cover - push_layout pushes the layout's bytes
                raise BundleError(f"registry stored {digest}, expected {layout.manifest.digest}")
            signature = None
            if sign_key is not None:
                from hatch_mcpkit._signatures import attach
                from hatch_mcpkit.reference import Reference

                signed = Reference(repo_host, repository, None, digest)
                signature = attach(client, signed, digest, sign_key).referrer
        return PushResult(archive, digest, f"{repo_host}/{repository}", push_tags, signature, *blobs)
