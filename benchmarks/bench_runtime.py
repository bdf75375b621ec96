"""Tool-call latency of the sandbox runtime and the MCP server, against bare floors.

Measured in one run, with the example weather-tool bundle:

* cold start: a fresh ``mcpkit server`` process answering its first ``tools/call``
  (initialize + call over raw stdio), with the module's code in the store's code cache vs
  with the code cache emptied (compile on start); floor: a bare Python process that imports
  wasmtime, deserializes the same ``.cwasm`` and runs one call.
* warm calls (``--calls``, default 1000): ``Runtime.call`` vs a bare wasmtime-py
  instantiate+run loop (Store, WasiConfig with argv/stdin pipe/stdout callback,
  InstancePre.instantiate, ``_start``), and the same floor with stdin handed over from memory
  as the runtime does; the same runtime with fuel metering on;
  through the official MCP client over stdio vs an ``mcp`` low-level echo server
  (the protocol floor), and the same calls carrying a progressToken (one
  ``notifications/progress`` each) vs without.

Usage: ``python benchmarks/bench_runtime.py [--calls 1000] [--cold 5] [--bundle DIR]``
(without ``--bundle`` the example crate is built with the offline wasm32-wasip1 toolchain).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARGS = {"value": 21.5, "from": "celsius", "to": "fahrenheit"}
TOOL = "convert_temperature"

ECHO_SERVER = r'''
import anyio, mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
async def list_tools(ctx, params):
    return types.ListToolsResult(tools=[types.Tool(name="convert_temperature", input_schema={"type": "object"})])
async def call_tool(ctx, params):
    return types.CallToolResult(content=[types.TextContent(type="text", text="21.5 °C = 70.7 °F")])
server = Server("echo", on_list_tools=list_tools, on_call_tool=call_tool)
async def main():
    async with stdio_server() as (r, w):
        await server.run(r, w, server.create_initialization_options())
anyio.run(main)
'''

BARE_COLD = r'''
import os, sys, json, time, wasmtime
engine_cfg = wasmtime.Config(); engine_cfg.epoch_interruption = True
engine = wasmtime.Engine(engine_cfg)
module = wasmtime.Module.deserialize(engine, open(sys.argv[1], "rb").read())
linker = wasmtime.Linker(engine); linker.define_wasi()
store = wasmtime.Store(engine); store.set_epoch_deadline(1 << 40)
wasi = wasmtime.WasiConfig(); wasi.argv = ["weather-tool", "convert_temperature"]
r, w = os.pipe(); wasi.stdin_file = f"/dev/fd/{r}"; os.close(r)
os.write(w, json.dumps({"value": 21.5, "from": "celsius", "to": "fahrenheit"}).encode()); os.close(w)
out = []
wasi.stdout_custom = out.append
store.set_wasi(wasi)
linker.instantiate(store, module).exports(store)["_start"](store)
sys.stdout.write(b"".join(out).decode())
'''


def child_env() -> dict[str, str]:
    """The environment of a server process: this tree first on its path (the SDK's stdio client
    would otherwise pass only HOME, PATH and a few more, and the server would import whatever
    hatch-mcpkit is installed instead of the one being measured)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def timeit(fn: Callable[[], Any], n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


# --------------------------------------------------------------------------- bundle


def example_bundle(dest: Path) -> Path:
    from hatch_mcpkit.cargo import build_crate
    from tests.plugins.rust import EXAMPLE_DIR, _setup

    env, why = _setup()
    if env is None:
        sys.exit(f"cannot build the example crate: {why} (or pass --bundle DIR)")
    wasm = build_crate(EXAMPLE_DIR, env=env)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(wasm, dest / "module.wasm")
    shutil.copyfile(EXAMPLE_DIR / "config.yaml", dest / "config.yaml")
    shutil.copytree(EXAMPLE_DIR / "data", dest / "data", dirs_exist_ok=True)
    return dest


# --------------------------------------------------------------------------- cold start


def first_call_ms(cmd: list[str]) -> float:
    """Spawn ``cmd`` (an MCP stdio server) and time initialize + the first tools/call."""
    msgs = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "b", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": TOOL, "arguments": ARGS}},
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=child_env())
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("".join(json.dumps(m) + "\n" for m in msgs).encode())
    proc.stdin.flush()
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{cmd} exited before answering")
        if json.loads(line).get("id") == 2:
            break
    elapsed = (time.perf_counter() - t0) * 1000
    proc.stdin.close()
    proc.wait(timeout=30)
    return elapsed


def bare_cold_ms(cwasm: Path) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", BARE_COLD, str(cwasm)], capture_output=True, check=True).stdout
    assert b"70.7" in out, out
    return (time.perf_counter() - t0) * 1000


# --------------------------------------------------------------------------- warm


def bare_loop(bundle: Path, *, stdin_from_memory: bool = False) -> Callable[[], bytes]:
    """The floor: instantiate + run with nothing but what the guest ABI needs. Arguments go
    through a pipe (``WasiConfig.stdin_file``, the public API) or, with ``stdin_from_memory``,
    straight from memory the way the runtime hands them over."""
    import wasmtime

    from hatch_mcpkit.runtime._wasmtime import set_stdin

    cfg = wasmtime.Config()
    cfg.epoch_interruption = True
    engine = wasmtime.Engine(cfg)
    module = wasmtime.Module.from_file(engine, str(bundle / "module.wasm"))
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    pre = linker.instantiate_pre(module)
    payload = json.dumps(ARGS).encode()

    def once() -> bytes:
        store = wasmtime.Store(engine)
        store.set_epoch_deadline(1 << 40)
        wasi = wasmtime.WasiConfig()
        wasi.argv = ["weather-tool", TOOL]
        if stdin_from_memory:
            set_stdin(wasi, payload)
        else:
            r, w = os.pipe()
            wasi.stdin_file = f"/dev/fd/{r}"
            os.close(r)
            os.write(w, payload)
            os.close(w)
        out: list[bytes] = []
        wasi.stdout_custom = out.append
        store.set_wasi(wasi)
        start = pre.instantiate(store).exports(store)["_start"]
        start(store)  # type: ignore[operator]
        del store
        return b"".join(out)

    assert b"70.7" in once()
    return once


def mcp_client_samples(cmd: list[str], n: int, *, progress: bool = False) -> list[float]:
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    samples: list[float] = []

    async def ignore(progress: float, total: float | None, message: str | None) -> None:
        pass

    async def go() -> None:
        params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=child_env())
        with open(os.devnull, "w") as devnull:
            async with stdio_client(params, errlog=devnull) as (r, w), ClientSession(r, w) as s:
                await s.initialize()
                await s.list_tools()
                for i in range(n + 20):
                    t0 = time.perf_counter()
                    res = await s.call_tool(TOOL, ARGS, progress_callback=ignore if progress else None)
                    if i >= 20:
                        samples.append((time.perf_counter() - t0) * 1000)
                    assert not res.is_error

    anyio.run(go)
    return samples


def with_fuel(bundle: Path, dest: Path) -> Path:
    import yaml

    shutil.copytree(bundle, dest, ignore=shutil.ignore_patterns("module.cwasm", "metadata.json"))
    data = yaml.safe_load((dest / "config.yaml").read_text())
    data.setdefault("policy", {}).setdefault("limits", {})["fuel"] = 10**10
    (dest / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return dest


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--cold", type=int, default=5, help="fresh processes per cold-start row")
    ap.add_argument("--bundle", type=Path, help="a bundle directory (default: build the example)")
    opts = ap.parse_args()

    from hatch_mcpkit.runtime import Runtime, engine_fingerprint, precompile
    from hatch_mcpkit.store import CodeCache

    work = Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    try:
        bundle = work / "bundle"
        if opts.bundle:
            shutil.copytree(opts.bundle, bundle, ignore=shutil.ignore_patterns("module.cwasm", "metadata.json"))
        else:
            example_bundle(bundle)
        home = work / "home"
        code_cache = CodeCache(home)
        precompile(bundle, code_cache=code_cache)
        sha = hashlib.sha256((bundle / "module.wasm").read_bytes()).hexdigest()
        cwasm = code_cache.root / engine_fingerprint(False) / f"{sha}.cwasm"
        server_cmd = [sys.executable, "-m", "hatch_mcpkit", "server", str(bundle), "-q", "--home", str(home)]

        rows: list[tuple[str, str, float, float, str, float]] = []  # section, name, p50, p99, floor, ratio

        # cold
        bare_cold = [bare_cold_ms(cwasm) for _ in range(opts.cold)]
        warm_start = [first_call_ms(server_cmd) for _ in range(opts.cold)]
        compile_start = []
        for _ in range(opts.cold):
            cwasm.unlink()
            compile_start.append(first_call_ms(server_cmd))
        precompile(bundle, code_cache=code_cache)
        echo_cold = [first_call_ms([sys.executable, "-c", ECHO_SERVER]) for _ in range(opts.cold)]
        floor = statistics.median(bare_cold)
        rows.append(("cold", "python + wasmtime deserialize + 1 run (floor)", floor, max(bare_cold), "", 1.0))
        rows.append(("cold", "mcp echo server: spawn, initialize, 1st call", statistics.median(echo_cold),
                     max(echo_cold), "floor", statistics.median(echo_cold) / floor))
        rows.append(("cold", "mcpkit server, code cached: 1st call", statistics.median(warm_start),
                     max(warm_start), "floor", statistics.median(warm_start) / floor))
        rows.append(("cold", "mcpkit server, code cache empty: 1st call", statistics.median(compile_start),
                     max(compile_start), "floor", statistics.median(compile_start) / floor))

        # warm, in process
        bare = timeit(bare_loop(bundle), opts.calls)
        bare50 = pct(bare, 50)
        rows.append(("warm", "bare wasmtime-py instantiate+run (floor)", bare50, pct(bare, 99), "", 1.0))
        bare_mem = timeit(bare_loop(bundle, stdin_from_memory=True), opts.calls)
        rows.append(("warm", "  the same with stdin from memory", pct(bare_mem, 50), pct(bare_mem, 99), "bare",
                     pct(bare_mem, 50) / bare50))
        with Runtime.from_dir(bundle, code_cache=code_cache) as rt:
            rt_samples = timeit(lambda: rt.call(TOOL, ARGS), opts.calls)
            weather = timeit(lambda: rt.call("get_weather", {"location": "London"}), opts.calls)
            check = timeit(lambda: rt.validate_arguments(TOOL, ARGS), opts.calls)
        rows.append(("warm", f"Runtime.call {TOOL}", pct(rt_samples, 50), pct(rt_samples, 99), "bare",
                     pct(rt_samples, 50) / bare50))
        rows.append(("warm", f"Runtime.call {TOOL} vs stdin-from-memory floor", pct(rt_samples, 50),
                     float("nan"), "mem", pct(rt_samples, 50) / pct(bare_mem, 50)))
        rows.append(("warm", "Runtime.call get_weather (reads /data)", pct(weather, 50), pct(weather, 99), "bare",
                     pct(weather, 50) / bare50))
        rows.append(("warm", "Runtime.validate_arguments (jsonschema)", pct(check, 50), pct(check, 99), "bare",
                     pct(check, 50) / bare50))
        with Runtime.from_dir(with_fuel(bundle, work / "fuel"), code_cache=code_cache) as rt_fuel:
            fuel = timeit(lambda: rt_fuel.call(TOOL, ARGS), opts.calls)
        rows.append(("warm", "Runtime.call with fuel metering on", pct(fuel, 50), pct(fuel, 99), "bare",
                     pct(fuel, 50) / bare50))

        # warm, over MCP stdio
        echo = mcp_client_samples([sys.executable, "-c", ECHO_SERVER], opts.calls)
        mcpkit = mcp_client_samples(server_cmd, opts.calls)
        echo50 = pct(echo, 50)
        rows.append(("mcp", "mcp client -> low-level echo server (floor)", echo50, pct(echo, 99), "", 1.0))
        rows.append(("mcp", f"mcp client -> mcpkit server {TOOL}", pct(mcpkit, 50), pct(mcpkit, 99), "echo",
                     pct(mcpkit, 50) / echo50))
        rows.append(("mcp", "  ... minus the echo floor = sandbox + schema check", pct(mcpkit, 50) - echo50,
                     float("nan"), "bare", (pct(mcpkit, 50) - echo50) / bare50))
        progress = mcp_client_samples(server_cmd, opts.calls, progress=True)
        rows.append(("mcp", "  the same with a progressToken (1 notification a call)", pct(progress, 50),
                     pct(progress, 99), "mcpkit", pct(progress, 50) / pct(mcpkit, 50)))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nbench_runtime: {opts.calls} warm calls, {opts.cold} cold starts per row (ms)\n")
    print(f"{'':5} {'measurement':55} {'p50':>9} {'p99/max':>9} {'vs':>6} {'ratio':>7}")
    for section, name, p50, p99, vs, ratio in rows:
        p99s = "" if p99 != p99 else f"{p99:9.3f}"
        print(f"{section:5} {name:55} {p50:9.3f} {p99s:>9} {vs:>6} {ratio:7.2f}")
    print("\ncold rows: p99 column is the max of the runs; warm rows: percentiles of all calls")


if __name__ == "__main__":
    main()
