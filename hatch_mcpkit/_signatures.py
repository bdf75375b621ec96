"""Signatures in a registry: attach one to a manifest digest, find them, require a valid one.

The registry client moves bytes (``push_referrer``, ``referrers``); :mod:`hatch_mcpkit.signing`
makes and checks Sigstore bundles; :mod:`hatch_mcpkit._referrers` shapes the OCI documents.
This module joins them for ``mcpkit bundle sign`` / ``verify`` and for a pull that requires a
key. Everything is by digest: the caller resolves a tag once and passes the digest it will
install.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hatch_mcpkit import _referrers, signing
from hatch_mcpkit._sigstore import BUNDLE_MEDIA_TYPE, MAX_BUNDLE_BYTES
from hatch_mcpkit.bundle import MANIFEST_MEDIA_TYPE, Descriptor
from hatch_mcpkit.errors import McpkitError, SignatureError
from hatch_mcpkit.reference import Reference

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

    from hatch_mcpkit.registry import RegistryClient

__all__ = ["MAX_SIGNATURES", "Attached", "attach", "check", "collect", "find", "require"]

MAX_SIGNATURES = 16  # signature referrers read per digest: a registry cannot make us fetch thousands
# Which failure to report when none of several signatures is valid: the one closest to success.
_CLOSEST = ("digest", "tampered", "statement", "wrong-key", "format")


@dataclass(frozen=True)
class Attached:
    """A signature pushed for ``digest``: the referrer manifest's digest and how it was indexed."""

    digest: str
    referrer: str
    indexed_by_registry: bool  # False: added to the sha256-<hex> fallback index


def _pinned(ref: Reference, digest: str) -> Reference:
    return Reference(ref.registry, ref.repository, None, digest)


def attach(client: RegistryClient, ref: Reference, digest: str, key: ec.EllipticCurvePrivateKey) -> Attached:
    """Sign ``digest`` (the manifest ``ref`` resolved to) and push the signature as a referrer."""
    manifest = client.fetch_manifest(_pinned(ref, digest))
    subject = Descriptor(manifest.media_type or MANIFEST_MEDIA_TYPE, manifest.digest, len(manifest.raw))
    bundle = signing.sign_digest(digest, key, name=f"{ref.registry}/{ref.repository}")
    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    referrer = _referrers.referrer_manifest(subject, bundle, predicate_type=signing.PREDICATE_TYPE,
                                            created=created)
    indexed = client.push_referrer(ref.repository, referrer)
    return Attached(digest, referrer.digest, indexed)


def _bundles(client: RegistryClient, ref: Reference, digest: str) -> Iterator[bytes | SignatureError]:
    listed = client.referrers(ref.repository, digest, artifact_type=BUNDLE_MEDIA_TYPE)
    for entry in listed[:MAX_SIGNATURES]:
        where = f"signature {ref.registry}/{ref.repository}@{entry.digest}"
        try:
            yield _read_signature(client, ref, digest, entry, where)
        except SignatureError as exc:
            yield exc
        except McpkitError as exc:  # a listed referrer that cannot be read counts as a bad signature
            yield SignatureError(f"{where}: cannot be read: {exc.message}", reason="format")


def _read_signature(client: RegistryClient, ref: Reference, digest: str, entry: _referrers.Referrer,
                    where: str) -> bytes:
    """The Sigstore bundle a referrer holds; when its listing names the layer, both are fetched side by side."""
    hint = _referrers.layer_hint(entry)
    if hint is None:
        manifest = client.fetch_manifest(_pinned(ref, entry.digest))
        layer = _referrers.bundle_layer(manifest.raw, subject_digest=digest, where=where)
        return client.read_blob(ref.repository, layer, max_size=MAX_BUNDLE_BYTES)

    def bundle() -> bytes | McpkitError:
        try:
            return client.read_blob(ref.repository, hint, max_size=MAX_BUNDLE_BYTES)
        except McpkitError as exc:
            return exc

    manifest, early = client.both(lambda: client.fetch_manifest(_pinned(ref, entry.digest)), bundle)
    layer = _referrers.bundle_layer(manifest.raw, subject_digest=digest, where=where)
    if layer.digest != hint.digest:  # the listing lied: the manifest's own layer is the signature
        return client.read_blob(ref.repository, layer, max_size=MAX_BUNDLE_BYTES)
    if isinstance(early, McpkitError):
        raise early
    return early


def find(client: RegistryClient, ref: Reference, digest: str) -> list[bytes]:
    """The Sigstore bundles attached to ``digest`` that could be read (not yet verified)."""
    return [item for item in _bundles(client, ref, digest) if isinstance(item, bytes)]


def collect(client: RegistryClient, ref: Reference, digest: str) -> list[bytes | SignatureError]:
    """Every signature attached to ``digest``, read once: its bytes, or why it cannot be read.

    Several key sets (a trust policy's rule and ``--key``) are then checked against the same
    list with :func:`check`, without asking the registry again.
    """
    return list(_bundles(client, ref, digest))


def require(
    client: RegistryClient, ref: Reference, digest: str,
    public_key: ec.EllipticCurvePublicKey | Sequence[ec.EllipticCurvePublicKey],
) -> signing.Signer:
    """The signer of ``digest``: a valid signature by ``public_key`` (or by one of several keys, as
    during a key rotation) must be attached, else SignatureError."""
    return check(collect(client, ref, digest), ref, digest, public_key)


def check(
    found: Sequence[bytes | SignatureError], ref: Reference, digest: str,
    public_key: ec.EllipticCurvePublicKey | Sequence[ec.EllipticCurvePublicKey],
) -> signing.Signer:
    """The first valid signature among ``found`` by one of the keys, else SignatureError.

    With several signatures, one valid signature is enough; when none is valid the error is
    the one closest to success (a signature by this key over another digest before one by
    another key), with a count of the others.
    """
    keys = list(public_key) if isinstance(public_key, Sequence) else [public_key]
    where = f"signature of {ref.registry}/{ref.repository}@{digest}"
    failures: list[SignatureError] = []
    for item in found:
        if isinstance(item, SignatureError):
            failures.append(item)
            continue
        tried: list[SignatureError] = []
        for key in keys:
            try:
                return signing.verify(item, digest, key, where=where)
            except SignatureError as exc:
                tried.append(exc)
        failures.append(_closest(tried))
    if not failures:
        raise SignatureError(
            f"{ref.registry}/{ref.repository}@{digest} is not signed: no Sigstore bundle refers to it",
            reason="missing",
            hint="the publisher signs it with: mcpkit bundle sign REF --key PREFIX.key",
        )
    best = _closest(failures)
    if len(failures) > 1:
        others = list(failures)
        others.remove(best)
        names = ", ".join(sorted(f.reason for f in others))
        raise SignatureError(f"{best.message} (and {len(others)} other invalid signatures: {names})",
                             reason=best.reason, hint=best.hint)
    raise best


def _closest(failures: list[SignatureError]) -> SignatureError:
    return min(failures, key=lambda exc: _CLOSEST.index(exc.reason) if exc.reason in _CLOSEST else len(_CLOSEST))
