"""Registry credentials: where they come from, in order.

1. explicit -- command-line flags or publisher options (``source="command line"`` or what the
   caller names);
2. ``distribution.auth`` in config.yaml, ``${VAR}`` expanded now (``source="config"``);
3. the environment: ``MCPKIT_REGISTRY_USERNAME`` + ``MCPKIT_REGISTRY_PASSWORD`` for the one
   registry named by ``MCPKIT_REGISTRY_HOST`` (``host[:port]``; Docker Hub's aliases are one
   registry), or for ``ghcr.io`` ``GITHUB_TOKEN`` with ``GITHUB_ACTOR``/``GITHUB_USER`` (or
   ``token``) as user (``source="environment"``);
4. the Docker config (``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``): ``auths``
   (base64 ``auth``, ``username``/``password``, ``identitytoken``), ``credHelpers`` for the
   registry, then ``credsStore`` (``source="docker config"``). Helpers are run as
   ``docker-credential-<name> get`` with the server URL on stdin, as Docker does;
5. podman/skopeo/buildah's auth files (:func:`containers_auth_paths`: ``REGISTRY_AUTH_FILE``
   alone when set, else ``$XDG_RUNTIME_DIR/containers/auth.json`` then
   ``~/.config/containers/auth.json``), first file with an answer wins: ``credHelpers`` for the
   registry, then ``auths`` keyed by ``host``, ``host/namespace`` or ``host/namespace/repo`` --
   the most specific key matching the repository wins (``source="containers auth file"``).

Docker's file and the containers files share one shape and one reader (:func:`_from_auth_file`,
bounded, regular files only); they differ only in how keys match.

Environment credentials name their registry: ``MCPKIT_REGISTRY_USERNAME``/``PASSWORD`` are
used only for the registry ``MCPKIT_REGISTRY_HOST`` names, so a registry that merely asks
(any ``oci://`` reference someone hands you) never gets them. When the pair is set without
``MCPKIT_REGISTRY_HOST`` it is sent nowhere and every lookup is an :class:`AuthError` saying
to set it (a silent fall-through would look like "wrong password" later). Likewise
``GITHUB_TOKEN`` is used for ``ghcr.io`` only, and Docker config and auth.json entries for their
own host.

The Docker config and the auth files are only ever read, never written (oras-py's ``login()`` writes it; it is
not called). :class:`Credentials` never shows its secret in ``repr``/``str``, and no message
from this module contains one.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatch_mcpkit._json import load as load_json
from hatch_mcpkit.errors import AuthError
from hatch_mcpkit.reference import DOCKER_HUB_ALIASES

if TYPE_CHECKING:
    from hatch_mcpkit.config import Auth

__all__ = [
    "Credentials",
    "containers_auth_paths",
    "docker_config_path",
    "resolve_credentials",
]

log = logging.getLogger(__name__)

DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
_HELPER_TIMEOUT = 30.0
_MAX_JSON = 4 * 1024 * 1024


@dataclass(frozen=True)
class Credentials:
    """A user name with a password/token, or an identity (refresh) token.

    ``source`` says where they came from, for messages ("from the environment").
    """

    username: str | None
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)
    source: str = "explicit"

    def __repr__(self) -> str:
        secret = "set" if (self.password or self.identity_token) else "none"
        return f"Credentials(username={self.username!r}, secret={secret}, source={self.source!r})"

    __str__ = __repr__

    @property
    def has_basic(self) -> bool:
        return self.username is not None and self.password is not None

    def basic_header(self) -> str:
        """The ``Authorization: Basic ...`` value (a secret: never log it)."""
        raw = f"{self.username or ''}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def _canonical_host(server: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``http://host:5000/v2`` -> ``host:5000``."""
    text = server.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0].lower()
    if text in DOCKER_HUB_ALIASES:
        return "docker.io"
    return text


def _server_url(registry: str) -> str:
    """The server URL Docker hands credential helpers for ``registry``."""
    return DOCKER_HUB_SERVER if _canonical_host(registry) == "docker.io" else registry


def docker_config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    directory = env.get("DOCKER_CONFIG")
    if directory:
        return Path(directory).expanduser() / "config.json"
    return _home(env) / ".docker" / "config.json"


def _from_environment(registry: str, env: Mapping[str, str]) -> Credentials | None:
    user = env.get("MCPKIT_REGISTRY_USERNAME") or None
    password = env.get("MCPKIT_REGISTRY_PASSWORD") or None
    if user or password:
        if not (user and password):
            missing = "MCPKIT_REGISTRY_PASSWORD" if user else "MCPKIT_REGISTRY_USERNAME"
            raise AuthError(
                f"registry credentials for {registry} in the environment are incomplete: {missing} is not set",
                hint="set both MCPKIT_REGISTRY_USERNAME and MCPKIT_REGISTRY_PASSWORD, or neither",
            )
        named = env.get("MCPKIT_REGISTRY_HOST", "").strip()
        if not named:
            raise AuthError(
                "MCPKIT_REGISTRY_USERNAME and MCPKIT_REGISTRY_PASSWORD are set, but MCPKIT_REGISTRY_HOST does not "
                "name the registry they belong to, so they are sent to none",
                hint="set MCPKIT_REGISTRY_HOST to that registry's host[:port] (e.g. ghcr.io or localhost:5000)",
            )
        if _canonical_host(named) == _canonical_host(registry):
            return Credentials(user, password, source="environment (MCPKIT_REGISTRY_USERNAME/PASSWORD)")
    token = env.get("GITHUB_TOKEN")
    if token and _canonical_host(registry) == "ghcr.io":
        actor = env.get("GITHUB_ACTOR") or env.get("GITHUB_USER") or "token"
        return Credentials(actor, token, source="environment (GITHUB_TOKEN)")
    return None


def _run_helper(helper: str, registry: str, config_file: Path) -> Credentials | None:
    binary = f"docker-credential-{helper}"
    exe = shutil.which(binary)
    if exe is None:
        raise AuthError(
            f"{config_file} names credential helper {helper!r} for {registry}, but {binary} is not on PATH",
            hint=f"install {binary}, or remove it from {config_file}, or pass credentials explicitly",
        )
    try:
        proc = subprocess.run(
            [exe, "get"],
            input=_server_url(registry).encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AuthError(f"credential helper {binary} failed for {registry}: {type(exc).__name__}") from None
    if proc.returncode != 0:
        # "credentials not found in native keychain" is an answer, not a failure.
        out = (proc.stdout + proc.stderr).decode(errors="replace").lower()
        if "not found" in out:
            return None
        raise AuthError(
            f"credential helper {binary} failed for {registry} (exit code {proc.returncode})",
            hint=f"run: echo {_server_url(registry)} | {binary} get",
        )
    try:
        data = load_json(proc.stdout, where=f"output of {binary}", error=AuthError, max_bytes=_MAX_JSON)
        username = data.get("Username")
        secret = data.get("Secret")
    except (AuthError, AttributeError):
        raise AuthError(f"credential helper {binary} printed something that is not JSON for {registry}") from None
    if not isinstance(secret, str) or not secret:
        return None
    source = f"docker credential helper {helper!r}"
    if username == "<token>":
        return Credentials(None, None, identity_token=secret, source=source)
    return Credentials(username if isinstance(username, str) else None, secret, source=source)


def containers_auth_paths(environ: Mapping[str, str] | None = None) -> list[Path]:
    """podman/skopeo/buildah's auth files, in the order they read them (containers-auth.json(5)).

    ``REGISTRY_AUTH_FILE`` alone when it is set (it replaces the default locations); else
    ``$XDG_RUNTIME_DIR/containers/auth.json`` (``/run/containers/<uid>/auth.json`` without
    ``XDG_RUNTIME_DIR``), then ``$XDG_CONFIG_HOME/containers/auth.json`` (``~/.config``).
    """
    env = os.environ if environ is None else environ
    named = env.get("REGISTRY_AUTH_FILE")
    if named:
        return [Path(named).expanduser()]
    runtime = env.get("XDG_RUNTIME_DIR")
    first = Path(runtime) / "containers" if runtime else Path("/run/containers") / str(os.getuid())
    config_home = env.get("XDG_CONFIG_HOME") or str(_home(env) / ".config")
    return [first / "auth.json", Path(config_home) / "containers" / "auth.json"]


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME")
    return Path(home) if home else Path.home()


def _read_auth_file(path: Path, kind: str) -> dict[str, Any] | None:
    """The JSON object in ``path`` (bounded, regular files only); ``None`` when there is no such file."""
    from hatch_mcpkit._files import read_regular

    try:
        raw = read_regular(path, limit=_MAX_JSON, where=str(path.parent), error=AuthError)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc.strerror)
        return None
    try:
        cfg: Any = load_json(raw, where=str(path), error=AuthError, max_bytes=_MAX_JSON)
    except AuthError as exc:
        raise AuthError(
            f"{path} is not valid JSON ({exc.message.removeprefix(f'{path}: ')})",
            hint=f"fix or move the file (the {kind}); mcpkit only reads it",
        ) from None
    return cfg if isinstance(cfg, dict) else None


def _auth_key(key: str, namespaced: bool) -> str:
    """An ``auths`` key as a lookup key: ``host`` (Docker: always; or a key written with a scheme),
    else ``host/namespace/...`` as written (containers-auth.json keys may name a namespace)."""
    if not namespaced or "://" in key:
        return _canonical_host(key)
    host, sep, path = key.strip().partition("/")
    return _canonical_host(host) + (sep + path.strip("/") if path.strip("/") else "")


def _lookup_keys(registry: str, repository: str | None) -> list[str]:
    """``host/ns/repo``, ``host/ns``, ``host``: the most specific first."""
    host = _canonical_host(registry)
    parts = [p for p in (repository or "").split("/") if p]
    return [f"{host}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)] + [host]


def _decode_entry(entry: dict[str, Any], key: str, path: Path, source: str) -> Credentials | None:
    identity = entry.get("identitytoken")
    encoded = entry.get("auth")
    username = entry.get("username")
    password = entry.get("password")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError(f"{path}: the auth entry for {key!r} is not valid base64") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise AuthError(f"{path}: the auth entry for {key!r} has no ':' between user and password")
    if isinstance(identity, str) and identity:
        return Credentials(username if isinstance(username, str) else None, None,
                           identity_token=identity, source=source)
    if isinstance(username, str) and isinstance(password, str) and (username or password):
        return Credentials(username, password, source=source)
    return None


def _from_auth_file(registry: str, repository: str | None, path: Path, *, containers: bool) -> Credentials | None:
    """Credentials for ``registry`` from one file of the shared shape (``auths``, ``credHelpers``,
    ``credsStore``): Docker's config.json (keys are hosts) or a containers auth.json (keys are
    ``host[/namespace...]``, the most specific match wins; no ``credsStore``)."""
    kind = "containers auth file" if containers else "docker config"
    cfg = _read_auth_file(path, kind)
    if cfg is None:
        return None
    want = _canonical_host(registry)
    source = f"{kind} ({path})"

    helpers = cfg.get("credHelpers")
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if isinstance(key, str) and isinstance(helper, str) and _canonical_host(key) == want:
                creds = _run_helper(helper, registry, path)
                if creds is not None:
                    return creds

    auths = cfg.get("auths")
    if isinstance(auths, dict):
        entries: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for key, entry in auths.items():
            if isinstance(key, str) and isinstance(entry, dict):
                entries.setdefault(_auth_key(key, containers), []).append((key, entry))
        for lookup in _lookup_keys(registry, repository if containers else None):
            for key, entry in entries.get(lookup, ()):
                creds = _decode_entry(entry, key, path, source)
                if creds is not None:
                    return creds

    store = cfg.get("credsStore")
    if not containers and isinstance(store, str) and store:
        return _run_helper(store, registry, path)
    return None


def resolve_credentials(
    registry: str,
    *,
    username: str | None = None,
    password: str | None = None,
    explicit_source: str = "command line",
    config_auth: Auth | None = None,
    environ: Mapping[str, str] | None = None,
    docker_config: Path | None = None,
    use_docker_config: bool = True,
    repository: str | None = None,
) -> Credentials | None:
    """The first credentials the chain finds for ``registry`` (host[:port]), or ``None``.

    ``repository`` (``org/tool``) lets a containers auth.json entry for ``host/org`` or
    ``host/org/tool`` win over the one for ``host``; ``use_docker_config=False`` skips both kinds
    of file.

    ``None`` means "anonymous": the registry may still allow pulls. A half-given explicit
    pair (user without password) is an error rather than a silent fall-through.
    """
    env = os.environ if environ is None else environ
    if username is not None or password is not None:
        if not username or password is None:
            missing = "password" if username else "username"
            raise AuthError(f"credentials for {registry} from the {explicit_source} lack a {missing}")
        return Credentials(username, password, source=explicit_source)

    if config_auth is not None:
        user, secret = config_auth.resolve(env)
        if user or secret:
            if not user or not secret:
                missing = "password" if user else "username"
                raise AuthError(
                    f"distribution.auth in config.yaml for {registry} has no {missing}",
                    hint="give both distribution.auth.username and distribution.auth.password",
                )
            return Credentials(user, secret, source="config (distribution.auth)")

    creds = _from_environment(registry, env)
    if creds is not None:
        return creds

    if not use_docker_config:
        return None
    path = docker_config if docker_config is not None else docker_config_path(env)
    creds = _from_auth_file(registry, None, path, containers=False)
    for auth_file in containers_auth_paths(env) if creds is None else ():
        creds = _from_auth_file(registry, repository, auth_file, containers=True)
        if creds is not None:
            break
    return creds
