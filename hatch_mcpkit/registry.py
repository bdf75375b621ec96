"""The one boundary between mcpkit and OCI registries.

Everything that talks to a registry goes through :class:`RegistryClient`. It is built on
oras-py (``oras.provider.Registry``): the HTTP session oras configures (cookies refused, as
Harbor needs) and its ``Www-Authenticate`` parser are used as they are. The request flow
itself is done here with that session, because oras-py 0.2.x gets these things wrong for
mcpkit's purposes:

* **no digest check on pull** -- oras writes whatever the registry sends. Here every blob is
  streamed to a temporary file beside its destination while its size and SHA-256 are
  checked; a mismatch raises :class:`~hatch_mcpkit.errors.IntegrityError` naming the digest
  and the temporary file is removed. Manifests are hashed too, and compared with the
  pinned digest and the registry's ``Docker-Content-Digest``.
* **retries** -- ``oras.decorator.retry`` sleeps 3, 5, 11, 29, 83 s on *any* error (404 and
  401 included). Here only connection errors and 5xx answers are retried, 3 tries with
  0.2 s / 0.5 s pauses; every request has timeouts (connect 5 s, 30 s without data) and a
  timeout is not retried, so a dead registry fails within seconds.
* **memory** -- oras' monolithic upload reads the whole blob into memory. Here uploads
  stream from the file (monolithic PUT with a file body) and downloads stream in 1 MiB
  chunks; peak memory does not grow with the blob size.
* **existing blobs** -- each blob is checked with HEAD first and skipped when present, so a
  second push of the same bundle uploads nothing.
* **token scope** -- oras keeps one bearer token and reuses a pull-only token for a push.
  Here tokens are cached per scope (``repository:<name>:pull`` or ``pull,push``,
  ``registry:catalog:*``) and each request asks for the scope it needs.
* **credentials** -- oras' ``login()`` writes ``~/.docker/config.json`` and some calls do
  not read it at all; credentials here come from :mod:`hatch_mcpkit.auth` only, and are
  never written anywhere, logged or put in a message.
* **errors** -- failures become :class:`~hatch_mcpkit.errors.RegistryError` /
  :class:`~hatch_mcpkit.errors.AuthError` with the HTTP status and the registry's own
  ``errors[0].message``.

Pushing sends exactly the blobs and manifest bytes of a built layout, so the digest printed
at build time is the digest in the registry.

TLS: certificates are checked against ``ca_file`` when given, else ``MCPKIT_CA_FILE``, else
the default bundle of ``requests`` (``REQUESTS_CA_BUNDLE`` is honoured). Plain HTTP is used
only for loopback hosts or with ``insecure=True``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlencode, urljoin, urlsplit

from hatch_mcpkit.bundle import MANIFEST_MEDIA_TYPE, Descriptor, Manifest
from hatch_mcpkit.errors import AuthError, IntegrityError, InvalidReferenceError, RegistryError
from hatch_mcpkit.reference import (
    DOCKER_HUB_API,
    Reference,
    is_loopback,
    parse_reference,
    use_plain_http,
)

if TYPE_CHECKING:
    import requests

    from hatch_mcpkit.auth import Credentials
    from hatch_mcpkit.bundle import BundleLayout

__all__ = [
    "DEFAULT_TIMEOUT",
    "RawManifest",
    "RegistryClient",
    "TransferStats",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 30.0)  # (connect, seconds without data)
RETRY_PAUSES: tuple[float, ...] = (0.2, 0.5)  # 3 tries
CHUNK = 1024 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_SMALL_BLOB = 16 * 1024 * 1024
USER_AGENT = "hatch-mcpkit"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", DOCKER_HUB_API})
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


@dataclass
class _Challenge:
    scheme: str  # "bearer" or "basic"
    realm: str | None = None
    service: str | None = None
    scope: str | None = None


def _scope(repository: str, push: bool) -> str:
    return f"repository:{repository}:{'pull,push' if push else 'pull'}"


def _registry_message(response: requests.Response) -> str | None:
    """``errors[0].message`` (with its code) from an OCI error body, if there is one."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            message = errors[0].get("message")
            code = errors[0].get("code")
            if isinstance(message, str) and message:
                return f"{code}: {message}" if isinstance(code, str) and code else message
            if isinstance(code, str):
                return code
    return None


def _covers(have: str, want: str) -> bool:
    """Scope ``have`` grants everything ``want`` asks (same resource, a superset of actions)."""
    h_res, _, h_act = have.rpartition(":")
    w_res, _, w_act = want.rpartition(":")
    return h_res == w_res and set(w_act.split(",")) <= set(h_act.split(","))


def _speaks_plain_http(exc: BaseException) -> bool:
    """An SSL error that means the server answered the TLS handshake in plain HTTP."""
    text = str(exc).lower()
    return any(s in text for s in ("wrong version number", "wrong_version_number", "record layer failure",
                                   "http request", "unexpected eof", "packet length too long"))


def _sha256_hex(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    if algorithm != "sha256" or len(hexpart) != 64:
        raise IntegrityError(f"unsupported digest {digest!r}: only sha256 is supported", digest=digest)
    return hexpart


class RegistryClient:
    """A client for one registry host (``ghcr.io``, ``localhost:5000``, ``docker.io``).

    ``credentials`` come from :func:`hatch_mcpkit.auth.resolve_credentials`; ``None`` means
    anonymous. ``timeout`` is ``(connect, read)`` seconds.
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
    ) -> None:
        import oras.provider

        self.host = host
        self.api_host = DOCKER_HUB_API if host in _DOCKER_HUB_ALIASES else host
        self.insecure = insecure
        # Loopback registries may speak either: try HTTPS first and fall back to plain HTTP
        # when the server answers the TLS handshake in plain text (as Docker does).
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
        ca = ca_file if ca_file is not None else os.environ.get("MCPKIT_CA_FILE") or None
        self.verify: bool | str = str(ca) if ca else True
        self.timeout = timeout
        self.retry_pauses = tuple(retry_pauses)
        self.stats = TransferStats()
        self._credentials = credentials
        self._oras = oras.provider.Registry(
            hostname=self.api_host, insecure=insecure, tls_verify=self.verify
        )
        self.session: requests.Session = self._oras.session
        self.session.headers["User-Agent"] = USER_AGENT
        self.session.get_redirect_target = self._checked_redirect
        self._tokens: dict[str, str] = {}
        self._basic = False  # the registry asked for HTTP basic auth

    def __repr__(self) -> str:
        return f"RegistryClient({self.host!r}, scheme={self.scheme!r}, credentials={self._credentials!r})"

    def _checked_redirect(self, response: requests.Response) -> str | None:
        """Where a redirect leads, refusing plain HTTP off loopback (unless insecure)."""
        import requests

        target = requests.Session.get_redirect_target(self.session, response)
        if target:
            parts = urlsplit(urljoin(response.url, target))
            if parts.scheme != "https" and not (self.insecure or is_loopback(parts.netloc.rsplit("@", 1)[-1])):
                response.close()
                raise RegistryError(
                    f"registry {self.host} redirected to plain HTTP at {parts.scheme}://{parts.netloc}; refusing",
                    hint="pass --insecure if you really trust this network",
                )
        return target

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ low level

    def _url(self, path: str) -> str:
        return f"{self.scheme}://{self.api_host}{path}"

    def _where(self, repository: str | None = None) -> str:
        return f"{self.host}/{repository}" if repository else self.host

    def _auth_header(self, scope: str) -> str | None:
        token = self._tokens.get(scope)
        if token:
            return f"Bearer {token}"
        if self._basic and self._credentials is not None and self._credentials.has_basic:
            return self._credentials.basic_header()
        return None

    def _parse_challenge(self, response: requests.Response) -> _Challenge | None:
        from oras.auth.utils import parse_auth_header

        raw = response.headers.get("Www-Authenticate", "")
        scheme = raw.strip().split(" ", 1)[0].lower()
        if scheme not in ("bearer", "basic"):
            return None
        parsed = parse_auth_header(raw)
        return _Challenge(scheme, parsed.realm, parsed.service, parsed.scope)

    def _creds_hint(self) -> str:
        if self._credentials is None:
            return (
                "no credentials were found; set MCPKIT_REGISTRY_USERNAME and MCPKIT_REGISTRY_PASSWORD, "
                "add distribution.auth to config.yaml, or log in with docker"
            )
        return f"check the credentials from {self._credentials.source}"

    def _authenticate(self, challenge: _Challenge, scope: str, response: requests.Response) -> None:
        """Answer a 401 challenge: remember basic auth, or fetch a token for ``scope``."""
        if challenge.scheme == "basic":
            if self._credentials is None or not self._credentials.has_basic:
                raise AuthError(
                    f"registry {self.host} requires a user name and password",
                    status=response.status_code,
                    registry_message=_registry_message(response),
                    hint=self._creds_hint(),
                )
            if self._basic:  # already sent them: refused
                raise AuthError(
                    f"registry {self.host} refused the credentials from {self._credentials.source}",
                    status=response.status_code,
                    registry_message=_registry_message(response),
                    hint=self._creds_hint(),
                )
            self._basic = True
            return
        if not challenge.realm:
            raise AuthError(f"registry {self.host} sent a bearer challenge without a realm", status=401)
        realm = challenge.realm
        parts = urlsplit(realm)
        if parts.scheme == "http" and not (self.insecure or is_loopback(parts.netloc)):
            raise AuthError(
                f"registry {self.host} wants credentials sent to a plain-HTTP token service ({realm}); refusing"
            )
        scopes = [scope]
        if challenge.scope:  # what the registry says it needs, unless ours already covers it
            scopes.extend(s for s in challenge.scope.split(" ") if s and not _covers(scope, s))
        self._tokens[scope] = self._fetch_token(realm, challenge.service, scopes)

    def _fetch_token(self, realm: str, service: str | None, scopes: list[str]) -> str:
        import requests

        creds = self._credentials
        params: list[tuple[str, str]] = []
        if service:
            params.append(("service", service))
        params.extend(("scope", s) for s in scopes)
        headers = {"Accept": "application/json"}
        try:
            if creds is not None and creds.identity_token:
                form = dict(params)
                form.update(
                    grant_type="refresh_token", refresh_token=creds.identity_token, client_id=USER_AGENT
                )
                data = urlencode([*params, *((k, v) for k, v in form.items() if k not in ("service",))])
                headers["Content-Type"] = "application/x-www-form-urlencoded"
                resp = self.session.post(realm, data=data, headers=headers, timeout=self.timeout,
                                         verify=self.verify)
            else:
                if creds is not None and creds.has_basic:
                    headers["Authorization"] = creds.basic_header()
                resp = self.session.get(realm, params=params, headers=headers, timeout=self.timeout,
                                        verify=self.verify)
        except requests.exceptions.SSLError:
            raise RegistryError(
                f"TLS verification failed for the token service of {self.host}",
                hint="pass --ca-file or set MCPKIT_CA_FILE to trust a private certificate authority",
            ) from None
        except requests.exceptions.RequestException as exc:
            raise RegistryError(
                f"cannot reach the token service of {self.host}: {type(exc).__name__}"
            ) from None
        self.stats.requests += 1
        if resp.status_code in (401, 403):
            who = f"from {creds.source}" if creds else "(anonymous)"
            raise AuthError(
                f"registry {self.host} refused the credentials {who} for {' '.join(scopes)}",
                status=resp.status_code,
                registry_message=_registry_message(resp),
                hint=self._creds_hint(),
            )
        if resp.status_code != 200:
            raise RegistryError(
                f"token service of {self.host} failed",
                status=resp.status_code,
                registry_message=_registry_message(resp),
            )
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
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
        stream: bool = False,
        params: dict[str, str] | None = None,
    ) -> requests.Response:
        """One registry call with auth challenges, bounded retries and clear errors.

        ``body`` is a factory (a file is reopened for each try). Answers other than 401 and
        retryable 5xx are returned to the caller, which checks the status.
        """
        import requests

        own = f"{self.scheme}://{self.api_host}/"
        if path_or_url.startswith(own):  # our own URL: keep it relative so a scheme switch applies
            path_or_url = path_or_url[len(own) - 1 :]
        pauses = list(self.retry_pauses)
        auth_tries = 0
        while True:
            url = path_or_url if "://" in path_or_url else self._url(path_or_url)
            hdrs = dict(headers or {})
            auth = self._auth_header(scope)
            if auth:
                hdrs["Authorization"] = auth
            data = body() if body is not None else None
            try:
                log.debug("%s %s", method, url)
                resp = self.session.request(
                    method, url, headers=hdrs, data=data, stream=stream, params=params,
                    timeout=self.timeout, verify=self.verify, allow_redirects=True,
                )
                self.stats.requests += 1
            except requests.exceptions.SSLError as exc:
                if self._probe_tls and "://" not in path_or_url and _speaks_plain_http(exc):
                    log.debug("%s answers in plain HTTP; using http://", self.host)
                    self._probe_tls = False
                    self.scheme = "http"
                    continue
                raise RegistryError(
                    f"TLS verification failed for registry {self.host} while trying to {what}",
                    hint="pass --ca-file or set MCPKIT_CA_FILE to trust a private certificate authority"
                ) from None
            except requests.exceptions.ConnectTimeout:
                raise RegistryError(
                    f"registry {self.host} did not answer within {self.timeout[0]:g} s while trying to {what}",
                    hint="check the host name and your network",
                ) from None
            except requests.exceptions.Timeout:
                raise RegistryError(
                    f"registry {self.host} stopped answering (no data for {self.timeout[1]:g} s) "
                    f"while trying to {what}",
                    hint="try again later; the registry may be overloaded",
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                if pauses:
                    time.sleep(pauses.pop(0))
                    continue
                raise RegistryError(
                    f"cannot reach registry {self.host} ({self.scheme}) to {what}: {type(exc).__name__}",
                    hint="is the registry running and the address right?",
                ) from None
            finally:
                if data is not None and hasattr(data, "close"):
                    data.close()
            self._probe_tls = False
            if resp.status_code == 401:
                challenge = self._parse_challenge(resp)
                resp.close()
                if challenge is None:
                    raise AuthError(
                        f"registry {self.host} refused to {what}", status=401,
                        registry_message=_registry_message(resp), hint=self._creds_hint(),
                    )
                if auth_tries >= 1:
                    who = f" from {self._credentials.source}" if self._credentials else ""
                    raise AuthError(
                        f"registry {self.host} refused the credentials{who}: cannot {what}",
                        status=401,
                        registry_message=_registry_message(resp),
                        hint=self._creds_hint(),
                    )
                self._tokens.pop(scope, None)
                self._authenticate(challenge, scope, resp)
                auth_tries += 1
                continue
            if resp.status_code == 403:
                msg = _registry_message(resp)
                resp.close()
                raise AuthError(
                    f"registry {self.host} denied access: cannot {what}",
                    status=403,
                    registry_message=msg,
                    hint=self._creds_hint(),
                )
            if resp.status_code in (500, 502, 503, 504) and pauses:
                log.debug("%s %s -> %s, retrying", method, url, resp.status_code)
                resp.close()
                time.sleep(pauses.pop(0))
                continue
            return resp

    def _fail(self, response: requests.Response, what: str, hint: str | None = None) -> RegistryError:
        msg = _registry_message(response)
        response.close()
        return RegistryError(f"registry {self.host} failed to {what}", status=response.status_code,
                             registry_message=msg, hint=hint)

    # ------------------------------------------------------------------ checks

    def ping(self) -> None:
        """GET /v2/: the registry answers and accepts the credentials (if it asks for any)."""
        resp = self._request("GET", "/v2/", scope="registry:catalog:*", what="answer /v2/")
        if resp.status_code != 200:
            raise self._fail(resp, "answer /v2/", hint="is this an OCI registry?")
        resp.close()

    # ------------------------------------------------------------------ blobs

    def blob_exists(self, repository: str, descriptor: Descriptor, *, push: bool = False) -> bool:
        resp = self._request(
            "HEAD", f"/v2/{repository}/blobs/{descriptor.digest}", scope=_scope(repository, push),
            what=f"check blob {descriptor.digest} in {repository}",
        )
        resp.close()
        if resp.status_code == 200:
            length = resp.headers.get("Content-Length")
            return length is None or int(length) == descriptor.size
        if resp.status_code == 404:
            return False
        raise self._fail(resp, f"check blob {descriptor.digest} in {repository}")

    def upload_blob(self, repository: str, descriptor: Descriptor, path: Path) -> None:
        """Upload one blob from a file, streaming (POST an upload session, then one PUT)."""
        what = f"upload blob {descriptor.digest} to {repository}"
        scope = _scope(repository, True)
        pauses = list(self.retry_pauses)
        while True:
            start = self._request(
                "POST", f"/v2/{repository}/blobs/uploads/", scope=scope, what=what,
                headers={"Content-Length": "0"},
            )
            if start.status_code not in (201, 202):
                raise self._fail(start, what)
            start.close()
            if start.status_code == 201:  # the registry mounted/has it already
                return
            location = start.headers.get("Location")
            if not location:
                raise RegistryError(f"registry {self.host} started an upload without a Location header")
            target = urljoin(self._url(f"/v2/{repository}/blobs/uploads/"), location)
            sep = "&" if "?" in target else "?"
            target = f"{target}{sep}{urlencode({'digest': descriptor.digest})}"
            resp = self._request(
                "PUT", target, scope=scope, what=what, body=functools.partial(Path.open, path, "rb"),
                headers={"Content-Type": "application/octet-stream",
                         "Content-Length": str(descriptor.size)},
            )
            if resp.status_code in (201, 204):
                resp.close()
                self.stats.blobs_uploaded += 1
                self.stats.bytes_uploaded += descriptor.size
                return
            if resp.status_code >= 500 and pauses:
                resp.close()
                time.sleep(pauses.pop(0))
                continue
            raise self._fail(resp, what)

    def _open_blob(self, repository: str, descriptor: Descriptor) -> requests.Response:
        what = f"download blob {descriptor.digest} from {repository}"
        resp = self._request("GET", f"/v2/{repository}/blobs/{descriptor.digest}",
                             scope=_scope(repository, False), what=what, stream=True)
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
        return resp

    def _stream_verified(self, repository: str, descriptor: Descriptor, sink: IO[bytes]) -> None:
        expected = _sha256_hex(descriptor.digest)
        resp = self._open_blob(repository, descriptor)
        h = hashlib.sha256()
        size = 0
        try:
            for chunk in resp.iter_content(CHUNK):
                size += len(chunk)
                if size > descriptor.size:
                    raise IntegrityError(
                        f"blob {descriptor.digest} from {self._where(repository)} is larger than the "
                        f"{descriptor.size} bytes the manifest says",
                        digest=descriptor.digest,
                    )
                h.update(chunk)
                sink.write(chunk)
        finally:
            resp.close()
        if size != descriptor.size:
            raise IntegrityError(
                f"blob {descriptor.digest} from {self._where(repository)} has {size} bytes, "
                f"the manifest says {descriptor.size}",
                digest=descriptor.digest,
            )
        if h.hexdigest() != expected:
            raise IntegrityError(
                f"blob {descriptor.digest} from {self._where(repository)} does not match its digest "
                f"(got sha256:{h.hexdigest()})",
                digest=descriptor.digest,
                hint="the registry's copy is damaged or was tampered with; nothing was installed",
            )
        self.stats.blobs_downloaded += 1
        self.stats.bytes_downloaded += size

    def fetch_blob(self, repository: str, descriptor: Descriptor, dest: Path) -> None:
        """Download a blob to ``dest``: streamed into a temporary file beside it, size and
        SHA-256 checked, then renamed into place. On any failure ``dest`` is untouched and
        the temporary file is gone."""
        import requests

        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        pauses = list(self.retry_pauses)
        while True:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as sink:
                    self._stream_verified(repository, descriptor, sink)
                os.replace(tmp, dest)
                return
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                tmp.unlink(missing_ok=True)
                if pauses:
                    time.sleep(pauses.pop(0))
                    continue
                raise RegistryError(
                    f"download of blob {descriptor.digest} from {self._where(repository)} broke off: "
                    f"{type(exc).__name__}"
                ) from None
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def read_blob(self, repository: str, descriptor: Descriptor, *, max_size: int = MAX_SMALL_BLOB) -> bytes:
        """A small blob (config, config.yaml) in memory, verified."""
        if descriptor.size > max_size:
            raise RegistryError(
                f"blob {descriptor.digest} in {self._where(repository)} is {descriptor.size} bytes; "
                f"refusing to read more than {max_size} into memory"
            )
        import io

        sink = io.BytesIO()
        self._stream_verified(repository, descriptor, sink)
        return sink.getvalue()

    # ------------------------------------------------------------------ manifests

    def fetch_manifest(self, ref: Reference) -> RawManifest:
        """The manifest bytes for ``ref``; the digest is computed from those bytes and checked
        against a pinned digest and the registry's ``Docker-Content-Digest``."""
        what = f"get manifest {ref}"
        resp = self._request(
            "GET", f"/v2/{ref.repository}/manifests/{ref.identifier}",
            scope=_scope(ref.repository, False), what=what, stream=True,
            headers={"Accept": _ACCEPT_MANIFEST},
        )
        if resp.status_code == 404:
            msg = _registry_message(resp)
            resp.close()
            raise RegistryError(f"{ref} not found in registry {self.host}", status=404, registry_message=msg,
                                hint="check the repository name and tag")
        if resp.status_code != 200:
            raise self._fail(resp, what)
        buf = bytearray()
        try:
            for chunk in resp.iter_content(64 * 1024):
                buf += chunk
                if len(buf) > MAX_MANIFEST_BYTES:
                    raise RegistryError(f"manifest of {ref} is larger than {MAX_MANIFEST_BYTES} bytes")
        finally:
            resp.close()
        raw = bytes(buf)
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if ref.digest and digest != ref.digest:
            raise IntegrityError(
                f"manifest of {ref} does not match the pinned digest (got {digest})", digest=ref.digest
            )
        header = resp.headers.get("Docker-Content-Digest")
        if header and header.startswith("sha256:") and header != digest:
            raise IntegrityError(
                f"manifest of {ref} has digest {digest}, but registry {self.host} says {header}",
                digest=header,
            )
        media_type = resp.headers.get("Content-Type", "").split(";", 1)[0].strip()
        if not media_type:
            with contextlib.suppress(ValueError, AttributeError):
                media_type = str(json.loads(raw).get("mediaType") or "")
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
            raise RegistryError(f"{ref} not found in registry {self.host}", status=404)
        header = resp.headers.get("Docker-Content-Digest", "")
        if resp.status_code == 200 and header.startswith("sha256:") and len(header) == 71:
            return header
        return self.fetch_manifest(ref).digest

    def put_manifest(self, repository: str, reference: str, raw: bytes, media_type: str) -> str:
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
                f"registry {self.host} stored manifest {repository}:{reference} as {header}, expected {digest}",
                digest=digest,
            )
        return digest

    def push_layout(self, layout: BundleLayout, repository: str, tags: Sequence[str]) -> str:
        """Push exactly the layout's blobs and manifest bytes; apply every tag; return the digest.

        Blobs the registry already has are skipped, so pushing twice uploads nothing.
        """
        reference = parse_reference(f"{self.host}/{repository}")  # validates the repository
        repository = reference.repository
        for tag in tags:
            try:
                parse_reference(f"{self.host}/{repository}:{tag}")
            except InvalidReferenceError as exc:
                raise InvalidReferenceError(f"invalid tag {tag!r} for {self._where(repository)}") from exc
        manifest = layout.manifest
        for desc in manifest.blobs:
            if self.blob_exists(repository, desc, push=True):
                self.stats.blobs_skipped += 1
                log.debug("blob %s already in %s", desc.digest, repository)
                continue
            self.upload_blob(repository, desc, layout.blob_path(desc.digest))
        targets = list(dict.fromkeys(tags)) or [manifest.digest]
        for target in targets:
            self.put_manifest(repository, target, manifest.raw, MANIFEST_MEDIA_TYPE)
        return manifest.digest

    # ------------------------------------------------------------------ listings

    def _paginated(self, path: str, key: str, scope: str, what: str) -> Iterator[str]:
        url: str | None = self._url(path)
        seen = 0
        while url:
            resp = self._request("GET", url, scope=scope, what=what)
            if resp.status_code != 200:
                raise self._fail(resp, what)
            try:
                body = resp.json()
            except ValueError:
                raise RegistryError(f"registry {self.host} sent a listing that is not JSON") from None
            finally:
                resp.close()
            items = body.get(key) if isinstance(body, dict) else None
            for item in items or ():
                if isinstance(item, str):
                    yield item
            seen += 1
            link = resp.headers.get("Link")
            url = None
            if link and 'rel="next"' in link and seen < 10_000:
                target = link.split(";", 1)[0].strip().strip("<>")
                url = urljoin(self._url("/"), target)

    def list_tags(self, repository: str) -> list[str]:
        what = f"list tags of {repository}"
        try:
            return list(self._paginated(f"/v2/{repository}/tags/list", "tags",
                                        _scope(repository, False), what))
        except RegistryError as exc:
            if exc.status == 404:
                raise RegistryError(f"repository {self._where(repository)} not found", status=404,
                                    registry_message=exc.registry_message) from None
            raise

    def catalog(self) -> list[str]:
        """Every repository (``/v2/_catalog``); many hosted registries do not allow this."""
        try:
            return list(self._paginated("/v2/_catalog", "repositories", "registry:catalog:*",
                                        "list repositories"))
        except RegistryError as exc:
            if exc.status in (401, 403, 404, 405):
                raise RegistryError(
                    f"registry {self.host} does not allow listing its repositories",
                    status=exc.status, registry_message=exc.registry_message,
                    hint="name the repository instead (e.g. list its tags)",
                ) from None
            raise
