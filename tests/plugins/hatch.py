"""Fixtures for driving the real ``hatch`` command against a copy of example-project.

* ``wheelhouse`` (session): a wheel of this checkout, so hatch's isolated build environment
  installs *this* hatch-mcpkit (``build-system.requires = ["hatchling", "hatch-mcpkit"]``).
* ``hatch_env`` (session): the environment for ``hatch`` subprocesses: the Rust toolchain,
  the wheelhouse as a find-links source, and hatch data/cache folders of the session's own.
* ``example_copy``: a fresh copy of example-project (no target/, no dist/) in tmp_path.
* ``run_hatch(args, cwd, env=None)``: run hatch, return the CompletedProcess (text, merged output).
* ``assert_reported(output, *problems)``: the output is one mcpkit configuration error with these problems.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests._support import need
from tests.plugins.rust import EXAMPLE_DIR

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = EXAMPLE_DIR

HatchRunner = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    assert list(out.glob("hatch_mcpkit-*.whl"))
    return out


@pytest.fixture(scope="session")
def hatch_env(
    rust_env: dict[str, str], wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    need(shutil.which("hatch"), "the hatch command (pip install hatch)")
    home = tmp_path_factory.mktemp("hatch-home")
    env = dict(rust_env)
    env.update(
        {
            "UV_FIND_LINKS": str(wheelhouse),
            "PIP_FIND_LINKS": str(wheelhouse),
            "HATCH_DATA_DIR": str(home / "data"),
            "HATCH_CACHE_DIR": str(home / "cache"),
            "MCPKIT_HOME": str(home / "mcpkit"),
            "NO_COLOR": "1",
            "TERM": "dumb",
            "COLUMNS": "200",
        }
    )
    env.pop("SOURCE_DATE_EPOCH", None)
    return env


@pytest.fixture
def example_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "example-project"
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("target", "dist", ".git"))
    return dest


@pytest.fixture(scope="session")
def run_hatch(hatch_env: dict[str, str]) -> HatchRunner:
    def run(
        args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["hatch", *args],
            cwd=cwd,
            env={**hatch_env, **(env or {})},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )

    return run


def counting_cargo(tmp_path: Path, real_cargo: str) -> tuple[str, Path]:
    """A cargo wrapper that logs each invocation's arguments, for "cargo runs once" checks."""
    log = tmp_path / "cargo-calls.log"
    script = tmp_path / "cargo-wrapper"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexec "{real_cargo}" "$@"\n')
    script.chmod(0o755)
    return str(script), log


def assert_reported(output: str, *problems: str) -> None:
    """``output`` shows mcpkit's one configuration error: how many problems, each of them, no traceback."""
    count = len(problems)
    assert f"mcpkit: {count} problem{'s' if count != 1 else ''} in configuration:" in output, output
    for problem in problems:
        assert problem in output, (problem, output)
    assert "Traceback" not in output, output


__all__ = ["HatchRunner", "assert_reported", "counting_cargo", "example_copy", "hatch_env", "run_hatch", "wheelhouse"]
