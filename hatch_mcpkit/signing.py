"""Signing bundles by manifest digest, in the format cosign v3 writes.

A signature is a Sigstore bundle v0.3 (``application/vnd.dev.sigstore.bundle.v0.3+json``)
holding a DSSE envelope (payload type ``application/vnd.in-toto+json``) of an in-toto
Statement v1 whose one subject is the bundle's manifest digest and whose predicate type is
``https://sigstore.dev/cosign/sign/v1``; the key is named by ``verificationMaterial.publicKey.hint``.
Keys are ECDSA P-256: ``PREFIX.key`` (PKCS#8 PEM, encrypted when ``MCPKIT_KEY_PASSWORD`` is
set) and ``PREFIX.pub`` (SPKI PEM).

:func:`verify` trusts nothing in the bundle but the signature: the key hint only chooses
the error message, and the statement is read only after the signature over it (DSSE PAE:
payload type and payload) has been checked with the caller's key.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from hatch_mcpkit import _json, _keys, _sigstore
from hatch_mcpkit._sigstore import BUNDLE_MEDIA_TYPE
from hatch_mcpkit._text import clean
from hatch_mcpkit.errors import IntegrityError, SignatureError

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "PASSWORD_ENV",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "Signer",
    "generate_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "sign_digest",
    "verify",
]

PASSWORD_ENV = "MCPKIT_KEY_PASSWORD"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://sigstore.dev/cosign/sign/v1"
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")

key_id = _keys.key_id


@dataclass(frozen=True)
class Signer:
    """Who signed a manifest digest: a key, by its cosign key id (base64 SHA-256 of the SPKI)."""

    key_id: str
    digest: str
    kind: str = "key"

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "key_id": self.key_id, "digest": self.digest}


class _BadStatement(SignatureError):
    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, reason="statement", hint=hint)


def _password(environ: Mapping[str, str] | None) -> bytes | None:
    value = (os.environ if environ is None else environ).get(PASSWORD_ENV, "")
    return value.encode() if value else None


def generate_key(prefix: str | Path, *, environ: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (mode 0600; encrypted when MCPKIT_KEY_PASSWORD is set) and ``PREFIX.pub``."""
    return _keys.generate(Path(prefix), password=_password(environ))


def load_private_key(path: str | Path, *, environ: Mapping[str, str] | None = None) -> ec.EllipticCurvePrivateKey:
    """Load ``PREFIX.key``; an encrypted one needs MCPKIT_KEY_PASSWORD (``environ``, default os.environ)."""
    return _keys.load_private(Path(path), password=_password(environ))


def load_public_key(path: str | Path) -> ec.EllipticCurvePublicKey:
    """Load ``PREFIX.pub`` (or any SPKI PEM ECDSA P-256 public key, such as cosign's ``cosign.pub``)."""
    return _keys.load_public(Path(path))


def _digest_hex(digest: str) -> str:
    match = _DIGEST.fullmatch(digest)
    if not match:
        raise IntegrityError(f"unsupported manifest digest {clean(digest)!r}: only sha256:<64 hex> is supported",
                             digest=digest)
    return match.group(1)


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def _statement(digest_hex: str, name: str) -> bytes:
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest_hex}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {},
    }
    return _json_bytes(statement)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def sign_digest(manifest_digest: str, key: ec.EllipticCurvePrivateKey, *, name: str | None = None) -> bytes:
    """The Sigstore bundle (JSON bytes) that signs ``manifest_digest`` with ``key``.

    ``name`` is the subject's name (the repository, say); it defaults to the digest itself.
    Only the digest is what a verifier checks.
    """
    payload = _statement(_digest_hex(manifest_digest), name or manifest_digest)
    signature = key.sign(_pae(PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))
    return _sigstore.encode(
        payload=payload, payload_type=PAYLOAD_TYPE, signature=signature, key_hint=key_id(key.public_key())
    )


def verify(
    bundle: bytes, manifest_digest: str, public_key: ec.EllipticCurvePublicKey, *, where: str = "signature"
) -> Signer:
    """Check that ``bundle`` is a signature by ``public_key`` over exactly ``manifest_digest``.

    Raises :class:`SignatureError` whose ``reason`` is ``format``, ``wrong-key``, ``tampered``,
    ``statement`` or ``digest``.
    """
    want = _digest_hex(manifest_digest)
    parsed = _sigstore.decode(bundle, where=where)
    expected = key_id(public_key)
    _check_signature(parsed, public_key, expected, where)
    if parsed.payload_type != PAYLOAD_TYPE:
        raise _BadStatement(f"{where}: signed payload is {clean(parsed.payload_type)!r}, not an in-toto "
                            f"statement ({PAYLOAD_TYPE})")
    _check_statement(parsed.payload, want, where)
    return Signer(key_id=expected, digest=manifest_digest)


def _check_signature(
    parsed: _sigstore.DsseBundle, public_key: ec.EllipticCurvePublicKey, expected: str, where: str
) -> None:
    if parsed.has_certificate:
        raise SignatureError(
            f"{where}: signed keyless (with a certificate), not with key {expected}",
            reason="wrong-key",
            hint="keyless signatures are not verified by mcpkit yet; sign with a key (mcpkit bundle sign --key)",
        )
    if len(parsed.signatures) != 1:
        raise SignatureError(f"{where}: the DSSE envelope has {len(parsed.signatures)} signatures; "
                             "a cosign signature has exactly one", reason="format")
    if parsed.key_hint and parsed.key_hint != expected:
        raise SignatureError(
            f"{where}: signed by another key (key id {clean(parsed.key_hint)}), not by key {expected}",
            reason="wrong-key",
            hint="verify with the publisher's public key, or ask them to sign with the key you trust",
        )
    try:
        public_key.verify(parsed.signatures[0], _pae(parsed.payload_type, parsed.payload),
                          ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        if parsed.key_hint:
            raise SignatureError(
                f"{where}: the signature does not match the signed statement: tampered "
                f"(it names key {expected}, but that key did not sign this content)",
                reason="tampered",
            ) from None
        raise SignatureError(
            f"{where}: the signature was not made by key {expected} over this content "
            "(the bundle names no key: another key, or tampered)",
            reason="wrong-key",
        ) from None


def _check_statement(payload: bytes, want: str, where: str) -> None:
    what = f"{where}: in-toto statement"
    statement = _json.load(payload, where=what, error=_BadStatement, max_bytes=_sigstore.MAX_BUNDLE_BYTES)
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        kind = statement.get("_type") if isinstance(statement, dict) else type(statement).__name__
        raise _BadStatement(f"{what}: _type is {clean(str(kind))!r}, expected {STATEMENT_TYPE!r}")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise _BadStatement(
            f"{what}: predicateType is {clean(str(statement.get('predicateType')))!r}, not a cosign "
            f"signature ({PREDICATE_TYPE})",
            hint="an attestation (SBOM, provenance) signed by the same key is not a signature of the bundle",
        )
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise _BadStatement(f"{what}: expected exactly one subject (the manifest digest)")
    digests = subjects[0].get("digest")
    got = digests.get("sha256") if isinstance(digests, dict) else None
    if got != want:
        raise SignatureError(
            f"{where}: a valid signature, but over another manifest digest "
            f"(sha256:{clean(str(got))}), not sha256:{want}",
            reason="digest",
            hint="the signature belongs to another bundle (a tag may have moved); sign this digest",
        )
