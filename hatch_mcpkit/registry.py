"""The one boundary between mcpkit and OCI registries.

Everything that talks to a registry goes through :class:`RegistryClient`, and every request
it makes goes through :mod:`hatch_mcpkit._transport` (one TLS, plain-HTTP, redirect,
deadline and retry policy, shared with https downloads). oras-py is used through that module
only: its session set-up and its ``Www-Authenticate`` parser. The request flow is done here,
because oras-py 0.2.x gets these things wrong for mcpkit's purposes:

* **no digest check on pull** -- oras writes whatever the registry sends. Here every blob is
  streamed through :func:`hatch_mcpkit._files.write_verified` (temporary file beside the
  destination, size checked as bytes arrive, SHA-256, rename); a mismatch raises
  :class:`~hatch_mcpkit.errors.IntegrityError` naming the digest. Manifests are hashed too,
  and compared with the pinned digest and the registry's ``Docker-Content-Digest``.
* **retries** -- ``oras.decorator.retry`` sleeps 3, 5, 11, 29, 83 s on *any* error. Here the
  transport retries a whole unit of work (a request, an upload session, a blob download)
  after connection errors and 5xx answers only, 3 tries with 0.2 s / 0.5 s pauses; a timeout
  or the transfer deadline is not retried.
* **memory** -- oras' monolithic upload reads the whole blob into memory. Here uploads stream
  from the file and downloads stream; error bodies are read up to 64 KiB, manifests up to
  4 MiB, token answers and listings up to a few MiB, all JSON through
  :func:`hatch_mcpkit._json.load` (depth-bounded).
* **existing blobs** -- each blob is checked with HEAD first and skipped when present, so a
  second push of the same bundle uploads nothing. A blob missing here but known to be in
  another repository of the same registry (``mount_from``) is mounted from there
  (``POST .../blobs/uploads/?mount=<digest>&from=<repo>``, with a token that may pull ``repo``):
  201 is done, 202 continues as an ordinary upload on the session the registry opened, and a
  refusal to let us read ``repo`` falls back to an ordinary upload.
* **token scope** -- oras keeps one bearer token and reuses a pull-only token for a push.
  Here tokens are cached per scope and each request asks for the scope it needs.
* **credentials** -- oras' ``login()`` writes ``~/.docker/config.json``; credentials here come
  from :mod:`hatch_mcpkit.auth` only and are never written, logged or put in a message.

Where credentials go (the rule for every URL a registry hands back -- an upload
``Location``, a ``Link: rel=next``, a redirect, a token ``realm``):

* the registry's basic credentials or bearer token are attached only to requests to the
  registry's own origin (scheme, host, port). A ``Location`` or ``Link`` on another host is
  followed without them (a 401 from there is an error, never answered with our credentials);
* plain HTTP off loopback is refused for every such URL unless ``insecure``;
* a bearer ``realm`` is the registry's token service: it receives the user name and password
  (the standard token flow), on another host too, but only over https (plain HTTP only on
  loopback or with ``insecure``); the token it returns goes only to the registry.

Registry error messages, and anything else a registry says that reaches a message, pass
through :func:`hatch_mcpkit._text.clean`. Pushing sends exactly the blobs and manifest bytes
of a built layout, so the digest printed at build time is the digest in the registry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode, urljoin

from hatch_mcpkit._transport import (
    CHUNK,
    DEFAULT_TIMEOUT,
    RETRY_PAUSES,
    Challenge,
    Deadline,
    Transport,
    check_url,
    error_message,
    origin,
    parse_challenge,
    speaks_tls,
)
from hatch_mcpkit.bundle import (
    INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MAX_MANIFEST_BYTES,
    Descriptor,
    Manifest,
)
from hatch_mcpkit.errors import (
    AuthError,
    IntegrityError,
    InvalidReferenceError,
    RegistryError,
    RegistryNotFoundError,
)
from hatch_mcpkit.reference import (
    DOCKER_HUB_ALIASES,
    DOCKER_HUB_API,
    Reference,
    is_repository_path,
    is_tag,
    parse_reference,
    use_plain_http,
)

if TYPE_CHECKING:
    import requests

    from hatch_mcpkit._referrers import Referrer, ReferrerManifest
    from hatch_mcpkit.auth import Credentials
    from hatch_mcpkit.bundle import BundleLayout

__all__ = [
    "DEFAULT_TIMEOUT",
    "RawManifest",
    "RegistryClient",
    "TransferStats",
]

log = logging.getLogger(__name__)
_A = TypeVar("_A")
_B = TypeVar("_B")

MAX_SMALL_BLOB = 16 * 1024 * 1024
MAX_TOKEN_ANSWER = 1024 * 1024
MAX_LISTING_PAGE = 8 * 1024 * 1024
MAX_PAGES = 10_000
MAX_LISTING_ITEMS = 100_000  # tags of one repository, or repositories of a catalog
MAX_LISTING_BYTES = 64 * 1024 * 1024  # every page of one listing together
PARALLEL_UPLOADS = 4
_ACCEPT_MANIFEST = ", ".join(
    (
        MANIFEST_MEDIA_TYPE,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)


@dataclass
class TransferStats:
    """What a client moved; handy for messages and tests."""

    blobs_uploaded: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    bytes_uploaded: int = 0
    blobs_downloaded: int = 0
    bytes_downloaded: int = 0
    requests: int = 0


@dataclass(frozen=True)
class RawManifest:
    """A manifest exactly as the registry sent it, with the digest of those bytes."""

    raw: bytes = field(repr=False)
    digest: str
    media_type: str


def _scope(repository: str, push: bool) -> str:
    return f"repository:{repository}:{'pull,push' if push else 'pull'}"


def _mount_scope(repository: str, source: str) -> str:
    """Push to ``repository`` and pull from ``source`` (one token for a cross-repository mount)."""
    return f"{_scope(repository, True)} {_scope(source, False)}"


def _covers(have: str, want: str) -> bool:
    """Scope ``have`` grants everything ``want`` asks (same resource, a superset of actions)."""
    h_res, _, h_act = have.rpartition(":")
    w_res, _, w_act = want.rpartition(":")
    return h_res == w_res and set(w_act.split(",")) <= set(h_act.split(","))


def _json(raw: bytes, where: str, limit: int) -> Any:
    from hatch_mcpkit._json import load

    return load(raw, where=where, error=RegistryError, max_bytes=limit)


class RegistryClient:
    """A client for one registry host (``ghcr.io``, ``localhost:5000``, ``docker.io``).

    ``credentials`` come from :func:`hatch_mcpkit.auth.resolve_credentials`; ``None`` means
    anonymous. ``timeout`` is ``(connect, read)`` seconds; ``deadline`` bounds one transfer
    (default: ``MCPKIT_TRANSFER_DEADLINE`` or the transport's default).
    """

    def __init__(
        self,
        host: str,
        *,
        credentials: Credentials | None = None,
        insecure: bool = False,
        ca_file: str | os.PathLike[str] | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        retry_pauses: Sequence[float] = RETRY_PAUSES,
        scheme: str | None = None,
        deadline: float | None = None,
    ) -> None:
        self.host = host
        self.api_host = DOCKER_HUB_API if host in DOCKER_HUB_ALIASES else host
        self.insecure = insecure
        # Loopback registries may speak either: try HTTPS first and fall back to plain HTTP when
        # the server answers the TLS handshake in plain text (as Docker does). A certificate that
        # fails verification is an error, never a reason to fall back. ``insecure`` means plain
        # HTTP; an explicit ``scheme="https"`` with it still verifies certificates.
        self._probe_tls = scheme is None and not insecure and use_plain_http(self.api_host)
        if scheme is None:
            scheme = "http" if insecure else "https"
        if scheme not in ("http", "https"):
            raise ValueError(f"scheme must be 'http' or 'https', not {scheme!r}")
        if scheme == "http" and not use_plain_http(self.api_host, insecure=insecure):
            raise RegistryError(
                f"refusing plain HTTP to {host}: only loopback registries may use it",
                hint="use HTTPS, or pass --insecure if you really mean it",
            )
        self.scheme = scheme
        self.transport = Transport(f"registry {host}", insecure=insecure, ca_file=ca_file, timeout=timeout,
                                   deadline=deadline, retry_pauses=tuple(retry_pauses))
        self.transport.use_certs_d(host, self.api_host)
        self.verify = self.transport.verify
        self.timeout = timeout
        self.stats = TransferStats()
        self._credentials = credentials
        self.session: requests.Session = self.transport.session
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()  # statistics from parallel uploads
        self._basic = False  # the registry asked for HTTP basic auth
        self._referrers_api: bool | None = None  # None: not asked yet; False: it answered 404 once

    def __repr__(self) -> str:
        return f"RegistryClient({self.host!r}, scheme={self.scheme!r}, credentials={self._credentials!r})"

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ low level

    def _url(self, path: str) -> str:
        return f"{self.scheme}://{self.api_host}{path}"

    @property
    def _origin(self) -> tuple[str, str]:
        return origin(self._url("/"))

    def _where(self, repository: str | None = None) -> str:
        return f"{self.host}/{repository}" if repository else self.host

    def _auth_header(self, scope: str) -> str | None:
        token = self._tokens.get(scope)
        if token:
            return f"Bearer {token}"
        if self._basic and self._credentials is not None and self._credentials.has_basic:
            return self._credentials.basic_header()
        return None

    def _creds_hint(self) -> str:
        if self._credentials is None:
            return (
                "no credentials were found; pass --username/--password-stdin, set MCPKIT_REGISTRY_HOST with "
                "MCPKIT_REGISTRY_USERNAME and MCPKIT_REGISTRY_PASSWORD, add distribution.auth to config.yaml, "
                "or log in with docker"
            )
        return f"check the credentials from {self._credentials.source}"

    def _message(self, response: requests.Response) -> str | None:
        return error_message(self.transport.error_body(response))

    def _authenticate(self, challenge: Challenge, scope: str, response: requests.Response) -> None:
        """Answer a 401 challenge: remember basic auth, or fetch a token for ``scope``."""
        if challenge.scheme == "basic":
            if self._credentials is None or not self._credentials.has_basic:
                raise AuthError(
                    f"registry {self.host} requires a user name and password",
                    status=response.status_code,
                    registry_message=self._message(response),
                    hint=self._creds_hint(),
                )
            if self._basic:  # already sent them: refused
                raise AuthError(
                    f"registry {self.host} refused the credentials from {self._credentials.source}",
                    status=response.status_code,
                    registry_message=self._message(response),
                    hint=self._creds_hint(),
                )
            self._basic = True
            response.close()
            return
        response.close()
        if not challenge.realm:
            raise AuthError(f"registry {self.host} sent a bearer challenge without a realm", status=401)
        scopes = scope.split(" ")  # a mount asks for two: push here, pull there
        if challenge.scope:  # what the registry says it needs, unless ours already covers it
            scopes.extend(s for s in challenge.scope.split(" ") if s and not any(_covers(h, s) for h in scopes))
        self._tokens[scope] = self._fetch_token(challenge.realm, challenge.service, scopes)

    def _fetch_token(self, realm: str, service: str | None, scopes: list[str]) -> str:
        """The standard token flow: the realm gets the credentials (over https), the token goes to the registry."""
        creds = self._credentials
        params: list[tuple[str, str]] = []
        if service:
            params.append(("service", service))
        params.extend(("scope", s) for s in scopes)
        headers = {"Accept": "application/json"}
        what = "get a token from its token service"
        auth = None
        body: Callable[[], Any] | None = None
        method = "GET"
        if creds is not None and creds.identity_token:
            method = "POST"
            form = [*params, ("grant_type", "refresh_token"), ("refresh_token", creds.identity_token),
                    ("client_id", "hatch-mcpkit")]
            encoded = urlencode(form)
            body = lambda: encoded  # noqa: E731
            params = []
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif creds is not None and creds.has_basic:
            auth = creds.basic_header()
        try:
            check_url(realm, insecure=self.insecure, where=f"registry {self.host}")
        except RegistryError:
            from hatch_mcpkit._text import clean

            raise AuthError(
                f"registry {self.host} wants credentials sent to a plain-HTTP token service "
                f"({clean(realm, limit=200)}); refusing",
                hint="pass --insecure only if you really trust this network",
            ) from None
        clock = self.transport.start()
        # no retry of its own: a token is fetched inside a request that is already a retried unit
        resp = self.transport.request(method, realm, what=what, headers=headers, auth=auth, body=body,
                                      params=params or None, deadline=clock)
        with self._lock:
            self.stats.requests += 1
        if resp.status_code in (401, 403):
            who = f"from {creds.source}" if creds else "(anonymous)"
            raise AuthError(
                f"registry {self.host} refused the credentials {who} for {' '.join(scopes)}",
                status=resp.status_code,
                registry_message=self._message(resp),
                hint=self._creds_hint(),
            )
        if resp.status_code != 200:
            raise RegistryError(f"token service of {self.host} failed", status=resp.status_code,
                                registry_message=self._message(resp))
        doc = _json(self.transport.read_body(resp, limit=MAX_TOKEN_ANSWER, what=what, deadline=clock),
                    f"token answer for {self.host}", MAX_TOKEN_ANSWER)
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token service of {self.host} answered without a token")
        return token

    def _request(
        self,
        method: str,
        path_or_url: str,
        *,
        scope: str,
        what: str,
        headers: dict[str, str] | None = None,
        body: Callable[[], Any] | None = None,
        params: dict[str, str] | None = None,
        deadline: Deadline | None = None,
        retry: bool = True,
    ) -> requests.Response:
        """One registry call with auth challenges (retried as a unit unless ``retry=False``).

        ``body`` is a factory (a file is reopened for each try). Answers other than 401/403
        are returned to the caller, which checks the status and reads the body.
        """
        own = f"{self.scheme}://{self.api_host}/"
        if path_or_url.startswith(own):  # our own URL: keep it relative so a scheme switch applies
            path_or_url = path_or_url[len(own) - 1 :]

        def once() -> requests.Response:
            return self._authorized(method, path_or_url, scope=scope, what=what, headers=headers, body=body,
                                    params=params, deadline=deadline)

        return self.transport.retry(once) if retry else once()

    def _authorized(self, method: str, path_or_url: str, *, scope: str, what: str,
                    headers: dict[str, str] | None, body: Callable[[], Any] | None,
                    params: dict[str, str] | None, deadline: Deadline | None) -> requests.Response:
        if self._probe_tls:
            self._settle_scheme()
        auth_tries = 0
        while True:
            url = path_or_url if "://" in path_or_url else self._url(path_or_url)
            resp = self.transport.request(
                method, url, what=what, headers=headers, auth=self._auth_header(scope),
                auth_origin=self._origin, body=body, params=params, deadline=deadline,
            )
            with self._lock:
                self.stats.requests += 1
            if resp.status_code == 401:
                self._answer_challenge(resp, scope, what, auth_tries)
                auth_tries += 1
                continue
            if resp.status_code == 403:
                raise AuthError(f"registry {self.host} denied access: cannot {what}", status=403,
                                registry_message=self._message(resp), hint=self._creds_hint())
            return resp

    def _settle_scheme(self) -> None:
        """Probe a loopback registry for TLS once; requests side by side wait for the answer."""
        with self._lock:
            if self._probe_tls:
                if speaks_tls(self.api_host, self.timeout[0]) is False:
                    log.debug("%s answers in plain HTTP; using http://", self.host)
                    self.scheme = "http"
                self._probe_tls = False

    def _answer_challenge(self, resp: requests.Response, scope: str, what: str, auth_tries: int) -> None:
        if origin(resp.url) != self._origin:
            from hatch_mcpkit._text import clean

            raise AuthError(
                f"registry {self.host} sent the request to {clean(resp.url.split('?', 1)[0], limit=200)}, "
                f"which asks for credentials; refusing to send the registry's credentials to another host",
                status=401, registry_message=self._message(resp),
            )
        challenge = parse_challenge(resp.headers.get("Www-Authenticate", ""))
        if challenge is None:
            raise AuthError(f"registry {self.host} refused to {what}", status=401,
                            registry_message=self._message(resp), hint=self._creds_hint())
        if auth_tries >= 1:
            who = f" from {self._credentials.source}" if self._credentials else ""
            raise AuthError(f"registry {self.host} refused the credentials{who}: cannot {what}", status=401,
                            registry_message=self._message(resp), hint=self._creds_hint())
        self._tokens.pop(scope, None)
        self._authenticate(challenge, scope, resp)

    def _fail(self, response: requests.Response, what: str, hint: str | None = None) -> RegistryError:
        return self.transport.fail(response, what, hint=hint)

    # ------------------------------------------------------------------ checks

    def ping(self) -> None:
        """GET /v2/: the registry answers and accepts the credentials (if it asks for any)."""
        resp = self._request("GET", "/v2/", scope="registry:catalog:*", what="answer /v2/")
        if resp.status_code != 200:
            raise self._fail(resp, "answer /v2/", hint="is this an OCI registry?")
        resp.close()

    # ------------------------------------------------------------------ blobs

    def blob_exists(self, repository: str, descriptor: Descriptor, *, push: bool = False) -> bool:
        what = f"check blob {descriptor.digest} in {repository}"
        resp = self._request("HEAD", f"/v2/{repository}/blobs/{descriptor.digest}", scope=_scope(repository, push),
                             what=what)
        if resp.status_code == 200:
            resp.close()
            length = resp.headers.get("Content-Length")
            return length is None or not length.isdigit() or int(length) == descriptor.size
        if resp.status_code == 404:
            resp.close()
            return False
        raise self._fail(resp, what)

    def upload_blob(self, repository: str, descriptor: Descriptor, path: Path | bytes, *,
                    mount_from: str | None = None) -> None:
        """Upload one blob from a file, streaming, or from bytes (POST an upload session, then one PUT);
        retried as a unit. With ``mount_from`` (another repository of this registry that holds the blob)
        the registry is asked to mount it from there first."""
        self.transport.retry(lambda: self._upload_once(repository, descriptor, path, mount_from))

    def _start_upload(self, repository: str, descriptor: Descriptor, mount_from: str | None,
                      what: str) -> requests.Response:
        """POST an upload session: with ``mount=&from=`` when there is a source, else plain; 201 or 202."""
        path = f"/v2/{repository}/blobs/uploads/"
        if mount_from is not None and mount_from != repository and is_repository_path(mount_from):
            try:
                resp = self._request("POST", path, scope=_mount_scope(repository, mount_from), what=what,
                                     headers={"Content-Length": "0"},
                                     params={"mount": descriptor.digest, "from": mount_from}, retry=False)
            except AuthError:  # may not read the source: an ordinary upload
                log.debug("no mount of %s from %s: not allowed", descriptor.digest, mount_from)
            else:
                if resp.status_code in (201, 202):
                    return resp
                resp.close()  # a registry that does not mount (400, 404, 405 ...): an ordinary upload
                log.debug("no mount of %s from %s: HTTP %s", descriptor.digest, mount_from, resp.status_code)
        resp = self._request("POST", path, scope=_scope(repository, True), what=what,
                             headers={"Content-Length": "0"}, retry=False)
        if resp.status_code not in (201, 202):
            raise self._fail(resp, what)
        return resp

    def _upload_once(self, repository: str, descriptor: Descriptor, path: Path | bytes,
                     mount_from: str | None = None) -> None:
        what = f"upload blob {descriptor.digest} to {repository}"
        scope = _scope(repository, True)
        start = self._start_upload(repository, descriptor, mount_from, what)
        start.close()
        if start.status_code == 201:  # the registry mounted it (or has it already)
            with self._lock:
                self.stats.blobs_mounted += 1
            return
        location = start.headers.get("Location")
        if not location:
            raise RegistryError(f"registry {self.host} started an upload without a Location header")
        target = urljoin(start.url, location)
        sep = "&" if "?" in target else "?"
        target = f"{target}{sep}{urlencode({'digest': descriptor.digest})}"
        resp = self._request(
            "PUT", target, scope=scope, what=what, retry=False,
            body=(lambda: path) if isinstance(path, bytes) else (lambda: Path.open(path, "rb")),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(descriptor.size)},
        )
        if resp.status_code not in (201, 204):
            raise self._fail(resp, what)
        resp.close()
        with self._lock:
            self.stats.blobs_uploaded += 1
            self.stats.bytes_uploaded += descriptor.size

    def _blob_chunks(self, repository: str, descriptor: Descriptor) -> Iterator[bytes]:
        """The blob's bytes as they arrive (one try: no retry inside), bounded by the transfer deadline."""
        what = f"download blob {descriptor.digest} from {repository}"
        clock = self.transport.start()
        resp = self._request("GET", f"/v2/{repository}/blobs/{descriptor.digest}",
                             scope=_scope(repository, False), what=what, deadline=clock, retry=False)
        if resp.status_code != 200:
            raise self._fail(resp, what)
        length = resp.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != descriptor.size:
            resp.close()
            raise IntegrityError(
                f"blob {descriptor.digest} from {self._where(repository)} has size {length}, "
                f"but the manifest says {descriptor.size}",
                digest=descriptor.digest,
            )
        if descriptor.size <= CHUNK:  # one read or a few: nothing for a helper thread to overlap
            return self.transport.chunks(resp, what=what, deadline=clock)
        return self.transport.stream(resp, what=what, deadline=clock)

    def fetch_blob(self, repository: str, descriptor: Descriptor, dest: Path, *,
                   progress: Callable[[int], None] | None = None) -> None:
        """Download a blob to ``dest``: streamed into a temporary file beside it, size and
        SHA-256 checked, then renamed into place. On any failure ``dest`` is untouched and
        the temporary file is gone. ``progress`` is told the bytes received so far (from 0 on a retry)."""
        from hatch_mcpkit._files import write_verified

        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def once() -> None:
            write_verified(self._blob_chunks(repository, descriptor), dest, digest=descriptor.digest,
                           size=descriptor.size, where=f"registry {self._where(repository)}", progress=progress)

        self.transport.retry(once)
        self.stats.blobs_downloaded += 1
        self.stats.bytes_downloaded += descriptor.size

    def read_blob(self, repository: str, descriptor: Descriptor, *, max_size: int = MAX_SMALL_BLOB) -> bytes:
        """A small blob (config, config.yaml) in memory, verified."""
        from hatch_mcpkit._files import read_verified

        if descriptor.size > max_size:
            raise RegistryError(
                f"blob {descriptor.digest} in {self._where(repository)} is {descriptor.size} bytes; "
                f"refusing to read more than {max_size} into memory"
            )
        data = self.transport.retry(lambda: read_verified(
            self._blob_chunks(repository, descriptor), digest=descriptor.digest, size=descriptor.size,
            where=f"registry {self._where(repository)}"))
        self.stats.blobs_downloaded += 1
        self.stats.bytes_downloaded += descriptor.size
        return data

    # ------------------------------------------------------------------ manifests

    def fetch_manifest(self, ref: Reference) -> RawManifest:
        """The manifest bytes for ``ref``; the digest is computed from those bytes and checked
        against a pinned digest and the registry's ``Docker-Content-Digest``."""
        return self.transport.retry(lambda: self._fetch_manifest_once(ref))

    def _fetch_manifest_once(self, ref: Reference) -> RawManifest:
        from hatch_mcpkit._text import clean

        what = f"get manifest {ref}"
        clock = self.transport.start()
        resp = self._request(
            "GET", f"/v2/{ref.repository}/manifests/{ref.identifier}",
            scope=_scope(ref.repository, False), what=what, headers={"Accept": _ACCEPT_MANIFEST},
            deadline=clock, retry=False,
        )
        if resp.status_code == 404:
            raise RegistryNotFoundError(f"{ref} not found in registry {self.host}", status=404,
                                registry_message=self._message(resp), hint="check the repository name and tag")
        if resp.status_code != 200:
            raise self._fail(resp, what)
        raw = self.transport.read_body(resp, limit=MAX_MANIFEST_BYTES, what=what, deadline=clock)
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if ref.digest and digest != ref.digest:
            raise IntegrityError(
                f"manifest of {ref} does not match the pinned digest (got {digest})", digest=ref.digest
            )
        header = resp.headers.get("Docker-Content-Digest")
        if header and header.startswith("sha256:") and header != digest:
            raise IntegrityError(
                f"manifest of {ref} has digest {digest}, but registry {self.host} says {clean(header, limit=100)}",
                digest=digest,
            )
        doc = _json(raw, f"manifest of {ref}", MAX_MANIFEST_BYTES)  # depth and size bounded before anyone parses it
        media_type = resp.headers.get("Content-Type", "").split(";", 1)[0].strip()
        if not media_type and isinstance(doc, dict) and isinstance(doc.get("mediaType"), str):
            media_type = doc["mediaType"]
        return RawManifest(raw, digest, media_type)

    def get_manifest(self, ref: Reference) -> Manifest:
        """The mcpkit bundle manifest for ``ref`` (verified; BundleError if it is not a bundle)."""
        raw = self.fetch_manifest(ref)
        return Manifest.parse(raw.raw, f"{ref}")

    def resolve(self, ref: Reference) -> str:
        """The digest ``ref`` points to now (HEAD, falling back to GET)."""
        if ref.digest:
            return ref.digest
        resp = self._request(
            "HEAD", f"/v2/{ref.repository}/manifests/{ref.identifier}",
            scope=_scope(ref.repository, False), what=f"resolve {ref}", headers={"Accept": _ACCEPT_MANIFEST},
        )
        resp.close()
        if resp.status_code == 404:
            raise RegistryNotFoundError(f"{ref} not found in registry {self.host}", status=404)
        header = resp.headers.get("Docker-Content-Digest", "")
        if resp.status_code == 200 and header.startswith("sha256:") and len(header) == 71:
            return header
        return self.fetch_manifest(ref).digest

    def put_manifest(self, repository: str, reference: str, raw: bytes, media_type: str) -> str:
        return self._put_manifest(repository, reference, raw, media_type)[0]

    def _put_manifest(self, repository: str, reference: str, raw: bytes, media_type: str) -> tuple[str, Any]:
        """PUT a manifest; its digest and the answer's headers (``OCI-Subject`` tells of a referrers API)."""
        from hatch_mcpkit._text import clean

        what = f"push manifest {repository}:{reference}"
        resp = self._request(
            "PUT", f"/v2/{repository}/manifests/{reference}", scope=_scope(repository, True), what=what,
            body=lambda: raw, headers={"Content-Type": media_type},
        )
        if resp.status_code not in (200, 201, 204):
            raise self._fail(resp, what)
        resp.close()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        header = resp.headers.get("Docker-Content-Digest")
        if header and header != digest:
            raise IntegrityError(
                f"registry {self.host} stored manifest {repository}:{reference} as {clean(header, limit=100)}, "
                f"expected {digest}",
                digest=digest,
            )
        return digest, resp.headers

    def push_layout(self, layout: BundleLayout, repository: str, tags: Sequence[str], *,
                    mount_from: Mapping[str, str] | None = None) -> str:
        """Push exactly the layout's blobs and manifest bytes; apply every tag; return the digest.

        Blobs the registry already has are skipped, so pushing twice uploads nothing. ``mount_from``
        maps a digest to another repository of this registry believed to hold it (a hint: a wrong one
        costs an upload, never a wrong blob -- the registry mounts by digest).
        """
        reference = parse_reference(f"{self.host}/{repository}")  # validates the repository
        repository = reference.repository
        for tag in tags:
            try:
                parse_reference(f"{self.host}/{repository}:{tag}")
            except InvalidReferenceError as exc:
                raise InvalidReferenceError(f"invalid tag {tag!r} for {self._where(repository)}") from exc
        manifest = layout.manifest
        blobs = manifest.blobs
        # one check alone first -- the largest blob's, which the push waits for anyway: it answers
        # the auth challenge and settles the scheme; then every blob goes side by side
        largest = max(blobs, key=lambda d: d.size, default=None)
        known = {largest.digest: self.blob_exists(repository, largest, push=True)} if largest else {}

        def ensure(desc: Descriptor) -> None:
            present = known[desc.digest] if desc.digest in known else self.blob_exists(repository, desc, push=True)
            if present:
                with self._lock:
                    self.stats.blobs_skipped += 1
                log.debug("blob %s already in %s", desc.digest, repository)
                return
            self.upload_blob(repository, desc, layout.blob_path(desc.digest),
                             mount_from=(mount_from or {}).get(desc.digest))

        self._each(ensure, blobs)
        targets = list(dict.fromkeys(tags)) or [manifest.digest]
        for target in targets:
            self.put_manifest(repository, target, manifest.raw, MANIFEST_MEDIA_TYPE)
        return manifest.digest

    def _each(self, work: Callable[[Descriptor], None], blobs: Sequence[Descriptor]) -> None:
        """``work`` for every blob, side by side (small blobs cost no time next to a large one)."""
        if len(blobs) <= 1:
            for desc in blobs:
                work(desc)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(PARALLEL_UPLOADS, len(blobs))) as pool:
            for future in [pool.submit(work, desc) for desc in sorted(blobs, key=lambda d: -d.size)]:
                future.result()

    # ------------------------------------------------------------------ referrers

    def push_referrer(self, repository: str, referrer: ReferrerManifest) -> bool:
        """Push a referrer (its blobs, then the manifest, by digest).

        True when the registry indexed it itself (it answered with ``OCI-Subject``); otherwise it
        is added to the ``sha256-<hex>`` fallback index, keeping every entry already listed, and
        False. The fallback update is read-modify-write: two signers at the same moment can lose
        one entry (the distribution spec accepts this; sign again to restore it).
        """
        from hatch_mcpkit import _referrers

        for descriptor, data in referrer.blobs:
            if not self.blob_exists(repository, descriptor, push=True):
                self.upload_blob(repository, descriptor, data)
        _, headers = self._put_manifest(repository, referrer.digest, referrer.manifest, MANIFEST_MEDIA_TYPE)
        if headers.get("OCI-Subject") == referrer.subject.digest:
            return True
        tag = _referrers.fallback_tag(referrer.subject.digest)
        index = _referrers.add_to_index(self._tagged(repository, tag), referrer.entry,
                                        where=f"{self._where(repository)}:{tag}")
        self.put_manifest(repository, tag, index, INDEX_MEDIA_TYPE)
        return False

    def referrers(self, repository: str, digest: str, *, artifact_type: str | None = None) -> list[Referrer]:
        """The manifests that refer to ``digest``: from the referrers API when the registry has one,
        else from the ``sha256-<hex>`` fallback tag; none when neither exists.

        The API and the fallback tag are asked side by side (one round trip, not two); once the
        API has answered 404 this client asks only for the fallback tag.
        """
        from hatch_mcpkit import _referrers

        where = f"referrers of {self._where(repository)}@{digest}"
        tag = _referrers.fallback_tag(digest)
        if self._referrers_api is False:
            raw = self._tagged(repository, tag)
        else:
            api, fallback = self.both(
                lambda: self.transport.retry(lambda: self._referrers_once(repository, digest, artifact_type, where)),
                lambda: self._tagged(repository, tag),
            )
            self._referrers_api = api is not None
            raw = api if api is not None else fallback
        return [] if raw is None else _referrers.read_index(raw, where=where, artifact_type=artifact_type)

    def both(self, first: Callable[[], _A], second: Callable[[], _B]) -> tuple[_A, _B]:
        """Two independent requests side by side (one round trip); the first failure is raised."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            later = pool.submit(second)
            return first(), later.result()  # (leaving the pool waits for ``second`` whatever happens)

    def _referrers_once(self, repository: str, digest: str, artifact_type: str | None, what: str) -> bytes | None:
        from hatch_mcpkit._referrers import MAX_INDEX_BYTES

        clock = self.transport.start()
        resp = self._request(
            "GET", f"/v2/{repository}/referrers/{digest}", scope=_scope(repository, False), what=f"list {what}",
            headers={"Accept": INDEX_MEDIA_TYPE}, params={"artifactType": artifact_type} if artifact_type else None,
            deadline=clock, retry=False,
        )
        if resp.status_code == 404:  # no referrers API: the client keeps the fallback tag
            resp.close()
            return None
        if resp.status_code != 200:
            raise self._fail(resp, f"list {what}")
        return self.transport.read_body(resp, limit=MAX_INDEX_BYTES, what=f"list {what}", deadline=clock)

    def _tagged(self, repository: str, tag: str) -> bytes | None:
        """The manifest or index bytes a tag names, or None when the tag does not exist."""
        try:
            return self.fetch_manifest(Reference(self.host, repository, tag)).raw
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise

    # ------------------------------------------------------------------ listings

    def _paginated(self, path: str, key: str, scope: str, what: str, valid: Callable[[str], bool]) -> Iterator[str]:
        """Items of a listing, following ``Link: rel=next`` (same URL rule, credentials only to the registry).

        Only names ``valid`` accepts (the OCI grammar of a tag or repository) are listed: anything else
        cannot be pulled and could carry a newline or a terminal sequence into a message.

        A listing that goes on past :data:`MAX_LISTING_ITEMS` items or :data:`MAX_LISTING_BYTES` bytes
        is an error: a registry does not get to grow the client without bound.
        """
        url: str | None = self._url(path)
        pages = count = size = 0
        while url:
            clock = self.transport.start()
            resp = self._request("GET", url, scope=scope, what=what, deadline=clock)
            if resp.status_code != 200:
                raise self._fail(resp, what)
            following = resp.links.get("next", {}).get("url")
            here = resp.url
            raw = self.transport.read_body(resp, limit=MAX_LISTING_PAGE, what=what, deadline=clock)
            size += len(raw)
            if size > MAX_LISTING_BYTES:
                raise self._endless(what, f"more than {MAX_LISTING_BYTES} bytes of {key}")
            body = _json(raw, f"listing from registry {self.host}", MAX_LISTING_PAGE)
            items = body.get(key) if isinstance(body, dict) else None
            for item in items if isinstance(items, list) else ():
                if isinstance(item, str) and valid(item):
                    count += 1
                    if count > MAX_LISTING_ITEMS:
                        raise self._endless(what, f"more than {MAX_LISTING_ITEMS} {key}")
                    yield item
            pages += 1
            url = urljoin(here, following) if following and pages < MAX_PAGES else None

    def _endless(self, what: str, how_many: str) -> RegistryError:
        return RegistryError(
            f"registry {self.host} lists {how_many} while trying to {what}; stopped reading there",
            hint="mcpkit reads listings only up to that size; name the bundle instead (oci://REGISTRY/REPOSITORY:TAG)",
        )

    def list_tags(self, repository: str) -> list[str]:
        what = f"list tags of {repository}"
        try:
            return list(self._paginated(f"/v2/{repository}/tags/list", "tags",
                                        _scope(repository, False), what, is_tag))
        except RegistryError as exc:
            if exc.status == 404:
                raise RegistryNotFoundError(f"repository {self._where(repository)} not found", status=404,
                                    registry_message=exc.registry_message) from None
            raise

    def catalog(self) -> list[str]:
        """Every repository (``/v2/_catalog``); many hosted registries do not allow this."""
        try:
            return list(self._paginated("/v2/_catalog", "repositories", "registry:catalog:*",
                                        "list repositories", is_repository_path))
        except RegistryError as exc:
            if exc.status in (401, 403, 404, 405):
                raise RegistryError(
                    f"registry {self.host} does not allow listing its repositories",
                    status=exc.status, registry_message=exc.registry_message,
                    hint="name the repository instead (e.g. list its tags)",
                ) from None
            raise
