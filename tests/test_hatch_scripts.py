"""The ``mcpkit`` environment collector: ``hatch run mcpkit:...`` scripts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .plugins.hatch import HatchRunner

pytestmark = pytest.mark.hatch


def env_config(run_hatch: HatchRunner, project: Path) -> dict[str, dict[str, object]]:
    res = run_hatch(["env", "show", "--json"], project)
    assert res.returncode == 0, res.stdout
    return json.loads(res.stdout[res.stdout.index("{"):])  # type: ignore[no-any-return]


def test_collector_adds_the_mcpkit_environment(run_hatch: HatchRunner, example_copy: Path) -> None:
    env = env_config(run_hatch, example_copy)["mcpkit"]
    scripts = env["scripts"]
    assert isinstance(scripts, dict)
    assert set(scripts) >= {"pull", "run", "list", "push", "inspect"}
    assert all(cmd == [cmd[0]] and cmd[0].rstrip().endswith(f"-m hatch_mcpkit {name}") for name, cmd in scripts.items())


def test_user_scripts_win_and_ours_remain(run_hatch: HatchRunner, example_copy: Path) -> None:
    pyproject = example_copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + '\n[tool.hatch.envs.mcpkit.scripts]\npull = "echo my own pull"\n')
    scripts = env_config(run_hatch, example_copy)["mcpkit"]["scripts"]
    assert isinstance(scripts, dict)
    assert scripts["pull"] == ["echo my own pull"]
    assert "hatch_mcpkit list" in scripts["list"][0]


def test_hatch_run_mcpkit_list(run_hatch: HatchRunner, example_copy: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    res = run_hatch(["run", "mcpkit:list"], example_copy, env={"MCPKIT_HOME": str(home)})
    assert res.returncode == 0, res.stdout
    assert f"no bundles cached in {home / 'bundles'}" in res.stdout
    res = run_hatch(["run", "mcpkit:inspect", "no-such-bundle"], example_copy, env={"MCPKIT_HOME": str(home)})
    assert res.returncode != 0
    assert "no-such-bundle" in res.stdout  # {args} reached mcpkit
    assert "Traceback" not in res.stdout
