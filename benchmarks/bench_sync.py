"""`mcpkit sync` of a project's 20 small bundles against the single largest pull among them.

Runs a local distribution registry (Debian's ``docker-registry`` binary), pushes 20 bundles
(modules of 64 KiB to 1.25 MiB, each with config.yaml and a README), writes a project naming all
of them and locks it. Then, each time into a clean MCPKIT_HOME, in this process:

* ``sync 20``        lock.sync(--frozen): 20 pulls by digest side by side (default --jobs, and --jobs 20)
* ``largest pull``   BundleCache.pull of the largest bundle by digest alone (the baseline)
* ``second sync``    lock.sync again into the filled cache (nothing is fetched; files re-hashed)

The target (docs/performance.md): ``sync 20`` <= 1.5x ``largest pull`` (the ``vs base`` column).

Usage: ``python benchmarks/bench_sync.py [--bundles 20] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _timed(repeat: int, setup: Callable[[int], object], run: Callable[[object], object]) -> list[float]:
    times = []
    for n in range(repeat):
        state = setup(n)
        start = time.perf_counter()
        run(state)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from hatch_mcpkit import lock
    from hatch_mcpkit.project import find_project
    from hatch_mcpkit.reference import OciRef, Reference
    from hatch_mcpkit.store import BundleCache, PullOptions
    from hatch_mcpkit.trust import TrustPolicy
    from tests.builders import make_project, push_project
    from tests.plugins.registry import start_binary_registry

    with tempfile.TemporaryDirectory(prefix="mcpkit-bench-sync-") as tmp:
        work = Path(tmp)
        reg = start_binary_registry("plain", work / "reg")
        try:
            lines = ["[project]", 'name = "bench"', 'version = "0"', "", "[tool.mcpkit.bundles]"]
            sizes = {}
            for i in range(args.bundles):
                size = 64 * 1024 * (i + 1)
                root = make_project(work / f"src-{i}", name=f"tool{i}", size=size, seed=str(i).encode())
                manifest = push_project(reg, root, work / f"out-{i}", f"bench/tool{i}", "1")
                sizes[f"tool{i}"] = (manifest, sum(d.size for d in manifest.layers))
                lines.append(f'tool{i} = "oci://{reg.host}/bench/tool{i}:1"')
            project_dir = work / "project"
            project_dir.mkdir()
            (project_dir / "pyproject.toml").write_text("\n".join(lines) + "\n")
            project = find_project(project_dir)
            opts = PullOptions()
            policy = TrustPolicy()
            lock.lock_project(project, opts, policy, warn=lambda _m: None)
            key, (largest, largest_size) = max(sizes.items(), key=lambda kv: kv[1][1])
            pinned = OciRef(Reference(reg.host, f"bench/{key}", None, largest.digest))
            total = sum(size for _, size in sizes.values())

            def home(label: str) -> Callable[[int], object]:
                return lambda n: BundleCache(work / f"home-{label}-{n}")

            def sync(jobs: int | None) -> Callable[[object], object]:
                return lambda store: lock.sync(project, store, opts, policy,  # type: ignore[arg-type]
                                               warn=lambda _m: None, frozen=True, jobs=jobs)

            rows = []
            base = _timed(args.repeat, home("one"),
                          lambda store: store.pull(pinned, opts))  # type: ignore[attr-defined]
            rows.append(("largest pull", 1, largest_size, base))
            rows.append((f"sync {args.bundles} (--jobs 8)", args.bundles, total,
                         _timed(args.repeat, home("s8"), sync(None))))
            rows.append((f"sync {args.bundles} (--jobs {args.bundles})", args.bundles, total,
                         _timed(args.repeat, home("sN"), sync(args.bundles))))
            filled = BundleCache(work / "home-s8-0")
            rows.append(("second sync (cached)", args.bundles, 0,
                         _timed(args.repeat, lambda n: filled, sync(None))))
        finally:
            reg.stop()

    median = statistics.median(base)
    print(f"{args.bundles} bundles, {total / 1024 / 1024:.1f} MiB in all; the largest {largest_size / 1024:.0f} KiB; "
          f"median of {args.repeat}\n")
    print("| operation | bundles | bytes | median | vs base |")
    print("|---|---|---|---|---|")
    for label, count, size, times in rows:
        m = statistics.median(times)
        print(f"| {label} | {count} | {size / 1024:.0f} KiB | {m * 1000:.1f} ms | {m / median:.2f}x |")
    print("\ntarget: sync of all the bundles <= 1.5x the largest pull alone (vs base)")


if __name__ == "__main__":
    main()
