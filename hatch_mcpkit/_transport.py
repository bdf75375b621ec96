"""The one HTTP transport: every request to a registry, a token service or an https download.

One policy, applied here and nowhere else:

* **URLs** -- ``https`` always; plain ``http`` only to a loopback host or with ``insecure``
  (:func:`check_url`). The same rule covers the first URL, every redirect and every URL a
  server hands back (an upload ``Location``, a ``Link: rel=next``, a token ``realm``); a
  redirect from ``https`` down to ``http`` is refused unless ``insecure``.
* **TLS** -- certificates are always checked; ``insecure`` never turns that off. The CA
  bundle is, in order: the ``ca_file`` argument (``--ca-file``), ``MCPKIT_CA_FILE``,
  ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``, else the default bundle (:func:`ca_bundle`).
  A registry's ``certs.d`` folder (:func:`certs_d_folder`: the first of
  ``~/.config/containers/certs.d/<host[:port]>`` and :data:`CERTS_D_ROOTS`, as podman and
  Docker read them) adds its ``*.crt`` CA roots to that bundle, and its ``*.cert``/``*.key``
  pair as the client certificate, for requests to that registry's origin only
  (:meth:`Transport.use_certs_d`).
* **credentials** -- an ``Authorization`` value handed to :meth:`Transport.request` is sent
  only to the origin (scheme, host, port) it belongs to. Redirects are followed here, at
  most :data:`MAX_REDIRECTS`, and a hop to another origin goes without it (a blob store
  behind a registry gets no registry credentials).
* **time** -- a connect timeout, a per-read timeout and an overall deadline per transfer
  (:func:`transfer_deadline`: the ``deadline`` argument (``--transfer-deadline``), else
  ``MCPKIT_TRANSFER_DEADLINE``, else :data:`DEFAULT_DEADLINE` seconds). Bodies are read one
  ``recv`` at a time with the socket timeout cut to the time left, so a server dripping a
  byte every few seconds hits the deadline. (The status line and headers are bounded by the
  per-read timeout, cut to the time left when the request is sent.)
* **memory** -- nothing reads a body whole: :meth:`Transport.read_body` stops at a limit,
  :meth:`Transport.error_body` at :data:`ERROR_BODY_CAP` (64 KiB), and blobs stream
  (:meth:`Transport.stream` receives at most :data:`AHEAD` chunks ahead on a helper thread,
  so the network, SHA-256 and the disk overlap).
* **identity** -- every request (registry, token service, download) says who asks:
  ``User-Agent: hatch-mcpkit/<version> (python <x.y>; <system> <machine>)`` (:func:`user_agent`).
* **loopback scheme** -- where plain HTTP is allowed anyway, :func:`speaks_tls` picks http or
  https with a bare handshake before the first request (as Docker tries https first).
* **retries** -- one layer, :meth:`Transport.retry`: connection errors, bodies that break
  off and 500/502/503/504 answers are :class:`TransientError` and are tried again after the
  pauses in ``retry_pauses`` (3 tries by default); a timeout or a deadline is not retried.
  A unit of work (one request, an upload session, a blob download) is retried as a whole;
  nothing inside a unit retries on its own.

oras-py is used for what it does well: the ``requests`` session it sets up (cookies refused,
as Harbor needs) and its ``Www-Authenticate`` parser (:func:`parse_challenge`). It cannot
serve the rest -- its requests follow redirects with ``requests``' own policy (no plain-HTTP
check, ``Authorization`` kept on same-host downgrades), it retries any error with minutes of
sleeping, it has no transfer deadline and reads error bodies whole -- so that is done here
with its session, without touching its internals.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urljoin, urlsplit

from hatch_mcpkit.errors import BundleError, RegistryError, UsageError
from hatch_mcpkit.reference import is_loopback

if TYPE_CHECKING:
    import ssl

    import requests
    import requests.adapters

__all__ = [
    "CERTS_D_ROOTS",
    "CHUNK",
    "DEFAULT_DEADLINE",
    "DEFAULT_TIMEOUT",
    "ERROR_BODY_CAP",
    "RETRY_PAUSES",
    "CertsD",
    "Challenge",
    "Deadline",
    "TransientError",
    "Transport",
    "ca_bundle",
    "certs_d_folder",
    "check_url",
    "download",
    "origin",
    "parse_challenge",
    "speaks_tls",
    "transfer_deadline",
    "user_agent",
]

T = TypeVar("T")

DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 30.0)  # (connect, seconds without data)
DEFAULT_DEADLINE = 900.0  # seconds for one transfer, start to last byte
RETRY_PAUSES: tuple[float, ...] = (0.2, 0.5)  # 3 tries
ERROR_BODY_CAP = 64 * 1024
CHUNK = 1024 * 1024
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
CA_VARIABLES = ("MCPKIT_CA_FILE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
# system-wide certs.d roots, after the user's ~/.config/containers/certs.d (a tuple, so tests can swap it)
CERTS_D_ROOTS: tuple[Path, ...] = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))


class TransientError(RegistryError):
    """A failure worth another try (connection lost, body broken off, 5xx); raised as is once tries run out."""


# --------------------------------------------------------------------------- policy


def ca_bundle(ca_file: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> str | bool:
    """What to verify certificates against: a CA file (or folder), or ``True`` for the default bundle. Never ``False``."""
    return _ca_choice(ca_file, environ)[0]


def _ca_choice(ca_file: str | os.PathLike[str] | None, environ: Mapping[str, str] | None) -> tuple[str | bool, str]:
    """:func:`ca_bundle` and where it was given (``--ca-file`` or the variable's name)."""
    if ca_file:
        return str(ca_file), "--ca-file"
    env = os.environ if environ is None else environ
    for name in CA_VARIABLES:
        if env.get(name):
            return env[name], name
    return True, "the default bundle"


def _missing_ca(path: str, where: str) -> UsageError:
    return UsageError(f"{where} names {path}, which does not exist: no certificate can be checked against it",
                      hint=f"point {where} at a PEM file of CA certificates, or unset it to use the default ones")


def certs_d_folder(host: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """The ``certs.d`` folder of registry ``host`` (``host[:port]``): the first that exists of
    ``$HOME/.config/containers/certs.d/<host>`` and each of :data:`CERTS_D_ROOTS` (as podman does)."""
    env = os.environ if environ is None else environ
    if not host or "/" in host or host.startswith(".") or "\\" in host:
        return None
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    for root in (home / ".config" / "containers" / "certs.d", *CERTS_D_ROOTS):
        folder = root / host
        if folder.is_dir():
            return folder
    return None


@dataclass(frozen=True)
class CertsD:
    """What a ``certs.d`` folder holds: CA roots (``*.crt``) and at most one client certificate pair."""

    folder: Path
    roots: tuple[Path, ...]
    client: tuple[Path, Path] | None

    @classmethod
    def read(cls, folder: Path) -> CertsD:
        files = sorted(p for p in folder.iterdir() if p.is_file())
        roots = tuple(p for p in files if p.suffix == ".crt")
        certs = {p.stem: p for p in files if p.suffix == ".cert"}
        keys = {p.stem: p for p in files if p.suffix == ".key"}
        for stem in sorted(set(certs) ^ set(keys)):
            have, missing = (certs[stem], f"{stem}.key") if stem in certs else (keys[stem], f"{stem}.cert")
            raise RegistryError(f"{have}: client certificate without its pair ({missing} is missing in {folder})",
                                hint="a client certificate needs both NAME.cert and NAME.key; remove the single file "
                                     "or add its partner")
        pairs = [(certs[stem], keys[stem]) for stem in sorted(certs)]
        return cls(folder, roots, pairs[0] if pairs else None)

    def context(self, verify: str | bool) -> ssl.SSLContext:
        """A context that trusts ``verify`` (the bundle in use) plus these roots and presents the client certificate."""
        import ssl

        from requests.utils import DEFAULT_CA_BUNDLE_PATH

        base = DEFAULT_CA_BUNDLE_PATH if verify is True else str(verify)
        is_dir = os.path.isdir(base)
        context = ssl.create_default_context(cafile=None if is_dir else base, capath=base if is_dir else None)
        for path in self.roots:
            self._load(path, "a CA certificate", functools.partial(context.load_verify_locations, cafile=str(path)))
        if self.client is not None:
            cert, key = self.client
            # an encrypted key gets an empty password, never OpenSSL's prompt on the terminal
            self._load(cert, "a client certificate with its key",
                       lambda: context.load_cert_chain(str(cert), str(key), password=lambda: b""))
        return context

    @staticmethod
    def _load(path: Path, what: str, load: Callable[[], None]) -> None:
        import ssl

        try:
            load()
        except (ssl.SSLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
            raise RegistryError(f"{path}: cannot load it as {what} ({reason})",
                                hint="certs.d files are PEM: NAME.crt (a CA), NAME.cert + NAME.key (a client "
                                     "certificate, the key unencrypted)") from None


def _tls_adapter(context: ssl.SSLContext) -> requests.adapters.HTTPAdapter:
    """A ``requests`` adapter whose connections use ``context`` (roots and client certificate) and nothing else."""
    from requests.adapters import HTTPAdapter

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **kw: Any) -> None:
            super().init_poolmanager(connections, maxsize, block, ssl_context=context, **kw)

        def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:  # HTTPS_PROXY: the same context
            return super().proxy_manager_for(proxy, ssl_context=context, **proxy_kwargs)

        def build_connection_pool_key_attributes(self, request: Any, verify: Any, cert: Any = None) -> Any:
            return super().build_connection_pool_key_attributes(request, True, None)

        def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
            conn.cert_reqs = "CERT_REQUIRED"  # always: the context holds the roots; never CERT_NONE
            conn.ca_certs = conn.ca_cert_dir = None

    return Adapter()


def transfer_deadline(seconds: float | None = None, environ: Mapping[str, str] | None = None) -> float:
    """The overall deadline of one transfer: ``seconds``, else ``MCPKIT_TRANSFER_DEADLINE``, else the default."""
    if seconds is not None:
        value, where = seconds, "--transfer-deadline"
    else:
        env = os.environ if environ is None else environ
        text = env.get("MCPKIT_TRANSFER_DEADLINE", "").strip()
        if not text:
            return DEFAULT_DEADLINE
        where = "MCPKIT_TRANSFER_DEADLINE"
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"{where}={text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{where} must be a positive number of seconds, not {value!r}")
    return float(value)


def origin(url: str) -> tuple[str, str]:
    """``(scheme, host[:port])`` of ``url``, lower-cased, default ports dropped, user info removed."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != {"https": 443, "http": 80}.get(scheme):
        host = f"{host}:{port}"
    return scheme, host


def check_url(url: str, *, insecure: bool, where: str, came_from: str | None = None) -> None:
    """The one plain-HTTP rule: ``https``, or ``http`` to loopback / with ``insecure``; no https->http hops."""
    from hatch_mcpkit._text import clean

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    shown = clean(f"{scheme}://{parts.netloc.rsplit('@', 1)[-1]}")
    if scheme not in ("https", "http"):
        raise RegistryError(f"{where}: refusing a URL that is not http(s): {clean(url, limit=200)}")
    if scheme == "https":
        return
    if insecure:
        return
    downgrade = came_from is not None and urlsplit(came_from).scheme.lower() == "https"
    if not downgrade and is_loopback(parts.netloc.rsplit("@", 1)[-1]):
        return
    why = "down from https" if downgrade else "off this machine"
    if came_from is not None:
        message = f"{where}: refusing a redirect to plain HTTP {why} ({shown})"
    else:
        message = f"{where}: refusing plain HTTP to {shown}: only loopback hosts may use it"
    raise RegistryError(message, hint="use https, or pass --insecure if you really trust this network")


@dataclass(frozen=True)
class Challenge:
    """A parsed ``Www-Authenticate`` header."""

    scheme: str  # "bearer" or "basic"
    realm: str | None = None
    service: str | None = None
    scope: str | None = None


def parse_challenge(header: str) -> Challenge | None:
    """oras-py's parser for the header; ``None`` for schemes other than Bearer and Basic."""
    from oras.auth.utils import parse_auth_header

    scheme = header.strip().split(" ", 1)[0].lower()
    if scheme not in ("bearer", "basic"):
        return None
    parsed = parse_auth_header(header)
    return Challenge(scheme, parsed.realm, parsed.service, parsed.scope)


def _answered_in_plain_text(exc: BaseException) -> bool:
    """An SSL error that means the server answered the TLS handshake in plain HTTP."""
    text = str(exc).lower()
    return any(s in text for s in ("wrong version number", "wrong_version_number", "record layer failure",
                                   "http request", "unexpected eof", "packet length too long"))


def speaks_tls(netloc: str, timeout: float) -> bool | None:
    """Whether the server at ``host:port`` answers a TLS handshake (``None``: it cannot be reached).

    Used only where plain HTTP is allowed anyway (loopback), to choose the scheme the way Docker
    does, before any request: no request is sent over this connection and nothing from it is
    trusted -- the request that follows checks the certificate as always. Cheaper than letting a
    failed HTTPS request find out (that loads the whole CA bundle first).
    """
    import ssl

    parts = urlsplit(f"//{netloc}")
    host, port = parts.hostname or "", parts.port or 443
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock, \
                context.wrap_socket(sock, server_hostname=host):
            return True
    except ssl.SSLError as exc:
        return not _answered_in_plain_text(exc)
    except OSError:
        return None


class Deadline:
    """The end of one transfer, as a monotonic time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def user_agent() -> str:
    """``hatch-mcpkit/<version> (python <x.y>; <platform>)``: sent with every request."""
    import platform
    import sys

    from hatch_mcpkit.__about__ import __version__

    system = f"{platform.system() or sys.platform} {platform.machine()}".strip().lower()
    return f"hatch-mcpkit/{__version__} (python {sys.version_info[0]}.{sys.version_info[1]}; {system})"


def _session() -> requests.Session:
    """oras-py's session set-up (cookies refused), with our user agent."""
    try:
        import oras.provider
    except ImportError:  # the https download path works with requests alone
        import requests

        session = requests.Session()
        from http.cookiejar import DefaultCookiePolicy

        session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    else:
        session = oras.provider.Registry(hostname=None).session
    session.headers["User-Agent"] = user_agent()
    return session


def _socket_of(resp: requests.Response) -> socket.socket | None:
    conn = getattr(resp.raw, "connection", None)
    sock = getattr(conn, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


# --------------------------------------------------------------------------- the transport


class Transport:
    """A session with the policy above. ``label`` names the other side in messages ("registry ghcr.io")."""

    def __init__(
        self,
        label: str,
        *,
        insecure: bool = False,
        ca_file: str | os.PathLike[str] | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        deadline: float | None = None,
        retry_pauses: tuple[float, ...] = RETRY_PAUSES,
    ) -> None:
        self.label = label
        self.insecure = insecure
        self.verify, self._ca_source = _ca_choice(ca_file, None)
        self.timeout = timeout
        self.deadline = transfer_deadline(deadline)
        self.retry_pauses = tuple(retry_pauses)
        self.requests = 0
        self.session = _session()
        self.certs_d: Path | None = None
        self.registry_host: str | None = None  # set for a registry: its certs.d folder is one place for a CA

    def use_certs_d(self, host: str, netloc: str | None = None) -> Path | None:
        """Trust the ``certs.d`` folder of registry ``host`` for ``https://<netloc or host>/`` only; the folder used."""
        self.registry_host = host
        folder = certs_d_folder(host)
        if folder is None:
            return None
        entry = CertsD.read(folder)
        if entry.roots or entry.client:
            self._check_ca()
            self.session.mount(f"https://{(netloc or host).lower()}/", _tls_adapter(entry.context(self.verify)))
            self.certs_d = folder
        return folder

    def _check_ca(self) -> None:
        """A CA file that is not there is the user's mistake to hear about (only once TLS is needed)."""
        if isinstance(self.verify, str) and not os.path.exists(self.verify):
            raise _missing_ca(self.verify, self._ca_source)

    def close(self) -> None:
        self.session.close()

    def start(self) -> Deadline:
        return Deadline(self.deadline)

    # ------------------------------------------------------------------ retries

    def retry(self, unit: Callable[[], T]) -> T:
        """Run ``unit``; after a :class:`TransientError` wait and run it again, a bounded number of times."""
        pauses = list(self.retry_pauses)
        while True:
            try:
                return unit()
            except TransientError:
                if not pauses:
                    raise
                time.sleep(pauses.pop(0))

    # ------------------------------------------------------------------ requests

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: Mapping[str, str] | None = None,
        auth: str | None = None,
        auth_origin: tuple[str, str] | None = None,
        body: Callable[[], Any] | None = None,
        params: Mapping[str, str] | list[tuple[str, str]] | None = None,
        deadline: Deadline | None = None,
    ) -> requests.Response:
        """One request (no retry), following redirects under the policy; the body is left unread.

        ``auth`` (an ``Authorization`` value) goes only to ``auth_origin`` (default: ``url``'s); a body
        (a token request's refresh token, an upload) only to ``url``'s origin: a 307/308 elsewhere is refused.
        ``body`` is a factory, so a retry re-opens a file. Raises :class:`TransientError` for
        what is worth another try, :class:`RegistryError` for the rest.
        """
        deadline = deadline or self.start()
        owner = auth_origin or origin(url)
        body_owner = origin(url)
        check_url(url, insecure=self.insecure, where=self.label)
        came_from: str | None = None
        for _hop in range(MAX_REDIRECTS + 1):
            if came_from is not None:
                check_url(url, insecure=self.insecure, where=self.label, came_from=came_from)
                if body is not None and origin(url) != body_owner:
                    raise self._body_elsewhere(url, what)
            hdrs = dict(headers or {})
            if auth and origin(url) == owner:
                hdrs["Authorization"] = auth
            resp = self._send(method, url, hdrs, body, params, deadline, what)
            if resp.status_code not in _REDIRECTS or "Location" not in resp.headers:
                if resp.status_code in _TRANSIENT_STATUS:
                    raise self.fail(resp, what, transient=True)
                return resp
            target = urljoin(url, resp.headers["Location"])
            resp.close()
            if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
                method, body = "GET", None
            came_from, url, params = url, target, None
        raise RegistryError(f"{self.label}: more than {MAX_REDIRECTS} redirects while trying to {what}")

    def _body_elsewhere(self, url: str, what: str) -> RegistryError:
        from hatch_mcpkit._text import clean

        parts = urlsplit(url)
        return RegistryError(
            f"{self.label} redirected the request to {clean(parts.scheme)}://{clean(parts.netloc.rsplit('@', 1)[-1])}, "
            f"another host, while trying to {what}; refusing to send the request body there "
            "(it may carry credentials)",
            hint="a request with a body is only ever sent to the host it was made for",
        )

    def _send(self, method: str, url: str, headers: dict[str, str], body: Callable[[], Any] | None,
              params: Any, deadline: Deadline, what: str) -> requests.Response:
        import requests

        left = deadline.left()
        if left <= 0:
            raise self._late(deadline, what)
        if url[:6].lower() == "https:":
            self._check_ca()
        data = body() if body is not None else None
        try:
            resp = self.session.request(
                method, url, headers=headers, data=data, params=params, stream=True,
                timeout=(min(self.timeout[0], left), min(self.timeout[1], left)),
                verify=self.verify, allow_redirects=False,
            )
            self.requests += 1
            return resp
        except requests.exceptions.SSLError as exc:
            raise RegistryError(
                f"TLS verification failed for {self.label} while trying to {what}",
                hint="pass --ca-file (or set MCPKIT_CA_FILE) to trust a private certificate authority"
                     + (f", or put it in {self.certs_d or f'~/.config/containers/certs.d/{self.registry_host}'}/ca.crt"
                        if self.registry_host and origin(url)[1] == self.registry_host.lower() else "")
                     + "; --insecure never turns certificate checks off",
            ) from exc
        except requests.exceptions.ConnectTimeout:
            raise RegistryError(
                f"{self.label} did not answer within {self.timeout[0]:g} s while trying to {what}",
                hint="check the host name and your network",
            ) from None
        except requests.exceptions.Timeout:
            raise self._stalled(deadline, what) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise TransientError(
                f"cannot reach {self.label} to {what}: {type(exc).__name__}",
                hint="is the server running and the address right?",
            ) from None
        finally:
            if data is not None and hasattr(data, "close"):
                data.close()

    def _stalled(self, deadline: Deadline, what: str) -> RegistryError:
        """A read that timed out: the transfer deadline if that is what ran out, else the per-read timeout."""
        if deadline.left() <= 0:
            return self._late(deadline, what)
        return RegistryError(
            f"{self.label} stopped answering (no data for {self.timeout[1]:g} s) while trying to {what}",
            hint="try again later; the server may be overloaded",
        )

    def _late(self, deadline: Deadline, what: str) -> RegistryError:
        return RegistryError(
            f"{self.label} took longer than the {deadline.seconds:g} s transfer deadline while trying to {what}",
            hint="raise it with --transfer-deadline or MCPKIT_TRANSFER_DEADLINE if the network is just slow",
        )

    # ------------------------------------------------------------------ bodies

    def chunks(self, resp: requests.Response, *, what: str, deadline: Deadline,
               size: int = CHUNK) -> Iterator[bytes]:
        """The body of ``resp`` as it arrives, one ``recv`` at a time, bounded by ``deadline``; closes ``resp``."""
        import urllib3.exceptions

        sock = _socket_of(resp)
        raw = resp.raw
        # decoding goes through urllib3's buffer (two more copies of every byte): only when needed
        decode = resp.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
        try:
            while True:
                left = deadline.left()
                if left <= 0:
                    raise self._late(deadline, what)
                if sock is not None and not raw.closed:  # closed: the last bytes are in, the connection is
                    sock.settimeout(min(self.timeout[1], left))  # back in the pool (maybe another thread's)
                try:
                    chunk = raw.read1(size, decode_content=decode)
                except (urllib3.exceptions.ReadTimeoutError, TimeoutError):
                    raise self._stalled(deadline, what) from None
                except (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError, OSError) as exc:
                    raise TransientError(f"{self.label}: transfer broke off while trying to {what}: "
                                         f"{type(exc).__name__}") from None
                if not chunk:
                    return
                yield chunk
        finally:
            resp.close()

    def stream(self, resp: requests.Response, *, what: str, deadline: Deadline) -> Iterator[bytes]:
        """:meth:`chunks` received ahead on a helper thread (at most :data:`AHEAD` chunks in memory), so
        the network, hashing and writing overlap; for blobs. Closes ``resp`` however the consumer stops."""
        return _ahead(self.chunks(resp, what=what, deadline=deadline))

    def read_body(self, resp: requests.Response, *, limit: int, what: str, deadline: Deadline | None = None,
                  error: type[RegistryError] = RegistryError) -> bytes:
        """The whole body of ``resp`` in memory, refusing more than ``limit`` bytes; closes ``resp``."""
        buf = bytearray()
        for chunk in self.chunks(resp, what=what, deadline=deadline or self.start(), size=64 * 1024):
            buf += chunk
            if len(buf) > limit:
                resp.close()
                raise error(f"{self.label} sent more than {limit} bytes while trying to {what}")
        return bytes(buf)

    def error_body(self, resp: requests.Response) -> bytes:
        """At most :data:`ERROR_BODY_CAP` bytes of an error answer (never the whole of an endless one)."""
        buf = bytearray()
        try:
            for chunk in self.chunks(resp, what="read an error answer", deadline=Deadline(min(self.timeout[1], 10.0)),
                                     size=16 * 1024):
                buf += chunk
                if len(buf) >= ERROR_BODY_CAP:
                    break
        except RegistryError:
            pass
        finally:
            resp.close()
        return bytes(buf[:ERROR_BODY_CAP])

    def fail(self, resp: requests.Response, what: str, *, transient: bool = False,
             hint: str | None = None) -> RegistryError:
        """A :class:`RegistryError` for an unexpected answer, with the server's own message (cleaned)."""
        message = error_message(self.error_body(resp))
        cls = TransientError if transient else RegistryError
        return cls(f"{self.label} failed to {what}", status=resp.status_code, registry_message=message, hint=hint)


def error_message(body: bytes) -> str | None:
    """``errors[0].message`` (with its code) of an OCI error body, made terminal-safe; ``None`` if there is none."""
    from hatch_mcpkit._json import load
    from hatch_mcpkit._text import clean

    if not body:
        return None
    try:
        doc = load(body, where="error answer", error=RegistryError, max_bytes=ERROR_BODY_CAP)
    except RegistryError:
        return None
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not (isinstance(errors, list) and errors and isinstance(errors[0], dict)):
        return None
    message, code = errors[0].get("message"), errors[0].get("code")
    if isinstance(message, str) and message:
        text = f"{code}: {message}" if isinstance(code, str) and code else message
    elif isinstance(code, str) and code:
        text = code
    else:
        return None
    return clean(text, limit=500)


_END = object()
AHEAD = 4


def _ahead(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Run ``chunks`` on a daemon thread, up to :data:`AHEAD` items ahead; errors arrive in order.

    The thread alone drives (and finally closes) the generator; when the consumer stops early it
    says so and the thread closes the generator at its next step.
    """
    import queue
    import threading

    box: queue.Queue[object] = queue.Queue(maxsize=AHEAD)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    threading.Thread(target=pump, name="mcpkit-receive", daemon=True).start()
    try:
        while True:
            item = box.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()


# --------------------------------------------------------------------------- https downloads


def download(url: str, dest: Path, *, max_bytes: int, ca_file: str | None = None, insecure: bool = False,
             deadline: float | None = None, timeout: tuple[float, float] = DEFAULT_TIMEOUT,
             progress: Callable[[int, int], None] | None = None) -> str:
    """Stream ``url`` into ``dest`` (removed on failure); return the SHA-256 hex of what was written.

    ``insecure`` allows plain HTTP; certificates are checked all the same. ``progress`` is told
    (bytes received, the declared Content-Length or 0) after each chunk, from 0 again on a retry.
    """
    import hashlib

    from hatch_mcpkit._text import clean

    shown = clean(url, limit=300)
    transport = Transport(shown, insecure=insecure, ca_file=ca_file, timeout=timeout, deadline=deadline)

    def once() -> str:
        clock = transport.start()
        resp = transport.request("GET", url, what="download", deadline=clock)
        if resp.status_code != 200:
            raise transport.fail(resp, "download")
        length = resp.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > max_bytes:
            resp.close()
            raise BundleError(f"{shown}: download is {int(length)} bytes, more than the {max_bytes} byte limit")
        h = hashlib.sha256()
        written = 0
        declared = int(length) if length.isdigit() else 0
        with open(dest, "wb") as out:
            for chunk in transport.stream(resp, what="download", deadline=clock):
                written += len(chunk)
                if written > max_bytes:
                    raise BundleError(f"{shown}: download is larger than the {max_bytes} byte limit")
                h.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress(written, declared)
        return h.hexdigest()

    try:
        return transport.retry(once)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        transport.close()
