"""Real MCP clients and real ``mcpkit`` HTTP servers, for the server, gateway and HTTP suites.

* ``ts_client`` (session): the official TypeScript SDK client (tests/fixtures/ts-client, installed
  by .ci/setup with ``npm ci`` from its lockfile: nothing is fetched at test time);
  ``node client.mjs CALLS -- command...`` (stdio) or ``... --http URL`` (bearer token from
  ``$MCP_TOKEN``).
* ``mcpkit_http(*args, env=, cwd=)``: starts ``mcpkit <args> --http 127.0.0.1:0`` as a process and
  yields a :class:`Served` (its URL, token, process, stderr so far) once it listens; SIGTERM after.
* ``http_session(url, token)``: the official Python SDK client over streamable HTTP, initialized.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
MCPKIT = [sys.executable, "-m", "hatch_mcpkit"]
_URL = re.compile(r"listening on (http://\S+)")
_TOKEN = re.compile(r"bearer token for this run \([^)]*\): (\S+)")


@pytest.fixture(scope="session")
def ts_client() -> Path:
    """The official TypeScript SDK client (tests/fixtures/ts-client), installed by .ci/setup with ``npm ci``."""
    from tests._support import need

    here = REPO / "tests" / "fixtures" / "ts-client"
    need(shutil.which("node") and (here / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir(),
         "node and the TypeScript SDK (.ci/setup: npm ci --prefix tests/fixtures/ts-client)")
    return here / "client.mjs"


@dataclass
class Served:
    """A running ``mcpkit ... --http`` process."""

    url: str
    token: str | None
    proc: subprocess.Popen[bytes]
    errlog: Path

    @property
    def stderr(self) -> str:
        return self.errlog.read_text(errors="replace")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the server's process group (a wrapper such as ``hatch run`` and the server under it)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
        return self.proc.wait(timeout=timeout)


def child_env(**extra: str) -> dict[str, str]:
    """This environment with this tree importable, without a server token unless given."""
    env = {k: v for k, v in os.environ.items() if k != "MCPKIT_SERVER_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def start_http(args: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
               address: str = "127.0.0.1:0", errlog: Path | None = None, timeout: float = 60,
               command: Sequence[str] = tuple(MCPKIT)) -> Served:
    """Start ``mcpkit ARGS --http ADDRESS`` (or ``COMMAND ARGS ...``, e.g. ``hatch run mcpkit:serve``) in a
    process group of its own, and wait until it says where it listens."""
    if errlog is None:
        errlog = Path(tempfile.mkstemp(prefix="mcpkit-http-", suffix=".log")[1])
    with errlog.open("wb") as err:
        proc = subprocess.Popen([*command, *args, "--http", address], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, env=env or child_env(), cwd=cwd,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = errlog.read_text(errors="replace")
        url = _URL.search(text)
        token = _TOKEN.search(text)
        if url and (token or "--no-auth" in args or "MCPKIT_SERVER_TOKEN" in (env or {})):
            given = (env or {}).get("MCPKIT_SERVER_TOKEN")
            return Served(url.group(1), token.group(1) if token else given, proc, errlog)
        if proc.poll() is not None:
            raise AssertionError(f"mcpkit exited with {proc.returncode}:\n{text[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"mcpkit did not start listening in {timeout} s:\n{errlog.read_text()[-3000:]}")


@contextlib.contextmanager
def mcpkit_http(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                address: str = "127.0.0.1:0", command: Sequence[str] = tuple(MCPKIT)) -> Iterator[Served]:
    served = start_http(args, env=env, cwd=cwd, address=address, command=command)
    try:
        yield served
    finally:
        try:
            served.stop()
        except subprocess.TimeoutExpired:
            served.stop(signal.SIGKILL)


@contextlib.asynccontextmanager
async def http_session(url: str, token: str | None, headers: dict[str, str] | None = None) -> AsyncIterator[Any]:
    """The official Python client over streamable HTTP, initialized."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with create_mcp_http_client(headers=sent) as client, \
            streamable_http_client(url, http_client=client) as (read, write), ClientSession(read, write) as s:
        await s.initialize()
        yield s


# --------------------------------------------------------------------------- a project of two bundles


@dataclass
class Project:
    """A project folder whose mcpkit.lock is synced into ``home`` (a fresh MCPKIT_HOME)."""

    folder: Path
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        return child_env(MCPKIT_HOME=str(self.home), **extra)


def push_bundle(registry: Any, work: Path, repository: str, config: str, module: bytes,
                files: dict[str, str | bytes] | None = None) -> Any:
    """Build a bundle folder (config.yaml, module.wasm, ``files``) and push it as ``repository:1``."""
    from tests.builders import make_project, push_project

    root = make_project(work / f"src-{repository.replace('/', '-')}", config=config, module=module, files=files)
    return push_project(registry, root, work / f"out-{repository.replace('/', '-')}", repository, "1")


def lock_and_sync(folder: Path, home: Path) -> Project:
    """``mcpkit lock`` then ``mcpkit sync --frozen`` (the real commands) into ``home``."""
    project = Project(folder, home)
    for command in (["lock"], ["sync", "--frozen"]):
        proc = subprocess.run([*MCPKIT, *command, "--project", str(folder)], capture_output=True, timeout=300,
                              check=False, env=project.env())
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return project


def write_pyproject(folder: Path, bundles: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(f'[project]\nname = "demo"\nversion = "0"\n\n[tool.mcpkit.bundles]\n'
                                           f'{bundles}')
    return folder


@pytest.fixture(scope="session")
def two_bundle_project(registry: Any, example_wasm: Path, hostile_wasm: Path,
                       tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The example (key ``weather``) and the hostile tool (key ``hostile``, limits narrowed), locked and synced.

    pyproject.toml names ``weather`` first: tools/list must still come sorted by key.
    """
    import uuid

    work = tmp_path_factory.mktemp("two-bundles")
    base = f"gateway/{uuid.uuid4().hex[:8]}"
    example = REPO / "example-project"
    push_bundle(registry, work, f"{base}/weather", (example / "config.yaml").read_text(), example_wasm.read_bytes(),
                {"README.md": (example / "README.md").read_text(),
                 "data/weather.json": (example / "data" / "weather.json").read_text()})
    hostile = REPO / "tests" / "fixtures" / "hostile-tool"
    push_bundle(registry, work, f"{base}/hostile", (hostile / "config.yaml").read_text(), hostile_wasm.read_bytes(),
                {"data/hello.txt": (hostile / "data" / "hello.txt").read_text()})
    folder = write_pyproject(work / "project", f'weather = "oci://{registry.host}/{base}/weather:1"\n\n'
                             f'[tool.mcpkit.bundles.hostile]\nref = "oci://{registry.host}/{base}/hostile:1"\n'
                             'policy = { limits = { timeout_ms = 1000 } }\n')
    return lock_and_sync(folder, work / "home")
