"""The ``mcpkit`` environment collector: ``hatch run mcpkit:...`` scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.builders import make_project, push_project

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
    assert set(scripts) >= {"pull", "run", "list", "push", "inspect", "lock", "sync", "serve"}
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


@pytest.mark.registry
def test_hatch_run_mcpkit_lock_and_sync(run_hatch: HatchRunner, example_copy: Path, tmp_path: Path,
                                        registry: Any, repo_name: str) -> None:
    """`hatch run mcpkit:lock` writes mcpkit.lock beside the project's pyproject.toml; `mcpkit:sync --frozen`
    installs it into a clean MCPKIT_HOME; {args} reach the command; user scripts still win."""
    manifest = push_project(registry, make_project(tmp_path / "src", name="notes"), tmp_path / "out",
                            f"{repo_name}/notes", "1")
    pyproject = example_copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + f'''
[tool.mcpkit.bundles]
notes = "oci://{registry.host}/{repo_name}/notes:1"
''')
    home = tmp_path / "home"
    res = run_hatch(["run", "mcpkit:lock"], example_copy, env={"MCPKIT_HOME": str(home)})
    assert res.returncode == 0, res.stdout
    assert manifest.digest in (example_copy / "mcpkit.lock").read_text()
    res = run_hatch(["run", "mcpkit:sync", "--frozen"], example_copy, env={"MCPKIT_HOME": str(home)})
    assert res.returncode == 0, res.stdout
    assert "1 pulled, 0 already" in res.stdout
    assert list(home.glob(f"bundles/*/{repo_name}/notes/sha256-{manifest.digest.split(':')[1]}/module.wasm"))
    (example_copy / "mcpkit.lock").unlink()
    res = run_hatch(["run", "mcpkit:sync", "--frozen"], example_copy, env={"MCPKIT_HOME": str(home)})
    assert res.returncode == 4, res.stdout
    assert "no mcpkit.lock" in res.stdout and "Traceback" not in res.stdout
