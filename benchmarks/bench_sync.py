"""`mcpkit sync` of a project's 20 small bundles against the single largest pull among them.

Runs a local distribution registry (Debian's ``docker-registry`` binary), pushes 20 bundles
(modules of 64 KiB to 1.25 MiB, each with config.yaml and a README), writes a project naming all
of them and locks it. Then, each time into a clean MCPKIT_HOME, in this process:

* ``largest pull``   BundleCache.pull of the largest bundle by digest alone (the baseline)
* ``sync 20``        lock.sync(--frozen): 20 pulls by digest side by side (default --jobs 8, and --jobs 20)
* ``second sync``    lock.sync again into the filled cache (nothing is fetched; files re-hashed)

Round by round (one of each, then again), after one untimed pull and sync.

Twice: straight to the registry on loopback (no latency to hide: the registry and the client
share the machine's cores), and through a proxy that adds 20 ms to every request (a registry
across a network, where pulls side by side overlap their round trips).

The target (docs/performance.md): ``sync 20`` <= 1.5x ``largest pull`` (the ``vs base`` column).

Each row also shows the CPU time it took, in this process (mcpkit; through the proxy, the proxy's
threads too) and in the registry process (read from /proc), and ``floor``: that CPU time spread
perfectly over every core of the machine, the shortest the operation could take here however well
its work overlapped. ``floor`` over the base's median is the best ratio this machine allows.

Usage: ``python benchmarks/bench_sync.py [--bundles 20] [--repeat 5] [--rtt-ms 20]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


Timing = tuple[list[float], list[float], list[float]]  # wall, CPU here, CPU in the registry (seconds)


def _registry_pid() -> int | None:
    """The registry process this one started (Debian's binary), found in /proc; None elsewhere."""
    try:
        children = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in children:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) == os.getpid() and b"registry" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except (OSError, IndexError, ValueError):
            continue
    return None


def _cpu_of(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 when it cannot be read)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _timed(state: Any, run: Callable[[Any], object], registry: int | None, into: Timing) -> None:
    cpu, reg, start = time.process_time(), _cpu_of(registry), time.perf_counter()
    run(state)
    into[0].append(time.perf_counter() - start)
    into[1].append(time.process_time() - cpu)
    into[2].append(_cpu_of(registry) - reg)


Row = tuple[str, int, int, Timing]


def _measure(work: Path, host: str, names: dict[str, Any], repeat: int) -> list[Row]:
    from hatch_mcpkit import lock
    from hatch_mcpkit.project import find_project
    from hatch_mcpkit.reference import OciRef, Reference
    from hatch_mcpkit.store import BundleCache, PullOptions
    from hatch_mcpkit.trust import TrustPolicy

    folder = work / "project"
    folder.mkdir(parents=True)
    lines = ["[project]", 'name = "bench"', 'version = "0"', "", "[tool.mcpkit.bundles]"]
    lines += [f'{key} = "oci://{host}/bench/{key}:1"' for key in names]
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")
    project = find_project(folder)
    opts, policy = PullOptions(), TrustPolicy()
    lock.lock_project(project, opts, policy, warn=lambda _m: None)
    key, (largest, largest_size) = max(names.items(), key=lambda kv: kv[1][1])
    pinned = OciRef(Reference(host, f"bench/{key}", None, largest.digest))
    total = sum(size for _, size in names.values())
    count = len(names)

    def home(label: str) -> Callable[[int], Any]:
        return lambda n: BundleCache(work / f"home-{label}-{n}")

    def sync(jobs: int | None) -> Callable[[Any], object]:
        return lambda store: lock.sync(project, store, opts, policy, warn=lambda _m: None, frozen=True, jobs=jobs)

    ops: list[tuple[str, int, int, Callable[[int], Any], Callable[[Any], object]]] = [
        ("largest pull", 1, largest_size, home("one"), lambda store: store.pull(pinned, opts)),
        (f"sync {count} (--jobs 8)", count, total, home("s8"), sync(None)),
        (f"sync {count} (--jobs {count})", count, total, home("sN"), sync(count)),
        ("second sync (cached)", count, 0, lambda n: BundleCache(work / "home-s8-0"), sync(None)),  # filled just before
    ]
    for run in (lambda store: store.pull(pinned, opts), sync(None)):  # imports and first connections: not timed
        run(BundleCache(work / "home-warm-up"))
    reg = _registry_pid()
    timings: list[Timing] = [([], [], []) for _ in ops]
    for n in range(repeat):  # round by round, so a burst of load elsewhere falls on every row alike
        for (_label, _count, _size, setup, run), into in zip(ops, timings, strict=True):
            _timed(setup(n), run, reg, into)
    return [(label, count_, size, timing) for (label, count_, size, _s, _r), timing in zip(ops, timings, strict=True)]


def _print(title: str, rows: list[Row]) -> None:
    cores = os.cpu_count() or 1
    base = statistics.median(rows[0][3][0])
    print(f"\n{title}\n")
    print(f"| operation | bundles | bytes | median | vs base | CPU mcpkit | CPU registry | floor ({cores} cores) "
          "| floor vs base |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, count, size, (wall, here, there) in rows:
        m, cpu, reg = (statistics.median(x) for x in (wall, here, there))
        floor = (cpu + reg) / cores
        print(f"| {label} | {count} | {size / 1024:.0f} KiB | {m * 1000:.1f} ms | {m / base:.2f}x | "
              f"{cpu * 1000:.0f} ms | {reg * 1000:.0f} ms | {floor * 1000:.0f} ms | {floor / base:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    args = parser.parse_args()

    from tests.builders import make_project, push_project
    from tests.faultproxy import Fault, FaultProxy
    from tests.plugins.registry import start_binary_registry

    with tempfile.TemporaryDirectory(prefix="mcpkit-bench-sync-") as tmp:
        work = Path(tmp)
        reg = start_binary_registry("plain", work / "reg")
        try:
            names = {}
            for i in range(args.bundles):
                root = make_project(work / f"src-{i}", name=f"tool{i}", size=64 * 1024 * (i + 1), seed=str(i).encode())
                manifest = push_project(reg, root, work / f"out-{i}", f"bench/tool{i}", "1")
                names[f"tool{i}"] = (manifest, sum(d.size for d in manifest.layers))
            direct = _measure(work / "direct", reg.host, names, args.repeat)
            with FaultProxy(reg.host) as proxy:
                proxy.add(Fault("delay", seconds=args.rtt_ms / 1000, times=None))
                delayed = _measure(work / "delayed", proxy.host, names, args.repeat)
        finally:
            reg.stop()
    total = sum(size for _, size in names.values())
    print(f"{args.bundles} bundles, {total / 1024 / 1024:.1f} MiB in all; median of {args.repeat}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    _print("registry on loopback (no latency to hide)", direct)
    _print(f"through a proxy adding {args.rtt_ms:.0f} ms to every request", delayed)
    print("\ntarget: sync of all the bundles <= 1.5x the largest pull alone (vs base)")


if __name__ == "__main__":
    main()
