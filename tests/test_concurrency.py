"""Concurrency: many `mcpkit pull` processes at once, and many MCP tool calls through one server.

Afterwards every registry.json row points at a complete entry whose every file matches its
layer digest, no directory exists that the index does not know, and no download is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.builders import check_cache_consistent, make_project, push_project

MCPKIT = [sys.executable, "-m", "hatch_mcpkit"]


def cli_env(home: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCPKIT_", "DOCKER_CONFIG"))}
    env["MCPKIT_HOME"] = str(home)
    env["DOCKER_CONFIG"] = str(tmp_path / "no-docker-config")
    return env


def run_all(commands: list[list[str]], env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
    """Start every command at once; wait for all."""
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    done = []
    for cmd, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=180)
        done.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    return done


@pytest.mark.registry
def test_eight_processes_pull_the_same_and_different_references(tmp_path: Path, registry: Any,
                                                                 repo_name: str) -> None:
    home = tmp_path / "home"
    env = cli_env(home, tmp_path)
    a = push_project(registry, make_project(tmp_path / "a", name="tool-a", size=200_000), tmp_path / "da",
                     f"{repo_name}/a", "v1")
    b1 = push_project(registry, make_project(tmp_path / "b1", name="tool-b", version="1.0.0"), tmp_path / "db1",
                      f"{repo_name}/b", "1")
    b2 = push_project(registry, make_project(tmp_path / "b2", name="tool-b", version="2.0.0"), tmp_path / "db2",
                      f"{repo_name}/b", "2")
    refs = {
        registry.ref(f"{repo_name}/a", "v1"): a.digest,
        registry.ref(f"{repo_name}/b", "1"): b1.digest,
        registry.ref(f"{repo_name}/b", "2"): b2.digest,
        f"oci://{registry.host}/{repo_name}/a@{a.digest}": a.digest,
    }
    plan = [registry.ref(f"{repo_name}/a", "v1")] * 4 + list(refs)[1:] + [registry.ref(f"{repo_name}/b", "1")]
    assert len(plan) == 8
    results = run_all([[*MCPKIT, "bundle", "pull", ref] for ref in plan], env)
    for ref, res in zip(plan, results, strict=True):
        assert res.returncode == 0, res.stderr
        assert "Traceback" not in res.stderr
        assert f"digest:  {refs[ref]}" in res.stdout, res.stdout
    index = check_cache_consistent(home)
    rows = {row["reference"]: row["digest"] for items in index.values() for row in items}
    assert rows == refs
    assert sorted(index) == ["tool-a", "tool-b"]

    # the tag moves while eight processes pull everything again: one consistent result
    a2 = push_project(registry, make_project(tmp_path / "a2", name="tool-a", version="2.0.0", size=200_000),
                      tmp_path / "da2", f"{repo_name}/a", "v1")
    refs[registry.ref(f"{repo_name}/a", "v1")] = a2.digest
    results = run_all([[*MCPKIT, "pull", ref] for ref in plan], env)
    for res in results:
        assert res.returncode == 0, res.stderr
    index = check_cache_consistent(home)
    assert {row["reference"]: row["digest"] for items in index.values() for row in items} == refs
    entry = home / "bundles" / registry.host.replace(":", "_") / repo_name / "a" / "v1"
    assert json.loads((entry / "metadata.json").read_text())["digest"] == a2.digest


@pytest.mark.registry
def test_listing_while_pulling_never_fails(tmp_path: Path, registry: Any, repo_name: str) -> None:
    home = tmp_path / "home"
    env = cli_env(home, tmp_path)
    refs = []
    for i in range(4):
        push_project(registry, make_project(tmp_path / f"p{i}", name=f"tool-{i}"), tmp_path / f"d{i}",
                     f"{repo_name}/t{i}", "v1")
        refs.append(registry.ref(f"{repo_name}/t{i}", "v1"))
    lister = ("import json, subprocess, sys\n"
              "for _ in range(15):\n"
              "    r = subprocess.run([sys.executable, '-m', 'hatch_mcpkit', 'list', '--json'], capture_output=True, "
              "text=True)\n"
              "    assert r.returncode == 0, r.stderr\n"
              "    for row in json.loads(r.stdout):\n"
              "        assert row['digest'].startswith('sha256:'), row\n")
    commands = [[*MCPKIT, "pull", ref] for ref in refs] + [[sys.executable, "-c", lister]] * 4
    for res in run_all(commands, env):
        assert res.returncode == 0, res.stderr
    index = check_cache_consistent(home)
    assert sorted(index) == [f"tool-{i}" for i in range(4)]


# --------------------------------------------------------------------------- MCP server


async def _session_calls(bundle_dir: Path, calls: list[tuple[str, dict[str, Any]]], *extra: str,
                         errlog: Path) -> tuple[list[Any], list[float]]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "hatch_mcpkit", "server", str(bundle_dir), "-q", *extra])
    with open(errlog, "w") as err:
        async with stdio_client(params, errlog=err) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            await s.list_tools()
            start = time.monotonic()
            finished: list[float] = [0.0] * len(calls)

            async def one(i: int, tool: str, args: dict[str, Any]) -> Any:
                res = await s.call_tool(tool, args)
                finished[i] = time.monotonic() - start
                return res

            results = await asyncio.gather(*(one(i, t, a) for i, (t, a) in enumerate(calls)))
            # the server still answers afterwards
            await s.send_ping()
            return list(results), finished


@pytest.mark.cargo
def test_eight_concurrent_calls_get_their_own_answers(example_bundle_dir: Path, example_runtime: Any,
                                                      tmp_path: Path) -> None:
    places = ["Berlin", "Paris", "Tokyo", "London", "Atlantis", "Berlin", "Paris", "Tokyo"]
    calls = [("get_weather", {"location": p}) for p in places]
    results, _ = asyncio.run(_session_calls(example_bundle_dir, calls, "--max-concurrency", "8",
                                            errlog=tmp_path / "err.log"))
    for place, res in zip(places, results, strict=True):
        direct = example_runtime.call("get_weather", {"location": place})
        assert res.is_error is direct.is_error, place
        assert res.structured_content == direct.structured_content, place
        assert res.content[0].text == direct.text, place
    assert "Traceback" not in (tmp_path / "err.log").read_text()


@pytest.mark.cargo
def test_slow_calls_do_not_hold_up_or_mix_with_fast_ones(hostile_bundle_dir: Path, tmp_path: Path) -> None:
    sizes = [0, 100, 20_000, 62_000]  # the last is past the 60 KiB written directly (a feeder thread)
    payloads = [{"i": i, "blob": str(i) * n} for i, n in enumerate(sizes)]
    calls: list[tuple[str, dict[str, Any]]] = [("spin", {})] * 4 + [("echo", p) for p in payloads]
    results, finished = asyncio.run(_session_calls(hostile_bundle_dir, calls, "--max-concurrency", "8",
                                                   errlog=tmp_path / "err.log"))
    for res in results[:4]:
        assert res.is_error and "timed out after 1000 ms" in res.content[0].text
    for payload, res in zip(payloads, results[4:], strict=True):
        assert res.is_error is False
        assert json.loads(res.content[0].text) == payload
    assert max(finished[4:]) < min(finished[:4]), "the echo calls waited for the spinning ones"
    assert "Traceback" not in (tmp_path / "err.log").read_text()
