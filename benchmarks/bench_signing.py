"""Signature verification cost, against what a pull already spends on the same bundle.

Run: ``python benchmarks/bench_signing.py`` (``--no-registry`` skips the pull rows).

Baselines measured in the same run:

* ``hashlib`` SHA-256 over a 2 MiB module (the check every pull already makes per layer);
* a bare ECDSA P-256 verify of the same signature with ``cryptography`` (the floor: what
  ``verify`` adds is reading the bundle and the statement);
* a pull of a signed bundle (2 MiB module) from a local distribution registry into a fresh
  cache, without and with the pull's own verification (``PullOptions.verify`` as ``--key``
  sets it: find the signature through the fallback tag, read it, verify it, on the pull's
  client, after the manifest and before any blob): what ``--key`` adds, same run, same bundle;
* ``python -c pass`` against a fresh process that imports ``hatch_mcpkit.signing``, loads the
  public key and verifies once (what a one-off ``mcpkit bundle verify`` pays, the Sigstore
  models' import included).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from hatch_mcpkit import signing

MODULE_BYTES = 2 * 1024 * 1024


def best(fn: Callable[[], object], *, rounds: int, per_round: int) -> float:
    """Best per-call seconds over ``rounds`` rounds of ``per_round`` calls."""
    fastest = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(per_round):
            fn()
        fastest = min(fastest, (time.perf_counter() - started) / per_round)
    return fastest


def cold_start(code: str, *, rounds: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        times.append(time.perf_counter() - started)
    return min(times)


def pull_rows(key: ec.EllipticCurvePrivateKey, pub: ec.EllipticCurvePublicKey, pub_path: Path,
              rounds: int) -> list[tuple[str, float, float]]:
    """Pull without and with signature verification from a real registry, each into a fresh cache.

    The two are interleaved round by round (the machine's load changes over a run) and the
    added time is the median of the per-round differences. The verifying client is told the
    registry's scheme, as the pull's own client would be by then (no HTTPS probe of loopback).
    """
    from hatch_mcpkit import _signatures, trust
    from hatch_mcpkit.reference import Reference, parse_reference
    from hatch_mcpkit.registry import RegistryClient
    from hatch_mcpkit.store import BundleCache, PullOptions
    from tests.builders import make_project, push_project
    from tests.plugins.registry import start_binary_registry

    work = Path(tempfile.mkdtemp(prefix="mcpkit-bench-signing-"))
    registry = start_binary_registry("plain", work / "registry")
    try:
        project = make_project(work / "project", size=MODULE_BYTES)
        digest = push_project(registry, project, work / "out", "bench/signed", "1.0.0").digest
        ref = parse_reference(f"{registry.host}/bench/signed:1.0.0")
        with registry.client() as client:
            _signatures.attach(client, ref, digest, key)
        homes = iter(range(10_000))
        requirement = trust.Requirement((trust.KeySet((pub_path,), "--key"),), "off", "")
        verifier = trust.verifier(lambda _ref: requirement, lambda _msg: None)
        counted: list[int] = []

        def counting(client: RegistryClient, reference: Reference, found: str) -> dict[str, object] | None:
            before = client.stats.requests
            try:
                return verifier(client, reference, found)
            finally:
                counted.append(client.stats.requests - before)

        def pull() -> None:
            BundleCache(work / f"home-{next(homes)}").pull(f"oci://{ref}")

        def pull_verified() -> None:
            result = BundleCache(work / f"home-{next(homes)}").pull(f"oci://{ref}", PullOptions(verify=counting))
            assert result.entry.metadata()["signature"]["digest"] == digest

        def verify() -> None:
            with registry.client(scheme="http") as client:
                _signatures.require(client, ref, digest, pub)

        def timed(fn: Callable[[], object]) -> float:
            started = time.perf_counter()
            fn()
            return time.perf_counter() - started

        side_by_side = RegistryClient.both

        def one_at_a_time() -> None:  # the same pull with every request after the one before (as it was)
            RegistryClient.both = lambda _self, first, second: (first(), second())  # type: ignore[method-assign,assignment]
            try:
                pull_verified()
            finally:
                RegistryClient.both = side_by_side  # type: ignore[method-assign]

        pull(), pull_verified(), one_at_a_time(), verify()  # warm up: imports, the registry's caches
        plain, verified, sequential, alone = [], [], [], []
        for _ in range(rounds):
            plain.append(timed(pull))
            verified.append(timed(pull_verified))
            sequential.append(timed(one_at_a_time))
            alone.append(timed(verify))
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)

    def mid(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    added = mid([v - p for v, p in zip(verified, plain, strict=True)])
    before = mid([v - p for v, p in zip(sequential, plain, strict=True)])
    return [
        ("pull, 2 MiB module, fresh cache (baseline)", mid(plain), 1.0),
        ("pull --key (verified in the pull, same client)", mid(verified), mid(verified) / mid(plain)),
        (f"find + verify alone, new client ({counted[-1]} requests in the pull)", mid(alone),
         mid(alone) / mid(plain)),
        ("added, one request at a time (median of diffs)", before, before / mid(plain)),
        ("added to a pull (median of differences)", added, added / mid(plain)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-registry", action="store_true", help="skip the pull rows (no registry binary)")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp())
    key_path, pub_path = signing.generate_key(tmp / "bench", environ={})
    key, pub = signing.load_private_key(key_path, environ={}), signing.load_public_key(pub_path)
    module = os.urandom(MODULE_BYTES)
    digest = "sha256:" + hashlib.sha256(b"manifest").hexdigest()
    bundle = signing.sign_digest(digest, key)
    (tmp / "bundle.json").write_bytes(bundle)
    pae_payload = b"DSSEv1 28 application/vnd.in-toto+json 1 x"
    raw_sig = key.sign(pae_payload, ec.ECDSA(hashes.SHA256()))

    sha = best(lambda: hashlib.sha256(module).digest(), rounds=args.rounds, per_round=20)
    ecdsa = best(lambda: pub.verify(raw_sig, pae_payload, ec.ECDSA(hashes.SHA256())),
                 rounds=args.rounds, per_round=200)
    verify = best(lambda: signing.verify(bundle, digest, pub), rounds=args.rounds, per_round=200)
    sign = best(lambda: signing.sign_digest(digest, key), rounds=args.rounds, per_round=200)
    bare = cold_start("pass", rounds=args.rounds)
    loaded = cold_start(
        "from pathlib import Path; from hatch_mcpkit import signing; "
        f"signing.verify(Path({str(tmp / 'bundle.json')!r}).read_bytes(), {digest!r}, "
        f"signing.load_public_key({str(pub_path)!r}))",
        rounds=args.rounds,
    )

    rows = [
        ("SHA-256 of a 2 MiB module (baseline)", sha, 1.0),
        ("ECDSA P-256 verify alone (floor)", ecdsa, ecdsa / sha),
        ("signing.verify (bundle + DSSE + statement)", verify, verify / sha),
        ("signing.sign_digest", sign, sign / sha),
        ("fresh python: pass (baseline)", bare, 1.0),
        ("fresh python: import, load key, verify once", loaded, loaded / bare),
    ]
    if not args.no_registry:
        rows += pull_rows(key, pub, pub_path, max(args.rounds, 7))
    shutil.rmtree(tmp)
    print(f"{'what':<46} {'time':>10}  ratio")
    for what, seconds, ratio in rows:
        print(f"{what:<46} {seconds * 1e3:>8.3f} ms  {ratio:5.2f}x")
    print(f"\nverify over its floor: {verify / ecdsa:.1f}x; import cost in a fresh process: "
          f"{(loaded - bare) * 1e3:.0f} ms (once per process)")
    if not args.no_registry:
        print(f"verification adds {rows[-1][1] * 1e3:.1f} ms to a pull (median of {max(args.rounds, 7)} "
              "interleaved rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
