"""publish.push_archive: the one push path (hatch publisher and `mcpkit bundle push`)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from hatch_mcpkit.bundle import BundleLayout
from hatch_mcpkit.config import load_config
from hatch_mcpkit.errors import BundleError, ConfigError
from hatch_mcpkit.publish import find_archives, push_archive
from hatch_mcpkit.reference import parse_reference
from hatch_mcpkit.registry import RegistryClient

from .builders import build_archive, config_yaml, make_project, tiny_module
from .faultproxy import FaultProxy, Record
from .hostile_server import Server, needs_basic, servers_fixture
from .plugins.registry import RunningRegistry

servers = servers_fixture

pytestmark = pytest.mark.registry


@pytest.fixture(autouse=True)
def _own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pushes record where blobs went (MCPKIT_HOME/cache/pushed.json): never in the real home."""
    monkeypatch.setenv("MCPKIT_HOME", str(tmp_path / "mcpkit-home"))

def make_archive(tmp_path: Path, registry: str) -> Path:
    config = config_yaml("notes-tool", "0.3.0", description=None, tools=("note",),
                         storage=['{uri: "fs://${NOTES_DIR}", guest: /notes, access: [read, write]}'],
                         registry=registry, tags=("latest", "0.3"), auth=("${PUSH_USER}", "${PUSH_TOKEN}"))
    make_project(tmp_path, config=config, module=tiny_module())
    return build_archive(tmp_path, tmp_path / "dist", {"NOTES_DIR": "/srv/notes"}, epoch=None).path


def test_push_uses_distribution_and_expands_auth_only_now(
    tmp_path: Path, auth_registry: RunningRegistry, repo_name: str
) -> None:
    archive = make_archive(tmp_path, f"{auth_registry.host}/{repo_name}")
    env = {
        "PUSH_USER": "testuser",
        "PUSH_TOKEN": "testpass",
    }  # NOTES_DIR is a consumer's variable: unset here
    # the publisher's own config.yaml, read with the environment it was built in; the push itself
    # needs only the auth variables
    own = load_config(tmp_path / "config.yaml", {**env, "NOTES_DIR": "/srv/notes"})
    result = push_archive(archive, environ=env, ca_file=None, publisher_config=own)
    assert result.tags == ("latest", "0.3")
    assert result.references[0] == f"{auth_registry.host}/{repo_name}:latest"
    with auth_registry.client() as client:
        assert sorted(client.list_tags(repo_name)) == ["0.3", "latest"]
    again = push_archive(archive, environ=env, publisher_config=own)
    assert again.digest == result.digest


def test_push_names_the_missing_secret_variable(
    tmp_path: Path, auth_registry: RunningRegistry, repo_name: str
) -> None:
    archive = make_archive(tmp_path, f"{auth_registry.host}/{repo_name}")
    own = load_config(tmp_path / "config.yaml", {"NOTES_DIR": "/srv/notes"})
    with pytest.raises(ConfigError) as info:
        push_archive(archive, environ={"PUSH_USER": "testuser"}, publisher_config=own)
    assert "PUSH_TOKEN is not set" in str(info.value)


def test_explicit_target_and_tags_win(tmp_path: Path, registry: RunningRegistry, repo_name: str) -> None:
    archive = make_archive(tmp_path, "ghcr.io/nobody/elsewhere")
    result = push_archive(archive, target=f"oci://{registry.host}/{repo_name}:edge", environ={})
    assert result.tags == ("edge",)
    with pytest.raises(BundleError, match="push to a tag, not a digest"):
        push_archive(archive, target=f"{registry.host}/{repo_name}@{result.digest}", environ={})


def test_find_archives(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="run `hatch build"):
        find_archives([], tmp_path)
    archive = make_archive(tmp_path, "ghcr.io/a/b")
    assert find_archives([], tmp_path) == [archive]
    assert find_archives([str(archive)], tmp_path) == [archive]


# --------------------------------------------------------------------------- someone else's archive

FOREIGN_SECRET = "AKIA-consumer-s3cret-0123456789"


def foreign_archive(tmp_path: Path, registry: str) -> Path:
    """An archive built elsewhere whose config.yaml names a registry and `auth` from *our* environment."""
    config = config_yaml("foreign-tool", "6.6.6", registry=registry, tags=("latest",),
                         auth=("x", "${SOME_SECRET}"))
    make_project(tmp_path / "theirs", config=config, module=tiny_module())
    return build_archive(tmp_path / "theirs", tmp_path / "theirs" / "dist", {"SOME_SECRET": "theirs"}).path


def _push_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCPKIT_", "DOCKER_CONFIG"))}
    env.update(MCPKIT_HOME=str(tmp_path / "home"), DOCKER_CONFIG=str(tmp_path / "no-docker"),
               SOME_SECRET=FOREIGN_SECRET)
    proc = subprocess.run([sys.executable, "-m", "hatch_mcpkit", "bundle", "push", *args], env=env,
                          capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert FOREIGN_SECRET not in proc.stdout + proc.stderr
    return proc


def test_pushing_a_foreign_archive_never_sends_our_secret_to_its_registry(
    tmp_path: Path, servers: Callable[..., Server], registry: RunningRegistry, repo_name: str
) -> None:
    """`mcpkit bundle push foreign.mcpkit.tar`: its distribution.auth `${SOME_SECRET}` is never expanded from
    our environment, its registry is never contacted without an explicit target, and with one the
    archive's auth is not used either."""
    theirs = servers(needs_basic)  # a registry that asks for credentials: would it get ours?
    archive = foreign_archive(tmp_path, f"{theirs.host}/org/foreign-tool")
    encoded = base64.b64encode(f"x:{FOREIGN_SECRET}".encode()).decode()

    refused = _push_cli(tmp_path, str(archive))
    assert refused.returncode != 0
    assert "--to oci://" in refused.stderr and "never used" in refused.stderr
    assert theirs.seen == [], "the archive's registry was not contacted"

    aimed = _push_cli(tmp_path, str(archive), "--to", f"oci://{theirs.host}/org/foreign-tool:1")
    assert aimed.returncode != 0  # it wants credentials we did not give it
    assert theirs.seen and all(encoded not in (s.authorization or "") for s in theirs.seen)
    assert theirs.credentials_seen() == []

    with pytest.raises(BundleError, match="never used"):
        push_archive(archive, environ={"SOME_SECRET": FOREIGN_SECRET})
    # an explicit target of our own works, with our credentials only
    pushed = _push_cli(tmp_path, str(archive), "--to", f"oci://{registry.host}/{repo_name}:mine")
    assert pushed.returncode == 0, pushed.stderr
    with registry.client() as client:
        assert client.list_tags(repo_name) == ["mine"]


# --------------------------------------------------------------------------- cross-repository mounts


def _uploads(proxy: FaultProxy) -> list[str]:
    """Blob uploads that carried bytes (a PUT or PATCH on an upload session)."""
    return [f"{r.method} {r.path}" for r in proxy.records
            if r.method in ("PUT", "PATCH") and "/blobs/uploads/" in r.path]


def _mounts(proxy: FaultProxy) -> list[Record]:
    return [r for r in proxy.records if r.method == "POST" and "mount=" in r.path]


def test_a_second_repository_mounts_the_blobs_instead_of_uploading_them(
    tmp_path: Path, fault_proxy: FaultProxy, repo_name: str
) -> None:
    """Push to repository a, then the same bundle to b on the same registry: every blob is mounted from a
    (201 from the real registry), not one byte of a blob is uploaded again, and b pulls and verifies."""
    archive = make_archive(tmp_path, "ghcr.io/nobody/elsewhere")
    with BundleLayout.open(archive) as layout:
        blobs = layout.manifest.blobs
    home = tmp_path / "pusher"
    a = push_archive(archive, target=f"oci://{fault_proxy.host}/{repo_name}/a:1", environ={}, home=home)
    assert len(_uploads(fault_proxy)) == len(blobs) and _mounts(fault_proxy) == []
    assert (a.uploaded, a.mounted, a.present) == (len(blobs), 0, 0)

    fault_proxy.clear()
    b = push_archive(archive, target=f"oci://{fault_proxy.host}/{repo_name}/b:1", environ={}, home=home)
    assert b.digest == a.digest
    assert (b.uploaded, b.mounted, b.present) == (0, len(blobs), 0)
    assert _uploads(fault_proxy) == [], "a blob the registry holds in a was uploaded again"
    mounts = _mounts(fault_proxy)
    assert sorted(parse_qs(urlsplit(r.path).query)["mount"][0] for r in mounts) == sorted(d.digest for d in blobs)
    assert {parse_qs(urlsplit(r.path).query)["from"][0] for r in mounts} == {f"{repo_name}/a"}
    assert {r.status for r in mounts} == {201}

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCPKIT_", "DOCKER_CONFIG"))}
    env.update(MCPKIT_HOME=str(tmp_path / "puller"), DOCKER_CONFIG=str(tmp_path / "no-docker"))
    pulled = subprocess.run([sys.executable, "-m", "hatch_mcpkit", "pull", f"oci://{fault_proxy.host}/{repo_name}/b:1"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    assert a.digest in pulled.stdout + pulled.stderr

    # what a machine pulled is a source too: the puller's store knows b holds these blobs
    fault_proxy.clear()
    push_archive(archive, target=f"oci://{fault_proxy.host}/{repo_name}/c:1", environ={},
                 home=tmp_path / "puller")
    assert _uploads(fault_proxy) == []
    assert {parse_qs(urlsplit(r.path).query)["from"][0] for r in _mounts(fault_proxy)} == {f"{repo_name}/b"}


def test_a_wrong_mount_hint_costs_an_upload_not_the_push(tmp_path: Path, fault_proxy: FaultProxy,
                                                          repo_name: str) -> None:
    """pushed.json is only a hint: a source that does not hold the blob (the registry answers 202) continues as an
    ordinary upload on the session the registry opened; names that are not repositories are never sent."""
    archive = make_archive(tmp_path, "ghcr.io/nobody/elsewhere")
    with BundleLayout.open(archive) as layout:
        blobs = layout.manifest.blobs
    home = tmp_path / "pusher"
    record = {"registries": {fault_proxy.host: {d.digest: ["x/../../v2?mount=evil", f"{repo_name}/never-pushed"]
                                                 for d in blobs}}}
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "pushed.json").write_text(json.dumps(record))
    result = push_archive(archive, target=f"oci://{fault_proxy.host}/{repo_name}/b:1", environ={}, home=home)
    mounts = _mounts(fault_proxy)
    assert {parse_qs(urlsplit(r.path).query)["from"][0] for r in mounts} == {f"{repo_name}/never-pushed"}
    assert {r.status for r in mounts} == {202}
    assert len(_uploads(fault_proxy)) == len(blobs)
    with RegistryClient(fault_proxy.host) as client:
        assert client.resolve(parse_reference(f"{fault_proxy.host}/{repo_name}/b:1")) == result.digest
    # and the record now says where the blobs really are, newest first, without the bad name
    kept = json.loads((home / "cache" / "pushed.json").read_text())["registries"][fault_proxy.host]
    assert {tuple(v) for v in kept.values()} == {(f"{repo_name}/b", f"{repo_name}/never-pushed")}


def test_the_push_record_is_bounded_and_kept_per_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cache/pushed.json keeps the newest digests only, a few repositories each, newest first; a registry's
    record is never a source for another registry."""
    from hatch_mcpkit import _mounts
    from hatch_mcpkit.store import BundleCache

    monkeypatch.setattr(_mounts, "MAX_DIGESTS", 5)
    cache = BundleCache(tmp_path / "home")
    digests = [f"sha256:{i:064x}" for i in range(8)]
    _mounts.remember(cache, "other.example", "org/x", digests[:2])
    for n, repo in enumerate(["org/a", "org/b", "org/c", "org/d", "org/e"]):
        _mounts.remember(cache, "r.example", repo, digests[2 + n % 2: 8])
    kept = json.loads(cache.pushed_path.read_text())["registries"]
    assert list(kept) == ["r.example"], "the oldest rows went first"
    assert list(kept["r.example"]) == digests[3:8]
    assert kept["r.example"][digests[7]] == ["org/e", "org/d", "org/c", "org/b"]

    with BundleLayout.open(make_archive(tmp_path / "proj", "ghcr.io/a/b")) as layout:
        blobs = layout.manifest.blobs
        _mounts.remember(cache, "r.example", "org/a", [d.digest for d in blobs])
        assert _mounts.sources(cache, "r.example", "org/new", layout.manifest) == {d.digest: "org/a" for d in blobs}
        assert _mounts.sources(cache, "r.example", "org/a", layout.manifest) == {}, "never the target itself"
        assert _mounts.sources(cache, "elsewhere.example", "org/new", layout.manifest) == {}
        cache.pushed_path.write_text("{not json")
        assert _mounts.sources(cache, "r.example", "org/new", layout.manifest) == {}, "a broken record is no hint"
