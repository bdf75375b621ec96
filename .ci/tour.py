"""The README tour, run for real from a checkout (``./tour`` sets up, then runs this).

Each step prints the command a user would type, then runs it:

1. a wheel of this checkout, for hatch's isolated build environment (``build-system.requires``
   names ``hatch-mcpkit``, which the package index does not have): found through
   ``PIP_FIND_LINKS``/``UV_FIND_LINKS``, with hatch's data folder of the tour's own so the build
   environment holds this wheel and not one from an earlier run;
2. a registry of the tour's own: Debian's ``docker-registry`` on a free loopback port;
3. ``hatch build`` in example-project/;
4. ``hatch publish -p mcpkit``, to that registry (``-o registry=...``: the example's files are not edited);
5. ``hatch run mcpkit:pull``;
6. ``mcpkit server --from-bundle weather-tool``, started by the MCP Python client, which lists the
   tools and calls ``get_weather``. The last line printed is the tool's result.

Everything started here is stopped at the end, also when a step fails, on Ctrl-C or on SIGTERM.
Not part of the installed package: it drives a checkout. The Rust environment and PYTHONPATH come
from ``./tour``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "example-project"
REPOSITORY = "examples/weather-tool"
CALL = ("get_weather", {"location": "London"})
STEPS = 6


class StepFailed(Exception):
    pass


def step(number: int, what: str) -> None:
    print(f"\n==> [{number}/{STEPS}] {what}", flush=True)


def run(argv: list[str], shown: str, *, cwd: Path, env: dict[str, str]) -> None:
    """Print ``$ shown`` and run ``argv`` with the terminal as its output."""
    print(f"$ {shown}", flush=True)
    code = subprocess.run(argv, cwd=cwd, env=env, check=False).returncode
    if code != 0:
        raise StepFailed(f"`{shown}` failed with exit code {code} (its output is above)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def registry(work: Path) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1:<free port>; its ``host:port``. Stopped on the way out."""
    binary = os.environ.get("MCPKIT_REGISTRY_BIN") or shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        raise StepFailed("no registry binary: install Debian's docker-registry (bash .ci/setup does), "
                         "or set MCPKIT_REGISTRY_BIN")
    host = f"127.0.0.1:{free_port()}"
    config = work / "registry.yml"
    config.write_text(f"version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\n"
                      f"storage: {{filesystem: {{rootdirectory: {work / 'registry-data'}}}}}\n"
                      f"http: {{addr: {host}, secret: tour-only}}\n")
    log_path = work / "registry.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, "serve", str(config)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://{host}/v2/", proc, log_path)
        print(f"registry: {binary} serving http://{host} (pid {proc.pid}), storage in {work / 'registry-data'}",
              flush=True)
        yield host
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        print(f"tour: the registry on {host} is stopped", file=sys.stderr, flush=True)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StepFailed(f"the registry exited at start (exit {proc.returncode}): "
                             f"{log_path.read_text(errors='replace')[-800:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise StepFailed(f"the registry did not answer {url} within 15 s; see {log_path}")


async def call_tool(env: dict[str, str]) -> tuple[list[str], Any]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    server = StdioServerParameters(command=sys.executable,
                                   args=["-m", "hatch_mcpkit", "server", "--from-bundle", "weather-tool"], env=env)
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = [tool.name for tool in (await session.list_tools()).tools]
        result = await session.call_tool(*CALL)
    return tools, result


def serve_and_call(env: dict[str, str]) -> None:
    print("$ mcpkit server --from-bundle weather-tool      # started over stdio by the MCP Python client",
          flush=True)
    tools, result = asyncio.run(asyncio.wait_for(call_tool(env), 120))
    print(f"tools: {', '.join(tools)}", flush=True)
    if result.is_error:
        raise StepFailed(f"{CALL[0]} returned an error: {result.content}")
    shown = result.structured_content if result.structured_content is not None else \
        " ".join(getattr(c, "text", "") for c in result.content)
    print(f"{CALL[0]} {json.dumps(CALL[1])} -> {json.dumps(shown, ensure_ascii=False)}", flush=True)


def environment(work: Path, wheels: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PIP_FIND_LINKS"] = " ".join(filter(None, [str(wheels), env.get("PIP_FIND_LINKS")]))
    env["UV_FIND_LINKS"] = ",".join(filter(None, [str(wheels), env.get("UV_FIND_LINKS")]))
    env["HATCH_DATA_DIR"] = str(work / "hatch-data")  # a build environment with this checkout's wheel
    env.setdefault("MCPKIT_HOME", str(work / "mcpkit-home"))
    return env


def tour(work: Path) -> None:
    py = sys.executable
    wheels = work / "wheels"
    env = environment(work, wheels)
    print(f"tour: MCPKIT_HOME={env['MCPKIT_HOME']}", flush=True)

    step(1, "a wheel of this checkout, for hatch's isolated build environment (hatch-mcpkit is not on PyPI)")
    run([py, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        f"pip wheel --no-deps -w {wheels} .      # then PIP_FIND_LINKS={wheels}", cwd=ROOT, env=env)

    step(2, "a local registry of the tour's own (instead of `docker run -d -p 5000:5000 registry:2`)")
    with registry(work) as host:
        target = f"oci://{host}/{REPOSITORY}"
        step(3, "build the example: cargo build --target wasm32-wasip1, validate, pack")
        print(f"$ cd {EXAMPLE.relative_to(ROOT)}", flush=True)
        run([py, "-m", "hatch", "build"], "hatch build", cwd=EXAMPLE, env=env)

        step(4, f"publish it to {host} (config.yaml says localhost:5000; -o registry= overrides that)")
        run([py, "-m", "hatch", "publish", "-p", "mcpkit", "-o", f"registry={target}"],
            f"hatch publish -p mcpkit -o registry={target}", cwd=EXAMPLE, env=env)

        step(5, "pull it into the cache (MCPKIT_HOME)")
        run([py, "-m", "hatch", "run", "mcpkit:pull", f"{target}:latest"],
            f"hatch run mcpkit:pull {target}:latest", cwd=EXAMPLE, env=env)

        step(6, "serve it and call a tool with an MCP client")
        serve_and_call(env)


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that everything started is stopped
    work = Path(tempfile.mkdtemp(prefix="mcpkit-tour-"))
    try:
        tour(work)
    except StepFailed as exc:
        print(f"tour: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tour: interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"tour: done; the same by hand: README.md ({shlex.quote(str(ROOT / 'README.md'))})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
