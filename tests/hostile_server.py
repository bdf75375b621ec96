"""A real HTTP(S) server on loopback whose answers a test writes: the hostile registry or download host.

``servers_fixture`` is a fixture factory: ``servers(route, tls=(cert, key))`` starts one and
closes it after the test. Every request is recorded (method, path, ``Authorization``) so a
test can prove where credentials went.
"""

from __future__ import annotations

import base64
import http.server
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = ["BASIC", "SECRET", "USER", "Seen", "Server", "needs_basic", "send", "servers_fixture"]

USER, SECRET = "victim", "s3cret-Registry-Passw0rd"
BASIC = "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    body: bytes = b""  # the first 64 KiB of the request body
    user_agent: str | None = None


@dataclass
class Server:
    """A real HTTP(S) server on loopback whose answers the test writes (``route``)."""

    route: Callable[[http.server.BaseHTTPRequestHandler], None]
    tls: tuple[Path, Path] | None = None
    seen: list[Seen] = field(default_factory=list)
    sent: int = 0  # body bytes written by streaming routes

    def start(self) -> Server:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                seen = Seen(self.command, self.path, self.headers.get("Authorization"),
                            user_agent=self.headers.get("User-Agent"))
                outer.seen.append(seen)
                length = int(self.headers.get("Content-Length") or 0)
                while length > 0:
                    chunk = self.rfile.read(min(length, 1 << 20)) or b"x" * length
                    if len(seen.body) < 1 << 16:
                        seen.body += chunk[: (1 << 16) - len(seen.body)]
                    length -= len(chunk)
                try:
                    outer.route(self)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def credentials_seen(self) -> list[Seen]:
        return [s for s in self.seen if s.authorization]


@pytest.fixture
def servers_fixture() -> Iterator[Callable[..., Server]]:
    made: list[Server] = []

    def make(route: Callable[[http.server.BaseHTTPRequestHandler], None], **kw: Any) -> Server:
        server = Server(route, **kw).start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def send(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes = b"",
         headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def needs_basic(handler: http.server.BaseHTTPRequestHandler) -> bool:
    """Answer 401 Basic unless the request carries the victim's credentials."""
    if handler.headers.get("Authorization") == BASIC:
        return False
    send(handler, 401, b'{"errors":[{"code":"UNAUTHORIZED","message":"login"}]}',
         {"Www-Authenticate": 'Basic realm="hostile"', "Content-Type": "application/json"})
    return True


