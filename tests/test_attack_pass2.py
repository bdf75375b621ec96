"""A second attack pass, over what this release added: project bundles, the gateway, HTTP, foreign shapes.

Each test is one attack tried for real from the outside -- a cloned project (pyproject.toml +
mcpkit.lock + files beside them), a hostile registry or HTTP client -- driven through the real
``mcpkit`` command against the session's real registry, and asserts the *safe* outcome:

* a cloned project's trust policy names a "public key" that is ``/dev/stdin`` or a FIFO: a key is
  read as a bounded regular file, so ``mcpkit run``/``server``/``sync`` in that folder fail at once
  instead of waiting for ever (or eating the MCP client's messages from stdin);
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.builders import make_project, push_project

MCPKIT = [sys.executable, "-m", "hatch_mcpkit"]
REPO = Path(__file__).resolve().parents[1]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPKIT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["MCPKIT_HOME"] = str(home)
    env.update(extra)
    return env


def _mcpkit(*args: str, home: Path, cwd: Path | None = None, timeout: float = 60,
            stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MCPKIT, *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env=_env(home), cwd=cwd, stdin=stdin)


def _pushed(registry: Any, work: Path, repository: str, *, name: str = "fault-tool", version: str = "1.0.0",
            tag: str = "1") -> Any:
    slug = f"{repository.replace('/', '-')}-{version}"
    root = make_project(work / f"src-{slug}", name=name, version=version)
    return push_project(registry, root, work / f"out-{slug}", repository, tag)


# --------------------------------------------------------------------------- key files that are not files


@pytest.mark.registry
@pytest.mark.parametrize("kind", ["dev-stdin", "fifo"])
def test_a_cloned_projects_trust_key_that_is_not_a_file_is_refused_at_once(
        registry: Any, repo_name: str, tmp_path: Path, kind: str) -> None:
    """A git checkout can hold ``keys/team.pub -> /dev/stdin``; a tarball can hold a FIFO. The trust rule
    of the project's pyproject.toml names it; `mcpkit server NAME` in that folder opened it and waited:
    on a terminal for the user to type, under an MCP client reading the protocol messages meant for it."""
    home = tmp_path / "home"
    _pushed(registry, tmp_path, repo_name, name="victim-tool")
    assert _mcpkit("bundle", "pull", registry.ref(repo_name, "1"), home=home).returncode == 0
    project = tmp_path / "cloned"
    (project / "keys").mkdir(parents=True)
    key = project / "keys" / "team.pub"
    if kind == "fifo":
        os.mkfifo(key)
    else:
        key.symlink_to("/dev/stdin")
    (project / "pyproject.toml").write_text(
        '[project]\nname = "cloned"\nversion = "0"\n\n[tool.mcpkit.trust]\n'
        f'rules = [{{ match = "{registry.host}/**", keys = ["keys/team.pub"] }}]\n')
    reader, writer = os.pipe()  # stdin that stays open and silent, as an MCP client's is
    try:
        proc = _mcpkit("server", "victim-tool", home=home, cwd=project, timeout=15, stdin=reader)
    except subprocess.TimeoutExpired:
        pytest.fail(f"mcpkit server waited on {kind} named as a public key by a cloned project")
    finally:
        os.close(writer)
        os.close(reader)
    assert proc.returncode == 1, proc.stderr
    assert "team.pub" in proc.stderr and "not a regular file" in proc.stderr, proc.stderr
