"""The OCI referrer manifest for a signature and the fallback index (pure functions, no registry)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from hatch_mcpkit import _referrers
from hatch_mcpkit.bundle import Descriptor
from hatch_mcpkit.errors import RegistryError, SignatureError

BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
PREDICATE = "https://sigstore.dev/cosign/sign/v1"
SUBJECT = Descriptor(MANIFEST_TYPE, "sha256:" + hashlib.sha256(b"bundle manifest").hexdigest(), 1234)
SIGSTORE_BUNDLE = b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}'
CREATED = "2026-11-27T04:00:00Z"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _signature() -> _referrers.ReferrerManifest:
    return _referrers.referrer_manifest(SUBJECT, SIGSTORE_BUNDLE, predicate_type=PREDICATE, created=CREATED)


def test_referrer_manifest_is_cosign_v3s_shape() -> None:
    ref = _signature()
    assert json.loads(ref.manifest) == {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": BUNDLE_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "size": 2,
        },
        "layers": [{"mediaType": BUNDLE_TYPE, "digest": _sha(SIGSTORE_BUNDLE), "size": len(SIGSTORE_BUNDLE)}],
        "subject": {"mediaType": MANIFEST_TYPE, "digest": SUBJECT.digest, "size": 1234},
        "annotations": {
            "dev.sigstore.bundle.content": "dsse-envelope",
            "dev.sigstore.bundle.predicateType": PREDICATE,
            "org.opencontainers.image.created": CREATED,
        },
    }
    assert ref.digest == _sha(ref.manifest)
    assert [(d.digest, data) for d, data in ref.blobs] == [
        (_sha(b"{}"), b"{}"), (_sha(SIGSTORE_BUNDLE), SIGSTORE_BUNDLE)
    ]
    for descriptor, data in ref.blobs:
        assert descriptor.size == len(data) and descriptor.digest == _sha(data)


def test_subject_annotations_are_not_copied_into_the_referrer() -> None:
    subject = Descriptor(MANIFEST_TYPE, SUBJECT.digest, 1234, {"org.opencontainers.image.title": "x"})
    ref = _referrers.referrer_manifest(subject, SIGSTORE_BUNDLE, predicate_type=PREDICATE, created=CREATED)
    assert "annotations" not in json.loads(ref.manifest)["subject"]


def test_same_inputs_give_the_same_manifest_digest() -> None:
    assert _signature().digest == _signature().digest


def test_fallback_tag_is_the_referrers_tag_schema() -> None:
    assert _referrers.fallback_tag("sha256:" + "ab" * 32) == "sha256-" + "ab" * 32


def test_first_signature_creates_the_fallback_index() -> None:
    ref = _signature()
    index = json.loads(_referrers.add_to_index(None, ref.entry, where="sha256-x"))
    assert index == {
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": ref.digest,
            "size": len(ref.manifest),
            "artifactType": BUNDLE_TYPE,
            # the manifest's own annotations, and where its Sigstore bundle is (a hint for verifiers)
            "annotations": {**json.loads(ref.manifest)["annotations"],
                            "dev.mcpkit.signature.layer": _sha(SIGSTORE_BUNDLE),
                            "dev.mcpkit.signature.layer.size": str(len(SIGSTORE_BUNDLE))},
        }],
    }


def test_fallback_index_keeps_what_other_tools_listed() -> None:
    """An SBOM and a foreign signature already listed stay exactly as they were, fields we do not know included."""
    sbom: dict[str, Any] = {
        "mediaType": MANIFEST_TYPE, "digest": _sha(b"sbom"), "size": 99,
        "artifactType": "application/spdx+json", "annotations": {"org.example": "keep me"},
        "platform": {"os": "linux", "architecture": "amd64"},
    }
    odd: dict[str, Any] = {"mediaType": "application/vnd.example+json", "digest": "md5:abc", "size": -1}
    existing = json.dumps({
        "schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [sbom, odd],
        "annotations": {"org.example.index": "also kept"},
    }).encode()
    ref = _signature()
    updated = json.loads(_referrers.add_to_index(existing, ref.entry, where="sha256-x"))
    assert updated["manifests"][:2] == [sbom, odd]
    assert updated["manifests"][2]["digest"] == ref.digest
    assert updated["annotations"] == {"org.example.index": "also kept"}

    again = json.loads(_referrers.add_to_index(json.dumps(updated).encode(), ref.entry, where="sha256-x"))
    assert again == updated, "signing twice lists the referrer once"


@pytest.mark.parametrize(
    ("existing", "message"),
    [
        (json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "layers": []}).encode(),
         "not an OCI image index; refusing to replace it"),
        (b"[" * 100_000, "nested more than"),
        (b"x" * (_referrers.MAX_INDEX_BYTES + 1), "byte limit"),
        (json.dumps({"mediaType": INDEX_TYPE, "manifests": {}}).encode(), "no 'manifests' list"),
        (json.dumps({"mediaType": INDEX_TYPE, "manifests": [{}] * (_referrers.MAX_REFERRERS + 1)}).encode(),
         "more than 10000 referrers"),
    ],
    ids=["a-manifest", "deep", "huge", "manifests-not-a-list", "too-many"],
)
def test_a_fallback_tag_that_is_not_our_kind_of_index_is_refused(existing: bytes, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        _referrers.add_to_index(existing, _signature().entry, where="repo:sha256-x")


def test_read_index_lists_signatures_and_skips_what_it_cannot_use() -> None:
    ref = _signature()
    raw = json.dumps({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [
        {"mediaType": MANIFEST_TYPE, "digest": _sha(b"sbom"), "size": 9, "artifactType": "application/spdx+json"},
        {"mediaType": MANIFEST_TYPE, "digest": "sha256:short", "size": 9, "artifactType": BUNDLE_TYPE},
        {"mediaType": INDEX_TYPE, "digest": _sha(b"idx"), "size": 9, "artifactType": BUNDLE_TYPE},
        "not an object",
        ref.entry.to_json(),
    ]}).encode()
    assert _referrers.read_index(raw, where="referrers", artifact_type=BUNDLE_TYPE) == [ref.entry]
    assert [r.digest for r in _referrers.read_index(raw, where="referrers")] == [_sha(b"sbom"), ref.digest]


def test_bundle_layer_of_our_referrer_round_trips() -> None:
    ref = _signature()
    assert _referrers.bundle_layer(ref.manifest, subject_digest=SUBJECT.digest, where="sig") == ref.layer


def _manifest(**change: Any) -> bytes:
    document = json.loads(_signature().manifest)
    document.update(change)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("raw", "reason", "message"),
    [
        (_manifest(subject={"mediaType": MANIFEST_TYPE, "digest": _sha(b"other"), "size": 1}), "digest",
         "refers to sha256:"),
        (_manifest(artifactType="application/spdx+json"), "format", "is not a Sigstore bundle"),
        (_manifest(layers=[]), "format", "exactly one layer"),
        (_manifest(layers=[{"mediaType": BUNDLE_TYPE, "digest": _sha(b"x"), "size": 10**9}]), "format",
         "more than"),
        (_manifest(layers=[{"mediaType": "application/json", "digest": _sha(b"x"), "size": 1}]), "format",
         "not a Sigstore bundle"),
        (_manifest(layers=[{"mediaType": BUNDLE_TYPE, "digest": "sha256:zz", "size": 1}]), "format",
         "not a sha256 digest"),
        (b"[]", "format", "must be a JSON object"),
    ],
    ids=["other-subject", "sbom", "no-layer", "huge-layer", "json-layer", "bad-digest", "not-object"],
)
def test_hostile_referrer_manifests_are_refused(raw: bytes, reason: str, message: str) -> None:
    with pytest.raises(SignatureError, match=message) as info:
        _referrers.bundle_layer(raw, subject_digest=SUBJECT.digest, where="oci://reg/tool@sig")
    assert info.value.reason == reason


def test_fallback_tags_are_recognised_exactly() -> None:
    assert _referrers.is_fallback_tag("sha256-" + "0a" * 32)
    for tag in ("sha256-" + "0A" * 32, "sha256-" + "0a" * 31, "sha256-" + "0a" * 32 + "x", "latest", "1.0.0"):
        assert not _referrers.is_fallback_tag(tag), tag
