"""Push and pull throughput and peak memory of the registry client, against a raw baseline.

Runs a local distribution registry (Debian's ``docker-registry`` binary), builds a bundle
around a random 50 MiB module, and measures, each in a fresh subprocess (so peak RSS is the
operation's own):

* ``mcpkit push``   RegistryClient.push_layout (HEAD, POST, streaming PUT per blob; the blobs after
  the first side by side)
* ``mcpkit mount``  RegistryClient.push_layout to another repository, with ``mount_from`` naming
  the repository ``mcpkit push`` filled: every blob is mounted, nothing is uploaded
* ``raw PUT``       requests: POST + PUT streaming the same file, nothing else (baseline)
* ``oras push``     oras-py's own upload_blob (reads the blob into memory)
* ``mcpkit pull``   RegistryClient.fetch_blob (streamed, size + SHA-256 verified, atomic rename)
* ``raw GET``       requests: streaming GET into a file, no verification (baseline)
* ``raw GET+sha`` the same, hashing while writing (what verification costs at least)
* ``oras pull``     oras-py's download_blob (8 KiB chunks, no verification)

The targets (docs/performance.md): push <= 1.25x raw PUT, verified pull <= 1.2x raw GET + SHA-256
(the ``vs base`` column: push against ``raw-put``, pull against ``raw-get-sha256``, which does
the least any verified pull must do).

Usage: ``python benchmarks/bench_transfer.py [--size-mib 50] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIG = """\
version: "1.0"
server: {name: bench-tool, version: 1.0.0, description: transfer benchmark}
mcp:
  tools:
    - {name: noop, input_schema: {type: object}}
"""


def _status_mib(field: str) -> float:
    """VmHWM (peak RSS) or VmRSS of this process, from /proc (ru_maxrss survives exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


# --------------------------------------------------------------------------- child side


def child(mode: str, host: str, layout_path: str, repo: str, out: str) -> None:
    import oras.provider  # imported before timing: a one-off cost, not transfer
    import requests

    from hatch_mcpkit.bundle import BundleLayout
    from hatch_mcpkit.registry import RegistryClient

    layout = BundleLayout.open(Path(layout_path))
    module = layout.manifest.module_layer
    module_path = layout.blob_path(module.digest)
    base_rss = _status_mib("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    if mode == "mcpkit-push":
        with RegistryClient(host) as client:
            client.push_layout(layout, repo, ["bench"])
    elif mode == "mcpkit-mount":
        with RegistryClient(host) as client:
            client.push_layout(layout, repo, ["bench"],
                               mount_from={d.digest: "bench/mcpkit-push-0" for d in layout.manifest.blobs})
            assert client.stats.blobs_uploaded == 0 and client.stats.blobs_mounted == len(layout.manifest.blobs)
    elif mode == "raw-put":
        with requests.Session() as s:
            r = s.post(f"http://{host}/v2/{repo}/blobs/uploads/", timeout=30)
            loc = r.headers["Location"]
            sep = "&" if "?" in loc else "?"
            with open(module_path, "rb") as f:
                r = s.put(f"{loc}{sep}digest={module.digest}", data=f, timeout=60,
                          headers={"Content-Type": "application/octet-stream",
                                   "Content-Length": str(module.size)})
            assert r.status_code == 201, r.status_code
    elif mode == "oras-push":
        import oras.container
        import oras.provider

        reg = oras.provider.Registry(hostname=host, insecure=True)
        container = oras.container.Container(f"{host}/{repo}:bench")
        layer = {"mediaType": module.media_type, "digest": module.digest, "size": module.size}
        r = reg.upload_blob(str(module_path), container, layer)
        assert r.status_code == 201, r.status_code
    elif mode == "mcpkit-pull":
        with RegistryClient(host) as client:
            client.fetch_blob(repo, module, Path(out))
    elif mode == "raw-get":
        with requests.Session() as s, s.get(f"http://{host}/v2/{repo}/blobs/{module.digest}",
                                            stream=True, timeout=30) as r, open(out, "wb") as f:
            r.raise_for_status()
            for chunk in r.iter_content(1024 * 1024):
                f.write(chunk)
    elif mode == "raw-get-sha256":
        h = hashlib.sha256()
        with requests.Session() as s, s.get(f"http://{host}/v2/{repo}/blobs/{module.digest}",
                                            stream=True, timeout=30) as r, open(out, "wb") as f:
            r.raise_for_status()
            for chunk in r.iter_content(1024 * 1024):
                h.update(chunk)
                f.write(chunk)
        assert "sha256:" + h.hexdigest() == module.digest
    elif mode == "oras-pull":
        import oras.container
        import oras.provider

        reg = oras.provider.Registry(hostname=host, insecure=True)
        container = oras.container.Container(f"{host}/{repo}:bench")
        reg.download_blob(container, module.digest, out)
    else:
        raise SystemExit(f"unknown mode {mode}")
    elapsed = time.perf_counter() - start
    if mode.endswith(("pull", "get")):
        assert Path(out).stat().st_size == module.size
    layout.close()
    print(json.dumps({"seconds": elapsed, "peak_rss_mib": _status_mib("VmHWM"), "base_rss_mib": base_rss}))


# --------------------------------------------------------------------------- parent side


def run_child(mode: str, host: str, layout: Path, repo: str, out: Path) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, host, str(layout), repo, str(out)],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", nargs=5, metavar=("MODE", "HOST", "LAYOUT", "REPO", "OUT"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from hatch_mcpkit.bundle import BundleLayout, build_bundle
    from hatch_mcpkit.config import load_config
    from tests.plugins.registry import start_binary_registry

    with tempfile.TemporaryDirectory(prefix="mcpkit-bench-") as tmp:
        work = Path(tmp)
        starts = []
        for i in range(3):
            t = time.perf_counter()
            reg = start_binary_registry("plain", work / f"reg-start-{i}")
            starts.append(time.perf_counter() - t)
            reg.stop()
        t = time.perf_counter()
        reg = start_binary_registry("plain", work / "reg")
        starts.append(time.perf_counter() - t)
        try:
            proj = work / "proj"
            proj.mkdir()
            (proj / "config.yaml").write_text(CONFIG)
            size = args.size_mib * 1024 * 1024
            (proj / "module.wasm").write_bytes(b"\0asm\x01\0\0\0" + os.urandom(size - 8))
            built = build_bundle(load_config(proj / "config.yaml", {}), proj / "module.wasm", work / "dist",
                                 source_date_epoch=1700000000)
            # a layout directory, so children do not spend time extracting the tar
            with BundleLayout.open(built.path) as layout:
                layout_dir = work / "layout"
                import shutil

                shutil.copytree(layout.root, layout_dir)
            modes = ["raw-put", "mcpkit-push", "mcpkit-mount", "oras-push", "raw-get", "raw-get-sha256", "mcpkit-pull", "oras-pull"]
            results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
            for rnd in range(args.repeat):
                for mode in modes:
                    # pushes go to a fresh repository each time, so nothing is skipped
                    repo = f"bench/{mode}-{rnd}" if mode.endswith(("push", "put", "mount")) else "bench/mcpkit-push-0"
                    out = work / f"out-{mode}-{rnd}.bin"
                    results[mode].append(run_child(mode, reg.host, layout_dir, repo, out))
                    if out.exists():
                        with open(out, "rb") as f:
                            assert "sha256:" + hashlib.file_digest(f, "sha256").hexdigest() == \
                                built.manifest.module_layer.digest
                        out.unlink()
        finally:
            reg.stop()

    mib = args.size_mib
    print(f"\nregistry binary start to /v2/ answering: best {min(starts) * 1000:.0f} ms, "
          f"worst {max(starts) * 1000:.0f} ms")
    print(f"{args.size_mib} MiB module, best of {args.repeat}, each run in a fresh subprocess\n")
    header = (f"{'operation':<15} {'seconds':>8} {'MiB/s':>8} {'vs raw':>7} {'vs base':>8} {'peak RSS MiB':>13} "
              f"{'RSS growth':>11}")
    print(header)
    print("-" * len(header))
    baselines = {"push": "raw-put", "pull": "raw-get"}
    targets = {"push": "raw-put", "pull": "raw-get-sha256"}  # what the ratio targets are measured against
    for mode in modes:
        best = min(r["seconds"] for r in results[mode])
        peak = max(r["peak_rss_mib"] for r in results[mode])
        growth = max(r["peak_rss_mib"] - r["base_rss_mib"] for r in results[mode])
        kind = "push" if mode.endswith(("push", "put", "mount")) else "pull"
        base = min(r["seconds"] for r in results[baselines[kind]])
        target = min(r["seconds"] for r in results[targets[kind]])
        print(f"{mode:<15} {best:>8.3f} {mib / best:>8.1f} {best / base:>6.2f}x {best / target:>7.2f}x "
              f"{peak:>13.1f} {growth:>11.1f}")
    print("\nvs raw: time relative to the raw requests baseline of the same direction (lower is better).")
    print("vs base: push against raw-put, pull against raw-get-sha256 (the targets are 1.25x and 1.2x).")
    print("peak RSS: VmHWM of the child process (reset after imports); RSS growth: that peak minus")
    print("the RSS before the operation (after imports and opening the layout).")


if __name__ == "__main__":
    main()
