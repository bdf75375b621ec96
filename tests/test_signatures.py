"""Signatures in a real registry (distribution: no referrers API, so the sha256-<hex> fallback index).

Bundles are built and pushed for real, signed with real keys, and every attack is made
against the registry's own storage or API: a signature copied from another bundle, a
tampered signature blob, a referrer that lies about its subject, a fallback tag owned by
another tool.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from hatch_mcpkit import _referrers, _signatures, signing
from hatch_mcpkit.bundle import INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, Descriptor
from hatch_mcpkit.errors import RegistryError, SignatureError
from hatch_mcpkit.reference import Reference
from tests.builders import make_project, push_project

pytestmark = pytest.mark.registry

BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for who in ("publisher", "intruder"):
        key_path, pub_path = signing.generate_key(tmp_path / who, environ={})
        out[who] = signing.load_private_key(key_path, environ={})
        out[f"{who}.pub"] = signing.load_public_key(pub_path)
    return out


def _push(registry: Any, tmp_path: Path, repository: str, tag: str, *, version: str = "1.0.0") -> str:
    project = make_project(tmp_path / f"project-{tag}", version=version)
    return str(push_project(registry, project, tmp_path / f"out-{tag}", repository, tag).digest)


def _ref(registry: Any, repository: str) -> Reference:
    return Reference(registry.host, repository, "1.0.0")


def _fallback(client: Any, repository: str, digest: str) -> dict[str, Any]:
    raw = client.fetch_manifest(Reference(client.host, repository, _referrers.fallback_tag(digest))).raw
    document: dict[str, Any] = json.loads(raw)
    return document


def _push_sbom(client: Any, repository: str, subject_digest: str) -> dict[str, Any]:
    """Another tool's referrer (an SPDX SBOM) for ``subject_digest``; its entry for an index."""
    sbom, empty = b'{"spdxVersion": "SPDX-2.3"}', b"{}"
    blobs = [Descriptor("application/vnd.oci.empty.v1+json", _sha(empty), 2),
             Descriptor("application/spdx+json", _sha(sbom), len(sbom))]
    for descriptor, data in zip(blobs, (empty, sbom), strict=True):
        client.upload_blob(repository, descriptor, data)
    raw = client.fetch_manifest(Reference(client.host, repository, None, subject_digest)).raw
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "artifactType": "application/spdx+json",
        "config": blobs[0].to_json(), "layers": [blobs[1].to_json()],
        "subject": {"mediaType": MANIFEST_MEDIA_TYPE, "digest": subject_digest, "size": len(raw)},
    }).encode()
    client.put_manifest(repository, _sha(manifest), manifest, MANIFEST_MEDIA_TYPE)
    return {"mediaType": MANIFEST_MEDIA_TYPE, "digest": _sha(manifest), "size": len(manifest),
            "artifactType": "application/spdx+json", "annotations": {"org.example.tool": "sbom"},
            "platform": {"os": "linux", "architecture": "amd64"}}


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push_referrer_with_bundle(client: Any, repository: str, subject_digest: str, bundle: bytes) -> str:
    """What an attacker with push access does: attach any Sigstore bundle to any digest."""
    raw = client.fetch_manifest(Reference(client.host, repository, None, subject_digest)).raw
    subject = Descriptor(MANIFEST_MEDIA_TYPE, subject_digest, len(raw))
    referrer = _referrers.referrer_manifest(subject, bundle, predicate_type=signing.PREDICATE_TYPE,
                                            created="2026-01-01T00:00:00Z")
    client.push_referrer(repository, referrer)
    return referrer.digest


def test_sign_and_verify_through_the_fallback_index(registry: Any, repo_name: str, tmp_path: Path,
                                                    keys: dict[str, Any]) -> None:
    digest = _push(registry, tmp_path, repo_name, "1.0.0")
    with registry.client() as client:
        attached = _signatures.attach(client, _ref(registry, repo_name), digest, keys["publisher"])
        assert attached.digest == digest and not attached.indexed_by_registry  # distribution 2.8
        assert _referrers.fallback_tag(digest) in client.list_tags(repo_name)
        index = _fallback(client, repo_name, digest)
        assert index["mediaType"] == INDEX_MEDIA_TYPE
        assert [(m["digest"], m["artifactType"]) for m in index["manifests"]] == [(attached.referrer, BUNDLE_TYPE)]
        referrer = json.loads(client.fetch_manifest(Reference(registry.host, repo_name, None,
                                                              attached.referrer)).raw)
        assert referrer["subject"]["digest"] == digest and referrer["artifactType"] == BUNDLE_TYPE

        signer = _signatures.require(client, _ref(registry, repo_name), digest, keys["publisher.pub"])
    assert signer == signing.Signer(key_id=signing.key_id(keys["publisher.pub"]), digest=digest)


def test_signing_again_adds_to_the_index(registry: Any, repo_name: str, tmp_path: Path,
                                         keys: dict[str, Any]) -> None:
    digest = _push(registry, tmp_path, repo_name, "1.0.0")
    ref = _ref(registry, repo_name)
    with registry.client() as client:
        first = _signatures.attach(client, ref, digest, keys["intruder"])
        second = _signatures.attach(client, ref, digest, keys["publisher"])
        listed = [m["digest"] for m in _fallback(client, repo_name, digest)["manifests"]]
        assert listed == [first.referrer, second.referrer]
        # one valid signature among several is enough, whichever comes first
        assert _signatures.require(client, ref, digest, keys["publisher.pub"]).digest == digest
        assert _signatures.require(client, ref, digest, keys["intruder.pub"]).digest == digest


def test_fallback_index_keeps_other_tools_referrers(registry: Any, repo_name: str, tmp_path: Path,
                                                    keys: dict[str, Any]) -> None:
    digest = _push(registry, tmp_path, repo_name, "1.0.0")
    with registry.client() as client:
        sbom = _push_sbom(client, repo_name, digest)
        foreign = json.dumps({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [sbom]}).encode()
        client.put_manifest(repo_name, _referrers.fallback_tag(digest), foreign, INDEX_MEDIA_TYPE)
        attached = _signatures.attach(client, _ref(registry, repo_name), digest, keys["publisher"])
        manifests = _fallback(client, repo_name, digest)["manifests"]
        assert manifests[0] == sbom
        assert [m["digest"] for m in manifests[1:]] == [attached.referrer]
        assert _signatures.require(client, _ref(registry, repo_name), digest, keys["publisher.pub"])


def test_fallback_tag_holding_something_else_is_not_replaced(registry: Any, repo_name: str, tmp_path: Path,
                                                             keys: dict[str, Any]) -> None:
    """Someone tagged a bundle ``sha256-<hex>``: signing refuses rather than overwrite it."""
    digest = _push(registry, tmp_path, repo_name, "1.0.0")
    squatter = _push(registry, tmp_path, repo_name, _referrers.fallback_tag(digest), version="9.9.9")
    with registry.client() as client, pytest.raises(RegistryError, match="not an OCI image index; refusing"):
        _signatures.attach(client, _ref(registry, repo_name), digest, keys["publisher"])
    with registry.client() as client:
        assert client.resolve(Reference(registry.host, repo_name, _referrers.fallback_tag(digest))) == squatter


def test_unsigned_bundle_is_refused(registry: Any, repo_name: str, tmp_path: Path, keys: dict[str, Any]) -> None:
    digest = _push(registry, tmp_path, repo_name, "1.0.0")
    with registry.client() as client, pytest.raises(SignatureError, match="is not signed") as info:
        _signatures.require(client, _ref(registry, repo_name), digest, keys["publisher.pub"])
    assert info.value.reason == "missing"


def test_signature_by_another_key_is_refused(registry: Any, repo_name: str, tmp_path: Path,
                                             keys: dict[str, Any]) -> None:
    digest = _push(registry, tmp_path, repo_name, "1.0.0")
    with registry.client() as client:
        _signatures.attach(client, _ref(registry, repo_name), digest, keys["intruder"])
        with pytest.raises(SignatureError, match="signed by another key") as info:
            _signatures.require(client, _ref(registry, repo_name), digest, keys["publisher.pub"])
    assert info.value.reason == "wrong-key"


def test_signature_copied_from_another_bundle_is_refused(registry: Any, repo_name: str, tmp_path: Path,
                                                         keys: dict[str, Any]) -> None:
    """The attacker attaches the publisher's real signature of bundle A to bundle B."""
    signed = _push(registry, tmp_path, repo_name, "1.0.0")
    evil = _push(registry, tmp_path, repo_name, "evil", version="6.6.6")
    with registry.client() as client:
        _signatures.attach(client, _ref(registry, repo_name), signed, keys["publisher"])
        _push_referrer_with_bundle(client, repo_name, evil, signing.sign_digest(signed, keys["publisher"]))
        with pytest.raises(SignatureError, match="over another manifest digest") as info:
            _signatures.require(client, _ref(registry, repo_name), evil, keys["publisher.pub"])
    assert info.value.reason == "digest"


def test_referrer_of_another_subject_listed_in_the_index_is_refused(
    registry: Any, repo_name: str, tmp_path: Path, keys: dict[str, Any],
) -> None:
    """The attacker lists A's signature referrer in B's fallback index."""
    signed = _push(registry, tmp_path, repo_name, "1.0.0")
    evil = _push(registry, tmp_path, repo_name, "evil", version="6.6.6")
    with registry.client() as client:
        attached = _signatures.attach(client, _ref(registry, repo_name), signed, keys["publisher"])
        index = _fallback(client, repo_name, signed)
        client.put_manifest(repo_name, _referrers.fallback_tag(evil), json.dumps(index).encode(), INDEX_MEDIA_TYPE)
        with pytest.raises(SignatureError, match=f"refers to {signed}, not to {evil}") as info:
            _signatures.require(client, _ref(registry, repo_name), evil, keys["publisher.pub"])
    assert info.value.reason == "digest"
    assert attached.referrer in str(info.value)


def test_tampered_signature_in_the_registry_is_refused(registry: Any, repo_name: str, tmp_path: Path,
                                                       keys: dict[str, Any]) -> None:
    """A registry (or someone with push access) serves a signature whose statement was changed."""
    digest = _push(registry, tmp_path, repo_name, "1.0.0")
    other = "sha256:" + hashlib.sha256(b"other").hexdigest()
    bundle = json.loads(signing.sign_digest(other, keys["publisher"]))
    real = json.loads(signing.sign_digest(digest, keys["publisher"]))
    bundle["dsseEnvelope"]["payload"] = real["dsseEnvelope"]["payload"]  # right statement, wrong signature
    with registry.client() as client:
        _push_referrer_with_bundle(client, repo_name, digest, json.dumps(bundle).encode())
        with pytest.raises(SignatureError, match="tampered") as info:
            _signatures.require(client, _ref(registry, repo_name), digest, keys["publisher.pub"])
    assert info.value.reason == "tampered"


def test_signature_blob_changed_on_the_registry_disk_is_refused(registry: Any, repo_name: str, tmp_path: Path,
                                                                keys: dict[str, Any]) -> None:
    digest = _push(registry, tmp_path, repo_name, "1.0.0")
    with registry.client() as client:
        attached = _signatures.attach(client, _ref(registry, repo_name), digest, keys["publisher"])
        referrer = json.loads(client.fetch_manifest(Reference(registry.host, repo_name, None,
                                                              attached.referrer)).raw)
    blob = registry.blob_data_path(referrer["layers"][0]["digest"])
    tampered = bytearray(blob.read_bytes())
    tampered[-3] ^= 0x01
    blob.write_bytes(bytes(tampered))
    with registry.client() as client, pytest.raises(SignatureError, match="cannot be read") as info:
        _signatures.require(client, _ref(registry, repo_name), digest, keys["publisher.pub"])
    assert info.value.reason == "format"
    assert "does not match its digest" in str(info.value)


def test_closest_failure_is_reported_among_several(registry: Any, repo_name: str, tmp_path: Path,
                                                   keys: dict[str, Any]) -> None:
    digest = _push(registry, tmp_path, repo_name, "1.0.0")
    other = "sha256:" + hashlib.sha256(b"other").hexdigest()
    with registry.client() as client:
        _signatures.attach(client, _ref(registry, repo_name), digest, keys["intruder"])
        _push_referrer_with_bundle(client, repo_name, digest, signing.sign_digest(other, keys["publisher"]))
        with pytest.raises(SignatureError) as info:
            _signatures.require(client, _ref(registry, repo_name), digest, keys["publisher.pub"])
    assert info.value.reason == "digest"
    assert "(and 1 other invalid signatures: wrong-key)" in str(info.value)




def test_sign_and_verify_over_tls_with_credentials(tls_auth_registry: Any, repo_name: str, tmp_path: Path,
                                                   keys: dict[str, Any]) -> None:
    """Signing needs push access to the repository (referrer, fallback tag); verifying, pull access."""
    from hatch_mcpkit.errors import AuthError

    digest = _push(tls_auth_registry, tmp_path, repo_name, "1.0.0")
    ref = Reference(tls_auth_registry.host, repo_name, "1.0.0")
    with tls_auth_registry.client() as client:
        _signatures.attach(client, ref, digest, keys["publisher"])
        assert _signatures.require(client, ref, digest, keys["publisher.pub"]).digest == digest
    with tls_auth_registry.client(credentials=None) as anonymous, pytest.raises(AuthError):
        _signatures.require(anonymous, ref, digest, keys["publisher.pub"])

# --- the command line ----------------------------------------------------------------------------

def _mcpkit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from hatch_mcpkit.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_sign_then_verify(registry: Any, repo_name: str, tmp_path: Path, keys: dict[str, Any],
                              capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCPKIT_KEY_PASSWORD", raising=False)
    digest = _push(registry, tmp_path, repo_name, "1.0.0")
    signing.generate_key(tmp_path / "release", environ={})
    ref = registry.ref(repo_name, "1.0.0")

    code, out, err = _mcpkit(capsys, "bundle", "verify", ref, "--key", str(tmp_path / "release.pub"))
    assert code == 1 and "is not signed" in err

    code, out, err = _mcpkit(capsys, "bundle", "sign", ref, "--key", str(tmp_path / "release.key"))
    assert code == 0, err
    assert f"signed oci://{registry.host}/{repo_name}@{digest}" in out
    assert f"fallback tag {_referrers.fallback_tag(digest)}" in out

    code, out, err = _mcpkit(capsys, "bundle", "verify", ref, "--key", str(tmp_path / "release.pub"))
    assert code == 0, err
    pub = signing.load_public_key(tmp_path / "release.pub")
    assert out.strip() == f"verified oci://{registry.host}/{repo_name}@{digest}: signed by key {signing.key_id(pub)}"

    signing.generate_key(tmp_path / "other", environ={})
    code, out, err = _mcpkit(capsys, "bundle", "verify", ref, "--key", str(tmp_path / "other.pub"))
    assert code == 1 and "signed by another key" in err and out == ""


def test_cli_verify_follows_a_moved_tag(registry: Any, repo_name: str, tmp_path: Path, keys: dict[str, Any],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The tag is moved to an unsigned bundle after signing: verify checks what the tag names now."""
    signed = _push(registry, tmp_path, repo_name, "1.0.0")
    with registry.client() as client:
        _signatures.attach(client, _ref(registry, repo_name), signed, keys["publisher"])
    pub = str(tmp_path / "publisher.pub")  # written by the keys fixture
    ref = registry.ref(repo_name, "1.0.0")
    assert _mcpkit(capsys, "bundle", "verify", ref, "--key", pub)[0] == 0

    moved = _push(registry, tmp_path, repo_name, "1.0.0", version="2.0.0")
    code, _, err = _mcpkit(capsys, "bundle", "verify", ref, "--key", pub)
    assert code == 1 and f"@{moved} is not signed" in err
    code, _, err = _mcpkit(capsys, "bundle", "verify", f"oci://{registry.host}/{repo_name}@{signed}", "--key", pub)
    assert code == 0, err


def test_cli_sign_with_a_wrong_password_pushes_nothing(registry: Any, repo_name: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    digest = _push(registry, tmp_path, repo_name, "1.0.0")
    signing.generate_key(tmp_path / "locked", environ={"MCPKIT_KEY_PASSWORD": "right"})
    monkeypatch.setenv("MCPKIT_KEY_PASSWORD", "wrong")
    code, _, err = _mcpkit(capsys, "bundle", "sign", registry.ref(repo_name, "1.0.0"),
                           "--key", str(tmp_path / "locked.key"))
    assert code == 1 and "wrong password for private key" in err and "right" not in err
    with registry.client() as client:
        assert client.list_tags(repo_name) == ["1.0.0"], digest


def test_registry_listing_leaves_out_signature_fallback_tags(registry: Any, repo_name: str, tmp_path: Path,
                                                            keys: dict[str, Any],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    digest = _push(registry, tmp_path, repo_name, "1.0.0")
    with registry.client() as client:
        _signatures.attach(client, _ref(registry, repo_name), digest, keys["publisher"])
        assert _referrers.fallback_tag(digest) in client.list_tags(repo_name)
    code, out, err = _mcpkit(capsys, "bundle", "list", "--registry", f"{registry.host}/{repo_name}", "--json")
    assert code == 0, err
    assert json.loads(out) == [{"repository": f"{registry.host}/{repo_name}", "tags": ["1.0.0"]}]


def test_registry_listing_shows_bundles_only(registry: Any, repo_name: str, tmp_path: Path,
                                              keys: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    digest = _push(registry, tmp_path, repo_name, "1.0.0")
    with registry.client() as client:
        _signatures.attach(client, _ref(registry, repo_name), digest, keys["publisher"])
        entry = _push_sbom(client, repository=repo_name, subject_digest=digest)
        raw = client.fetch_manifest(Reference(client.host, repo_name, None, entry["digest"])).raw
        client.put_manifest(repo_name, "sbom", raw, MANIFEST_MEDIA_TYPE)  # another tool's artifact, tagged
        index = client.fetch_manifest(Reference(client.host, repo_name, _referrers.fallback_tag(digest))).raw
        client.put_manifest(repo_name, "an-index", index, INDEX_MEDIA_TYPE)
        assert {"1.0.0", "sbom", "an-index"} <= set(client.list_tags(repo_name))
    scope = f"{registry.host}/{repo_name}"
    code, out, err = _mcpkit(capsys, "bundle", "list", "--registry", scope, "--json")
    assert code == 0, err
    assert json.loads(out) == [{"repository": scope, "tags": ["1.0.0"]}]
    code, out, err = _mcpkit(capsys, "bundle", "list", "--registry", scope)
    assert code == 0, err
    assert out.splitlines()[0] == f"oci://{scope}:1.0.0"
    assert "sbom" not in out and "an-index" not in out
    assert "2 tags that are not mcpkit bundles" in out + err


# --- a registry with the referrers API -----------------------------------------------------------

class ReferrersApiRegistry:
    """A real distribution registry behind a loopback proxy that adds the OCI 1.1 referrers API.

    Storage, blobs and manifests are distribution's; the proxy answers a manifest PUT that has a
    ``subject`` with ``OCI-Subject`` and serves ``GET /v2/<repo>/referrers/<digest>`` from what it
    saw, as registries with the API do. ``answer`` replaces the API's answer (hostile variants).
    """

    def __init__(self, upstream: str) -> None:
        import http.server
        import threading

        self.upstream = upstream
        self.referrers: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.answer: tuple[int, bytes] | None = None
        self.api_calls = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.handle(self, body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"

    def handle(self, req: Any, body: bytes) -> None:
        import http.client

        parts = req.path.split("?", 1)[0].split("/")
        if req.command == "GET" and len(parts) > 4 and parts[-2] == "referrers":
            self.api_calls += 1
            repo, digest = "/".join(parts[2:-2]), parts[-1]
            status, data = self.answer or (200, json.dumps({
                "schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE,
                "manifests": self.referrers.get((repo, digest), []),
            }).encode())
            return self._reply(req, status, {"Content-Type": INDEX_MEDIA_TYPE}, data)
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        headers = {k: v for k, v in req.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(req.command, req.path, body=body if req.command in ("PUT", "POST", "PATCH") else None,
                     headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        out = {k: v.replace(self.upstream, self.host) for k, v in resp.getheaders()
               if k.lower() not in ("connection", "transfer-encoding", "content-length")}
        if req.command == "PUT" and "/manifests/" in req.path and resp.status == 201:
            document = json.loads(body)
            subject = document.get("subject") if isinstance(document, dict) else None
            if isinstance(subject, dict):
                repo = req.path.split("/manifests/", 1)[0][len("/v2/"):]
                self.referrers.setdefault((repo, subject["digest"]), []).append({
                    "mediaType": document["mediaType"], "digest": _sha(body), "size": len(body),
                    "artifactType": document.get("artifactType"), "annotations": document.get("annotations", {}),
                })
                out["OCI-Subject"] = subject["digest"]
        conn.close()
        self._reply(req, resp.status, out, b"" if req.command == "HEAD" else data,
                    length=resp.getheader("Content-Length"))

    @staticmethod
    def _reply(req: Any, status: int, headers: dict[str, str], data: bytes, length: str | None = None) -> None:
        req.send_response(status)
        for key, value in headers.items():
            req.send_header(key, value)
        req.send_header("Content-Length", length if req.command == "HEAD" and length else str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def client(self) -> Any:
        from hatch_mcpkit.registry import RegistryClient

        return RegistryClient(self.host)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def api_registry(registry: Any) -> Any:
    proxy = ReferrersApiRegistry(registry.host)
    yield proxy
    proxy.close()


def test_registry_with_the_referrers_api_indexes_the_signature_itself(
    api_registry: ReferrersApiRegistry, repo_name: str, tmp_path: Path, keys: dict[str, Any],
) -> None:
    digest = _push(api_registry, tmp_path, repo_name, "1.0.0")
    ref = Reference(api_registry.host, repo_name, "1.0.0")
    with api_registry.client() as client:
        attached = _signatures.attach(client, ref, digest, keys["publisher"])
        assert attached.indexed_by_registry
        assert client.list_tags(repo_name) == ["1.0.0"], "no fallback tag where the registry has the API"
        assert [r.digest for r in client.referrers(repo_name, digest, artifact_type=BUNDLE_TYPE)] == [
            attached.referrer
        ]
        assert _signatures.require(client, ref, digest, keys["publisher.pub"]).digest == digest
        with pytest.raises(SignatureError, match="signed by another key"):
            _signatures.require(client, ref, digest, keys["intruder.pub"])
    assert api_registry.api_calls == 3


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        ((200, b"[" * 100_000), RegistryError, "nested more than"),
        ((200, json.dumps({"mediaType": MANIFEST_MEDIA_TYPE}).encode()), RegistryError, "not an OCI image index"),
        ((200, b"{" + b" " * (5 * 1024 * 1024) + b"}"), RegistryError, "more than"),
        ((500, b"boom"), RegistryError, "HTTP 500"),
    ],
    ids=["deep", "not-an-index", "huge", "server-error"],
)
def test_hostile_referrers_api_answers_are_clear_errors(
    api_registry: ReferrersApiRegistry, repo_name: str, tmp_path: Path, keys: dict[str, Any],
    answer: tuple[int, bytes], error: type[Exception], message: str,
) -> None:
    digest = _push(api_registry, tmp_path, repo_name, "1.0.0")
    api_registry.answer = answer
    with api_registry.client() as client, pytest.raises(error, match=message):
        _signatures.require(client, Reference(api_registry.host, repo_name, "1.0.0"), digest,
                            keys["publisher.pub"])


def test_signatures_the_api_lists_beyond_the_cap_are_not_fetched(
    api_registry: ReferrersApiRegistry, repo_name: str, tmp_path: Path, keys: dict[str, Any],
) -> None:
    """A registry listing thousands of referrers makes mcpkit read at most MAX_SIGNATURES of them."""
    digest = _push(api_registry, tmp_path, repo_name, "1.0.0")
    junk = [{"mediaType": MANIFEST_MEDIA_TYPE, "digest": _sha(str(n).encode()), "size": 10,
             "artifactType": BUNDLE_TYPE} for n in range(2000)]
    api_registry.answer = (200, json.dumps({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE,
                                            "manifests": junk}).encode())
    with api_registry.client() as client, pytest.raises(SignatureError) as info:
        _signatures.require(client, Reference(api_registry.host, repo_name, "1.0.0"), digest,
                            keys["publisher.pub"])
    assert info.value.reason == "format"
    assert f"and {_signatures.MAX_SIGNATURES - 1} other invalid signatures" in str(info.value)


def test_a_lying_layer_hint_in_the_index_changes_nothing(registry: Any, repo_name: str, tmp_path: Path,
                                                         keys: dict[str, Any]) -> None:
    """The fallback index names where each signature's bundle is, so it is fetched beside the referrer
    manifest. The hint is only that: pointed at a missing blob, or at another (valid) signature's blob, the
    referrer manifest's own layer is what is verified."""
    digest = _push(registry, tmp_path, repo_name, "1.0.0")
    other = _push(registry, tmp_path, repo_name, "other", version="2.0.0")
    ref = _ref(registry, repo_name)
    with registry.client() as client:
        _signatures.attach(client, ref, other, keys["publisher"])
        other_layer = json.loads(client.fetch_manifest(Reference(
            registry.host, repo_name, None, _fallback(client, repo_name, other)["manifests"][0]["digest"])).raw
        )["layers"][0]
        _signatures.attach(client, ref, digest, keys["intruder"])
        index = _fallback(client, repo_name, digest)
        for target in ("sha256:" + "0" * 64, other_layer["digest"]):
            index["manifests"][0]["annotations"]["dev.mcpkit.signature.layer"] = target
            client.put_manifest(repo_name, _referrers.fallback_tag(digest), json.dumps(index).encode(),
                                INDEX_MEDIA_TYPE)
            with pytest.raises(SignatureError, match="signed by another key") as info:
                _signatures.require(client, ref, digest, keys["publisher.pub"])
            assert info.value.reason == "wrong-key"
            assert _signatures.require(client, ref, digest, keys["intruder.pub"]).digest == digest
