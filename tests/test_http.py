"""``mcpkit server --http``: streamable HTTP at /mcp, driven by the official Python and TypeScript clients.

Every request here crosses a real socket to a real ``mcpkit`` process. The attacks: no token,
a wrong token, a browser page on another origin (DNS rebinding: a foreign Host or Origin), an
oversized body (declared and streamed), ``--no-auth`` on every interface, a bundle that asks
for the server's own token, and a token hunted for in the logs.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
import pytest
import yaml

from tests.plugins.clients import MCPKIT, child_env, http_session, mcpkit_http, start_http

pytestmark = pytest.mark.cargo

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


def post(url: str, body: Any = LIST, *, token: str | None = None, **headers: str) -> httpx.Response:
    sent = {**ACCEPT, **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url, content=data, headers=sent, timeout=30)


def sse_result(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC message of a streamable HTTP answer (an SSE event or a JSON body)."""
    if response.headers["content-type"].startswith("application/json"):
        return dict(response.json())
    data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
    return dict(json.loads(data[-1]))


def test_python_client_with_the_token_and_401_without(hostile_bundle_dir: Path) -> None:
    with mcpkit_http("server", str(hostile_bundle_dir), "-q") as served:
        assert served.token and len(served.token) >= 32
        assert served.stderr.count(served.token) == 1  # printed once, at start

        async def go() -> None:
            async with http_session(served.url, served.token) as s:
                tools = await s.list_tools()
                assert [t.name for t in tools.tools][:2] == ["echo", "spin"]
                res = await s.call_tool("echo", {"city": "Oslo"})
                assert not res.is_error and json.loads(res.content[0].text) == {"city": "Oslo"}
                res = await s.call_tool("trap", {})
                assert res.is_error  # the module's crash is a tool error; the next call still works
                assert not (await s.call_tool("echo", {})).is_error

        anyio.run(go)
        for token in (None, "x" * 43, served.token + "x", served.token[:-1]):
            r = post(served.url, token=token)
            assert r.status_code == 401, (token, r.status_code)
            assert r.headers["www-authenticate"].startswith("Bearer ")
        r = post(served.url, Authorization=f"Basic {served.token}")
        assert r.status_code == 401
        assert served.stderr.count(served.token) == 1


def test_typescript_client_over_http(ts_client: Path, hostile_bundle_dir: Path) -> None:
    calls = [["echo", {"x": 1}], ["trap", {}], ["nope", {}]]
    with mcpkit_http("server", str(hostile_bundle_dir), "-q") as served:
        proc = subprocess.run(["node", str(ts_client), json.dumps(calls), "--http", served.url], capture_output=True,
                              timeout=120, check=False, env=child_env(MCP_TOKEN=served.token or ""))
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        assert "echo" in lines[0]["tools"]
        ok, trap, unknown = lines[1:]
        assert ok["ok"] and json.loads(ok["result"]["content"][0]["text"]) == {"x": 1}
        assert trap["ok"] and trap["result"]["isError"] is True
        assert unknown["ok"] is False and unknown["code"] == -32602
        refused = subprocess.run(["node", str(ts_client), "[]", "--http", served.url], capture_output=True,
                                 timeout=120, check=False, env=child_env())
        assert refused.returncode == 3
        assert "401" in refused.stdout.decode()


def test_foreign_origin_and_host_are_refused(hostile_bundle_dir: Path) -> None:
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1."""
    with mcpkit_http("server", str(hostile_bundle_dir), "-q", "--allow-origin", "https://app.example",
                     "--allow-host", "mcp.internal:*") as served:
        port, token = served.port, served.token
        assert post(served.url, token=token).status_code == 200
        assert post(served.url, token=token, Origin=f"http://127.0.0.1:{port}").status_code == 200
        assert post(served.url, token=token, Origin="https://app.example").status_code == 200
        for origin in ("http://evil.example", f"http://evil.example:{port}", "null", f"http://127.0.0.1:{port + 1}"):
            assert post(served.url, token=token, Origin=origin).status_code == 403, origin
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}", f"localhost.evil:{port}"):
            assert post(served.url, token=token, Host=host).status_code == 421, host
        assert post(served.url, token=token, Host=f"localhost:{port}").status_code == 200
        assert post(served.url, token=token, Host="mcp.internal:443").status_code == 200


def test_oversized_bodies_are_refused_with_413(hostile_bundle_dir: Path) -> None:
    with mcpkit_http("server", str(hostile_bundle_dir), "-q") as served:
        big = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
               "params": {"name": "echo", "arguments": {"pad": "x" * (4 << 20)}}}
        assert post(served.url, big, token=served.token).status_code == 413

        def chunks() -> Any:  # no Content-Length: the limit holds while the body streams in
            yield b'{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {"p": "'
            for _ in range(80):
                yield b"y" * (64 << 10)
            yield b'"}}}'

        r = httpx.post(served.url, content=chunks(), timeout=30,
                       headers={**ACCEPT, "Authorization": f"Bearer {served.token}"})
        assert r.status_code == 413
        small = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "echo", "arguments": {"a": 1}}}
        assert sse_result(post(served.url, small, token=served.token))["result"]["isError"] is False


def test_no_auth_is_refused_off_loopback(hostile_bundle_dir: Path) -> None:
    for address in ("0.0.0.0:0", "[::]:0", "192.0.2.1:0"):
        proc = subprocess.run([*MCPKIT, "server", str(hostile_bundle_dir), "--http", address, "--no-auth"],
                              capture_output=True, timeout=60, check=False, env=child_env())
        assert proc.returncode == 2, proc.stderr
        assert b"--no-auth is refused" in proc.stderr
    proc = subprocess.run([*MCPKIT, "server", str(hostile_bundle_dir), "--no-auth"], capture_output=True,
                          timeout=60, check=False, env=child_env())
    assert proc.returncode == 2 and b"--no-auth is an option of the HTTP transport" in proc.stderr
    with mcpkit_http("server", str(hostile_bundle_dir), "-q", "--no-auth") as served:
        assert served.token is None
        assert post(served.url).status_code == 200
        assert "any program on this machine" in served.stderr


def test_the_server_token_comes_from_the_environment_and_never_reaches_a_module_or_a_log(
        hostile_wasm: Path, tmp_path: Path) -> None:
    """A bundle whose policy asks for MCPKIT_SERVER_TOKEN gets nothing; -vv logs never show it."""
    bundle = tmp_path / "greedy"
    bundle.mkdir()
    (bundle / "module.wasm").write_bytes(hostile_wasm.read_bytes())
    config = {"version": "1.0", "server": {"name": "greedy", "version": "0.1.0"},
              "mcp": {"tools": [{"name": "env_dump", "description": "env", "input_schema": {"type": "object"}}]},
              "policy": {"environment": {"allow": [{"key": "MCPKIT_SERVER_TOKEN"}, {"key": "OTHER"}]}}}
    (bundle / "config.yaml").write_text(yaml.safe_dump(config))
    token = "tok-" + "s3cr3t" * 6
    env = child_env(MCPKIT_SERVER_TOKEN=token, OTHER="visible")
    with mcpkit_http("server", str(bundle), "-vv", env=env) as served:
        assert served.token == token

        async def go() -> None:
            async with http_session(served.url, token) as s:
                res = await s.call_tool("env_dump", {})
                seen = json.loads(res.content[0].text)
                assert seen.get("OTHER") == "visible"
                assert "MCPKIT_SERVER_TOKEN" not in seen and token not in res.content[0].text

        anyio.run(go)
        assert post(served.url, token=token + "-wrong").status_code == 401
        served.stop()
        assert "bearer token for this run" not in served.stderr
        assert token not in served.stderr and "s3cr3t" not in served.stderr
    for weak in ("short", "has a space in it and is long", "x" * 15):
        proc = subprocess.run([*MCPKIT, "server", str(bundle), "--http", "127.0.0.1:0"], capture_output=True,
                              timeout=60, check=False, env=child_env(MCPKIT_SERVER_TOKEN=weak))
        assert proc.returncode == 2 and b"MCPKIT_SERVER_TOKEN must be" in proc.stderr
        assert weak.encode() not in proc.stderr


def test_sigterm_finishes_the_call_in_flight_then_exits(hostile_bundle_dir: Path) -> None:
    """`spin` runs until its 1 s timeout; SIGTERM arrives meanwhile: the answer still comes, then exit 0."""
    served = start_http(["server", str(hostile_bundle_dir), "-q"])
    try:
        answers: list[httpx.Response] = []
        call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "spin", "arguments": {}}}
        worker = threading.Thread(target=lambda: answers.append(post(served.url, call, token=served.token)))
        threads = len(list(Path(f"/proc/{served.proc.pid}/task").iterdir()))
        worker.start()
        deadline = time.monotonic() + 30
        while len(list(Path(f"/proc/{served.proc.pid}/task").iterdir())) == threads:  # the call's worker thread
            assert time.monotonic() < deadline, "the call never started"
            time.sleep(0.01)
        served.proc.send_signal(signal.SIGTERM)
        worker.join(timeout=30)
        assert served.proc.wait(timeout=30) == 0
        assert answers and answers[0].status_code == 200
        result = sse_result(answers[0])["result"]
        assert result["isError"] is True and "timed out" in result["content"][0]["text"]
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", served.port), timeout=2).close()
        assert "stopped (SIGTERM)" in served.stderr and "Traceback" not in served.stderr
    finally:
        served.stop(signal.SIGKILL)
    with mcpkit_http("server", str(hostile_bundle_dir), "-q") as served:
        assert served.stop(signal.SIGINT) == 130
        assert "stopped (SIGINT)" in served.stderr and "Traceback" not in served.stderr


def test_bad_addresses_are_usage_errors(hostile_bundle_dir: Path) -> None:
    for address in ("8080", "localhost", "127.0.0.1:http", "127.0.0.1:70000", "::1:80"):
        proc = subprocess.run([*MCPKIT, "server", str(hostile_bundle_dir), "--http", address],
                              capture_output=True, timeout=60, check=False, env=child_env())
        assert proc.returncode == 2, (address, proc.stderr)
        assert b"is not HOST:PORT" in proc.stderr


def test_what_a_client_sends_reaches_the_log_inert(hostile_bundle_dir: Path) -> None:
    """A refused Origin is logged; its C1 control bytes (a terminal's CSI) are escaped, not written."""
    with mcpkit_http("server", str(hostile_bundle_dir), "-q") as served:
        r = httpx.post(served.url, content=json.dumps(LIST).encode(),
                       headers=[*ACCEPT.items(), ("Authorization", f"Bearer {served.token}"),
                                ("Origin", b"http://e\x9b2J\x9d0;x\x07vil")])
        assert r.status_code == 403
        served.stop()
        log = served.errlog.read_bytes()
        assert b"Invalid Origin header" in log
        assert "\x9b".encode() not in log and "\x9d".encode() not in log
        assert b"\\x9b2J" in log


def test_the_token_is_in_no_repr() -> None:
    """A traceback or a debug print of the options must not carry the token."""
    from hatch_mcpkit._http import prepare

    plan = prepare("127.0.0.1:0", no_auth=False, environ={"MCPKIT_SERVER_TOKEN": "t" * 40})
    try:
        assert plan.options.token == "t" * 40
        assert "t" * 40 not in repr(plan) and "t" * 40 not in repr(plan.options)
    finally:
        plan.sock.close()


def test_every_interface_needs_the_names_clients_use(hostile_bundle_dir: Path) -> None:
    """Bound to 0.0.0.0 (a container), a request for the machine's address or a DNS name is 421 until
    --allow-host names it; the start says so."""
    env = child_env(MCPKIT_SERVER_TOKEN="w" * 32)
    with mcpkit_http("server", str(hostile_bundle_dir), "-q", env=env, address="0.0.0.0:0") as served:
        url = f"http://127.0.0.1:{served.port}/mcp"
        assert "add the names clients use with --allow-host" in served.stderr
        assert post(url, token="w" * 32).status_code == 200
        assert post(url, token="w" * 32, Host=f"mcp-tools:{served.port}").status_code == 421
    with mcpkit_http("server", str(hostile_bundle_dir), "-q", "--allow-host", "mcp-tools:*", env=env,
                     address="0.0.0.0:0") as served:
        url = f"http://127.0.0.1:{served.port}/mcp"
        assert "--allow-host" not in served.stderr
        assert post(url, token="w" * 32, Host=f"mcp-tools:{served.port}").status_code == 200


def test_a_long_calls_progress_arrives_over_http(hostile_bundle_dir: Path) -> None:
    """A tools/call with a progressToken gets its progress notifications on the POST's stream, then the result."""
    with mcpkit_http("server", str(hostile_bundle_dir), "-q") as served:
        progress: list[tuple[float, float | None, str | None]] = []

        async def go() -> None:
            async with http_session(served.url, served.token) as s:
                async def seen(done: float, total: float | None, message: str | None) -> None:
                    progress.append((done, total, message))

                res = await s.call_tool("spin", {}, progress_callback=seen)
                assert res.is_error and "timed out" in res.content[0].text

        anyio.run(go)
        assert progress and progress[0][1] == 1000.0 and "spin" in (progress[0][2] or "")
