"""The whole workflow, exactly as a user runs it: build, publish, pull, serve, call.

One flow through Hatch (``hatch build`` / ``hatch publish -p mcpkit`` / ``hatch run mcpkit:pull``)
and one through the standalone ``mcpkit`` command, both against a real registry and checked
with the official MCP client.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hatch_mcpkit.bundle import BundleLayout
from hatch_mcpkit.reference import parse_reference

from .plugins.hatch import HatchRunner
from .plugins.registry import RunningRegistry

pytestmark = [pytest.mark.hatch, pytest.mark.cargo, pytest.mark.registry, pytest.mark.slow]
ARCHIVE = "weather-tool-1.0.0.mcpkit.tar"


def mcpkit(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("mcpkit")
    assert exe, "the mcpkit console script is not installed"
    return subprocess.run(
        [exe, *args], env=env, cwd=cwd, text=True, capture_output=True, timeout=300, check=False
    )


async def _call_tools(env: dict[str, str], server_args: list[str], command: str, cwd: Path | None) -> dict[str, Any]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    exe = shutil.which(command)
    assert exe, f"{command} is not on PATH"
    params = StdioServerParameters(command=exe, args=server_args, env=env, cwd=cwd)
    out: dict[str, Any] = {}
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        out["server"] = init.server_info.name
        out["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
        weather = await session.call_tool("get_weather", {"location": "London"})
        out["weather"] = weather
        convert = await session.call_tool(
            "convert_temperature", {"value": 100, "from": "celsius", "to": "fahrenheit"}
        )
        out["convert"] = convert
        unknown = await session.call_tool("get_weather", {"location": "Atlantis"})
        out["unknown"] = unknown
    return out


def call_tools(env: dict[str, str], server_args: list[str], command: str = "mcpkit",
               cwd: Path | None = None) -> dict[str, Any]:
    return asyncio.run(asyncio.wait_for(_call_tools(env, server_args, command, cwd), 120))


def check_answers(answers: dict[str, Any]) -> None:
    assert answers["tools"] == ["convert_temperature", "get_weather"]
    weather = answers["weather"]
    assert not weather.is_error
    assert weather.structured_content is not None
    assert weather.structured_content["location"].lower().startswith("london")
    assert isinstance(weather.structured_content["temperature_c"], (int, float))
    convert = answers["convert"]
    assert not convert.is_error
    assert "212" in convert.content[0].text
    unknown = answers["unknown"]
    assert unknown.is_error and "Atlantis" in unknown.content[0].text


def entry_files(entry: Path) -> dict[str, bytes]:
    return {
        p.relative_to(entry).as_posix(): p.read_bytes()
        for p in sorted(entry.rglob("*"))
        if p.is_file() and p.name not in ("metadata.json", "module.cwasm")
    }


def test_hatch_workflow(
    run_hatch: HatchRunner,
    example_copy: Path,
    registry: RunningRegistry,
    repo_name: str,
    hatch_env: dict[str, str],
    tmp_path: Path,
) -> None:
    target = f"{registry.host}/{repo_name}"
    built = run_hatch(["build"], example_copy)
    assert built.returncode == 0, built.stdout
    archive = example_copy / "dist" / ARCHIVE
    with BundleLayout.open(archive) as layout:
        digest = layout.manifest.digest
        layer_bytes = {d.title: layout.read_blob(d.digest) for d in layout.manifest.layers}
    assert f"mcpkit: digest {digest}" in built.stdout

    published = run_hatch(["publish", "-p", "mcpkit", "-o", f"registry=oci://{target}"], example_copy)
    assert published.returncode == 0, published.stdout
    assert digest in published.stdout  # the digest printed at build time is the registry's
    for tag in ("latest", "v1.0.0"):  # distribution.tags from config.yaml
        assert f"{target}:{tag}" in published.stdout

    home = tmp_path / "consumer-home"  # elsewhere: a clean cache
    env = {**hatch_env, "MCPKIT_HOME": str(home)}
    pulled = run_hatch(
        ["run", "mcpkit:pull", f"oci://{target}:latest"], example_copy, env={"MCPKIT_HOME": str(home)}
    )
    assert pulled.returncode == 0, pulled.stdout
    entry = home / "bundles" / Path(*parse_reference(f"oci://{target}:latest").cache_parts())
    assert entry.parts[-1] == "latest" and entry.parts[-3:-1] == tuple(repo_name.split("/"))
    assert entry_files(entry) == layer_bytes  # module.wasm, config.yaml, README.md, data/weather.json
    assert list((home / "compiled").rglob("*.cwasm")), "compiled code is in the store's code cache"
    meta = json.loads((entry / "metadata.json").read_text())
    assert meta["digest"] == digest
    index = json.loads((home / "bundles" / "registry.json").read_text())
    assert "weather-tool" in json.dumps(index)

    answers = call_tools(env, ["server", "--from-bundle", "weather-tool"])
    assert answers["server"] == "weather-tool"
    check_answers(answers)
    # the same server through hatch's script: only protocol reaches stdout
    check_answers(call_tools(env, ["run", "mcpkit:run", "weather-tool"], command="hatch", cwd=example_copy))

    by_digest = run_hatch(
        ["run", "mcpkit:pull", f"oci://{target}@{digest}"], example_copy, env={"MCPKIT_HOME": str(home)}
    )
    assert by_digest.returncode == 0, by_digest.stdout
    digest_entry = home / "bundles" / Path(*parse_reference(f"oci://{target}@{digest}").cache_parts())
    assert digest_entry.name == f"sha256-{digest.split(':')[1]}"
    assert entry_files(digest_entry) == layer_bytes


def test_standalone_workflow(
    example_wasm: Path, registry: RunningRegistry, repo_name: str, hatch_env: dict[str, str], tmp_path: Path
) -> None:
    from .plugins.hatch import EXAMPLE

    project = tmp_path / "tool"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("target", "dist", "src", "Cargo.*"))
    shutil.copyfile(example_wasm, project / "module.wasm")
    env = {**hatch_env, "MCPKIT_HOME": str(tmp_path / "home")}
    target = f"oci://{registry.host}/{repo_name}"

    pushed = mcpkit(
        ["bundle", "push", "--config", "config.yaml", "--to", target, "--tag", "latest", "--tag", "v1"],
        env,
        cwd=project,
    )
    assert pushed.returncode == 0, pushed.stderr
    digests = set(re.findall(r"sha256:[0-9a-f]{64}", pushed.stdout))
    assert len(digests) == 1, pushed.stdout
    (digest,) = digests
    again = mcpkit(
        ["bundle", "push", "--config", "config.yaml", "--to", target, "--tag", "latest"], env, cwd=project
    )
    assert again.returncode == 0 and digest in again.stdout  # idempotent, same digest

    pulled = mcpkit(["bundle", "pull", f"{target}:v1"], env)
    assert pulled.returncode == 0, pulled.stderr
    assert digest in pulled.stdout
    listed = mcpkit(["bundle", "list"], env)
    assert listed.returncode == 0 and "weather-tool" in listed.stdout and "1.0.0" in listed.stdout
    inspected = mcpkit(["bundle", "inspect", f"{target}:latest"], env)
    assert inspected.returncode == 0, inspected.stderr
    assert "get_weather" in inspected.stdout and "application/wasm" in inspected.stdout

    entry = tmp_path / "home" / "bundles" / Path(*parse_reference(f"{target}:v1").cache_parts())
    assert (entry / "module.wasm").read_bytes() == example_wasm.read_bytes()
    assert (entry / "config.yaml").read_bytes() == (project / "config.yaml").read_bytes()
    check_answers(call_tools(env, ["run", "weather-tool"]))
