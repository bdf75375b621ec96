"""Run every benchmark in one go and print their tables.

    python benchmarks/run.py            # full run (about two minutes on 2 cores)
    python benchmarks/run.py --quick    # smaller sizes and fewer repetitions

Each benchmark measures its own baseline in the same run (plain hashlib, raw HTTP with
requests, a bare wasmtime-py loop, a plain dict) and reports ratios against it. Needs the
set-up from ``bash .ci/setup`` (a registry binary and the Rust toolchain for the example).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    ("cache lookup and SHA-256 verification", "bench_cache.py", ["--quick"]),
    ("push/pull throughput and peak memory", "bench_transfer.py", ["--size-mib", "8", "--repeat", "1"]),
    ("cold start and warm tool calls", "bench_runtime.py", ["--calls", "200", "--cold", "2"]),
    ("signature verification", "bench_signing.py", ["--rounds", "3"]),
    ("project sync: 20 bundles against the largest pull", "bench_sync.py", ["--repeat", "3"]),
    ("gateway over HTTP against the SDK's HTTP server; memory per bundle", "bench_gateway.py",
     ["--calls", "50", "--rounds", "1"]),
]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions")
    args = parser.parse_args(argv)
    print(f"# hatch-mcpkit benchmarks\n\nmachine: {machine()}\n")
    failed = 0
    for title, script, quick_args in BENCHMARKS:
        print(f"## {title} ({script})\n", flush=True)
        started = time.monotonic()
        res = subprocess.run(
            [sys.executable, str(HERE / script), *(quick_args if args.quick else [])], check=False
        )
        print(f"\n({script}: {time.monotonic() - started:.1f} s, exit {res.returncode})\n", flush=True)
        failed += res.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
