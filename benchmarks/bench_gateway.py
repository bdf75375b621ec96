"""The gateway over streamable HTTP against the SDK's own HTTP server, and its memory per bundle.

Measured in one run:

* throughput: 8 concurrent clients (official Python SDK sessions over streamable HTTP, in one
  client process), each making ``--calls`` tools/call requests, against
  - ``mcpkit serve --http`` over a project of 10 locked bundles (the example weather-tool, each
    module made distinct), the clients spread over two bundles (``w0__``/``w1__convert_temperature``),
    with the bearer token, Host/Origin checks and the body limit all on;
  - the floor: the ``mcp`` SDK's own low-level ``Server.streamable_http_app`` (stateless, its
    default SSE answers as the gateway's, no auth) under uvicorn, answering the same tool with fixed text and running no module.
  Reported: calls/s and per-call p50/p99; target (docs/performance.md): gateway >= 0.8x the SDK's calls/s.
* peak RSS (VmHWM) of ``mcpkit serve --http`` with 1 and with 10 bundles loaded, after one call to
  every bundle, beside the SDK echo server's.

The bundles are pushed to a local registry (Debian's ``docker-registry`` binary), locked and synced
into a fresh MCPKIT_HOME with the lock API, and served once before measuring so that every module's
code is in the code cache.

With ``--compare TREE`` (another checkout of hatch-mcpkit, e.g. ``git worktree add /tmp/before
HEAD~3``) a second gateway served from that tree joins the same rounds: a before/after in one run.

Usage: ``python benchmarks/bench_gateway.py [--calls 200] [--clients 8] [--bundles 10] [--compare TREE]``
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

TOKEN = "bench-token-" + "0123456789abcdef" * 2
ARGS = {"value": 21.5, "from": "celsius", "to": "fahrenheit"}

ECHO_HTTP = r'''
import sys, uvicorn, mcp_types as types
from mcp.server.lowlevel import Server
async def list_tools(ctx, params):
    return types.ListToolsResult(tools=[types.Tool(name="convert_temperature", input_schema={"type": "object"})])
async def call_tool(ctx, params):
    return types.CallToolResult(content=[types.TextContent(type="text", text="21.5 °C = 70.7 °F")])
server = Server("echo", on_list_tools=list_tools, on_call_tool=call_tool)
app = server.streamable_http_app(stateless_http=True)
sock = __import__("socket").socket(); sock.bind(("127.0.0.1", 0)); sock.listen(1024)
print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}/mcp", file=sys.stderr, flush=True)
uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")).run(sockets=[sock])
'''


# --------------------------------------------------------------------------- set-up


def distinct(module: bytes, n: int) -> bytes:
    """The module with a custom section naming ``n``: the same code, another digest."""
    from tests.builders import name, section

    return module + section(0, name("mcpkit-bench") + n.to_bytes(4, "big"))


def project(work: Path, bundles: int) -> tuple[Path, Path]:
    """``bundles`` copies of the example, pushed, locked and synced; returns (project folder, MCPKIT_HOME)."""
    from bench_runtime import example_bundle

    from hatch_mcpkit import lock
    from hatch_mcpkit.project import find_project
    from hatch_mcpkit.store import BundleCache, PullOptions
    from hatch_mcpkit.trust import TrustPolicy
    from tests.builders import make_project, push_project
    from tests.plugins.registry import start_binary_registry

    example = example_bundle(work / "example")
    reg = start_binary_registry("plain", work / "reg")
    try:
        lines = ["[project]", 'name = "bench"', 'version = "0"', "", "[tool.mcpkit.bundles]"]
        for n in range(bundles):
            root = make_project(work / f"src-{n}", config=(example / "config.yaml").read_text(),
                                module=distinct((example / "module.wasm").read_bytes(), n),
                                files={"data/weather.json": (example / "data" / "weather.json").read_text()})
            push_project(reg, root, work / f"out-{n}", f"bench/weather{n}", "1")
            lines.append(f'w{n} = "oci://{reg.host}/bench/weather{n}:1"')
        folder = work / "project"
        folder.mkdir()
        (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")
        found = find_project(folder)
        opts, policy = PullOptions(), TrustPolicy()
        lock.lock_project(found, opts, policy, warn=lambda _m: None)
        lock.sync(found, BundleCache(work / "home"), opts, policy, warn=lambda _m: None, frozen=True)
    finally:
        reg.stop()
    return folder, work / "home"


class Process:
    """A server process that prints ``listening on URL`` on stderr."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        with log.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                         env=env)
        deadline = time.monotonic() + 120
        while not (found := re.search(r"listening on (http://\S+)", log.read_text(errors="replace"))):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[:4]} did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        self.url = found.group(1)

    def cpu_s(self) -> float:
        """User + system CPU seconds this process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def env(home: Path, tree: Path = ROOT) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "MCPKIT_SERVER_TOKEN"}
    out.update(MCPKIT_HOME=str(home), MCPKIT_SERVER_TOKEN=TOKEN, PYTHONPATH=str(tree))
    return out


def serve(folder: Path, home: Path, work: Path, *names: str, tree: Path = ROOT) -> Process:
    return Process([sys.executable, "-m", "hatch_mcpkit", "serve", "--project", str(folder), "-q", *names,
                    "--http", "127.0.0.1:0"], env(home, tree), work / f"serve-{len(names)}-{time.monotonic_ns()}.log")


# --------------------------------------------------------------------------- clients


def load(url: str, token: str | None, tools: list[str], clients: int, calls: int) -> tuple[float, list[float]]:
    """``clients`` SDK sessions side by side, ``calls`` each (after 10 to warm up): (calls/s, latencies ms)."""
    import anyio

    from tests.plugins.clients import http_session

    latencies: list[float] = []
    spans: list[tuple[float, float]] = []

    async def client(n: int) -> None:
        tool = tools[n % len(tools)]
        async with http_session(url, token) as s:
            for _ in range(10):
                assert not (await s.call_tool(tool, ARGS)).is_error
            start = time.perf_counter()
            for _ in range(calls):
                t0 = time.perf_counter()
                res = await s.call_tool(tool, ARGS)
                latencies.append((time.perf_counter() - t0) * 1000)
                assert not res.is_error and "70.7" in res.content[0].text, res
            spans.append((start, time.perf_counter()))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for n in range(clients):
                tg.start_soon(client, n)

    anyio.run(main)
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return clients * calls / wall, latencies


def touch_all(url: str, names: list[str]) -> None:
    import anyio

    from tests.plugins.clients import http_session

    async def go() -> None:
        async with http_session(url, TOKEN) as s:
            for name in names:
                assert not (await s.call_tool(f"{name}__convert_temperature", ARGS)).is_error

    anyio.run(go)


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200, help="calls per client")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--bundles", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="throughput rounds per server (alternating)")
    ap.add_argument("--compare", type=Path, metavar="TREE",
                    help="another hatch-mcpkit checkout whose gateway joins the same rounds (before/after)")
    opts = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="mcpkit-bench-gateway-") as tmp:
        work = Path(tmp)
        folder, home = project(work, opts.bundles)
        names = [f"w{n}" for n in range(opts.bundles)]
        serve(folder, home, work).stop()  # every module into the code cache first

        gateway = serve(folder, home, work)
        other = serve(folder, home, work, tree=opts.compare.resolve()) if opts.compare else None
        echo = Process([sys.executable, "-c", ECHO_HTTP], env(home), work / "echo.log")
        results: dict[str, list[tuple[float, list[float]]]] = {"gateway": [], "sdk": [], "compare": []}
        cpu = {"gateway": 0.0, "sdk": 0.0, "compare": 0.0}
        pair = ["w0__convert_temperature", "w1__convert_temperature"]
        contenders = [("sdk", echo, None, ["convert_temperature"]), ("gateway", gateway, TOKEN, pair)]
        if other is not None:
            contenders.append(("compare", other, TOKEN, pair))
        try:
            for n in range(opts.rounds):  # alternate, so all see the same machine
                for key, server, token, tools in contenders if n % 2 == 0 else contenders[::-1]:
                    before = server.cpu_s()
                    results[key].append(load(server.url, token, tools, opts.clients, opts.calls))
                    cpu[key] += server.cpu_s() - before
            touch_all(gateway.url, names)
            rss_all = gateway.peak_rss_mib()
            rss_echo = echo.peak_rss_mib()
        finally:
            gateway.stop()
            echo.stop()
            if other is not None:
                other.stop()
        one = serve(folder, home, work, names[0])
        try:
            touch_all(one.url, names[:1])
            rss_one = one.peak_rss_mib()
        finally:
            one.stop()

    base = statistics.median(r[0] for r in results["sdk"])
    print(f"{opts.clients} concurrent clients (official Python SDK, streamable HTTP), {opts.calls} calls each, "
          f"median of {opts.rounds} rounds\n")
    print("| server | calls/s | p50 ms | p99 ms | server CPU per call | vs SDK |")
    print("|---|---|---|---|---|---|")
    rows = [("SDK streamable HTTP echo (stateless, no auth, no module)", "sdk"),
            (f"mcpkit serve --http, {opts.bundles} bundles, token + Host/Origin checks", "gateway")]
    if opts.compare:
        rows.append((f"  the same served from {opts.compare}", "compare"))
    for label, key in rows:
        rate = statistics.median(r[0] for r in results[key])
        lat = [x for r in results[key] for x in r[1]]
        per_call = cpu[key] * 1000 / (opts.clients * (opts.calls + 10) * opts.rounds)
        print(f"| {label} | {rate:.0f} | {pct(lat, 50):.2f} | {pct(lat, 99):.2f} | {per_call:.2f} ms "
              f"| {rate / base:.2f}x |")
    print("\ntarget: the gateway >= 0.8x the SDK server's calls/s\n")
    print("| process | peak RSS (VmHWM) |")
    print("|---|---|")
    print(f"| SDK streamable HTTP echo server | {rss_echo:.0f} MiB |")
    print(f"| mcpkit serve --http, 1 bundle | {rss_one:.0f} MiB |")
    print(f"| mcpkit serve --http, {opts.bundles} bundles | {rss_all:.0f} MiB "
          f"({(rss_all - rss_one) / max(1, opts.bundles - 1):.1f} MiB per further bundle) |")


if __name__ == "__main__":
    main()
