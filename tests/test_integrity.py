"""Integrity: whatever a registry or a web server sends, only verified content is installed.

Every test keeps a previous good entry (or an empty cache) and checks afterwards that it is
byte-for-byte untouched, that no partial entry or download is left, and that nothing was
written outside MCPKIT_HOME.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from hatch_mcpkit.bundle import MANIFEST_MEDIA_TYPE, TITLE_ANNOTATION
from hatch_mcpkit.errors import BundleError, IntegrityError, McpkitError, RegistryError
from hatch_mcpkit.store import BundleCache
from tests.builders import TINY_WASM, check_cache_consistent, listing, make_project, push_project, snapshot
from tests.faultproxy import Fault, FaultProxy

# stands for an absolute path inside the test's own tmp_path (never a shared one like /tmp/x)
ABS_PLACEHOLDER = "@ABSOLUTE-PATH@"

pytestmark = pytest.mark.registry


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "sandbox" / "home"
    monkeypatch.setenv("MCPKIT_HOME", str(h))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    for key in ("MCPKIT_REGISTRY_USERNAME", "MCPKIT_REGISTRY_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    return h


def outside_files(tmp_path: Path, home: Path) -> list[str]:
    """Files under tmp_path/sandbox that are not inside MCPKIT_HOME (nothing may appear there)."""
    root = tmp_path / "sandbox"
    return [p for p in listing(root) if not (root / p).resolve().is_relative_to(home.resolve())
            and p != "home"]


@pytest.fixture
def good_and_new(tmp_path: Path, registry: Any, fault_proxy: FaultProxy, repo_name: str,
                 home: Path) -> Iterator[dict[str, Any]]:
    """v1 pulled through the proxy (the previous good entry), then v2 pushed to the same tag."""
    old = push_project(registry, make_project(tmp_path / "old", version="1.0.0"), tmp_path / "d1", repo_name, "v1")
    ref = fault_proxy.ref(repo_name, "v1")
    first = BundleCache().pull(ref)
    assert first.digest == old.digest
    new = push_project(registry, make_project(tmp_path / "new", version="2.0.0", size=200_000), tmp_path / "d2",
                       repo_name, "v1")
    fault_proxy.clear()
    yield {"ref": ref, "entry": first.path, "before": snapshot(first.path), "old": old, "new": new,
           "index": (home / "bundles" / "registry.json").read_bytes()}


def assert_untouched(state: dict[str, Any], home: Path) -> None:
    assert snapshot(state["entry"]) == state["before"], "the previous good entry changed"
    assert sorted(p.name for p in state["entry"].parent.iterdir()) == [state["entry"].name], "a partial entry"
    assert (home / "bundles" / "registry.json").read_bytes() == state["index"]
    assert listing(home / "cache" / "downloads") == []
    check_cache_consistent(home)


# --------------------------------------------------------------------------- blobs in transit


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (Fault("flip", method="GET", path="/blobs/", times=None), IntegrityError, "does not match its digest"),
        (Fault("lie_length", method="GET", path="/blobs/", times=None, delta=64), IntegrityError,
         "but the manifest says"),
        (Fault("lie_length", method="GET", path="/blobs/", times=None, delta=-64), IntegrityError,
         "but the manifest says"),
        (Fault("truncate", method="GET", path="/blobs/", times=None, size=1000), RegistryError, "broke off"),
    ],
    ids=["flipped-byte", "content-length-too-long", "content-length-too-short", "truncated"],
)
def test_damaged_blob_in_transit_is_refused(good_and_new: dict[str, Any], fault_proxy: FaultProxy, home: Path,
                                            tmp_path: Path, fault: Fault, error: type[McpkitError],
                                            message: str) -> None:
    state = good_and_new
    module = state["new"].module_layer
    fault.path = f"/blobs/{module.digest}"
    fault_proxy.add(fault)
    with pytest.raises(error, match=message) as info:
        BundleCache().pull(state["ref"])
    assert module.digest in str(info.value)
    assert fault.hits >= 1
    assert_untouched(state, home)
    assert outside_files(tmp_path, home) == []
    # the fault goes away: the next pull installs the new version, verified
    fault_proxy.faults.clear()
    result = BundleCache().pull(state["ref"])
    assert result.changed and result.digest == state["new"].digest
    check_cache_consistent(home)


def test_flipped_config_blob_is_refused(good_and_new: dict[str, Any], fault_proxy: FaultProxy, home: Path) -> None:
    state = good_and_new
    config = state["new"].config
    fault_proxy.add(Fault("flip", method="GET", path=f"/blobs/{config.digest}", times=None, offset=3))
    with pytest.raises(IntegrityError, match=config.digest):
        BundleCache().pull(state["ref"])
    assert_untouched(state, home)


def test_blob_of_the_right_size_but_other_content_is_refused(good_and_new: dict[str, Any], fault_proxy: FaultProxy,
                                                             home: Path) -> None:
    """A registry swaps a layer for other bytes of exactly the same length."""
    state = good_and_new
    layer = state["new"].layers[1]  # config.yaml
    fault_proxy.add(Fault("replace", method="GET", path=f"/blobs/{layer.digest}", times=None,
                          body=b"#" * layer.size))
    with pytest.raises(IntegrityError, match="does not match its digest"):
        BundleCache().pull(state["ref"])
    assert_untouched(state, home)


# --------------------------------------------------------------------------- manifests


def test_pull_by_digest_refuses_a_different_manifest(tmp_path: Path, registry: Any, fault_proxy: FaultProxy,
                                                     repo_name: str, home: Path) -> None:
    a = push_project(registry, make_project(tmp_path / "a", version="1.0.0"), tmp_path / "da", repo_name, "a")
    b = push_project(registry, make_project(tmp_path / "b", version="2.0.0"), tmp_path / "db", repo_name, "b")
    # the registry answers the pinned digest with b's manifest, and even claims it is a's digest
    fault_proxy.add(Fault("replace", method="GET", path=f"/manifests/{a.digest}", times=None, body=b.raw,
                          headers={"Docker-Content-Digest": a.digest}))
    with pytest.raises(IntegrityError, match="pinned digest") as info:
        BundleCache().pull(f"oci://{fault_proxy.host}/{repo_name}@{a.digest}")
    assert info.value.digest == a.digest
    assert not (home / "bundles" / "registry.json").exists()
    assert listing(home / "bundles") in ([], ), listing(home / "bundles")
    assert listing(home / "cache" / "downloads") == []


def test_tag_manifest_that_disagrees_with_its_digest_header_is_refused(tmp_path: Path, registry: Any,
                                                                       fault_proxy: FaultProxy, repo_name: str,
                                                                       home: Path) -> None:
    a = push_project(registry, make_project(tmp_path / "a", version="1.0.0"), tmp_path / "da", repo_name, "v1")
    tampered = json.loads(a.raw)
    tampered["annotations"]["org.opencontainers.image.description"] = "tampered"
    fault_proxy.add(Fault("replace", method="GET", path="/manifests/v1", times=None,
                          body=json.dumps(tampered).encode()))
    with pytest.raises(IntegrityError, match=r"registry .* says"):
        BundleCache().pull(fault_proxy.ref(repo_name, "v1"))
    assert not (home / "bundles" / "registry.json").exists()


def _put_raw_manifest(registry: Any, repository: str, tag: str, manifest: dict[str, Any]) -> str:
    raw = json.dumps(manifest).encode()
    resp = requests.put(f"{registry.url}/v2/{repository}/manifests/{tag}", data=raw,
                        headers={"Content-Type": MANIFEST_MEDIA_TYPE}, timeout=10)
    assert resp.status_code == 201, resp.text
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def test_manifest_with_wrong_layer_size_is_refused(tmp_path: Path, registry: Any, repo_name: str,
                                                   home: Path) -> None:
    m = push_project(registry, make_project(tmp_path / "a"), tmp_path / "da", repo_name, "v1")
    manifest = json.loads(m.raw)
    manifest["layers"][0]["size"] += 1
    _put_raw_manifest(registry, repo_name, "wrong-size", manifest)
    with pytest.raises(IntegrityError, match=m.module_layer.digest):
        BundleCache().pull(registry.ref(repo_name, "wrong-size"))
    assert not (home / "bundles" / "registry.json").exists()
    assert listing(home / "cache" / "downloads") == []


@pytest.mark.parametrize(
    "title",
    ["../../x", ABS_PLACEHOLDER, "data/../../x", "..", "./README.md", "a//b", "metadata.json",
     "module.cwasm", ".mcpkit/evil", "c:\\x", "MODULE.WASM"],
)
def test_layer_title_cannot_escape_or_overwrite(tmp_path: Path, registry: Any, repo_name: str, home: Path,
                                                title: str) -> None:
    """A manifest pushed raw with a hostile title for its extra layer is refused before anything is written."""
    m = push_project(registry, make_project(tmp_path / "a"), tmp_path / "da", repo_name, "v1")
    manifest = json.loads(m.raw)
    assert manifest["layers"][2]["annotations"][TITLE_ANNOTATION] == "README.md"
    escape = tmp_path / "outside" / "escape-abs"  # an absolute path of this test's own
    manifest["layers"][2]["annotations"][TITLE_ANNOTATION] = title.replace(ABS_PLACEHOLDER, str(escape))
    _put_raw_manifest(registry, repo_name, "evil", manifest)
    with pytest.raises(BundleError, match="title"):
        BundleCache().pull(registry.ref(repo_name, "evil"))
    assert not escape.exists()
    assert outside_files(tmp_path, home) == []
    assert not (tmp_path / "x").exists() and not (home.parent / "x").exists()
    assert not (home / "bundles" / "registry.json").exists()
    assert [p for p in listing(home / "bundles") if p.endswith((".wasm", ".md", "x"))] == []
    assert listing(home / "cache" / "downloads") == []


# --------------------------------------------------------------------------- https archives


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def _archive(path: Path, evil: list[tarfile.TarInfo], data: bytes = b"x") -> None:
    config = make_project(path.parent / "src").joinpath("config.yaml").read_bytes()
    with tarfile.open(path, "w:gz") as tar:
        for name, content in (("module.wasm", TINY_WASM), ("config.yaml", config)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info in evil:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    "members",
    [
        [_member(ABS_PLACEHOLDER)],
        [_member("a/../../../escape")],
        [_member("hard", tarfile.LNKTYPE, "/etc/passwd")],
        [_member("hard", tarfile.LNKTYPE, "module.wasm")],
        [_member("data", tarfile.SYMTYPE, ".."), _member("data/escape")],
        [_member("fifo", tarfile.FIFOTYPE)],
        [_member("dev", tarfile.CHRTYPE)],
        [_member("README.md"), _member("README.md")],
    ],
    ids=["absolute", "dotdot-deep", "hardlink-out", "hardlink-in", "symlink-dir-then-file", "fifo", "device",
         "duplicate"],
)
def test_https_archive_with_unsafe_members_is_refused(home: Path, tmp_path: Path, web: tuple[str, Path],
                                                      members: list[tarfile.TarInfo]) -> None:
    base, root = web
    escape = tmp_path / "outside" / "escape-abs"  # an absolute path of this test's own
    members = [copy.copy(m) for m in members]
    for info in members:
        if info.name == ABS_PLACEHOLDER:
            info.name = str(escape)
    _archive(root / "evil.tar.gz", members)
    with pytest.raises(BundleError, match=r"unsafe path|not a regular file|twice"):
        BundleCache().pull(f"{base}/evil.tar.gz")
    assert not escape.exists()
    assert outside_files(tmp_path, home) == []
    assert not (home / "cache" / "escape").exists() and not (home / "escape").exists()
    assert listing(home / "cache" / "downloads") == []
    assert BundleCache().entries() == []


def test_https_archive_with_too_many_members_is_refused(home: Path, web: tuple[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import hatch_mcpkit._archive as archive_module

    monkeypatch.setattr(archive_module, "DEFAULT_MAX_MEMBERS", 50)
    base, root = web
    _archive(root / "many.tar.gz", [_member(f"f{i}") for i in range(60)])
    with pytest.raises(BundleError, match="more than 50 entries"):
        BundleCache().pull(f"{base}/many.tar.gz")
    assert listing(home / "cache" / "downloads") == []


def test_https_archive_over_the_size_cap_is_refused(home: Path, web: tuple[str, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPKIT_MAX_BUNDLE_SIZE", "100000")
    base, root = web
    # highly compressible: a few hundred bytes on the wire, 1 MB unpacked
    _archive(root / "bomb.tar.gz", [_member("bomb", size=1_000_000)], data=b"\0" * 1_000_000)
    assert (root / "bomb.tar.gz").stat().st_size < 10_000
    with pytest.raises(BundleError, match="unpacks to more than"):
        BundleCache().pull(f"{base}/bomb.tar.gz")
    assert listing(home / "cache" / "downloads") == []
