"""Small helpers shared by the test suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(ok: object, what: str) -> None:
    """Skip when a prerequisite is missing -- except in CI, where that is a failure.

    A green CI run must mean every test really ran.
    """
    if ok:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing in CI: {what}", pytrace=False)
    pytest.skip(f"prerequisite missing: {what}")


MCPKIT = [sys.executable, "-m", "hatch_mcpkit"]
REPO = Path(__file__).resolve().parents[1]


def mcpkit_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without any ``MCPKIT_*`` setting, with this tree importable and ``home`` as the cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPKIT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["MCPKIT_HOME"] = str(home)
    env.update(extra)
    return env


def run_mcpkit(*args: str, home: Path, cwd: Path | None = None, timeout: float = 60,
               stdin: Any = subprocess.DEVNULL, **env: str) -> subprocess.CompletedProcess[str]:
    """``mcpkit ARGS`` in a subprocess of this tree, with ``home`` as MCPKIT_HOME and ``env`` added."""
    return subprocess.run([*MCPKIT, *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env=mcpkit_env(home, **env), cwd=cwd, stdin=stdin)
