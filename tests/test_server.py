"""The MCP stdio server, driven as a subprocess by the official ``mcp`` client."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

pytestmark = pytest.mark.cargo

SERVER = [sys.executable, "-m", "hatch_mcpkit"]


@asynccontextmanager
async def session(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Any]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=SERVER[0], args=[*SERVER[1:], *args], env=env)
    with tempfile.TemporaryFile("w+") as errlog:  # the server's stderr, kept out of the test output
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            yield s


def run(fn: Callable[[], Awaitable[None]]) -> None:
    anyio.run(fn)


def test_initialize_and_list_tools(example_bundle_dir: Path) -> None:
    async def go() -> None:
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(command=SERVER[0], args=[*SERVER[1:], "server", str(example_bundle_dir)])
        async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
            init = await s.initialize()
            assert init.server_info.name == "weather-tool"
            assert init.server_info.version == "1.0.0"
            assert init.capabilities.tools is not None
            listed = (await s.list_tools()).tools
            by_name = {t.name: t for t in listed}
            assert sorted(by_name) == ["convert_temperature", "get_weather"]
            weather = by_name["get_weather"]
            assert weather.input_schema["required"] == ["location"]
            assert weather.output_schema is not None and "temperature_c" in weather.output_schema["properties"]
            assert by_name["convert_temperature"].output_schema is None
            assert "Convert a temperature" in (by_name["convert_temperature"].description or "")
            from mcp.shared.exceptions import MCPError
            from mcp_types import PaginatedRequestParams

            with pytest.raises(MCPError) as info:  # a cursor the server never handed out
                await s.list_tools(params=PaginatedRequestParams(cursor="bogus"))
            assert info.value.code == -32602 and "cursor" in info.value.message

    run(go)


def test_calls_match_the_module(example_bundle_dir: Path, example_runtime: Any) -> None:
    async def go() -> None:
        async with session("server", "--config", str(example_bundle_dir / "config.yaml")) as s:
            await s.list_tools()  # lets the client validate structuredContent against outputSchema
            res = await s.call_tool("get_weather", {"location": "Berlin"})
            direct = example_runtime.call("get_weather", {"location": "Berlin"})
            assert res.is_error is False
            assert res.structured_content == direct.structured_content
            assert res.structured_content["conditions"] == "overcast"
            assert json.loads(res.content[0].text) == direct.structured_content

            res = await s.call_tool("convert_temperature", {"value": 0, "from": "celsius", "to": "kelvin"})
            assert res.is_error is False
            assert res.content[0].text == "0 °C = 273.15 K"

            res = await s.call_tool("get_weather", {"location": "Atlantis"})
            assert res.is_error is True and "unknown location" in res.content[0].text

    run(go)


def test_bad_arguments_are_tool_errors_naming_the_field(example_bundle_dir: Path) -> None:
    """SEP-1303: arguments that fail input_schema are a tool result with isError, so the model can
    correct itself; an unknown tool stays a JSON-RPC invalid-params error."""
    from mcp.shared.exceptions import MCPError

    async def go() -> None:
        async with session("server", str(example_bundle_dir)) as s:
            await s.list_tools()
            for tool, args, needles in [
                ("get_weather", {}, ["arguments.location: 'location' is a required property"]),
                ("convert_temperature", {"value": "warm", "from": "celsius", "to": "kelvin"},
                 ["arguments.value", "'number'"]),
                ("get_weather", {"location": "Paris", "units": "metric"}, ["Additional properties are not allowed"]),
            ]:
                res = await s.call_tool(tool, args)
                assert res.is_error is True, (tool, args)
                text = res.content[0].text
                assert text.startswith(f"Invalid arguments for tool {tool}: "), text
                assert all(n in text for n in needles), text
                assert res.structured_content is None
            with pytest.raises(MCPError) as info:
                await s.call_tool("get_forecast", {"location": "Paris"})
            assert info.value.code == -32602
            assert "Unknown tool" in info.value.message and "get_weather" in info.value.message
            # and the server still serves
            res = await s.call_tool("get_weather", {"location": "Paris"})
            assert res.is_error is False

    run(go)


def test_hostile_calls_are_errors_and_the_server_keeps_serving(hostile_bundle_dir: Path) -> None:
    async def go() -> None:
        async with session("server", str(hostile_bundle_dir)) as s:
            for tool, needle in [("spin", "timed out after 1000 ms"), ("membomb", "exceeded memory limit of 32 MiB"),
                                 ("flood", "output exceeded"), ("trap", "deliberate panic"),
                                 ("exit_code", "exited with status 3")]:
                res = await s.call_tool(tool, {})
                assert res.is_error is True, tool
                assert needle in res.content[0].text, res.content[0].text
                ok = await s.call_tool("echo", {"tool": tool})
                assert ok.is_error is False and json.loads(ok.content[0].text) == {"tool": tool}

    run(go)


def test_ping_is_answered_while_a_call_runs_and_cancel_works(hostile_bundle_dir: Path) -> None:
    async def go() -> None:
        async with session("run", str(hostile_bundle_dir), "--max-concurrency", "1") as s:
            outcome: dict[str, Any] = {}

            async def long_call() -> None:
                outcome["res"] = await s.call_tool("spin", {})

            async with anyio.create_task_group() as tg:
                tg.start_soon(long_call)
                await anyio.sleep(0.15)
                t0 = time.monotonic()
                await s.send_ping()
                outcome["ping_s"] = time.monotonic() - t0
                tg.cancel_scope.cancel()  # the client abandons the call: notifications/cancelled
            assert "res" not in outcome
            assert outcome["ping_s"] < 0.5
            t0 = time.monotonic()
            res = await s.call_tool("echo", {"after": "cancel"})
            assert res.is_error is False
            assert time.monotonic() - t0 < 0.8  # the cancelled instance does not hold the only slot

    run(go)


def _frames(lines: list[bytes]) -> list[dict[str, Any]]:
    frames = [json.loads(line) for line in lines if line.strip()]
    for frame in frames:
        assert frame.get("jsonrpc") == "2.0"
    return frames


def test_stdout_carries_only_protocol(hostile_bundle_dir: Path, tmp_path: Path) -> None:
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "trap", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "flood", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "read_file", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 5, "method": "ping"},
    ]
    errlog = open(tmp_path / "stderr.log", "w+b")  # noqa: SIM115
    proc = subprocess.Popen([*SERVER, "server", str(hostile_bundle_dir), "-vv"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=errlog)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("".join(json.dumps(r) + "\n" for r in requests).encode())
    proc.stdin.flush()
    lines: list[bytes] = []
    deadline = time.monotonic() + 30
    # keep stdin open until every request is answered (EOF aborts requests in flight)
    while sum(1 for line in lines if b'"id"' in line) < 5 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
    proc.stdin.close()
    lines += proc.stdout.read().splitlines()
    proc.wait(timeout=30)
    errlog.seek(0)
    err = errlog.read()
    errlog.close()
    stdout = b"".join(lines)
    frames = _frames(lines)
    by_id = {f["id"]: f for f in frames if "id" in f}
    assert sorted(by_id) == [1, 2, 3, 4, 5]
    assert by_id[2]["result"]["isError"] is True
    assert by_id[3]["result"]["isError"] is True
    assert len(stdout) < 20_000  # none of the 100 MB flood
    assert by_id[4]["result"]["isError"] is True  # read_file without its required path (SEP-1303)
    assert "arguments.path" in by_id[4]["result"]["content"][0]["text"]
    assert by_id[5]["result"] == {} or "result" in by_id[5]
    stderr = err.decode()
    assert "mcpkit: serving hostile-tool" in stderr and "mcpkit: policy:" in stderr


def test_errors_before_the_protocol_go_to_stderr(tmp_path: Path) -> None:
    proc = subprocess.run([*SERVER, "server", str(tmp_path / "missing")], capture_output=True, timeout=60,
                          check=False)
    assert proc.returncode != 0
    assert proc.stdout == b""
    assert b"missing" in proc.stderr and b"no such file" in proc.stderr
    proc = subprocess.run([*SERVER, "server", "--from-bundle", "no-such-bundle", "--home", str(tmp_path)],
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode != 0 and proc.stdout == b""
    assert b"no-such-bundle" in proc.stderr


def test_fs_grant_warns_at_launch(hostile_bundle_dir: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    proc = subprocess.run(
        [*SERVER, "server", str(hostile_bundle_dir), "--allow-dir", f"{notes}:/notes:rw", "--quiet"],
        input=b"", capture_output=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"may read and write {notes}".encode() in proc.stderr
    assert b"policy:" not in proc.stderr  # --quiet hides the rest


def test_cached_bundle_by_name_and_archive_path(hostile_bundle_dir: Path, tmp_path: Path) -> None:
    from hatch_mcpkit.bundle import build_bundle
    from hatch_mcpkit.config import load_config
    from hatch_mcpkit.store import BundleCache

    home = tmp_path / "home"
    BundleCache(home).pull(str(hostile_bundle_dir))
    built = build_bundle(load_config(hostile_bundle_dir / "config.yaml"), hostile_bundle_dir / "module.wasm",
                         tmp_path / "dist")

    async def go() -> None:
        for args in (("server", "--from-bundle", "hostile-tool", "--home", str(home)),
                     ("run", "hostile-tool", "--offline", "--home", str(home)),
                     ("run", str(built.path))):
            async with session(*args) as s:
                res = await s.call_tool("read_file", {"path": "/data/hello.txt"})
                assert res.is_error is False, (args, res.content)
                assert res.content[0].text == "hello from the bundle\n"

    run(go)


def test_malformed_lines_get_parse_and_invalid_request_errors(example_bundle_dir: Path) -> None:
    """-32700 for a line that is not JSON, -32600 for JSON that is not a request; no "id": null ever."""
    from tests.test_hostile_input import RawServer

    server = RawServer(example_bundle_dir)
    try:
        server.initialize()
        cases = [
            (b"{not json", -32700, None),
            (b'{"jsonrpc":"1.0","id":7,"method":"ping"}', -32600, 7),
            (b'{"jsonrpc":"2.0","id":8,"method":42}', -32600, 8),
            (b'{"jsonrpc":"2.0","id":"nine","method":"tools/call","params":[1,2]}', -32600, "nine"),
            (b'[{"jsonrpc":"2.0","id":10,"method":"ping"}]', -32600, None),
            (b'{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}', -32600, None),
        ]
        for n, (line, code, ident) in enumerate(cases):
            server.send(line)
            server.request(100 + n, "ping")
            messages = server.read_until(100 + n)
            errors = [m for m in messages if "error" in m]
            assert len(errors) == 1, (line, messages)
            assert errors[0]["error"]["code"] == code, (line, errors)
            assert errors[0].get("id", None) == ident and (ident is not None or "id" not in errors[0]), errors
        from hatch_mcpkit._stdio import MAX_LINE

        server.send(b'{"jsonrpc":"2.0","id":300,"method":"ping","params":{"pad":"' + b"x" * MAX_LINE + b'"}}')
        server.request(301, "ping")
        messages = server.read_until(301)
        assert [m["error"]["code"] for m in messages if "error" in m] == [-32700], messages
        assert not any(m.get("id") == 300 for m in messages)
        server.send(b'{"jsonrpc":"2.0","method":42}')  # a broken notification: no answer
        server.request(200, "ping")
        assert [m for m in server.read_until(200) if "error" in m] == []
    finally:
        stderr = server.close()
    assert b"Traceback" not in stderr


def test_output_schema_results_are_never_rejected_by_the_client(hostile_wasm: Path, tmp_path: Path) -> None:
    """A tool with output_schema answers with structuredContent valid against it, or isError saying why;
    the official client (which checks structuredContent against outputSchema) accepts every answer."""
    from tests.test_schema_attacks import write_bundle

    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    bundle = write_bundle(tmp_path / "b", hostile_wasm, [
        {"name": "echo", "description": "JSON object", "input_schema": {"type": "object"}, "output_schema": schema},
        {"name": "argv_dump", "description": "a JSON array", "input_schema": {"type": "object"},
         "output_schema": schema},
        {"name": "nap", "description": "text content", "input_schema": {"type": "object"}, "output_schema": schema},
    ])

    async def go() -> None:
        async with session("server", str(bundle)) as s:
            await s.list_tools()
            res = await s.call_tool("nap", {})  # {"content": "rested"}: text where JSON was declared
            assert res.is_error is True and res.structured_content is None
            assert "declares an output_schema" in res.content[0].text
            res = await s.call_tool("echo", {"x": 3})
            assert res.is_error is False and res.structured_content == {"x": 3}
            res = await s.call_tool("echo", {"x": "three"})
            assert res.is_error is True and "output.x" in res.content[0].text
            res = await s.call_tool("argv_dump", {})
            assert res.is_error is True and res.structured_content is None
            assert "output_schema" in res.content[0].text

    run(go)


def test_typescript_sdk_client_accepts_every_result(ts_client: Path, hostile_wasm: Path, tmp_path: Path) -> None:
    """The TS SDK rejects a result without structuredContent for a tool with outputSchema, and a
    tools/list with boolean property schemas; none of our answers may be rejected."""
    import os

    from tests.test_schema_attacks import write_bundle

    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    bundle = write_bundle(tmp_path / "b", hostile_wasm, [
        {"name": "echo", "description": "JSON object", "title": "Echo",
         "annotations": {"readOnlyHint": True},
         "input_schema": {"type": "object", "properties": {"x": {"type": "integer"}}}, "output_schema": schema},
        {"name": "argv_dump", "description": "a JSON array", "input_schema": {"type": "object"},
         "output_schema": schema},
        {"name": "nap", "description": "text content", "input_schema": {"type": "object"}, "output_schema": schema},
    ])
    calls = [["echo", {"x": 3}], ["echo", {"x": "three"}], ["argv_dump", {}], ["nope", {}], ["echo", {}],
             ["nap", {}, {"progress": True}]]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(["node", str(ts_client), json.dumps(calls), "--", *SERVER, "server", str(bundle), "-q"],
                          capture_output=True, timeout=120, check=False, env=env)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["tools"] == ["echo", "argv_dump", "nap"]
    ok, bad_args, no_object, unknown, mismatch, text = lines[1:]
    assert ok["ok"] and ok["result"]["structuredContent"] == {"x": 3}
    assert bad_args["ok"] and bad_args["result"]["isError"] is True
    assert "arguments.x" in bad_args["result"]["content"][0]["text"]
    assert no_object["ok"] and no_object["result"]["isError"] is True
    assert unknown["ok"] is False and unknown["code"] == -32602
    assert mismatch["ok"] and mismatch["result"]["isError"] is True
    assert "output" in mismatch["result"]["content"][0]["text"]
    assert text["ok"] and text["result"]["isError"] is True, text  # text where JSON was declared: withheld
    assert "declares an output_schema" in text["result"]["content"][0]["text"]
    assert text["progress"] and text["progress"][0]["message"].startswith("nap: running"), text


@pytest.mark.parametrize("version", ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"])
def test_older_protocol_versions_get_only_their_fields(example_bundle_dir: Path, version: str) -> None:
    """outputSchema, title and structuredContent came with 2025-06-18, annotations with 2025-03-26."""
    from tests.test_hostile_input import RawServer

    server = RawServer(example_bundle_dir)
    try:
        assert server.initialize(version, client="old")["protocolVersion"] == version
        server.request(2, "tools/list")
        tools = {t["name"]: t for t in server.read_until(2)[-1]["result"]["tools"]}
        server.request(3, "tools/call", {"name": "get_weather", "arguments": {"location": "Berlin"}})
        result = server.read_until(3)[-1]["result"]
    finally:
        server.close()
    new = version >= "2025-06-18"
    assert ("outputSchema" in tools["get_weather"]) is new
    assert ("structuredContent" in result) is new
    assert result["isError"] is False and "overcast" in result["content"][0]["text"]


def test_a_second_initialize_does_not_change_the_protocol_version(example_bundle_dir: Path) -> None:
    """The version agreed at initialize holds for the session: a second initialize is refused (-32600)
    and what is sent afterwards still follows the first version."""
    from tests.test_hostile_input import RawServer

    server = RawServer(example_bundle_dir)
    try:
        hello = {"capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
        server.request(1, "initialize", {"protocolVersion": "2024-11-05", **hello})
        assert server.read_until(1)[-1]["result"]["protocolVersion"] == "2024-11-05"
        server.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        server.request(2, "initialize", {"protocolVersion": "2025-11-25", **hello})
        again = server.read_until(2)[-1]
        assert "result" not in again and again["error"]["code"] == -32600, again
        assert "already initialized" in again["error"]["message"] and "2024-11-05" in again["error"]["message"]
        server.request(3, "tools/list")
        tools = {t["name"]: t for t in server.read_until(3)[-1]["result"]["tools"]}
        assert "outputSchema" not in tools["get_weather"]  # still the 2024-11-05 shape
        server.request(4, "tools/call", {"name": "get_weather", "arguments": {"location": "Berlin"}})
        result = server.read_until(4)[-1]["result"]
        assert "structuredContent" not in result and result["isError"] is False
    finally:
        stderr = server.close()
    assert b"Traceback" not in stderr


def _slow_bundle(hostile_wasm: Path, dest: Path, timeout_ms: int = 60_000) -> Path:
    """``wait`` (sleeps for its ``ms`` argument, then answers) and ``echo`` (answers at once)."""
    from tests.test_schema_attacks import write_bundle

    return write_bundle(dest, hostile_wasm, [
        {"name": "wait", "description": "Sleep, then answer", "input_schema": {"type": "object"}},
        {"name": "echo", "description": "Answer at once", "input_schema": {"type": "object"}},
    ], timeout_ms=timeout_ms)


PROGRESS_ENV = {"MCPKIT_PROGRESS_INTERVAL_MS": "200"}  # so that a call of about a second sees several


def test_progress_notifications_while_a_call_runs(hostile_wasm: Path, tmp_path: Path) -> None:
    """A tools/call with a progressToken gets notifications/progress at once and then every interval:
    progress = ms so far (increasing), total = the call's timeout, a message naming the tool. A call
    without a token gets none."""
    import os

    bundle = _slow_bundle(hostile_wasm, tmp_path / "b", timeout_ms=30_000)
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async def go() -> None:
        async with session("server", str(bundle), env={**os.environ, **PROGRESS_ENV}) as s:
            res = await s.call_tool("wait", {"ms": 1100}, progress_callback=on_progress)
            assert res.is_error is False and json.loads(res.content[0].text) == {"waited_ms": 1100}
            assert len(seen) >= 3, seen  # at start, then every 200 ms of the 1.1 s
            assert seen[0][0] < 200
            progress = [p for p, _, _ in seen]
            assert progress == sorted(set(progress)), seen  # progress MUST increase
            assert all(total == 30_000 for _, total, _ in seen), seen
            assert all(message and message.startswith("wait: running") for _, _, message in seen), seen
            count = len(seen)
            res = await s.call_tool("wait", {"ms": 500})  # no progressToken: no notifications
            assert res.is_error is False and len(seen) == count

    run(go)


def test_typescript_sdk_client_waits_for_a_long_call_on_progress(ts_client: Path, hostile_wasm: Path,
                                                                 tmp_path: Path) -> None:
    """TS-based hosts give up on a request after their own timeout (60 s by default) unless progress
    resets it: with a 600 ms request timeout, a 1.3 s call succeeds only because the server reports
    progress; without a progressToken the client times out (and the server keeps serving)."""
    import os

    bundle = _slow_bundle(hostile_wasm, tmp_path / "b", timeout_ms=20_000)
    calls = [
        ["wait", {"ms": 1300}, {"progress": True, "timeout": 600, "reset": True}],
        ["wait", {"ms": 1300}, {"timeout": 600}],
        ["echo", {"after": "timeout"}],
    ]
    env = {**os.environ, **PROGRESS_ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(["node", str(ts_client), json.dumps(calls), "--", *SERVER, "server", str(bundle), "-q"],
                          capture_output=True, timeout=120, check=False, env=env)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    waited, timed_out, after = [json.loads(line) for line in proc.stdout.splitlines()][1:]
    assert waited["ok"], waited
    assert json.loads(waited["result"]["content"][0]["text"]) == {"waited_ms": 1300}
    progress = waited["progress"]
    assert len(progress) >= 4, progress  # at once, then every 200 ms
    assert [p["progress"] for p in progress] == sorted({p["progress"] for p in progress})
    assert all(p["total"] == 20_000 and p["message"].startswith("wait: running") for p in progress), progress
    assert timed_out["ok"] is False and timed_out["code"] == -32001, timed_out  # the SDK's RequestTimeout
    assert timed_out["progress"] == []
    assert after["ok"] and json.loads(after["result"]["content"][0]["text"]) == {"after": "timeout"}
