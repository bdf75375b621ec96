"""OCI referrers for signatures, as pure functions: the referrer manifest and the fallback index.

A signature is stored the way cosign v3 stores one (OCI image spec 1.1, distribution spec
1.1): an image manifest whose ``subject`` is the signed bundle's manifest, whose
``artifactType`` is the Sigstore bundle media type, with the empty config (``{}``) and one
layer, the Sigstore bundle itself. Registries with the referrers API index it on PUT (and
answer with an ``OCI-Subject`` header); on the others the client keeps an image index tagged
``sha256-<hex of the subject digest>`` listing the referrers, and must keep whatever else is
listed there (other tools' SBOMs and signatures).

Nothing here talks to a registry: the registry client sends and fetches these bytes. What
comes back from a registry (a referrers list, a fallback index, a referrer manifest) is
read with size, depth and shape checks.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from hatch_mcpkit import _json
from hatch_mcpkit._sigstore import BUNDLE_MEDIA_TYPE, MAX_BUNDLE_BYTES
from hatch_mcpkit._text import clean
from hatch_mcpkit.bundle import INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, Descriptor
from hatch_mcpkit.errors import McpkitError, RegistryError, SignatureError

__all__ = [
    "EMPTY_CONFIG",
    "EMPTY_MEDIA_TYPE",
    "MAX_INDEX_BYTES",
    "MAX_REFERRERS",
    "Referrer",
    "ReferrerManifest",
    "add_to_index",
    "bundle_layer",
    "fallback_tag",
    "is_fallback_tag",
    "layer_hint",
    "read_index",
    "referrer_manifest",
]

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
PREDICATE_ANNOTATION = "dev.sigstore.bundle.predicateType"
CONTENT_ANNOTATION = "dev.sigstore.bundle.content"
CREATED_ANNOTATION = "org.opencontainers.image.created"
# where the Sigstore bundle is (digest, size): added to the referrer's entry in the fallback index
# (the manifest stays cosign's), so a verifier fetches the referrer manifest and the bundle side by
# side. Only a hint: the manifest's own layer decides.
LAYER_ANNOTATION = "dev.mcpkit.signature.layer"
LAYER_SIZE_ANNOTATION = "dev.mcpkit.signature.layer.size"
MAX_INDEX_BYTES = 4 * 1024 * 1024
MAX_REFERRERS = 10_000
_FALLBACK_TAG = re.compile(r"sha256-[0-9a-f]{64}")


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=False).encode()


@dataclass(frozen=True)
class Referrer:
    """One entry of a referrers list or fallback index: a manifest that refers to a subject."""

    digest: str
    size: int
    artifact_type: str | None
    media_type: str = MANIFEST_MEDIA_TYPE
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class ReferrerManifest:
    """What to push for one signature: the blobs (config, bundle), then the manifest."""

    manifest: bytes
    subject: Descriptor
    config: Descriptor
    layer: Descriptor
    bundle: bytes
    entry: Referrer  # how the manifest is listed in a referrers index

    @property
    def digest(self) -> str:
        return self.entry.digest

    @property
    def blobs(self) -> tuple[tuple[Descriptor, bytes], ...]:
        return ((self.config, EMPTY_CONFIG), (self.layer, self.bundle))


def referrer_manifest(
    subject: Descriptor, bundle: bytes, *, predicate_type: str, created: str
) -> ReferrerManifest:
    """The referrer manifest that attaches the Sigstore ``bundle`` to ``subject`` (cosign v3's shape)."""
    config = Descriptor(EMPTY_MEDIA_TYPE, _digest(EMPTY_CONFIG), len(EMPTY_CONFIG))
    layer = Descriptor(BUNDLE_MEDIA_TYPE, _digest(bundle), len(bundle))
    annotations = {
        CONTENT_ANNOTATION: "dsse-envelope",
        PREDICATE_ANNOTATION: predicate_type,
        CREATED_ANNOTATION: created,
    }
    subject = Descriptor(subject.media_type, subject.digest, subject.size)  # its annotations stay its own
    document = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": BUNDLE_MEDIA_TYPE,
        "config": config.to_json(),
        "layers": [layer.to_json()],
        "subject": subject.to_json(),
        "annotations": annotations,
    }
    raw = _bytes(document)
    # the fallback index lists it with the manifest's annotations and where its bundle is (a hint)
    listed = {**annotations, LAYER_ANNOTATION: layer.digest, LAYER_SIZE_ANNOTATION: str(layer.size)}
    entry = Referrer(_digest(raw), len(raw), BUNDLE_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, listed)
    return ReferrerManifest(raw, subject, config, layer, bundle, entry)


def fallback_tag(subject_digest: str) -> str:
    """The referrers tag schema: ``sha256:<hex>`` -> ``sha256-<hex>``."""
    algorithm, _, hex_part = subject_digest.partition(":")
    return f"{algorithm}-{hex_part}"


def is_fallback_tag(tag: str) -> bool:
    """A ``sha256-<hex>`` tag: a referrers fallback index, not a bundle (listings leave it out)."""
    return _FALLBACK_TAG.fullmatch(tag) is not None


def _index_document(raw: bytes | None, where: str) -> dict[str, Any]:
    if raw is None:
        return {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
    document = _json.load(raw, where=where, error=RegistryError, max_bytes=MAX_INDEX_BYTES)
    if not isinstance(document, dict) or document.get("mediaType") != INDEX_MEDIA_TYPE:
        media = document.get("mediaType") if isinstance(document, dict) else type(document).__name__
        raise RegistryError(
            f"{where}: holds {clean(str(media))!r}, not an OCI image index; refusing to replace it",
            hint="another tool owns this tag; remove it, or push the signature to a registry with the referrers API",
        )
    if not isinstance(document.get("manifests"), list):
        raise RegistryError(f"{where}: the image index has no 'manifests' list")
    if len(document["manifests"]) > MAX_REFERRERS:
        raise RegistryError(f"{where}: the index lists more than {MAX_REFERRERS} referrers")
    return document


def add_to_index(existing: bytes | None, entry: Referrer, *, where: str) -> bytes:
    """The fallback index with ``entry`` added; every entry already there is kept as it was."""
    document = _index_document(existing, where)
    manifests = document["manifests"]
    if not any(isinstance(item, dict) and item.get("digest") == entry.digest for item in manifests):
        manifests.append(entry.to_json())
    return _bytes(document)


def _referrer(item: Any, where: str) -> Referrer | None:
    """A well-formed index entry, or None for one we cannot use (another tool's business)."""
    try:
        descriptor = Descriptor.from_json(item, where)
    except McpkitError:
        return None
    artifact_type = item.get("artifactType")
    return Referrer(
        descriptor.digest,
        descriptor.size,
        artifact_type if isinstance(artifact_type, str) else None,
        descriptor.media_type,
        dict(descriptor.annotations),
    )


def read_index(raw: bytes, *, where: str, artifact_type: str | None = None) -> list[Referrer]:
    """The referrers listed by a referrers API answer or a fallback index, optionally of one artifact type."""
    document = _index_document(raw, where)
    found = (_referrer(item, f"{where}: manifests[{n}]") for n, item in enumerate(document["manifests"]))
    return [
        ref for ref in found
        if ref is not None and ref.media_type == MANIFEST_MEDIA_TYPE
        and (artifact_type is None or ref.artifact_type == artifact_type)
    ]


def layer_hint(entry: Referrer) -> Descriptor | None:
    """The Sigstore bundle layer a referrer's listing names (our annotations), if it names one plausibly."""
    digest = entry.annotations.get(LAYER_ANNOTATION, "")
    size = entry.annotations.get(LAYER_SIZE_ANNOTATION, "")
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest) or not size.isdigit() or int(size) > MAX_BUNDLE_BYTES:
        return None
    return Descriptor(BUNDLE_MEDIA_TYPE, digest, int(size))


def bundle_layer(raw: bytes, *, subject_digest: str, where: str) -> Descriptor:
    """The Sigstore bundle layer of a signature referrer manifest that names ``subject_digest``."""
    document = _json.load(raw, where=where, error=RegistryError, max_bytes=MAX_INDEX_BYTES)
    if not isinstance(document, dict):
        raise SignatureError(f"{where}: a referrer manifest must be a JSON object", reason="format")
    artifact_type = document.get("artifactType")
    if artifact_type != BUNDLE_MEDIA_TYPE:
        raise SignatureError(f"{where}: artifactType {clean(str(artifact_type))!r} is not a Sigstore bundle",
                             reason="format")
    subject = document.get("subject")
    if not isinstance(subject, dict) or subject.get("digest") != subject_digest:
        got = subject.get("digest") if isinstance(subject, dict) else None
        raise SignatureError(f"{where}: refers to {clean(str(got))}, not to {subject_digest}", reason="digest")
    layers = document.get("layers")
    if not isinstance(layers, list) or len(layers) != 1:
        raise SignatureError(f"{where}: a signature referrer has exactly one layer", reason="format")
    try:
        layer = Descriptor.from_json(layers[0], f"{where}: layers[0]")
    except McpkitError as exc:
        raise SignatureError(exc.message, reason="format") from None
    if layer.media_type != BUNDLE_MEDIA_TYPE:
        raise SignatureError(f"{where}: layer is {clean(layer.media_type)!r}, not a Sigstore bundle",
                             reason="format")
    if layer.size > MAX_BUNDLE_BYTES:
        raise SignatureError(f"{where}: the Sigstore bundle is {layer.size} bytes, more than "
                             f"{MAX_BUNDLE_BYTES}", reason="format")
    return layer
