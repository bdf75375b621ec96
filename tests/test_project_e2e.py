"""A project of two bundles, end to end: `hatch run mcpkit:lock`, `mcpkit:sync`, `mcpkit:serve`.

The example and a second test crate are built, pushed to the real registry and named in a copy of
example-project's pyproject.toml; the served gateway is driven over stdio by the official Python
MCP client, then (`mcpkit:serve --http`) over streamable HTTP by the Python and TypeScript clients,
with the token and without it (401).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hatch_mcpkit.lock import load_lock
from tests.builders import config_yaml

pytestmark = [pytest.mark.hatch, pytest.mark.cargo, pytest.mark.registry, pytest.mark.slow]


async def _gateway_session(command: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    import shutil

    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    exe = shutil.which(command[0])
    assert exe, f"{command[0]} is not on PATH"
    params = StdioServerParameters(command=exe, args=command[1:], env=env, cwd=cwd)
    out: dict[str, Any] = {}
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        out["tools"] = [t.name for t in (await session.list_tools()).tools]
        out["weather"] = await session.call_tool("weather__get_weather", {"location": "London"})
        out["hello"] = await session.call_tool("hello__greet", {})
    return out


def test_project_of_two_bundles_locked_synced_and_served_through_hatch(
    run_hatch: Any, hatch_env: dict[str, str], example_copy: Path, example_bundle_dir: Path,
    fixture_crate: Any, registry: Any, repo_name: str, tmp_path: Path, ts_client: Path,
) -> None:
    """The example and a second crate: `hatch run mcpkit:lock`, `mcpkit:sync` into a clean MCPKIT_HOME,
    then `mcpkit:serve` driven over stdio by the official Python and TypeScript clients, and over HTTP."""
    import asyncio

    from hatch_mcpkit.bundle import BundleLayout
    from tests.builders import build_archive, bundle_dir
    from tests.plugins.rust import build_fixture_crate

    hello_src = tmp_path / "hello-src"
    hello_src.mkdir()
    (hello_src / "config.yaml").write_text(config_yaml("hello", tools=("greet",)))
    hello_dir = bundle_dir(tmp_path / "hello-bundle", build_fixture_crate(fixture_crate("hello")), hello_src)
    pushed = {}
    for key, root in (("weather", example_bundle_dir), ("hello", hello_dir)):
        with BundleLayout.open(build_archive(root, tmp_path / f"dist-{key}").path) as layout, \
                registry.client() as client:
            client.push_layout(layout, f"{repo_name}/{key}", ["1"])
            pushed[key] = layout.manifest.digest
    pyproject = example_copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + f'''
[tool.mcpkit.bundles]
weather = "oci://{registry.host}/{repo_name}/weather:1"
hello = {{ ref = "oci://{registry.host}/{repo_name}/hello:1", policy = {{ limits = {{ timeout_ms = 5000 }} }} }}
''')
    home = tmp_path / "clean-home"
    env = {"MCPKIT_HOME": str(home)}
    res = run_hatch(["run", "mcpkit:lock"], example_copy, env=env)
    assert res.returncode == 0, res.stdout
    lock = load_lock(example_copy / "mcpkit.lock")
    assert {k: e.digest for k, e in lock.entries.items()} == pushed
    res = run_hatch(["run", "mcpkit:sync", "--frozen"], example_copy, env=env)
    assert res.returncode == 0, res.stdout
    assert "2 pulled, 0 already" in res.stdout

    answers = asyncio.run(asyncio.wait_for(
        _gateway_session(["hatch", "run", "mcpkit:serve"], example_copy, {**hatch_env, **env}), 180))
    assert answers["tools"] == ["hello__greet", "weather__get_weather", "weather__convert_temperature"]  # key, then config order
    weather = answers["weather"]
    assert not weather.is_error and weather.structured_content["location"].lower().startswith("london")
    hello = answers["hello"]
    assert not hello.is_error and hello.content[0].text == "hello from greet"

    _typescript_over_stdio(example_copy, {**hatch_env, **env}, ts_client, answers["tools"])
    _over_http(example_copy, {**hatch_env, **env}, ts_client, answers["tools"])


def _typescript_over_stdio(project: Path, env: dict[str, str], ts_client: Path, tools: list[str]) -> None:
    """`hatch run mcpkit:serve` launched by the TypeScript client as an MCP host launches it."""
    import json
    import os
    import shutil
    import subprocess

    hatch = shutil.which("hatch")
    assert hatch, "hatch is not on PATH"
    calls = json.dumps([["hello__greet", {}],
                        ["weather__convert_temperature", {"value": 0, "from": "celsius", "to": "kelvin"}]])
    proc = subprocess.run(["node", str(ts_client), calls, "--", hatch, "run", "mcpkit:serve", "-q"],
                          capture_output=True, timeout=180, check=False, cwd=project, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["tools"] == tools
    assert lines[1]["ok"] and lines[1]["result"]["content"][0]["text"] == "hello from greet", lines[1]
    assert lines[2]["ok"] and "273.15" in lines[2]["result"]["content"][0]["text"], lines[2]


def _over_http(project: Path, env: dict[str, str], ts_client: Path, tools: list[str]) -> None:
    """`hatch run mcpkit:serve --http`: the Python and TypeScript clients with the token; 401 without."""
    import json
    import shutil
    import subprocess

    import anyio

    from tests.plugins.clients import http_session, mcpkit_http

    hatch = shutil.which("hatch")
    assert hatch, "hatch is not on PATH"
    with mcpkit_http("run", "mcpkit:serve", "-q", env=env, cwd=project, command=[hatch]) as served:
        async def python_client() -> None:
            async with http_session(served.url, served.token) as s:
                assert [t.name for t in (await s.list_tools()).tools] == tools
                assert (await s.call_tool("hello__greet", {})).content[0].text == "hello from greet"

        anyio.run(python_client)
        calls = json.dumps([["weather__convert_temperature", {"value": 0, "from": "celsius", "to": "kelvin"}]])
        for token, code in ((served.token or "", 0), ("", 3)):
            proc = subprocess.run(["node", str(ts_client), calls, "--http", served.url], capture_output=True,
                                  timeout=120, check=False, env={**env, "MCP_TOKEN": token})
            assert proc.returncode == code, proc.stderr.decode(errors="replace")[-2000:]
            lines = [json.loads(line) for line in proc.stdout.splitlines()]
            if code == 0:
                assert lines[0]["tools"] == tools and "273.15" in lines[1]["result"]["content"][0]["text"]
            else:
                assert lines[0]["connected"] is False and lines[0]["code"] == 401, lines
