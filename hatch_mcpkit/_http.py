"""MCP over streamable HTTP: the SDK's transport at ``/mcp``, stateless, behind a bearer token.

Everything protocol-shaped is the ``mcp`` SDK's: ``StreamableHTTPSessionManager`` in
stateless mode (a fresh transport per request, so any replica can answer any request and
replicas share nothing), answering each POST with a short SSE stream (so a long call's
progress notifications reach the client before its result; sse-starlette's drain-on-SIGTERM
is turned off, so a graceful stop lets every answer in flight complete), its
``RequestBodyLimitMiddleware`` (413 past the limit), its ``TransportSecuritySettings`` (``Host`` and ``Origin`` checked against DNS rebinding:
421 and 403), its ``BearerAuthBackend`` + ``RequireAuthMiddleware`` (401 with
``WWW-Authenticate: Bearer``). ``GET /mcp`` is 405: a stateless server has no stream to offer.
This module only chooses their settings, checks the token
in constant time and runs the app under uvicorn, with no access log (a URL or header
never reaches a log line), a deadline on request headers (:mod:`hatch_mcpkit._h11`: a
connection that never finishes its request is closed) and a bounded graceful shutdown on
SIGTERM and SIGINT.

The token is the server's own: from ``MCPKIT_SERVER_TOKEN``, or generated for this run.
Either way it is taken out of this process's environment before any bundle is loaded, so
no module can be granted it through ``policy.environment``.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hatch_mcpkit.errors import UsageError

if TYPE_CHECKING:
    from mcp.server.lowlevel import Server

    from hatch_mcpkit._signals import Stop

__all__ = ["HEADER_TIMEOUT", "MAX_BODY", "TOKEN_ENV", "HttpOptions", "HttpPlan", "bind", "http_app", "is_loopback",
           "is_wildcard", "own_hosts", "parse_address", "prepare", "serve_http", "take_token"]

TOKEN_ENV = "MCPKIT_SERVER_TOKEN"
MAX_BODY = 4 << 20  # bytes of one request body; more is answered 413 before it is parsed
MIN_TOKEN = 16
SHUTDOWN_GRACE = 10.0  # seconds in-flight requests get after SIGTERM/SIGINT before they are cancelled
HEADER_TIMEOUT = 10.0  # seconds a connection has to send a whole request line and headers
# uvicorn's h11 protocol with that deadline (hatch_mcpkit._h11), named so uvicorn imports it itself, as it
# imports its own: after it has taken over SIGINT/SIGTERM
PROTOCOL = "hatch_mcpkit._h11:HeadersInTime"
ENDPOINT = "/mcp"


@dataclass(frozen=True)
class HttpOptions:
    """How to serve: where, the token (``None``: no auth), who may call, the body limit."""

    host: str
    port: int
    token: str | None = field(repr=False)  # never in a repr, a log line or a traceback's text
    allow_hosts: Sequence[str] = ()
    allow_origins: Sequence[str] = ()
    max_body: int = MAX_BODY
    shutdown_grace: float = SHUTDOWN_GRACE


# --------------------------------------------------------------------------- address and token


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6; port 0 picks a free one) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if (not sep or not host or not port.isdigit() or int(port) > 65535 or "[" in host or "]" in host
            or (":" in host and not bracketed)):
        raise UsageError(f"--http {text!r} is not HOST:PORT", hint="e.g. --http 127.0.0.1:8080, "
                         "--http [::1]:8080, or --http 0.0.0.0:8080 to listen on every interface")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable only from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def take_token(host: str, *, no_auth: bool, environ: MutableMapping[str, str] | None = None) -> tuple[str | None, bool]:
    """(the token, whether it was generated); ``(None, False)`` with ``--no-auth`` on loopback.

    ``MCPKIT_SERVER_TOKEN`` is removed from ``environ`` (default ``os.environ``) either way,
    so nothing started or loaded afterwards can read it.
    """
    env = os.environ if environ is None else environ
    given = env.pop(TOKEN_ENV, None)
    if no_auth:
        if not is_loopback(host):
            raise UsageError(f"--no-auth is refused on {host}: anyone who can reach that address could call "
                             "every tool", hint=f"bind a loopback address (127.0.0.1, ::1, localhost), or keep "
                             f"the bearer token (set {TOKEN_ENV} on every replica)")
        return None, False
    if given is None:
        return secrets.token_urlsafe(32), True
    if len(given) < MIN_TOKEN or not all(0x21 <= ord(c) <= 0x7E for c in given):
        raise UsageError(f"{TOKEN_ENV} must be at least {MIN_TOKEN} printable ASCII characters without spaces",
                         hint="generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return given, False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 gets a free one (read it back with getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                         hint="choose another port, or stop what is using it") from None
    sock.set_inheritable(True)
    return sock


# --------------------------------------------------------------------------- the app


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_wildcard(host: str) -> bool:
    """Whether ``host`` means every interface (``0.0.0.0``, ``::``)."""
    return host in ("0.0.0.0", "::")


def own_hosts(options: HttpOptions) -> list[str]:
    """The ``Host`` values accepted without ``--allow-host``: this address and port, and its loopback names."""
    names = [options.host]
    if is_loopback(options.host) or is_wildcard(options.host):
        names += ["127.0.0.1", "localhost", "::1"]  # a port-forward or health check on this machine
    return [_hostport(n, options.port) for n in dict.fromkeys(n for n in names if not is_wildcard(n))]


def _security(options: HttpOptions) -> Any:
    """Host/Origin allow-lists: :func:`own_hosts` (and them as ``http://`` origins), plus the options'."""
    from mcp.server.transport_security import TransportSecuritySettings

    hosts = own_hosts(options)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*hosts, *options.allow_hosts],
        allowed_origins=[*(f"http://{h}" for h in hosts), *options.allow_origins],
    )


class _Token:
    """The SDK's ``TokenVerifier`` for one static token, compared in constant time."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def verify_token(self, token: str) -> Any:
        from mcp.server.auth.provider import AccessToken

        if hmac.compare_digest(token.encode("utf-8", "surrogateescape"), self._token):
            return AccessToken(token="(server token)", client_id="mcpkit", scopes=[])
        return None


class _PostOnly:
    """``GET /mcp`` answered 405 (the transport lets a server say so): stateless, no stream can ever carry
    anything to a client, yet the SDK would hold one open for as long as the client likes -- the
    TypeScript SDK opens one per session -- each a server task, every graceful stop waiting the whole
    grace for them and logging a traceback each."""

    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            from starlette.responses import Response

            await Response(status_code=405, headers={"Allow": "POST"})(scope, receive, send)
            return
        await self._app(scope, receive, send)


def http_app(server: Server[Any], options: HttpOptions) -> Any:
    """The ASGI app: ``/mcp`` on the SDK's stateless session manager, behind the bearer check."""
    from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
    from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware
    from starlette.routing import Route

    manager = StreamableHTTPSessionManager(app=server, stateless=True, json_response=False,
                                           security_settings=_security(options),
                                           max_request_body_size=options.max_body)
    endpoint: Any = _PostOnly(StreamableHTTPASGIApp(manager))
    middleware = []
    if options.token is not None:
        endpoint = RequireAuthMiddleware(endpoint, required_scopes=[])
        middleware = [Middleware(AuthenticationMiddleware, backend=BearerAuthBackend(_Token(options.token)))]
    return Starlette(routes=[Route(ENDPOINT, endpoint=endpoint)], middleware=middleware,
                     lifespan=lambda _app: manager.run())


# --------------------------------------------------------------------------- serving


def serve_http(server: Server[Any], options: HttpOptions, sock: socket.socket,
               on_ready: Callable[[], None] = lambda: None) -> Stop:
    """Serve until SIGTERM/SIGINT; the :class:`~hatch_mcpkit._signals.Stop` says which signal it was.

    ``on_ready`` runs once the app has started and the signal handlers are in place (what
    a caller announces there is true: a signal from then on stops the server gracefully).
    In-flight requests get ``options.shutdown_grace`` seconds to finish; then they are
    cancelled (a running module stops at its next epoch tick).
    """
    import uvicorn
    from sse_starlette.sse import AppStatus

    from hatch_mcpkit._signals import Stop

    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]  # an answer in flight completes
    stop = Stop()

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                on_ready()

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            stop.signum = int(sig)
            self._captured_signals.clear()  # a graceful stop is the end: no re-raised signal kills us after it

    config = uvicorn.Config(
        http_app(server, options), http=PROTOCOL, log_config=None, access_log=False, server_header=False,
        lifespan="on", timeout_graceful_shutdown=max(1, int(options.shutdown_grace)),
    )
    runner = _Server(config)
    runner.run(sockets=[sock])
    if not stop.signum and not runner.started:
        raise UsageError("the HTTP server did not start (see the messages above)")
    return stop


@dataclass(frozen=True)
class HttpPlan:
    """What ``--http`` resolved to before any bundle is loaded: options, the bound socket, the URL."""

    options: HttpOptions
    sock: socket.socket
    generated: bool  # the token was made for this run (print it once)

    @property
    def url(self) -> str:
        return f"http://{_hostport(self.options.host, self.options.port)}{ENDPOINT}"


def prepare(address: str, *, no_auth: bool, allow_hosts: Sequence[str] = (),
            allow_origins: Sequence[str] = (), environ: MutableMapping[str, str] | None = None) -> HttpPlan:
    """Parse ``--http``, take the token out of the environment and bind the socket (port 0: a free one)."""
    host, port = parse_address(address)
    token, generated = take_token(host, no_auth=no_auth, environ=environ)
    sock = bind(host, port)
    port = sock.getsockname()[1]
    options = HttpOptions(host, port, token, allow_hosts=tuple(allow_hosts), allow_origins=tuple(allow_origins))
    return HttpPlan(options, sock, generated)
