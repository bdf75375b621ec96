"""``mcpkit serve``: a project's locked bundles as one MCP server, driven by the official clients.

The project (tests.plugins.clients.two_bundle_project) holds the example (``weather``) and the
hostile tool (``hostile``: traps, spins, eats memory), pushed to the session's registry, locked
and synced with the real commands into a fresh MCPKIT_HOME.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from hatch_mcpkit.__about__ import __version__
from tests.plugins.clients import (
    MCPKIT,
    Project,
    http_session,
    lock_and_sync,
    mcpkit_http,
    push_bundle,
    write_pyproject,
)

pytestmark = [pytest.mark.cargo, pytest.mark.registry]

HOSTILE = ["hostile__echo", "hostile__spin", "hostile__burn", "hostile__membomb", "hostile__read_file",
           "hostile__write_file", "hostile__env_dump", "hostile__argv_dump", "hostile__flood", "hostile__trap",
           "hostile__exit_code", "hostile__exit_zero", "hostile__no_stdin", "hostile__sleep", "hostile__nap",
           "hostile__spawn_work"]
WEATHER = ["weather__get_weather", "weather__convert_temperature"]


@asynccontextmanager
async def stdio_session(project: Project, *args: str) -> AsyncIterator[Any]:
    """The official Python client on ``mcpkit serve --project P -q ARGS`` over stdio, initialized."""
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=MCPKIT[0], args=[*MCPKIT[1:], "serve", "--project", str(project.folder),
                                                            "-q", *args], env=project.env())
    with tempfile.TemporaryFile("w+") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as s:
            s.init_result = await s.initialize()
            yield s


async def _stdio(project: Project) -> Any:
    async with stdio_session(project) as s:
        tools = [t.name for t in (await s.list_tools()).tools]
        weather = await s.call_tool("weather__get_weather", {"location": "London"})
        echo = await s.call_tool("hostile__echo", {"k": "v"})
        bad = await s.call_tool("weather__get_weather", {"location": 3})
        return s.init_result, tools, weather, echo, bad


def test_two_bundles_over_stdio_named_key__tool_sorted_by_key(two_bundle_project: Project) -> None:
    init, tools, weather, echo, bad = anyio.run(_stdio, two_bundle_project)
    assert (init.server_info.name, init.server_info.version) == ("mcpkit-gateway", __version__)
    assert tools == HOSTILE + WEATHER  # sorted by key (pyproject.toml names weather first), then config order
    assert not weather.is_error and weather.structured_content["location"] == "London"
    assert json.loads(echo.content[0].text) == {"k": "v"}
    assert bad.is_error and "weather__get_weather" in bad.content[0].text and "location" in bad.content[0].text


def test_two_bundles_over_stdio_typescript_client(two_bundle_project: Project, ts_client: Path) -> None:
    calls = [["weather__get_weather", {"location": "Berlin"}], ["hostile__trap", {}], ["hostile__echo", {"a": 1}]]
    proc = subprocess.run(["node", str(ts_client), json.dumps(calls), "--", *MCPKIT, "serve", "--project",
                           str(two_bundle_project.folder), "-q"], capture_output=True, timeout=120, check=False,
                          env=two_bundle_project.env())
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["tools"] == HOSTILE + WEATHER
    assert lines[1]["ok"] and lines[1]["result"]["structuredContent"]["location"] == "Berlin"
    assert lines[2]["ok"] and lines[2]["result"]["isError"] is True
    assert lines[3]["ok"] and json.loads(lines[3]["result"]["content"][0]["text"]) == {"a": 1}


def test_two_bundles_over_http_python_and_typescript_clients(two_bundle_project: Project, ts_client: Path) -> None:
    from tests.plugins.clients import child_env

    with mcpkit_http("serve", "--project", str(two_bundle_project.folder), "-q",
                     env=two_bundle_project.env()) as served:
        async def go() -> None:
            async with http_session(served.url, served.token) as s:
                assert [t.name for t in (await s.list_tools()).tools] == HOSTILE + WEATHER
                res = await s.call_tool("weather__convert_temperature", {"value": 100, "from": "celsius",
                                                                         "to": "fahrenheit"})
                assert not res.is_error and "212" in res.content[0].text

        anyio.run(go)
        calls = [["weather__get_weather", {"location": "Tokyo"}], ["hostile__trap", {}], ["get_weather", {}]]
        proc = subprocess.run(["node", str(ts_client), json.dumps(calls), "--http", served.url], capture_output=True,
                              timeout=120, check=False, env=child_env(MCP_TOKEN=served.token or ""))
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        assert lines[0]["tools"] == HOSTILE + WEATHER
        assert lines[1]["ok"] and lines[1]["result"]["structuredContent"]["location"] == "Tokyo"
        assert lines[2]["ok"] and lines[2]["result"]["isError"] is True
        assert lines[3]["ok"] is False and lines[3]["code"] == -32602  # the plain name is not served
        refused = subprocess.run(["node", str(ts_client), "[]", "--http", served.url], capture_output=True,
                                 timeout=120, check=False, env=child_env())
        assert refused.returncode == 3 and "401" in refused.stdout.decode()


def test_one_bundle_failing_never_holds_up_another(two_bundle_project: Project) -> None:
    """hostile's two slots are held by calls that spin to their 1 s timeout, more queue behind them,
    and others trap or eat memory; every weather call is answered before any spin ends."""
    order: list[str] = []

    async def go() -> None:
        async with stdio_session(two_bundle_project, "--max-concurrency", "2") as s:
            async def call(name: str, args: dict[str, Any], tag: str) -> None:
                res = await s.call_tool(name, args)
                assert res.is_error == tag.startswith("hostile"), (tag, res)
                order.append(tag)

            async with anyio.create_task_group() as tg:
                for n in range(4):
                    tg.start_soon(call, "hostile__spin", {}, f"hostile-spin-{n}")
                await anyio.sleep(0.2)  # the spins hold hostile's slots
                tg.start_soon(call, "hostile__trap", {}, "hostile-trap")
                tg.start_soon(call, "hostile__membomb", {}, "hostile-membomb")
                for n in range(6):
                    tg.start_soon(call, "weather__get_weather", {"location": "Paris"}, f"weather-{n}")
            res = await s.call_tool("weather__get_weather", {"location": "Berlin"})
            assert not res.is_error

    anyio.run(go)
    first_spin = min(order.index(f"hostile-spin-{n}") for n in range(4))
    weather = [order.index(f"weather-{n}") for n in range(6)]
    assert max(weather) < first_spin, order
    assert len(order) == 12


def test_tools_list_is_the_same_whatever_the_order_in_pyproject(two_bundle_project: Project, tmp_path: Path) -> None:
    text = (two_bundle_project.folder / "pyproject.toml").read_text()
    _, bundles = text.split("[tool.mcpkit.bundles]\n", 1)
    weather, hostile = bundles.split("\n\n", 1)
    folder = write_pyproject(tmp_path / "reordered", hostile.rstrip("\n") + "\n\n[tool.mcpkit.bundles.weather]\n"
                             + weather.replace("weather = ", "ref = ") + "\n")
    reordered = lock_and_sync(folder, two_bundle_project.home)

    async def names(project: Project, *args: str) -> list[str]:
        async with stdio_session(project, *args) as s:
            return [t.name for t in (await s.list_tools()).tools]

    first = anyio.run(names, two_bundle_project)
    assert anyio.run(names, reordered) == first == HOSTILE + WEATHER
    assert anyio.run(names, two_bundle_project, "weather") == WEATHER  # only the bundles named


def test_a_collision_is_an_error_at_start_naming_both(registry: Any, hostile_wasm: Path, tmp_path: Path) -> None:
    """Tools ``files.read`` and ``files-read`` would both be served as ``notes__files-read``."""
    import uuid

    config = ("version: '1.0'\nserver: {name: notes, version: 0.1.0}\nmcp:\n  tools:\n"
              "    - {name: files.read, description: a, input_schema: {type: object}}\n"
              "    - {name: files-read, description: b, input_schema: {type: object}}\n")
    repo = f"gateway/{uuid.uuid4().hex[:8]}/notes"
    push_bundle(registry, tmp_path, repo, config, hostile_wasm.read_bytes())
    project = lock_and_sync(write_pyproject(tmp_path / "p", f'notes = "oci://{registry.host}/{repo}:1"\n'),
                            tmp_path / "home")
    proc = subprocess.run([*MCPKIT, "serve", "--project", str(project.folder)], capture_output=True, timeout=120,
                          check=False, env=project.env(), stdin=subprocess.DEVNULL)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "'files.read' and 'files-read' would both be served as 'notes__files-read'" in err
    assert "'notes'" in err


def test_gateway_collisions_between_bundles_name_both() -> None:
    """Keys ``a`` + tool ``b__c`` and key ``a__b`` + tool ``c`` both give ``a__b__c``: refused, both named,
    with every other problem of the set at once (a name too long, a key that cannot start a name)."""
    from hatch_mcpkit.config import parse_config
    from hatch_mcpkit.errors import GatewayError
    from hatch_mcpkit.gateway import Member, plan_names

    def config(*tools: str) -> Any:
        listed = "".join(f"    - {{name: {t}, description: x, input_schema: {{type: object}}}}\n" for t in tools)
        text = f"version: '1.0'\nserver: {{name: t, version: 0.1.0}}\nmcp:\n  tools:\n{listed}"
        return parse_config(text.encode(), "config.yaml", {})

    with pytest.raises(GatewayError) as caught:
        plan_names([(Member("a", Path("/b/one"), "registry/one:1"), config("b__c", "ok")),
                    (Member("a__b", Path("/b/two"), "registry/two:1"), config("c")),
                    (Member("long", Path("/b/three")), config("x" * 60)),
                    (Member("bad key", Path("/b/four")), config("y"))])
    message = str(caught.value)
    assert "'a__b__c' would be served by two bundles: 'a' (registry/one:1) tool 'b__c' and " \
           "'a__b' (registry/two:1) tool 'c'" in message
    assert "66 characters" in message and "'bad key'" in message and message.startswith("3 problems")
    plan = plan_names([(Member("b", Path("/b")), config("x.y", "z")), (Member("a", Path("/a")), config("z"))])
    assert plan == {"a": {"z": "a__z"}, "b": {"x.y": "b__x-y", "z": "b__z"}}


def test_a_stale_or_missing_lock_is_refused(two_bundle_project: Project, tmp_path: Path) -> None:
    folder = write_pyproject(tmp_path / "stale", (two_bundle_project.folder / "pyproject.toml").read_text()
                             .split("[tool.mcpkit.bundles]\n", 1)[1])
    proc = subprocess.run([*MCPKIT, "serve", "--project", str(folder)], capture_output=True, timeout=120,
                          check=False, env=two_bundle_project.env(), stdin=subprocess.DEVNULL)
    assert proc.returncode == 4, proc.stderr
    assert b"no lock file" in proc.stderr
    (folder / "mcpkit.lock").write_bytes((two_bundle_project.folder / "mcpkit.lock").read_bytes())
    assert subprocess.run([*MCPKIT, "lock", "--check", "--project", str(folder)], capture_output=True,
                          timeout=120, check=False, env=two_bundle_project.env()).returncode == 0
    pyproject = folder / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("timeout_ms = 1000", "timeout_ms = 5000"))
    proc = subprocess.run([*MCPKIT, "serve", "--project", str(folder)], capture_output=True, timeout=120,
                          check=False, env=two_bundle_project.env(), stdin=subprocess.DEVNULL)
    assert proc.returncode == 4, proc.stderr
    assert b"does not match" in proc.stderr and b"mcpkit sync" in proc.stderr
    proc = subprocess.run([*MCPKIT, "serve", "--project", str(two_bundle_project.folder), "nope"],
                          capture_output=True, timeout=120, check=False, env=two_bundle_project.env(),
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and b"no bundle 'nope'" in proc.stderr


def test_a_trust_policy_written_after_sync_is_enforced_at_start(two_bundle_project: Project, tmp_path: Path) -> None:
    """The cache was synced unsigned; a policy that now requires signatures stops the gateway before it serves."""
    project = lock_and_sync(two_bundle_project.folder, tmp_path / "home")
    (project.home / "trust.yaml").write_text("default: enforce\n")
    proc = subprocess.run([*MCPKIT, "serve", "--project", str(project.folder)], capture_output=True, timeout=120,
                          check=False, env=project.env(), stdin=subprocess.DEVNULL)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "the trust policy requires a signature" in err, err
    assert "listening" not in err and "serving" not in err


def test_each_bundle_is_served_with_its_own_narrowing(two_bundle_project: Project, tmp_path: Path) -> None:
    """hostile narrowed to two tools and a 300 ms timeout; weather untouched, in the same server."""
    text = (two_bundle_project.folder / "pyproject.toml").read_text()
    narrowed = text.replace("policy = { limits = { timeout_ms = 1000 } }",
                            'policy = { tools = ["spin", "echo"], limits = { timeout_ms = 300 } }')
    assert narrowed != text
    folder = write_pyproject(tmp_path / "narrowed", narrowed.split("[tool.mcpkit.bundles]\n", 1)[1])
    project = lock_and_sync(folder, two_bundle_project.home)

    from mcp.shared.exceptions import MCPError

    async def go() -> None:
        async with stdio_session(project) as s:
            assert [t.name for t in (await s.list_tools()).tools] == ["hostile__echo", "hostile__spin", *WEATHER]
            spin = await s.call_tool("hostile__spin", {})
            assert spin.is_error and "timed out after 300 ms" in spin.content[0].text
            weather = await s.call_tool("weather__get_weather", {"location": "Reykjavik"})
            assert not weather.is_error
            with pytest.raises(MCPError, match="Unknown tool: 'hostile__trap'"):
                await s.call_tool("hostile__trap", {})

    anyio.run(go)
