"""Fixtures for everything that compiles Rust: the toolchain, the example module, test crates.

* ``rust_env`` (session): a complete environment (``os.environ`` plus the toolchain variables
  from ``.ci/setup-rust-wasip1.sh``) in which ``cargo build --target wasm32-wasip1`` works.
  Pass it as ``env=`` to subprocesses (``hatch build``) or to ``build_crate``.
* ``example_wasm`` (session): the example-project's ``weather-tool.wasm``, built once.
* ``example_bundle_dir`` (session): a folder laid out like a pulled bundle of the example:
  ``module.wasm``, ``config.yaml``, ``README.md``, ``data/weather.json``.
* ``build_fixture_crate(path, **build_crate_kwargs) -> Path``: build any crate (e.g. one under
  ``tests/fixtures/crates/`` or written to a tmp dir) with that toolchain; the target dir is shared
  across the session (``.ci/cache/test-cargo-target``) so dependencies compile once.

A missing toolchain calls ``need()``: the test is skipped locally and fails in CI.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hatch_mcpkit.errors import BuildError
from tests._support import need
from tests.builders import bundle_dir

REPO = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO / ".ci" / "setup-rust-wasip1.sh"
EXAMPLE_DIR = REPO / "example-project"
FIXTURE_CRATES = REPO / "tests" / "fixtures" / "crates"
SHARED_TARGET_DIR = REPO / ".ci" / "cache" / "test-cargo-target"
DEBIAN_PACKAGES = ("rustc-web", "cargo-web", "rust-web-src", "wasi-libc", "lld-22",
                   "librust-serde-json-dev", "librust-serde-derive-dev")
# Variables that would change what cargo builds behind the toolchain's back.
_SCRUB = ("RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET", "CARGO_TARGET_DIR",
          "CARGO_BUILD_RUSTFLAGS", "RUSTC_WRAPPER", "CARGO_BUILD_RUSTC_WRAPPER")

__all__ = [
    "EXAMPLE_DIR",
    "FIXTURE_CRATES",
    "build_fixture_crate",
    "example_bundle_dir",
    "example_wasm",
    "rust_env",
    "toolchain_env",
]


def _rustup_has_target() -> bool:
    if not shutil.which("rustup"):
        return False
    try:
        out = subprocess.run(["rustup", "target", "list", "--installed"], capture_output=True, text=True,
                             timeout=60, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "wasm32-wasip1" in out.split()


def _debian_packages_installed() -> bool:
    if not shutil.which("dpkg"):
        return False
    res = subprocess.run(["dpkg", "-s", *DEBIAN_PACKAGES], capture_output=True, check=False)
    return res.returncode == 0


@functools.lru_cache(maxsize=1)
def _setup() -> tuple[dict[str, str] | None, str]:
    """Run the toolchain script once per session; (environment, "") or (None, why not)."""
    if not SETUP_SCRIPT.is_file():
        return None, f"{SETUP_SCRIPT} is missing"
    if not (_rustup_has_target() or _debian_packages_installed()):
        return None, ("a Rust toolchain for wasm32-wasip1 (rustup with `rustup target add wasm32-wasip1`, "
                      "or Debian's packages via .ci/setup-rust-wasip1.sh)")
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    try:
        res = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, env=env,
                             timeout=900, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"running {SETUP_SCRIPT.name} failed: {exc}"
    if res.returncode != 0:
        tail = "\n".join(res.stderr.strip().splitlines()[-5:])
        return None, f"{SETUP_SCRIPT.name} failed (exit {res.returncode}): {tail}"
    for line in res.stdout.splitlines():
        line = line.strip()
        m = re.fullmatch(r'export ([A-Za-z_][A-Za-z0-9_]*)="(.*)"', line)
        if m:
            env[m.group(1)] = m.group(2)
        elif line.startswith("unset "):
            for key in line.split()[1:]:
                env.pop(key, None)
    if not env.get("CARGO"):
        return None, f"{SETUP_SCRIPT.name} did not say which cargo to use"
    return env, ""


def toolchain_env() -> dict[str, str]:
    """The build environment (a fresh copy); calls need() when there is no toolchain."""
    env, why = _setup()
    need(env is not None, why)
    assert env is not None
    return dict(env)


def build_fixture_crate(path: str | os.PathLike[str], *, target_dir: str | os.PathLike[str] | None = None,
                        env: dict[str, str | None] | None = None, **kwargs: Any) -> Path:
    """Build a test crate for wasm32-wasip1 and return its .wasm (raises BuildError on failure).

    ``env`` entries are laid over the toolchain environment; other keyword arguments go to
    :func:`hatch_mcpkit.cargo.build_crate` (profile, features, bin_name, package, echo ...).
    """
    from hatch_mcpkit.cargo import build_crate

    full: dict[str, str | None] = dict(toolchain_env())
    full["CARGO_TARGET_DIR"] = str(target_dir if target_dir is not None else SHARED_TARGET_DIR)
    full.update(env or {})
    return build_crate(Path(path), env=full, **kwargs)


@pytest.fixture(scope="session")
def rust_env() -> dict[str, str]:
    return toolchain_env()


@pytest.fixture(scope="session")
def example_wasm(rust_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """weather-tool.wasm built from example-project (its own target/, so re-runs are quick)."""
    from hatch_mcpkit.cargo import build_crate

    lines: list[str] = []
    try:
        built = build_crate(EXAMPLE_DIR, env=rust_env, echo=lines.append)
    except BuildError as exc:
        output = "\n".join(lines[-60:])
        pytest.fail(f"building example-project failed: {exc}\n{output}", pytrace=False)
    copy = tmp_path_factory.mktemp("example-wasm") / built.name
    shutil.copyfile(built, copy)
    return copy


@pytest.fixture(scope="session")
def example_bundle_dir(example_wasm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example laid out like a bundle: module.wasm, config.yaml, README.md, data/."""
    return bundle_dir(tmp_path_factory.mktemp("example-bundle"), example_wasm, EXAMPLE_DIR,
                      ("config.yaml", "README.md", "data"))


@pytest.fixture
def fixture_crate(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Copy a crate from tests/fixtures/crates into tmp_path (so tests can edit it freely)."""

    def copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(FIXTURE_CRATES / name, dest, ignore=shutil.ignore_patterns("target", "Cargo.lock"))
        return dest

    yield copy
