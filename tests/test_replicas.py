"""Scale-out: three ``mcpkit serve --http`` replicas behind a real nginx (Debian's, round robin).

The replicas share nothing but the lock, the cache and the token: stateless streamable HTTP
means any replica answers any request of a session. Each replica runs with its own
``HOSTILE_ALLOWED`` (the one variable the hostile bundle's policy lets through), and the
session's ``hostile__env_dump`` calls report which replica answered them. Then one replica stops
(a rolling update) and a new session's calls all succeed on the other two.

The nginx configuration is the one docs/deploy.md shows (NGINX_HTTP), inside a top level that
runs nginx in the foreground with every path under a temp prefix (``master_process off``: one
process, this user, no privileged port).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import anyio
import httpx2
import pytest

from tests._support import need
from tests.plugins.clients import Project, Served, http_session, start_http

pytestmark = [pytest.mark.cargo, pytest.mark.registry]

TOKEN = "replica-token-" + "0123456789abcdef" * 2
REPLICAS = 3

# The http {} block of docs/deploy.md, with the replicas' addresses and the listen address filled in.
NGINX_HTTP = """\
upstream mcpkit {{
    # round robin (nginx's default): every request may go to another replica
{servers}
}}
server {{
    listen {listen};
    location /mcp {{
        proxy_pass http://mcpkit;
        proxy_http_version 1.1;
        proxy_set_header Connection "";      # keep-alive to the replicas
        proxy_set_header Host $http_host;    # the name clients use: give it to each replica's --allow-host
        proxy_buffering off;
        proxy_read_timeout 120s;             # a tool call may run up to its bundle's timeout
        client_max_body_size 4m;             # what a replica accepts (413 above it)
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def nginx(work: Path, upstreams: list[int], port: int) -> Iterator[Path]:
    """nginx in the foreground under ``work``; yields its access log."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    need(binary, "nginx (Debian: nginx-light; .ci/setup installs it)")
    assert binary is not None
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in upstreams)
    temp = "\n".join(f"  {kind}_temp_path {work}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                         "scgi"))
    http = NGINX_HTTP.format(servers=servers, listen=f"127.0.0.1:{port}")
    (work / "nginx.conf").write_text(
        f"master_process off;\nerror_log {work}/error.log info;\npid {work}/nginx.pid;\n"
        f"events {{ worker_connections 256; }}\nhttp {{\n"
        f"  log_format replicas '$request_method $uri $status upstream=$upstream_addr';\n"
        f"  access_log {work}/access.log replicas;\n{temp}\n{http}}}\n")
    proc = subprocess.Popen([binary, "-p", str(work), "-e", str(work / "error.log"), "-c", str(work / "nginx.conf"),
                             "-g", "daemon off;"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    pytest.fail(f"nginx did not start: {err}\n{(work / 'error.log').read_text(errors='replace')}")
                time.sleep(0.05)
        yield work / "access.log"
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def replicas(project: Project, work: Path, allow_host: str) -> Iterator[list[Served]]:
    with ExitStack() as stack:
        started = []
        for n in range(REPLICAS):
            served = start_http(["serve", "--project", str(project.folder), "-q", "--allow-host", allow_host],
                                env=project.env(MCPKIT_SERVER_TOKEN=TOKEN, HOSTILE_ALLOWED=f"replica-{n}"),
                                errlog=work / f"replica-{n}.log")
            stack.callback(served.stop)
            started.append(served)
        yield started


def test_the_nginx_configuration_is_the_one_docs_deploy_shows() -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in (8081, 8082, 8083))
    assert f"```nginx\n{NGINX_HTTP.format(servers=servers, listen='127.0.0.1:8080')}```" in docs


def test_a_session_through_nginx_lands_on_every_replica_and_every_call_succeeds(
        two_bundle_project: Project, tmp_path: Path) -> None:
    port = free_port()
    with replicas(two_bundle_project, tmp_path, f"127.0.0.1:{port}") as served, \
            nginx(tmp_path, [s.port for s in served], port) as access_log:
        url = f"http://127.0.0.1:{port}/mcp"
        answered: list[str] = []

        async def session() -> None:
            async with http_session(url, TOKEN) as s:  # one client session, one initialize
                names = [t.name for t in (await s.list_tools()).tools]
                assert "hostile__env_dump" in names and "weather__get_weather" in names
                for n in range(4 * REPLICAS):
                    res = await s.call_tool("hostile__env_dump", {})
                    assert not res.is_error, res
                    answered.append(json.loads(res.content[0].text)["HOSTILE_ALLOWED"])
                    weather = await s.call_tool("weather__get_weather", {"location": "Sydney"})
                    assert not weather.is_error and weather.structured_content["location"] == "Sydney", n

        anyio.run(session)
        assert Counter(answered) == {f"replica-{n}": 4 for n in range(REPLICAS)}  # round robin, evenly

        # a replica stops (a rolling update): the session goes on with the others, no call fails
        assert served[0].stop() == 0
        answered.clear()

        async def after() -> None:
            async with http_session(url, TOKEN) as s:
                for _ in range(2 * REPLICAS):
                    res = await s.call_tool("hostile__env_dump", {})
                    assert not res.is_error, res
                    answered.append(json.loads(res.content[0].text)["HOSTILE_ALLOWED"])

        anyio.run(after)
        assert set(answered) == {"replica-1", "replica-2"}
        # nginx's own record agrees: every replica answered, and nothing failed (202: the initialized notice)
        lines = access_log.read_text().splitlines()
        upstreams = Counter(addr for line in lines for addr in line.rsplit("upstream=", 1)[1].split(", "))
        assert set(upstreams) == {f"127.0.0.1:{s.port}" for s in served}
        assert all(line.split()[2] in ("200", "202") for line in lines), lines
        # without the token, the balancer passes on the replicas' 401
        refused = httpx2.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=30,
                              headers={"Accept": "application/json, text/event-stream"})
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    for replica in served:
        assert TOKEN not in replica.stderr
