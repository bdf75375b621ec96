"""Cache speed: lookup by name among 1,000 bundles, and streamed SHA-256 verification.

Run: ``python benchmarks/bench_cache.py`` (add ``--quick`` to skip the 100 MiB case).

Baselines are measured in the same run:

* lookup: a plain ``dict`` lookup of the same name (the floor), and the lookup with
  registry.json re-read every time (what the in-memory memo saves);
* verification: ``hashlib`` over the same file (read + hash), and copy-then-hash
  (``shutil.copyfile`` + ``hashlib``) -- what ``write_verified`` does in one pass;
* re-pull check: the "already installed" fast path re-hashes the entry's files against the
  manifest (it does not trust metadata.json); baseline: reading metadata.json alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hatch_mcpkit import store as cache_mod
from hatch_mcpkit._files import file_chunks, write_verified
from hatch_mcpkit.bundle import Manifest
from hatch_mcpkit.store import BundleCache, CacheEntry

N_BUNDLES = 1000


def timeit(fn: Callable[[], object], *, min_time: float = 0.3, repeat: int = 5) -> float:
    """Best per-call seconds over ``repeat`` rounds of at least ``min_time`` each."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time / 10:
            break
        n *= 4
    n = max(1, int(n * (min_time / 10) / dt * 10)) if dt < min_time else n
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def fmt(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def make_cache(home: Path) -> BundleCache:
    """1,000 entries as a pull leaves them: a directory with metadata.json each, and the index."""
    cache = BundleCache(home)
    entries = []
    for i in range(N_BUNDLES):
        name = f"tool-{i:04d}"
        path = cache.bundles_dir / "registry.example.com" / "org" / name / "1.0.0"
        path.mkdir(parents=True)
        digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
        (path / "metadata.json").write_text(json.dumps({"name": name, "digest": digest, "version": "1.0.0"}))
        entries.append(CacheEntry(name, f"oci://registry.example.com/org/{name}:1.0.0", digest, path,
                                  "2025-01-01T00:00:00Z"))
    cache._write_index(entries)
    return cache


def bench_lookup(rows: list[tuple[str, str, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache = make_cache(Path(tmp))
        name = "tool-0777"
        expected = cache.find(name)
        baseline_map = {e.name: e.path for e in cache.entries()}
        assert baseline_map[name] == expected
        t_dict = timeit(lambda: baseline_map[name])
        t_find = timeit(lambda: cache.find(name))
        t_ref = timeit(lambda: cache.find("oci://registry.example.com/org/tool-0777:1.0.0"))

        def cold() -> Path:
            cache_mod._INDEX_MEMO.clear()
            return cache.find(name)

        t_cold = timeit(cold)
        size = cache.index_path.stat().st_size
        rows.append((f"find(name), {N_BUNDLES} bundles", fmt(t_find), "dict lookup " + fmt(t_dict),
                     f"{t_find / t_dict:.0f}x"))
        rows.append((f"find(reference), {N_BUNDLES} bundles", fmt(t_ref), "dict lookup " + fmt(t_dict),
                     f"{t_ref / t_dict:.0f}x"))
        rows.append((f"find(name), index re-read ({size // 1024} KiB)", fmt(t_cold), "find(name) " + fmt(t_find),
                     f"{t_cold / t_find:.0f}x"))


def bench_verify(rows: list[tuple[str, str, str, str]], sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dest = root / "dest"
        for size in sizes:
            src = root / f"blob-{size}"
            with open(src, "wb") as fh:
                chunk = os.urandom(1024 * 1024)
                for _ in range(size // len(chunk)):
                    fh.write(chunk)
            digest = "sha256:" + hashlib.sha256(src.read_bytes()).hexdigest()

            def ours(src: Path = src, digest: str = digest, size: int = size) -> None:
                with open(src, "rb") as fh:
                    write_verified(file_chunks(fh), dest, digest=digest, size=size, where="bench")

            def plain_hash(src: Path = src) -> str:
                with open(src, "rb") as fh:
                    return hashlib.file_digest(fh, "sha256").hexdigest()

            def copy_then_hash(src: Path = src) -> str:
                shutil.copyfile(src, dest)
                with open(dest, "rb") as fh:
                    return hashlib.file_digest(fh, "sha256").hexdigest()

            min_time = 0.3 if size <= 8 * 1024 * 1024 else 1.0
            repeat = 5 if size <= 8 * 1024 * 1024 else 3
            t_ours = timeit(ours, min_time=min_time, repeat=repeat)
            t_hash = timeit(plain_hash, min_time=min_time, repeat=repeat)
            t_copy = timeit(copy_then_hash, min_time=min_time, repeat=repeat)
            label = f"{size // (1024 * 1024)} MiB"
            rate = size / t_ours / (1024 * 1024)
            rows.append((f"write_verified {label} ({rate:.0f} MiB/s)", fmt(t_ours), "hashlib only " + fmt(t_hash),
                         f"{t_ours / t_hash:.2f}x"))
            rows.append((f"write_verified {label}", fmt(t_ours), "copy + hashlib " + fmt(t_copy),
                         f"{t_ours / t_copy:.2f}x"))
            src.unlink()


def bench_recheck(rows: list[tuple[str, str, str, str]]) -> None:
    """The re-pull fast path on a bundle of the example's size (module ~150 KiB, config, one data file)."""
    with tempfile.TemporaryDirectory() as tmp:
        entry = Path(tmp) / "entry"
        entry.mkdir()
        files = {"module.wasm": os.urandom(150 * 1024), "config.yaml": b"x" * 2048, "README.md": b"y" * 4096}
        layers = []
        for i, (title, data) in enumerate(files.items()):
            (entry / title).write_bytes(data)
            media = ("application/wasm", "application/vnd.mcpkit.config+yaml", "text/markdown")[i]
            layers.append({"mediaType": media, "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
                           "size": len(data), "annotations": {"org.opencontainers.image.title": title}})
        raw = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "artifactType": "application/vnd.mcpkit.bundle.v1",
                          "config": {"mediaType": "application/vnd.mcpkit.bundle.config.v1+json",
                                     "digest": "sha256:" + "0" * 64, "size": 2},
                          "layers": layers}).encode()
        manifest = Manifest.parse(raw, "bench")
        (entry / "metadata.json").write_text(json.dumps({"digest": manifest.digest, "name": "x"}))
        cache = BundleCache(Path(tmp) / "home")
        assert cache._current(entry, manifest)

        def metadata_only() -> bool:
            meta = json.loads((entry / "metadata.json").read_bytes())
            return bool(meta.get("digest") == manifest.digest and (entry / "module.wasm").is_file()
                        and (entry / "config.yaml").is_file())

        t_ours = timeit(lambda: cache._current(entry, manifest))
        t_meta = timeit(metadata_only)
        rows.append(("re-pull check, 156 KiB entry (re-hash)", fmt(t_ours), "metadata.json only " + fmt(t_meta),
                     f"{t_ours / t_meta:.0f}x"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 100 MiB verification")
    args = parser.parse_args()
    rows: list[tuple[str, str, str, str]] = []
    bench_lookup(rows)
    bench_recheck(rows)
    bench_verify(rows, [1024 * 1024] + ([] if args.quick else [100 * 1024 * 1024]))
    header = ("case", "mcpkit", "baseline", "ratio")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
