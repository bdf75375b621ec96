from __future__ import annotations

import http.server
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = [
    "tests.plugins.rust",
    "tests.plugins.registry",
    "tests.plugins.runtime",
    "tests.plugins.hatch",
    "tests.plugins.clients",
    "tests.faultproxy",  # the fault_proxy fixture
]

_ENV_FILES = ("registry-env.sh",)


def _load_setup_env() -> None:
    """Take the variables ``.ci/setup`` recorded (e.g. DOCKER_HOST for the podman socket).

    So that plain ``python -m pytest`` works after ``bash .ci/setup`` without sourcing anything.
    Variables already set in the environment win.
    """
    cache = Path(__file__).resolve().parents[1] / ".ci" / "cache"
    for name in _ENV_FILES:
        path = cache / name
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            m = re.fullmatch(r'\s*export ([A-Za-z_][A-Za-z0-9_]*)=(?:"(.*)"|\'(.*)\'|(\S*))\s*', line)
            if m:
                os.environ.setdefault(m.group(1), next(g for g in m.groups()[1:] if g is not None))


_load_setup_env()


@pytest.fixture
def slow_web() -> Iterator[str]:
    """A server that trickles an endless .tar.gz body, so a pull is still running when it is killed or interrupted."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.end_headers()
            try:
                for _ in range(600):
                    self.wfile.write(b"\x1f\x8b" + b"\0" * 65536)
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/slow.tar.gz"
    finally:
        server.shutdown()
        server.server_close()


class _SchemaRecorder(http.server.BaseHTTPRequestHandler):
    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        body = json.dumps({"type": "string", "marker": "fetched-from-the-network"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/schema+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def schema_host() -> Iterator[tuple[str, list[str]]]:
    """A real web server on loopback that records every request (none must arrive)."""
    seen: list[str] = []
    handler = type("Recorder", (_SchemaRecorder,), {"seen": seen})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()
