"""Fixtures for the runtime, sandbox and server tests.

* ``hostile_bundle_dir`` (session): tests/fixtures/hostile-tool built and laid out as a
  bundle (module.wasm, config.yaml, data/).
* ``bundle_copy(src) -> Path``: a private copy of a bundle directory (for tests that
  change its files or need a fresh compile).
* ``example_runtime`` / ``hostile_runtime`` (session): ready Runtimes.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.plugins.rust import build_fixture_crate

REPO = Path(__file__).resolve().parents[2]
HOSTILE_DIR = REPO / "tests" / "fixtures" / "hostile-tool"
HOSTILE_ENV = {"HOSTILE_ALLOWED": "visible-value", "HOSTILE_SECRET": "must-not-leak", "PATH": "/usr/bin"}


@pytest.fixture(scope="session")
def hostile_wasm() -> Path:
    return build_fixture_crate(HOSTILE_DIR)


@pytest.fixture(scope="session")
def hostile_bundle_dir(hostile_wasm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hostile-bundle")
    shutil.copyfile(hostile_wasm, out / "module.wasm")
    shutil.copyfile(HOSTILE_DIR / "config.yaml", out / "config.yaml")
    shutil.copytree(HOSTILE_DIR / "data", out / "data")
    return out


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Callable[[Path], Path]:
    def copy(src: Path) -> Path:
        dest = tmp_path / f"copy-{src.name}"
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("module.cwasm", "metadata.json", ".*.tmp"))
        return dest

    return copy


@pytest.fixture(scope="session")
def example_runtime(example_bundle_dir: Path) -> Iterator[object]:
    from hatch_mcpkit.runtime import Runtime

    rt = Runtime.from_dir(example_bundle_dir)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def hostile_runtime(hostile_bundle_dir: Path) -> Iterator[object]:
    from hatch_mcpkit.runtime import Runtime

    rt = Runtime.from_dir(hostile_bundle_dir, environ=HOSTILE_ENV)
    yield rt
    rt.close()
