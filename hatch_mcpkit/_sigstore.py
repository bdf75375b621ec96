"""The one boundary around ``sigstore-models``: Sigstore bundle v0.3 JSON holding a DSSE envelope.

``sigstore-models`` are the pydantic models of Sigstore's protobuf specs, the ones the
``sigstore`` package itself reads and writes bundles with. Two quirks are handled here and
nowhere else:

* its byte fields base64-decode whatever they are given, bytes included, so we hand them
  base64 text;
* protobuf JSON omits empty fields (cosign writes no ``tlogEntries`` when nothing went to a
  transparency log, and no ``hint`` when it is empty), while the models require them; a
  bundle from outside gets those defaults before it is validated.

Everything read here comes from a registry: it is size- and depth-checked by
:func:`hatch_mcpkit._json.load` before the models see it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Final

from hatch_mcpkit import _json
from hatch_mcpkit._text import clean
from hatch_mcpkit.errors import SignatureError

__all__ = ["BUNDLE_MEDIA_TYPE", "MAX_BUNDLE_BYTES", "DsseBundle", "decode", "encode"]

BUNDLE_MEDIA_TYPE: Final = "application/vnd.dev.sigstore.bundle.v0.3+json"
_BUNDLE_V03_ALT = "application/vnd.dev.sigstore.bundle+json;version=0.3"
MAX_BUNDLE_BYTES = 256 * 1024  # cosign's bundles with a certificate chain and log entry are ~10 KiB


class _NotABundle(SignatureError):
    """What :func:`hatch_mcpkit._json.load` raises for a document that is not a bundle."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, reason="format", hint=hint)


@dataclass(frozen=True)
class DsseBundle:
    """What verification needs from a bundle: the envelope and who it says signed it."""

    payload_type: str
    payload: bytes
    signatures: tuple[bytes, ...]
    key_hint: str | None  # verificationMaterial.publicKey.hint (unauthenticated)
    has_certificate: bool  # keyless: an X.509 certificate instead of a public key hint


def encode(*, payload: bytes, payload_type: str, signature: bytes, key_hint: str) -> bytes:
    """A Sigstore bundle v0.3 (JSON) with one DSSE signature by the key named ``key_hint``."""
    from sigstore_models.bundle.v1 import Bundle, VerificationMaterial
    from sigstore_models.common.v1 import PublicKeyIdentifier
    from sigstore_models.intoto import Envelope, Signature

    bundle = Bundle(
        media_type=BUNDLE_MEDIA_TYPE,
        verification_material=VerificationMaterial(
            public_key=PublicKeyIdentifier(hint=key_hint), tlog_entries=[]
        ),
        dsse_envelope=Envelope(
            payload=base64.b64encode(payload),
            payload_type=payload_type,
            signatures=[Signature(sig=base64.b64encode(signature))],
        ),
    )
    return bundle.to_json().encode()


def _protobuf_defaults(doc: dict[str, Any]) -> None:
    material = doc.get("verificationMaterial")
    if isinstance(material, dict):
        material.setdefault("tlogEntries", [])
        if isinstance(material.get("publicKey"), dict):
            material["publicKey"].setdefault("hint", "")


def decode(raw: bytes, *, where: str) -> DsseBundle:
    """Read a Sigstore bundle v0.3 with a DSSE envelope, or raise ``SignatureError(reason="format")``."""
    from pydantic import ValidationError
    from sigstore_models.bundle.v1 import Bundle

    doc = _json.load(raw, where=where, error=_NotABundle, max_bytes=MAX_BUNDLE_BYTES)
    if not isinstance(doc, dict) or doc.get("mediaType") not in (BUNDLE_MEDIA_TYPE, _BUNDLE_V03_ALT):
        media = doc.get("mediaType") if isinstance(doc, dict) else None
        raise _NotABundle(
            f"{where}: not a Sigstore bundle v0.3 (mediaType {clean(str(media))!r}, "
            f"expected {BUNDLE_MEDIA_TYPE!r})"
        )
    _protobuf_defaults(doc)
    try:
        bundle = Bundle.from_json(json.dumps(doc))
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(part) for part in first["loc"])
        raise _NotABundle(f"{where}: malformed Sigstore bundle: {clean(path)}: {clean(first['msg'])}") from None
    envelope = bundle.dsse_envelope
    if envelope is None:
        raise _NotABundle(
            f"{where}: the Sigstore bundle holds a message signature, not a DSSE envelope",
            hint="mcpkit signatures are DSSE in-toto statements, as cosign v3 writes them",
        )
    material = bundle.verification_material
    return DsseBundle(
        payload_type=envelope.payload_type,
        payload=envelope.payload,
        signatures=tuple(sig.sig for sig in envelope.signatures),
        key_hint=material.public_key.hint if material.public_key else None,
        has_certificate=material.public_key is None,
    )
