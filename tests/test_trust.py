"""Pulling with a required signature, and the trust policy, against a real registry.

distribution has no referrers API, so signatures are found through the ``sha256-<hex>``
fallback index. Every refusal is checked to leave MCPKIT_HOME byte for byte as it was (an
older copy of the same tag is cached first, so "as it was" is not just "empty"), and the
attacks are made in the registry itself: a tag moved in the middle of a pull, a signature blob
changed on the registry's disk, a signature dropped from the index, another key's signature.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hatch_mcpkit import _referrers, _signatures, signing, trust
from hatch_mcpkit.bundle import INDEX_MEDIA_TYPE
from hatch_mcpkit.errors import ConfigError, SignatureError
from hatch_mcpkit.reference import Reference, parse_reference
from hatch_mcpkit.store import BundleCache, PullOptions
from tests.builders import make_project, push_project, snapshot

pytestmark = pytest.mark.registry


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Key pairs on disk: PREFIX.key / PREFIX.pub for the publisher, a rotated key and an intruder."""
    folder = tmp_path / "keys"
    folder.mkdir()
    for who in ("publisher", "rotated", "intruder"):
        signing.generate_key(folder / who, environ={})
    return {who: folder / who for who in ("publisher", "rotated", "intruder")}


@pytest.fixture(autouse=True)
def _outside_any_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No pyproject.toml above the working directory unless a test writes one."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MCPKIT_KEY_PASSWORD", raising=False)


def _push(registry: Any, tmp_path: Path, repository: str, tag: str, version: str) -> str:
    project = make_project(tmp_path / f"project-{version}", version=version)
    return str(push_project(registry, project, tmp_path / f"out-{version}", repository, tag).digest)


def _sign(registry: Any, repository: str, digest: str, key: Path) -> None:
    with registry.client() as client:
        _signatures.attach(client, Reference(registry.host, repository, None, digest), digest,
                           signing.load_private_key(key.with_suffix(".key"), environ={}))


def _mcpkit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from hatch_mcpkit.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _pub(key: Path) -> str:
    return str(key.with_suffix(".pub"))


def _key_id(key: Path) -> str:
    return signing.key_id(signing.load_public_key(key.with_suffix(".pub")))


@pytest.fixture
def published(registry: Any, repo_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """Version 1.0.0 pulled (unsigned, no policy) into a home; then the tag moved to 2.0.0, not yet signed."""
    home = tmp_path / "home"
    old = _push(registry, tmp_path, repo_name, "stable", "1.0.0")
    ref = registry.ref(repo_name, "stable")
    code, _, err = _mcpkit(capsys, "--home", str(home), "bundle", "pull", ref)
    assert code == 0, err
    new = _push(registry, tmp_path, repo_name, "stable", "2.0.0")
    return {"home": home, "ref": ref, "old": old, "new": new, "before": snapshot(home)}


def _refused(capsys: pytest.CaptureFixture[str], published: dict[str, Any], *extra: str) -> str:
    code, out, err = _mcpkit(capsys, "--home", str(published["home"]), "bundle", "pull", published["ref"], *extra)
    assert code == 1, (out, err)
    assert snapshot(published["home"]) == published["before"]  # not one byte of the cache changed
    return err


# --- pull --key ------------------------------------------------------------------------------------

def test_pull_with_key_installs_the_verified_digest_and_records_the_signer(
    registry: Any, repo_name: str, published: dict[str, Any], keys: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _sign(registry, repo_name, published["new"], keys["publisher"])
    code, out, err = _mcpkit(capsys, "--home", str(published["home"]), "bundle", "pull", published["ref"],
                             "--key", _pub(keys["publisher"]))
    assert code == 0, err
    assert f"signed:  key {_key_id(keys['publisher'])} (verified " in out
    entry = BundleCache(published["home"]).find_entry(published["ref"])
    meta = entry.metadata()
    assert entry.digest == meta["digest"] == published["new"]
    record = meta["signature"]
    assert record["digest"] == published["new"] and record["verified_at"].endswith("Z")
    assert record["signers"] == [{"kind": "key", "key_id": _key_id(keys["publisher"]), "digest": published["new"],
                                  "required_by": "--key"}]

    code, out, err = _mcpkit(capsys, "--home", str(published["home"]), "bundle", "inspect", published["ref"],
                             "--offline")
    assert code == 0, err
    assert f"Signed:      key {_key_id(keys['publisher'])} (verified {record['verified_at']})" in out
    code, out, err = _mcpkit(capsys, "--home", str(published["home"]), "bundle", "list", "--json")
    assert code == 0, err
    assert [row["signature"] for row in json.loads(out)] == [record]


def test_pull_with_key_of_an_unsigned_bundle_is_refused(
    published: dict[str, Any], keys: dict[str, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    err = _refused(capsys, published, "--key", _pub(keys["publisher"]))
    assert f"@{published['new']} is not signed: no Sigstore bundle refers to it" in err


def test_pull_of_a_bundle_signed_by_another_key_is_refused(
    registry: Any, repo_name: str, published: dict[str, Any], keys: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _sign(registry, repo_name, published["new"], keys["intruder"])
    err = _refused(capsys, published, "--key", _pub(keys["publisher"]))
    assert f"signed by another key (key id {_key_id(keys['intruder'])})" in err


def test_pull_with_the_signature_blob_changed_in_the_registry_is_refused(
    registry: Any, repo_name: str, published: dict[str, Any], keys: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _sign(registry, repo_name, published["new"], keys["publisher"])
    with registry.client() as client:
        index = json.loads(client.fetch_manifest(
            Reference(registry.host, repo_name, _referrers.fallback_tag(published["new"]))).raw)
        referrer = json.loads(client.fetch_manifest(
            Reference(registry.host, repo_name, None, index["manifests"][0]["digest"])).raw)
    blob = registry.blob_data_path(referrer["layers"][0]["digest"])
    changed = bytearray(blob.read_bytes())
    changed[-3] ^= 0x01
    blob.write_bytes(bytes(changed))
    err = _refused(capsys, published, "--key", _pub(keys["publisher"]))
    assert "cannot be read" in err and "does not match its digest" in err


def test_pull_of_a_bundle_whose_signed_statement_was_swapped_is_refused(
    registry: Any, repo_name: str, published: dict[str, Any], keys: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A signature re-pushed with another statement but the old signature bytes: tampered."""
    key = signing.load_private_key(keys["publisher"].with_suffix(".key"), environ={})
    bundle = json.loads(signing.sign_digest(published["old"], key))
    bundle["dsseEnvelope"]["payload"] = json.loads(signing.sign_digest(published["new"], key))["dsseEnvelope"][
        "payload"]
    _attach_raw(registry, repo_name, published["new"], json.dumps(bundle).encode())
    err = _refused(capsys, published, "--key", _pub(keys["publisher"]))
    assert "does not match the signed statement: tampered" in err


def test_pull_of_a_bundle_carrying_another_digests_signature_is_refused(
    registry: Any, repo_name: str, published: dict[str, Any], keys: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The publisher's real signature of 1.0.0 attached to 2.0.0."""
    key = signing.load_private_key(keys["publisher"].with_suffix(".key"), environ={})
    _attach_raw(registry, repo_name, published["new"], signing.sign_digest(published["old"], key))
    err = _refused(capsys, published, "--key", _pub(keys["publisher"]))
    assert "a valid signature, but over another manifest digest" in err


def test_pull_after_the_signature_was_dropped_is_refused(
    registry: Any, repo_name: str, published: dict[str, Any], keys: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _sign(registry, repo_name, published["new"], keys["publisher"])
    empty = json.dumps({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}).encode()
    with registry.client() as client:  # whoever can push empties the fallback index
        client.put_manifest(repo_name, _referrers.fallback_tag(published["new"]), empty, INDEX_MEDIA_TYPE)
    err = _refused(capsys, published, "--key", _pub(keys["publisher"]))
    assert "is not signed" in err


def _attach_raw(registry: Any, repository: str, digest: str, bundle: bytes) -> None:
    from hatch_mcpkit.bundle import MANIFEST_MEDIA_TYPE, Descriptor

    with registry.client() as client:
        raw = client.fetch_manifest(Reference(registry.host, repository, None, digest)).raw
        referrer = _referrers.referrer_manifest(Descriptor(MANIFEST_MEDIA_TYPE, digest, len(raw)), bundle,
                                                predicate_type=signing.PREDICATE_TYPE, created="2026-01-01T00:00:00Z")
        client.push_referrer(repository, referrer)


def test_key_on_a_local_bundle_is_a_usage_error_never_a_silent_pass(
    tmp_path: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    """--key must verify or fail: a folder, a path, or the bare name of a cached local entry is refused."""
    home = str(tmp_path / "home")
    folder = make_project(tmp_path / "local", version="1.0.0")
    code, _, err = _mcpkit(capsys, "--home", home, "bundle", "pull", str(folder), "--key", _pub(keys["publisher"]))
    assert code == 2 and "--key verifies bundles from a registry" in err
    code, _, err = _mcpkit(capsys, "--home", home, "bundle", "pull", str(folder))
    assert code == 0, err
    for argv in (("bundle", "pull", "fault-tool"), ("run", "fault-tool"), ("run", str(folder))):
        code, _, err = _mcpkit(capsys, "--home", home, *argv, "--key", _pub(keys["publisher"]))
        assert code == 2 and "--key verifies bundles from a registry" in err, (argv, err)


# --- the digest verified is the digest installed ---------------------------------------------------

def _pull_with_hook(home: Path, ref: str, requirement: trust.Requirement,
                    hook: Callable[[Any], None]) -> tuple[Any, list[Any]]:
    """A store pull whose verification first runs ``hook(client)``; returns the result and the client."""
    clients: list[Any] = []
    real = trust.verifier(lambda _ref: requirement, lambda _msg: None)

    def verify(client: Any, reference: Reference, digest: str) -> dict[str, Any] | None:
        clients.append(client)
        hook(client)
        return real(client, reference, digest)

    return BundleCache(home).pull(ref, PullOptions(verify=verify)), clients


def test_tag_moved_to_another_signed_bundle_during_the_pull_installs_what_was_verified(
    registry: Any, repo_name: str, tmp_path: Path, keys: dict[str, Path],
) -> None:
    """hyper-mcp's race: the tag is re-pointed after it was resolved. The pull verifies and installs the
    digest it resolved -- never what the tag names by the time the layers are fetched."""
    signed = _push(registry, tmp_path, repo_name, "stable", "1.0.0")
    _sign(registry, repo_name, signed, keys["publisher"])
    other = make_project(tmp_path / "other", version="6.6.6", seed=b"evil")
    moved: list[str] = []

    def move_tag(_client: Any) -> None:  # between resolve and pull: a second push to the same tag
        moved.append(str(push_project(registry, other, tmp_path / "out-other", repo_name, "stable").digest))
        _sign(registry, repo_name, moved[0], keys["intruder"])

    requirement = trust.Requirement((trust.KeySet((keys["publisher"].with_suffix(".pub"),), "--key"),), "off", "")
    result, _ = _pull_with_hook(tmp_path / "home", registry.ref(repo_name, "stable"), requirement, move_tag)
    assert moved and moved[0] != signed
    with registry.client() as client:
        assert client.resolve(parse_reference(registry.ref(repo_name, "stable"))) == moved[0]
    assert result.digest == signed and result.entry.metadata()["version"] == "1.0.0"
    assert (result.path / "module.wasm").read_bytes() == (tmp_path / "project-1.0.0" / "module.wasm").read_bytes()
    assert result.entry.metadata()["signature"]["signers"][0]["key_id"] == _key_id(keys["publisher"])


def test_refusal_comes_before_any_layer_is_downloaded(
    registry: Any, repo_name: str, tmp_path: Path, keys: dict[str, Path],
) -> None:
    _push(registry, tmp_path, repo_name, "stable", "1.0.0")
    with registry.client() as client:
        manifest = client.get_manifest(parse_reference(registry.ref(repo_name, "stable")))
    home = tmp_path / "home"
    requirement = trust.Requirement((trust.KeySet((keys["publisher"].with_suffix(".pub"),), "--key"),), "off", "")
    seen: list[Any] = []
    with pytest.raises(SignatureError, match="is not signed"):
        _pull_with_hook(home, registry.ref(repo_name, "stable"), requirement, seen.append)
    # the pull's own client read the manifest, looked for signatures and (side by side with that) at most
    # the small config blob -- not one layer
    stats = seen[0].stats
    assert stats.requests >= 2 and stats.blobs_downloaded <= 1
    assert stats.bytes_downloaded in (0, manifest.config.size)
    assert not (home / "bundles").exists()


# --- the trust policy ------------------------------------------------------------------------------

def _policy(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "trust.yaml"
    path.write_text(text)
    return path


def test_policy_rule_requires_its_key_without_key_option(
    registry: Any, repo_name: str, published: dict[str, Any], keys: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _policy(published["home"], f"rules:\n  - match: '{registry.host}/test/*'\n    keys: [{_pub(keys['publisher'])}]\n")
    published["before"] = snapshot(published["home"])
    _sign(registry, repo_name, published["new"], keys["intruder"])
    err = _refused(capsys, published)
    assert "signed by another key" in err and "trust.yaml:2: rules[0]" in err

    _sign(registry, repo_name, published["new"], keys["publisher"])
    code, _, err = _mcpkit(capsys, "--home", str(published["home"]), "bundle", "pull", published["ref"])
    assert code == 0, err
    signers = BundleCache(published["home"]).find_entry(published["ref"]).metadata()["signature"]["signers"]
    assert [s["key_id"] for s in signers] == [_key_id(keys["publisher"])]
    assert "trust.yaml:2: rules[0]" in signers[0]["required_by"]


def test_a_policy_key_file_that_is_missing_is_named_with_its_rule(
    registry: Any, repo_name: str, published: dict[str, Any], capsys: pytest.CaptureFixture[str],
) -> None:
    _policy(published["home"], "rules:\n  - match: '**'\n    keys: [gone.pub]\n")
    published["before"] = snapshot(published["home"])
    err = _refused(capsys, published)
    assert "trust.yaml:2: rules[0] (**): public key" in err and "gone.pub does not exist" in err
    code, _, err = _mcpkit(capsys, "--home", str(published["home"]), "run", "fault-tool", "--offline")
    assert code == 1 and "gone.pub does not exist" in err


def test_policy_during_a_key_rotation_accepts_either_key(
    registry: Any, repo_name: str, tmp_path: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "home"
    _policy(home, f"default: enforce\nrules:\n  - match: '**'\n    keys: [{_pub(keys['publisher'])}, "
                  f"{_pub(keys['rotated'])}]\n")
    old_key = _push(registry, tmp_path, repo_name, "a", "1.0.0")
    new_key = _push(registry, tmp_path, repo_name, "b", "2.0.0")
    _sign(registry, repo_name, old_key, keys["publisher"])
    _sign(registry, repo_name, new_key, keys["rotated"])
    for tag, key in (("a", "publisher"), ("b", "rotated")):
        code, _, err = _mcpkit(capsys, "--home", str(home), "bundle", "pull", registry.ref(repo_name, tag))
        assert code == 0, err
        meta = BundleCache(home).find_entry(registry.ref(repo_name, tag)).metadata()
        assert meta["signature"]["signers"][0]["key_id"] == _key_id(keys[key])


def test_policy_default_enforce_refuses_what_no_rule_names(
    published: dict[str, Any], capsys: pytest.CaptureFixture[str],
) -> None:
    _policy(published["home"], "default: enforce\nrules:\n  - match: 'ghcr.io/myorg/*'\n    keys: [k.pub]\n")
    published["before"] = snapshot(published["home"])
    err = _refused(capsys, published)
    assert "the trust policy requires a signature" in err and "trust.yaml: default = enforce" in err
    assert "--key PREFIX.pub" in err


def test_policy_default_warn_pulls_and_says_so(
    published: dict[str, Any], capsys: pytest.CaptureFixture[str],
) -> None:
    _policy(published["home"], "default: warn\n")
    code, _, err = _mcpkit(capsys, "--home", str(published["home"]), "bundle", "pull", published["ref"])
    assert code == 0, err
    assert "warning:" in err and "is not verified" in err
    assert "signature" not in BundleCache(published["home"]).find_entry(published["ref"]).metadata()


def test_run_refuses_a_cached_entry_the_policy_now_requires_signed(
    registry: Any, published: dict[str, Any], keys: dict[str, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    """1.0.0 was pulled unsigned before the policy existed: run/server refuse it, without fetching."""
    _policy(published["home"], f"rules:\n  - match: '**'\n    keys: [{_pub(keys['publisher'])}]\n")
    code, _, err = _mcpkit(capsys, "--home", str(published["home"]), "run", "fault-tool", "--offline")
    assert code == 1
    assert "was installed without a verified signature" in err and "trust.yaml:2: rules[0]" in err
    assert f"re-pull it with the key: mcpkit bundle pull {published['ref']}" in err
    code, _, err = _mcpkit(capsys, "--home", str(published["home"]), "server", "--from-bundle", "fault-tool")
    assert code == 1 and "was installed without a verified signature" in err
    code, _, err = _mcpkit(capsys, "--home", str(published["home"]), "bundle", "pull", "fault-tool", "--offline")
    assert code == 1 and "was installed without a verified signature" in err
    # an entry whose metadata.json cannot be read is not taken as verified either
    entry = BundleCache(published["home"]).find_entry("fault-tool")
    (entry.path / "metadata.json").write_text("{broken")
    code, _, err = _mcpkit(capsys, "--home", str(published["home"]), "run", "fault-tool", "--offline")
    assert code == 1 and "metadata.json cannot be read" in err


def test_run_with_key_refuses_an_entry_verified_with_another_key(
    registry: Any, repo_name: str, published: dict[str, Any], keys: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _sign(registry, repo_name, published["new"], keys["intruder"])
    code, _, err = _mcpkit(capsys, "--home", str(published["home"]), "bundle", "pull", published["ref"],
                           "--key", _pub(keys["intruder"]))
    assert code == 0, err
    code, _, err = _mcpkit(capsys, "--home", str(published["home"]), "run", published["ref"], "--offline",
                           "--key", _pub(keys["publisher"]))
    assert code == 1
    assert f"was verified with another key (key id {_key_id(keys['intruder'])})" in err
    # the entry verified with the key now required passes the check (served elsewhere; here offline pull)
    code, _, err = _mcpkit(capsys, "--home", str(published["home"]), "bundle", "pull", published["ref"],
                           "--offline", "--key", _pub(keys["intruder"]))
    assert code == 0, err


def test_a_project_policy_cannot_loosen_the_users_own(
    registry: Any, repo_name: str, published: dict[str, Any], keys: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A cloned project says `default = "off"` and trusts its own key for everything: the user's rule still
    applies, so a bundle signed only by the project's key is refused."""
    _policy(published["home"], f"rules:\n  - match: '**'\n    keys: [{_pub(keys['publisher'])}]\n")
    published["before"] = snapshot(published["home"])
    (Path.cwd() / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.mcpkit.trust]\ndefault = "off"\n\n'
        f'[[tool.mcpkit.trust.rules]]\nmatch = "**"\nkeys = ["{_pub(keys["intruder"])}"]\n')
    _sign(registry, repo_name, published["new"], keys["intruder"])
    err = _refused(capsys, published)
    assert "signed by another key" in err and "trust.yaml:2: rules[0]" in err
    # signed by both: both files are satisfied
    _sign(registry, repo_name, published["new"], keys["publisher"])
    code, _, err = _mcpkit(capsys, "--home", str(published["home"]), "bundle", "pull", published["ref"])
    assert code == 0, err
    signers = BundleCache(published["home"]).find_entry(published["ref"]).metadata()["signature"]["signers"]
    assert {s["key_id"] for s in signers} == {_key_id(keys["publisher"]), _key_id(keys["intruder"])}
    assert any("pyproject.toml:7: tool.mcpkit.trust.rules[0]" in s["required_by"] for s in signers)


# --- policy files are data, checked with key paths and lines ---------------------------------------

def test_trust_yaml_errors_name_the_key_path_and_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _policy(home, "default: strict\nrules:\n  - match: 'ghcr.io/x/*'\n    keys: []\n    mode: warn\n")
    with pytest.raises(ConfigError) as info:
        trust.TrustPolicy.load(home, tmp_path)
    text = str(info.value)
    assert "trust.yaml:1: default: 'strict' is not one of: 'enforce', 'warn', 'off'" in text
    assert "trust.yaml:4: rules[0].keys: must have at least 1 item(s)" in text
    assert "trust.yaml:5: rules[0].mode: unknown key (expected one of: match, keys)" in text


def test_pyproject_trust_table_errors_name_the_key_path(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.mcpkit.trust]\ndefault = "off"\n\n[[tool.mcpkit.trust.rules]]\nmatch = "x/*"\nkey = "a.pub"\n')
    with pytest.raises(ConfigError) as info:
        trust.TrustPolicy.load(tmp_path / "home", tmp_path)
    text = str(info.value)
    assert "pyproject.toml:4: tool.mcpkit.trust.rules[0]: missing required key 'keys'" in text
    assert "tool.mcpkit.trust.rules[0].key: unknown key (did you mean 'keys'?)" in text


def test_patterns_match_registry_and_repository(tmp_path: Path) -> None:
    _policy(tmp_path / "home", "rules:\n  - match: 'oci://ghcr.io/myorg/*'\n    keys: [k.pub]\n"
                               "  - match: 'ghcr.io/**'\n    keys: [/abs/o.pub]\n")
    policy = trust.TrustPolicy.load(tmp_path / "home", tmp_path)

    def keys_for(text: str) -> list[Path]:
        needed = policy.requirement(parse_reference(text))
        return [k for s in needed.key_sets for k in s.keys]

    assert keys_for("ghcr.io/myorg/weather:1") == [tmp_path / "home" / "k.pub"]
    assert keys_for("ghcr.io/myorg/team/weather:1") == [Path("/abs/o.pub")]
    assert keys_for("docker.io/myorg/weather:1") == []
    # the same registry written another way is still the rule's: no walking around it by spelling
    assert keys_for("GHCR.IO/myorg/weather:1") == keys_for("ghcr.io:443/myorg/weather:1") == [tmp_path / "home" / "k.pub"]
    _policy(tmp_path / "hub", "rules:\n  - match: 'index.docker.io/myorg/*'\n    keys: [k.pub]\n")
    hub = trust.TrustPolicy.load(tmp_path / "hub", tmp_path)
    for text in ("myorg/weather:1", "docker.io/myorg/weather:1", "registry-1.docker.io/myorg/weather:1"):
        assert [k for s in hub.requirement(parse_reference(text)).key_sets for k in s.keys] == [
            tmp_path / "hub" / "k.pub"], text
    assert policy.requirement(parse_reference("docker.io/x/y:1")).mode == "off"


# --- signing on publish ----------------------------------------------------------------------------

_CHECKOUT = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # hatch loads this checkout's plugin

@pytest.mark.hatch
def test_hatch_publish_with_sign_key_signs_every_pushed_tags_digest(
    run_hatch: Any, example_copy: Path, registry: Any, repo_name: str, tmp_path: Path, keys: dict[str, Path],
) -> None:
    """`sign-key` in [tool.hatch.publish.mcpkit] (relative to the project): the real `hatch publish` pushes and
    signs; what every tag names then verifies with the public key, and a pull with --key installs it."""
    from tests.builders import build_archive

    dist = example_copy / "dist"
    dist.mkdir()
    built = build_archive(make_project(tmp_path / "publish-me", version="1.0.0"), tmp_path / "built")
    (dist / built.path.name).write_bytes(built.path.read_bytes())
    (example_copy / "release.key").write_bytes(keys["publisher"].with_suffix(".key").read_bytes())
    pyproject = example_copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(
        "[tool.hatch.publish.mcpkit]\n", '[tool.hatch.publish.mcpkit]\nsign-key = "release.key"\n'))
    target = f"{registry.host}/{repo_name}"
    published = run_hatch(["publish", "-p", "mcpkit", "-o", f"registry=oci://{target}"], example_copy, env=_CHECKOUT)
    assert published.returncode == 0, published.stdout
    digest = built.digest
    assert f"signed {digest}" in published.stdout
    public = signing.load_public_key(keys["publisher"].with_suffix(".pub"))
    with registry.client() as client:
        for tag in ("latest", "v1.0.0"):  # the example's distribution.tags
            ref = Reference(registry.host, repo_name, tag)
            assert client.resolve(ref) == digest
            assert _signatures.require(client, ref, digest, public).key_id == _key_id(keys["publisher"])


@pytest.mark.hatch
def test_hatch_publish_with_a_wrong_key_password_pushes_nothing(
    run_hatch: Any, example_copy: Path, registry: Any, repo_name: str, tmp_path: Path,
) -> None:
    from tests.builders import build_archive

    signing.generate_key(example_copy / "locked", environ={"MCPKIT_KEY_PASSWORD": "right"})
    (example_copy / "dist").mkdir()
    built = build_archive(make_project(tmp_path / "publish-me", version="1.0.0"), tmp_path / "built")
    (example_copy / "dist" / built.path.name).write_bytes(built.path.read_bytes())
    published = run_hatch(["publish", "-p", "mcpkit", "-o", f"registry=oci://{registry.host}/{repo_name}",
                           "-o", "sign-key=locked.key"], example_copy,
                          env={**_CHECKOUT, "MCPKIT_KEY_PASSWORD": "wrong"})
    assert published.returncode != 0 and "wrong password for private key" in published.stdout
    assert "right" not in published.stdout
    with registry.client() as client, pytest.raises(Exception, match="not found"):
        client.list_tags(repo_name)


def test_push_with_sign_key_signs_the_pushed_digest(
    registry: Any, repo_name: str, tmp_path: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    project = make_project(tmp_path / "p", version="3.0.0")
    target = registry.ref(repo_name, "3.0.0")
    code, out, err = _mcpkit(capsys, "bundle", "push", "--config", str(project / "config.yaml"), "--to", target,
                             "--sign-key", str(keys["publisher"].with_suffix(".key")))
    assert code == 0, err
    digest = out.split("digest: ", 1)[1].split()[0]
    assert f"signed {digest} (signature oci://{registry.host}/{repo_name}@sha256:" in out
    code, out, err = _mcpkit(capsys, "bundle", "verify", target, "--key", _pub(keys["publisher"]))
    assert code == 0, err


def test_the_policies_in_docs_load(tmp_path: Path) -> None:
    """Every trust.yaml and [tool.mcpkit.trust] example in docs/signing.md passes the schema."""
    import re
    import textwrap

    text = (Path(__file__).resolve().parents[1] / "docs" / "signing.md").read_text()
    blocks = re.findall(r"```(yaml|toml)\n(.*?)```", text, flags=re.S)
    yaml_blocks = [body for kind, body in blocks if kind == "yaml" and "rules:" in body]
    toml_blocks = [body for kind, body in blocks if kind == "toml" and "[tool.mcpkit.trust]" in body]
    assert len(yaml_blocks) >= 2 and toml_blocks
    for n, body in enumerate(yaml_blocks):
        home = tmp_path / f"home-{n}"
        _policy(home, textwrap.dedent(body))  # the rotation example is indented in a list
        assert trust.TrustPolicy.load(home, tmp_path).layers[0].rules
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(toml_blocks[0])
    assert trust.TrustPolicy.load(tmp_path / "none", project).layers[0].default == "warn"
