"""A small fault-injecting HTTP proxy on 127.0.0.1, in front of a real registry.

It forwards every request to ``upstream`` (keeping the client's ``Host`` header, so the
registry writes upload ``Location`` URLs that point back at the proxy) and records it. Faults
are added with :meth:`FaultProxy.add`; the first active fault whose method and path match a
request is applied to it, ``times`` times (``None``: every time):

``status``      answer ``status`` (with ``headers``) without asking the registry (500 for the first N requests)
``drop``        close the connection without an answer
``truncate``    send the true headers, then only the first ``size`` bytes of the body, then close
``lie_length``  declare ``Content-Length`` + ``delta`` and close after the real body
``flip``        flip one byte (at ``offset``, default the middle) of the body
``replace``     send ``body`` instead of the registry's body (``headers`` are laid over)
``delay``       wait ``seconds`` before answering (for timeouts)
``throttle``    trickle the body, ``size`` bytes every ``seconds``; ``started`` is set at the first piece
``call``        run ``action()`` (e.g. kill the registry) and then close the connection
``gate``        run ``action()`` (e.g. wait at a barrier for another request) and then forward as usual

When the upstream cannot be reached the proxy closes the client's connection, as a dead
registry would. Only loopback is ever contacted.
"""

from __future__ import annotations

import http.client
import http.server
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

__all__ = ["Fault", "FaultProxy", "Record", "fault_proxy_fixture"]

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "te", "upgrade"}


@dataclass
class Fault:
    kind: str
    method: str | None = None  # GET, HEAD, PUT ... or None for any
    path: str | None = None  # a regular expression searched in the request path
    times: int | None = 1
    status: int = 500
    size: int = 0
    delta: int = 0
    offset: int | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    action: Callable[[], None] | None = None
    hits: int = 0
    started: threading.Event = field(default_factory=threading.Event)

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method != method:
            return False
        return self.path is None or re.search(self.path, path) is not None


@dataclass(frozen=True)
class Record:
    method: str
    path: str
    status: int | None  # None: the connection was closed without an answer
    fault: str | None


class FaultProxy:
    """``FaultProxy(upstream).start()``; ``.host`` is ``127.0.0.1:PORT``; ``.close()`` stops it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.records: list[Record] = []
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ control

    @property
    def host(self) -> str:
        assert self._server is not None, "start() the proxy first"
        return f"127.0.0.1:{self._server.server_address[1]}"

    def ref(self, repository: str, tag: str = "latest") -> str:
        return f"oci://{self.host}/{repository}:{tag}"

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.records.clear()

    def count(self, method: str | None = None, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.records if (method is None or r.method == method)
                       and (path is None or re.search(path, r.path)))

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None

    def _record(self, method: str, path: str, status: int | None, fault: Fault | None) -> None:
        with self._lock:
            self.records.append(Record(method, path, status, fault.kind if fault else None))

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body are two writes: with Nagle's algorithm the body would wait for the
            # client's delayed ACK of the headers (40 ms on Linux) -- a delay no registry adds
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes | None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        line = self.rfile.readline()
                        n = int(line.split(b";", 1)[0].strip() or b"0", 16)
                        if n == 0:
                            self.rfile.readline()
                            return bytes(out)
                        out += self.rfile.read(n)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _handle(self) -> None:
                method, path = self.command, self.path
                body = self._body()
                fault = proxy._take(method, path)
                if fault is not None and fault.kind == "status":
                    data = (b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}'
                            if method != "HEAD" else b"")
                    self.send_response(fault.status)
                    for k, v in fault.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    proxy._record(method, path, fault.status, fault)
                    return
                if fault is not None and fault.kind == "drop":
                    proxy._record(method, path, None, fault)
                    self._drop()
                    return
                if fault is not None and fault.kind == "call":
                    assert fault.action is not None
                    fault.action()
                    proxy._record(method, path, None, fault)
                    self._drop()
                    return
                if fault is not None and fault.kind == "delay":
                    time.sleep(fault.seconds)
                if fault is not None and fault.kind == "gate":
                    assert fault.action is not None
                    fault.action()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                try:
                    conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                    conn.request(method, path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    status, resp_headers = resp.status, resp.getheaders()
                    conn.close()
                except OSError:
                    proxy._record(method, path, None, fault)
                    self._drop()
                    return
                kind = fault.kind if fault is not None else None
                declared = len(data)
                if fault is not None and kind == "flip" and data:
                    pos = fault.offset if fault.offset is not None else len(data) // 2
                    buf = bytearray(data)
                    buf[pos] ^= 0xFF
                    data = bytes(buf)
                elif fault is not None and kind == "replace":
                    data = fault.body
                    declared = len(data)
                elif fault is not None and kind == "lie_length":
                    declared = len(data) + fault.delta
                self.send_response(status)
                for k, v in resp_headers:
                    if k.lower() not in _HOP and (fault is None or k not in fault.headers):
                        self.send_header(k, v)
                if fault is not None:
                    for k, v in fault.headers.items():
                        self.send_header(k, v)
                self.send_header("Content-Length", str(declared))
                if kind in ("truncate", "lie_length"):
                    self.send_header("Connection", "close")
                self.end_headers()
                proxy._record(method, path, status, fault)
                if method == "HEAD":
                    return
                try:
                    if fault is not None and kind == "truncate":
                        self.wfile.write(data[: fault.size])
                        self.wfile.flush()
                        self._drop()
                    elif fault is not None and kind == "lie_length":
                        self.wfile.write(data[: max(0, declared)])
                        self.wfile.flush()
                        self._drop()
                    elif fault is not None and kind == "throttle":
                        step = max(1, fault.size)
                        for i in range(0, len(data), step):
                            self.wfile.write(data[i : i + step])
                            self.wfile.flush()
                            fault.started.set()
                            time.sleep(fault.seconds)
                    else:
                        self.wfile.write(data)
                except OSError:
                    self.close_connection = True

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="fault-proxy", daemon=True).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(name="fault_proxy")
def fault_proxy_fixture(registry: Any) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the session's plain-HTTP registry."""
    assert registry.scheme == "http"
    with FaultProxy(registry.host) as proxy:
        yield proxy

