"""Signing keys and Sigstore bundles over a manifest digest, with real keys.

Every refusal is checked for its ``reason`` and for a message that says which failure it
is. Hostile bundles are built here by hand (the test's own DSSE encoding), so a bug shared
by our signer and our verifier cannot hide; one test hands our bundle to sigstore-js, an
independent Sigstore implementation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from hatch_mcpkit import signing
from hatch_mcpkit.errors import IntegrityError, SignatureError
from tests._support import need

DIGEST = "sha256:" + hashlib.sha256(b"a bundle manifest").hexdigest()
OTHER_DIGEST = "sha256:" + hashlib.sha256(b"another bundle manifest").hexdigest()
NO_PASSWORD: dict[str, str] = {}
SIGSTORE_JS = Path(__file__).parent / "fixtures" / "sigstore-verify"


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey]:
    key_path, pub_path = signing.generate_key(tmp_path / "publisher", environ=NO_PASSWORD)
    return signing.load_private_key(key_path, environ=NO_PASSWORD), signing.load_public_key(pub_path)


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 PAE, written out here from the DSSE spec (independent of the code under test)."""
    return b"DSSEv1 " + b" ".join(
        [str(len(payload_type)).encode(), payload_type.encode(), str(len(payload)).encode(), payload]
    )


def _statement(digest: str, *, predicate: str = signing.PREDICATE_TYPE, subjects: int = 1) -> bytes:
    subject = {"name": "x", "digest": {"sha256": digest.split(":", 1)[1]}}
    return json.dumps({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [subject] * subjects,
        "predicateType": predicate,
        "predicate": {},
    }).encode()


def _bundle(
    payload: bytes,
    key: ec.EllipticCurvePrivateKey,
    *,
    payload_type: str = "application/vnd.in-toto+json",
    hint: str | None = None,
    signatures: int = 1,
) -> dict[str, Any]:
    """A Sigstore bundle v0.3 JSON document built by hand, signed with ``key``."""
    sig = key.sign(_pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
    public_key = {} if hint == "" else {"hint": hint if hint is not None else signing.key_id(key.public_key())}
    return {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": public_key},  # as protobuf JSON: no empty tlogEntries
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": payload_type,
            "signatures": [{"sig": base64.b64encode(sig).decode()}] * signatures,
        },
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _refused(bundle: bytes | dict[str, Any], pub: ec.EllipticCurvePublicKey, reason: str,
             digest: str = DIGEST) -> SignatureError:
    raw = json.dumps(bundle).encode() if isinstance(bundle, dict) else bundle
    with pytest.raises(SignatureError) as info:
        signing.verify(raw, digest, pub, where="oci://reg/tool@sig")
    assert info.value.reason == reason, str(info.value)
    assert str(info.value).startswith("oci://reg/tool@sig: "), str(info.value)
    return info.value


# --- keys -------------------------------------------------------------------------------------

def test_generate_writes_pkcs8_private_key_0600_and_spki_public_key(tmp_path: Path) -> None:
    old = os.umask(0)  # even with the loosest umask the private key is never readable by others
    try:
        key_path, pub_path = signing.generate_key(tmp_path / "release", environ=NO_PASSWORD)
    finally:
        os.umask(old)
    assert (key_path.name, pub_path.name) == ("release.key", "release.pub")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert pub_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")  # SPKI
    private = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP256R1)
    assert not list(tmp_path.glob(".*")), "no temporary files left behind"


def test_generate_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    signing.generate_key(tmp_path / "k", environ=NO_PASSWORD)
    before = (tmp_path / "k.key").read_bytes()
    (tmp_path / "k.pub").unlink()  # even half a pair is never overwritten
    with pytest.raises(SignatureError, match=r"k\.key already exists; refusing to overwrite"):
        signing.generate_key(tmp_path / "k", environ=NO_PASSWORD)
    assert (tmp_path / "k.key").read_bytes() == before
    assert not (tmp_path / "k.pub").exists()


def test_generate_into_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match=r"folder .*nope does not exist"):
        signing.generate_key(tmp_path / "nope" / "k", environ=NO_PASSWORD)


def test_encrypted_key_needs_its_password(tmp_path: Path) -> None:
    env = {"MCPKIT_KEY_PASSWORD": "correct horse battery"}
    key_path, pub_path = signing.generate_key(tmp_path / "k", environ=env)
    text = key_path.read_bytes()
    assert text.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert b"correct horse" not in text

    with pytest.raises(SignatureError, match=r"k\.key is encrypted and no password was given") as missing:
        signing.load_private_key(key_path, environ=NO_PASSWORD)
    assert missing.value.reason == "key" and "MCPKIT_KEY_PASSWORD" in str(missing.value)

    with pytest.raises(SignatureError, match=r"wrong password for private key .*k\.key") as wrong:
        signing.load_private_key(key_path, environ={"MCPKIT_KEY_PASSWORD": "incorrect horse"})
    assert "incorrect horse" not in str(wrong.value) and "correct horse" not in str(wrong.value)

    key = signing.load_private_key(key_path, environ=env)
    signer = signing.verify(signing.sign_digest(DIGEST, key), DIGEST, signing.load_public_key(pub_path))
    assert signer.digest == DIGEST


def test_unencrypted_key_loads_while_a_password_is_set(tmp_path: Path) -> None:
    key_path, _ = signing.generate_key(tmp_path / "k", environ=NO_PASSWORD)
    signing.load_private_key(key_path, environ={"MCPKIT_KEY_PASSWORD": "for another key"})


def test_password_comes_from_the_environment_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPKIT_KEY_PASSWORD", "from env")
    key_path, _ = signing.generate_key(tmp_path / "k")
    assert key_path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    signing.load_private_key(key_path)
    monkeypatch.delenv("MCPKIT_KEY_PASSWORD")
    with pytest.raises(SignatureError, match="encrypted and no password"):
        signing.load_private_key(key_path)


@pytest.mark.parametrize("kind", ["rsa", "p384", "ed25519"])
def test_keys_of_another_type_are_refused(tmp_path: Path, kind: str) -> None:
    private: Any = {
        "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
    }[kind]()
    key_path, pub_path = tmp_path / "x.key", tmp_path / "x.pub"
    key_path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    pub_path.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(SignatureError, match=r"x\.key is not an ECDSA P-256 key"):
        signing.load_private_key(key_path, environ=NO_PASSWORD)
    with pytest.raises(SignatureError, match=r"x\.pub is not an ECDSA P-256 key"):
        signing.load_public_key(pub_path)


def test_missing_and_garbage_key_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match=r"public key .*none\.pub does not exist") as info:
        signing.load_public_key(tmp_path / "none.pub")
    assert "mcpkit key generate" in str(info.value)
    (tmp_path / "junk.key").write_bytes(b"not a key")
    with pytest.raises(SignatureError, match=r"junk\.key is not a PKCS#8 PEM private key"):
        signing.load_private_key(tmp_path / "junk.key", environ=NO_PASSWORD)
    (tmp_path / "huge.pub").write_bytes(b"A" * (1 << 20))
    with pytest.raises(SignatureError, match="larger than"):
        signing.load_public_key(tmp_path / "huge.pub")


# --- the bundle format ------------------------------------------------------------------------

def test_bundle_is_what_cosign_v3_writes(keypair: tuple[ec.EllipticCurvePrivateKey, Any]) -> None:
    key, pub = keypair
    bundle = json.loads(signing.sign_digest(DIGEST, key, name="ghcr.io/org/tool"))
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert bundle["verificationMaterial"]["publicKey"] == {
        "hint": base64.b64encode(hashlib.sha256(der).digest()).decode()
    }
    envelope = bundle["dsseEnvelope"]
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    payload = base64.b64decode(envelope["payload"])
    assert json.loads(payload) == {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "ghcr.io/org/tool", "digest": {"sha256": DIGEST.split(":")[1]}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {},
    }
    [signature] = envelope["signatures"]
    pub.verify(base64.b64decode(signature["sig"]), _pae(envelope["payloadType"], payload),
               ec.ECDSA(hashes.SHA256()))  # the test's own PAE: raises if the encoding differs


def test_round_trip_names_the_signer(keypair: tuple[ec.EllipticCurvePrivateKey, Any]) -> None:
    key, pub = keypair
    signer = signing.verify(signing.sign_digest(DIGEST, key), DIGEST, pub)
    assert signer == signing.Signer(key_id=signing.key_id(pub), digest=DIGEST)
    assert signer.as_dict() == {"kind": "key", "key_id": signing.key_id(pub), "digest": DIGEST}


def test_bundle_written_as_protobuf_json_by_another_tool_verifies(
    keypair: tuple[ec.EllipticCurvePrivateKey, Any],
) -> None:
    """cosign omits empty fields (no tlogEntries without a log); such a bundle is read."""
    key, pub = keypair
    assert signing.verify(json.dumps(_bundle(_statement(DIGEST), key)).encode(), DIGEST, pub).digest == DIGEST


def test_bundle_with_a_transparency_log_entry_verifies_by_key(
    keypair: tuple[ec.EllipticCurvePrivateKey, Any],
) -> None:
    """What cosign writes when it also uploaded to Rekor: the log entry and timestamps are read, not checked."""
    key, pub = keypair
    bundle = _bundle(_statement(DIGEST), key)
    bundle["verificationMaterial"]["tlogEntries"] = [{
        "logIndex": "123456789",
        "logId": {"keyId": _b64(b"\x01" * 32)},
        "kindVersion": {"kind": "dsse", "version": "0.0.1"},
        "integratedTime": "1764200000",
        "inclusionPromise": {"signedEntryTimestamp": _b64(b"set")},
        "inclusionProof": {
            "logIndex": "1000", "rootHash": _b64(b"\x02" * 32), "treeSize": "2000",
            "hashes": [_b64(b"\x03" * 32)], "checkpoint": {"envelope": "rekor.sigstore.dev - 1\n2000\nroot\n"},
        },
        "canonicalizedBody": _b64(b'{"apiVersion":"0.0.1","kind":"dsse"}'),
    }]
    bundle["verificationMaterial"]["timestampVerificationData"] = {"rfc3161Timestamps": [{"signedTimestamp": _b64(b"ts")}]}
    assert signing.verify(json.dumps(bundle).encode(), DIGEST, pub).key_id == signing.key_id(pub)


@pytest.mark.parametrize("digest", ["sha256:ABC", "sha512:" + "a" * 128, "sha256:" + "A" * 64, ""])
def test_only_sha256_digests_are_signed_or_verified(keypair: tuple[Any, Any], digest: str) -> None:
    key, pub = keypair
    with pytest.raises(IntegrityError, match="unsupported manifest digest"):
        signing.sign_digest(digest, key)
    with pytest.raises(IntegrityError, match="unsupported manifest digest"):
        signing.verify(signing.sign_digest(DIGEST, key), digest, pub)


# --- attacks: each one refused with its own reason --------------------------------------------

def test_tampered_payload_is_refused(keypair: tuple[ec.EllipticCurvePrivateKey, Any]) -> None:
    """The attacker keeps a valid signature and swaps the statement for one naming their digest."""
    key, pub = keypair
    bundle = json.loads(signing.sign_digest(OTHER_DIGEST, key))
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(_statement(DIGEST)).decode()
    error = _refused(bundle, pub, "tampered")
    assert "does not match the signed statement: tampered" in str(error)


def test_tampered_signature_is_refused(keypair: tuple[ec.EllipticCurvePrivateKey, Any]) -> None:
    key, pub = keypair
    bundle = json.loads(signing.sign_digest(DIGEST, key))
    sig = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 0x01
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    _refused(bundle, pub, "tampered")


def test_swapped_payload_type_breaks_the_signature(keypair: tuple[ec.EllipticCurvePrivateKey, Any]) -> None:
    """The payload type is inside the PAE: relabelling the payload invalidates the signature."""
    key, pub = keypair
    bundle = json.loads(signing.sign_digest(DIGEST, key))
    bundle["dsseEnvelope"]["payloadType"] = "application/json"
    _refused(bundle, pub, "tampered")


def test_signature_by_another_key_is_refused(tmp_path: Path, keypair: tuple[Any, Any]) -> None:
    _, pub = keypair
    other_key, _ = signing.generate_key(tmp_path / "intruder", environ=NO_PASSWORD)
    intruder = signing.load_private_key(other_key, environ=NO_PASSWORD)
    error = _refused(signing.sign_digest(DIGEST, intruder), pub, "wrong-key")
    assert f"signed by another key (key id {signing.key_id(intruder.public_key())})" in str(error)
    assert f"not by key {signing.key_id(pub)}" in str(error)


def test_another_key_claiming_our_key_id_is_still_refused(keypair: tuple[Any, Any]) -> None:
    """The hint is unauthenticated: forging it only changes the message, never the outcome."""
    _, pub = keypair
    intruder = ec.generate_private_key(ec.SECP256R1())
    _refused(_bundle(_statement(DIGEST), intruder, hint=signing.key_id(pub)), pub, "tampered")
    _refused(_bundle(_statement(DIGEST), intruder, hint=""), pub, "wrong-key")


def test_valid_signature_over_another_digest_is_refused(keypair: tuple[ec.EllipticCurvePrivateKey, Any]) -> None:
    """A tag re-pointed at another bundle we signed: its signature is valid, but not for this digest."""
    key, pub = keypair
    error = _refused(signing.sign_digest(OTHER_DIGEST, key), pub, "digest")
    assert f"over another manifest digest ({OTHER_DIGEST}), not {DIGEST}" in str(error)


def test_prefix_or_case_variant_of_the_digest_is_refused(keypair: tuple[ec.EllipticCurvePrivateKey, Any]) -> None:
    key, pub = keypair
    for variant in (DIGEST.split(":")[1][:32], DIGEST.split(":")[1].upper(), DIGEST.split(":")[1] + "00"):
        payload = json.dumps({"_type": "https://in-toto.io/Statement/v1", "predicateType": signing.PREDICATE_TYPE,
                              "subject": [{"digest": {"sha256": variant}}], "predicate": {}}).encode()
        _refused(_bundle(payload, key), pub, "digest")


def test_attestation_by_the_same_key_is_not_a_signature(keypair: tuple[ec.EllipticCurvePrivateKey, Any]) -> None:
    """An SBOM or provenance attestation over the digest does not count as signing the bundle."""
    key, pub = keypair
    error = _refused(_bundle(_statement(DIGEST, predicate="https://cyclonedx.org/bom"), key), pub, "statement")
    assert "predicateType is 'https://cyclonedx.org/bom', not a cosign signature" in str(error)


def test_signed_payload_that_is_not_an_in_toto_statement_is_refused(
    keypair: tuple[ec.EllipticCurvePrivateKey, Any],
) -> None:
    key, pub = keypair
    _refused(_bundle(_statement(DIGEST), key, payload_type="application/json"), pub, "statement")
    wrong_type = json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "subject": [],
                             "predicateType": signing.PREDICATE_TYPE}).encode()
    _refused(_bundle(wrong_type, key), pub, "statement")
    _refused(_bundle(b"[" * 100_000, key), pub, "statement")  # depth bound, not a RecursionError
    _refused(_bundle(_statement(DIGEST, subjects=2), key), pub, "statement")


def test_envelope_with_several_signatures_is_refused(keypair: tuple[ec.EllipticCurvePrivateKey, Any]) -> None:
    key, pub = keypair
    _refused(_bundle(_statement(DIGEST), key, signatures=2), pub, "format")


def test_keyless_bundle_is_refused_clearly(keypair: tuple[ec.EllipticCurvePrivateKey, Any]) -> None:
    key, pub = keypair
    bundle = _bundle(_statement(DIGEST), key)
    bundle["verificationMaterial"] = {"certificate": {"rawBytes": base64.b64encode(b"DER").decode()}}
    error = _refused(bundle, pub, "wrong-key")
    assert "signed keyless" in str(error)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "not a Sigstore bundle v0.3"),
        (b'{"mediaType": "application/vnd.oci.image.manifest.v1+json"}', "not a Sigstore bundle v0.3"),
        (b"[" * 100_000 + b"]" * 100_000, "nested more than"),
        (b'{"a": "' + b"x" * (300 * 1024) + b'"}', "byte limit"),
        (b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}', "malformed Sigstore bundle"),
        (b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json\\u001b[2J"}', "\\x1b"),
    ],
    ids=["empty", "not-utf8", "list", "oci-manifest", "deep", "huge", "no-content", "escape-in-media-type"],
)
def test_not_a_sigstore_bundle(keypair: tuple[Any, Any], raw: bytes, message: str) -> None:
    _, pub = keypair
    error = _refused(raw, pub, "format")
    assert message in str(error)
    assert "\x1b" not in str(error)


def test_message_signature_bundle_is_refused(keypair: tuple[ec.EllipticCurvePrivateKey, Any]) -> None:
    key, pub = keypair
    bundle = _bundle(_statement(DIGEST), key)
    del bundle["dsseEnvelope"]
    bundle["messageSignature"] = {"signature": base64.b64encode(b"sig").decode()}
    assert "message signature, not a DSSE envelope" in str(_refused(bundle, pub, "format"))


# --- an independent implementation --------------------------------------------------------------

def _sigstore_js(bundle: Path, pub: Path, digest: str) -> dict[str, Any]:
    result = subprocess.run(
        ["node", str(SIGSTORE_JS / "verify.js"), str(bundle), str(pub), digest],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.stderr == "", result.stderr
    outcome: dict[str, Any] = json.loads(result.stdout)
    assert (result.returncode == 0) == outcome["ok"], result
    return outcome


def test_sigstore_js_verifies_our_bundle(tmp_path: Path) -> None:
    """sigstore-js (@sigstore/verify, not our code) accepts our bundle for our key and digest only."""
    need(shutil.which("node"), "node (Debian: nodejs)")
    need((SIGSTORE_JS / "node_modules" / "@sigstore" / "verify").is_dir(),
         "@sigstore/verify: npm ci --prefix tests/fixtures/sigstore-verify")
    key_path, pub_path = signing.generate_key(tmp_path / "k", environ=NO_PASSWORD)
    _, other_pub = signing.generate_key(tmp_path / "other", environ=NO_PASSWORD)
    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(signing.sign_digest(DIGEST, signing.load_private_key(key_path, environ=NO_PASSWORD)))

    accepted = _sigstore_js(bundle, pub_path, DIGEST)
    assert accepted == {"ok": True, "keyId": signing.key_id(signing.load_public_key(pub_path)),
                        "signerKeyMatches": True}
    assert "subject" in _sigstore_js(bundle, pub_path, OTHER_DIGEST)["error"]
    assert "PUBLIC_KEY_ERROR" in _sigstore_js(bundle, other_pub, DIGEST)["error"]
    tampered = json.loads(bundle.read_bytes())
    tampered["dsseEnvelope"]["payload"] = base64.b64encode(_statement(OTHER_DIGEST)).decode()
    bundle.write_text(json.dumps(tampered))
    assert "SIGNATURE_ERROR" in _sigstore_js(bundle, pub_path, OTHER_DIGEST)["error"]


# --- the command line ----------------------------------------------------------------------------

def test_cli_key_generate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from hatch_mcpkit.cli import main

    monkeypatch.delenv("MCPKIT_KEY_PASSWORD", raising=False)
    assert main(["key", "generate", str(tmp_path / "plain")]) == 0
    out, err = capsys.readouterr()
    pub = signing.load_public_key(tmp_path / "plain.pub")
    assert f"key id:      {signing.key_id(pub)}" in out
    assert "plain.key is not encrypted; set MCPKIT_KEY_PASSWORD" in err

    monkeypatch.setenv("MCPKIT_KEY_PASSWORD", "s3cret-pass")
    assert main(["key", "generate", str(tmp_path / "locked")]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "s3cret-pass" not in out
    assert (tmp_path / "locked.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE((tmp_path / "locked.key").stat().st_mode) == 0o600

    assert main(["key", "generate", str(tmp_path / "locked")]) == 1
    assert "locked.key already exists; refusing to overwrite a key" in capsys.readouterr().err
