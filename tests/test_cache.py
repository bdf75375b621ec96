"""The local bundle cache: installs, lookups, pulls from a real registry, file:// and https://."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hatch_mcpkit.bundle import BundleLayout, build_bundle
from hatch_mcpkit.config import load_config
from hatch_mcpkit.errors import (
    BundleError,
    BundleNotFoundError,
    CacheError,
    ConfigError,
    IntegrityError,
    InvalidReferenceError,
)
from hatch_mcpkit.store import BundleCache, PullOptions
from tests.builders import (
    DEMO_SECRET,
    build_layout,
    bundle_files,
    demo_environ,
    listing,
    make_demo_project,
    snapshot,
)


def assert_no_secret(home: Path) -> None:
    for p in home.rglob("*"):
        if p.is_file():
            assert DEMO_SECRET.encode() not in p.read_bytes(), p


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MCPKIT_TEST_UNSET_DIR", raising=False)
    monkeypatch.setenv("MCPKIT_TEST_TOKEN", DEMO_SECRET)
    h = tmp_path / "mcpkit-home"
    monkeypatch.setenv("MCPKIT_HOME", str(h))
    return h


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_demo_project(tmp_path / "proj")


def push(registry, layout: BundleLayout, repository: str, *tags: str) -> str:  # type: ignore[no-untyped-def]
    with registry.client() as client:
        return str(client.push_layout(layout, repository, list(tags)))


# --------------------------------------------------------------------------- a counting proxy


@dataclass
class CountingProxy:
    """A tiny reverse proxy in front of a registry that records every request path."""

    upstream: str
    requests: list[tuple[str, str]] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    def blob_gets(self) -> list[str]:
        return [p for m, p in self.requests if m == "GET" and "/blobs/" in p]

    def manifest_gets(self) -> list[str]:
        return [p for m, p in self.requests if m == "GET" and "/manifests/" in p]


@contextlib.contextmanager
def run_counting_proxy(upstream: str) -> Iterator[CountingProxy]:
    proxy = CountingProxy(upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _forward(self) -> None:
            proxy.requests.append((self.command, self.path))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = _forward

    proxy.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()


@pytest.fixture
def counting_proxy(registry) -> Iterator[CountingProxy]:  # type: ignore[no-untyped-def]
    """The shared plain registry behind a proxy that counts requests."""
    assert registry.scheme == "http"
    with run_counting_proxy(registry.host) as proxy:
        yield proxy


# --------------------------------------------------------------------------- a static web server


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``(base_url, directory)``: an HTTP server on 127.0.0.1 serving ``directory``."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def make_targz(project: Path, dest: Path, *, prefix: str = "") -> str:
    with tarfile.open(dest, "w:gz") as tar:
        for rel in bundle_files(project):
            tar.add(project / rel, arcname=prefix + rel)
    return hashlib.sha256(dest.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- local installs and lookups


def test_file_pull_installs_lookup_and_remove(home: Path, project: Path) -> None:
    cache = BundleCache()
    assert cache.home == home
    result = cache.pull(f"file://{project / 'module.wasm'}")
    assert result.changed
    entry = result.entry
    assert entry.name == "demo-tool"
    assert entry.path.parent == home / "bundles" / "file" / "demo-tool"
    assert entry.path.name == "sha256-" + entry.digest.split(":")[1]
    for rel, data in bundle_files(project).items():
        assert (entry.path / rel).read_bytes() == data, rel
    meta = json.loads((entry.path / "metadata.json").read_bytes())
    assert meta["reference"] == (project / "module.wasm").as_uri()
    assert meta["name"] == "demo-tool" and meta["version"] == "1.0.0"
    assert meta["tools"] == ["echo", "add"]
    assert [layer["title"] for layer in meta["layers"]] == [
        "module.wasm", "config.yaml", "README.md", "data/a.json", "data/nested/b.txt"]
    # the same content again: nothing changes
    assert not cache.pull(str(project / "module.wasm")).changed
    assert cache.find("demo-tool") == entry.path
    assert cache.find(entry.reference) == entry.path
    assert cache.find(str(project / "module.wasm")) == entry.path
    index = json.loads((home / "bundles" / "registry.json").read_text())
    assert list(index) == ["demo-tool"]
    assert index["demo-tool"][0]["path"] == entry.path.relative_to(home / "bundles").as_posix()
    assert_no_secret(home)

    removed = cache.remove("demo-tool")
    assert [e.reference for e in removed] == [entry.reference]
    assert not entry.path.exists()
    assert cache.entries() == []
    with pytest.raises(BundleNotFoundError, match="mcpkit bundle pull"):
        cache.find("demo-tool")
    assert listing(home / "cache" / "downloads") == []


def test_changed_local_module_replaces_its_entry(home: Path, project: Path) -> None:
    cache = BundleCache()
    first = cache.pull(str(project))  # a directory with module.wasm + config.yaml
    make_demo_project(project, marker=b"v2")
    second = cache.pull(str(project))
    assert second.changed and second.digest != first.digest
    assert not first.path.exists(), "the old content of the same reference is gone"
    assert [e.digest for e in cache.entries()] == [second.digest]


def test_mcpkit_tar_archive_pull_keeps_the_build_digest(home: Path, project: Path, tmp_path: Path) -> None:
    with build_layout(project, tmp_path / "dist", demo_environ()) as layout:
        digest = layout.manifest.digest
        archive = layout.source
    result = BundleCache().pull(str(archive))
    assert result.digest == digest
    assert bundle_files(result.path) == bundle_files(project)


def test_ambiguous_name_lists_candidates_and_name_tag_resolves(home: Path, tmp_path: Path) -> None:
    cache = BundleCache()
    a = cache.pull(str(make_demo_project(tmp_path / "a")))
    b = cache.pull(str(make_demo_project(tmp_path / "b", marker=b"other")))
    with pytest.raises(CacheError, match="matches 2 cached bundles") as err:
        cache.find("demo-tool")
    assert a.entry.reference in str(err.value) and b.entry.reference in str(err.value)
    assert cache.find(b.entry.reference) == b.path
    assert cache.find(f"demo-tool@{a.digest[:20]}") == a.path
    with pytest.raises(CacheError):
        cache.remove("demo-tool")
    assert len(cache.entries()) == 2


def test_index_row_without_directory_is_not_found_with_hint(home: Path, project: Path) -> None:
    import shutil

    cache = BundleCache()
    entry = cache.pull(str(project)).entry
    shutil.rmtree(entry.path)
    with pytest.raises(BundleNotFoundError, match="pull it again"):
        cache.find("demo-tool")


def test_offline_uses_only_the_cache(home: Path) -> None:
    cache = BundleCache()
    with pytest.raises(BundleNotFoundError, match="--offline"):
        cache.pull("oci://127.0.0.1:9/demo/nothing:1", PullOptions(offline=True))


# --------------------------------------------------------------------------- oci://


@pytest.mark.registry
def test_oci_round_trip(home: Path, project: Path, tmp_path: Path, registry, repo_name: str) -> None:  # type: ignore[no-untyped-def]
    with build_layout(project, tmp_path / "dist", demo_environ()) as layout:
        digest = push(registry, layout, repo_name, "v1")
        assert digest == layout.manifest.digest
        layers = [(d.title, d.digest, d.size) for d in layout.manifest.layers]
    cache = BundleCache()
    result = cache.pull(registry.ref(repo_name, "v1"))
    assert result.changed and result.digest == digest
    expected_dir = home / "bundles" / registry.host.replace(":", "_") / repo_name / "v1"
    assert result.path == expected_dir
    assert bundle_files(result.path) == bundle_files(project)
    meta = json.loads((result.path / "metadata.json").read_bytes())
    assert meta["reference"] == f"oci://{registry.host}/{repo_name}:v1"
    assert (meta["registry"], meta["repository"], meta["tag"]) == (registry.host, repo_name, "v1")
    assert meta["digest"] == digest
    assert [(x["title"], x["digest"], x["size"]) for x in meta["layers"]] == layers
    assert meta["tools"] == ["echo", "add"]
    index = json.loads((home / "bundles" / "registry.json").read_text())
    (row,) = index["demo-tool"]
    assert row["reference"] == meta["reference"] and row["digest"] == digest
    assert row["pulled_at"].endswith("Z")
    assert_no_secret(home)
    assert listing(home / "cache" / "downloads") == []

    # by digest: its own entry, named sha256-<hex>
    by_digest = cache.pull(f"{registry.host}/{repo_name}@{digest}")
    assert by_digest.path.name == "sha256-" + digest.split(":")[1]
    assert bundle_files(by_digest.path) == bundle_files(project)
    # both hold the same content, so the name is not ambiguous
    assert cache.find("demo-tool") in (result.path, by_digest.path)
    assert cache.find("demo-tool:v1") == result.path
    # offline finds it
    assert cache.pull(registry.ref(repo_name, "v1"), PullOptions(offline=True)).path == result.path


@pytest.mark.registry
def test_oci_round_trip_with_the_example_crate(home: Path, tmp_path: Path, example_bundle_dir: Path,
                                               registry, repo_name: str) -> None:  # type: ignore[no-untyped-def]
    config = load_config(example_bundle_dir / "config.yaml")
    built = build_bundle(config, example_bundle_dir / "module.wasm", tmp_path / "dist")
    with BundleLayout.open(built.path) as layout:
        push(registry, layout, repo_name, "1.0.0")
    result = BundleCache().pull(registry.ref(repo_name, "1.0.0"))
    assert result.digest == built.digest
    for rel in ("module.wasm", "config.yaml", "README.md"):
        assert (result.path / rel).read_bytes() == (example_bundle_dir / rel).read_bytes()
    assert listing(result.path / "data") == listing(example_bundle_dir / "data")
    meta = json.loads((result.path / "metadata.json").read_bytes())
    try:
        import wasmtime  # noqa: F401
    except ImportError:
        return
    assert result.warnings == ()
    # the store never imports the runtime: `mcpkit pull` precompiles into compiled/ (tests/test_e2e.py)
    assert not (result.path / "module.cwasm").exists() and "precompiled" not in meta


@pytest.mark.registry
def test_repull_of_unchanged_tag_fetches_only_the_manifest(home: Path, project: Path, tmp_path: Path, registry,
                                                          counting_proxy: CountingProxy, repo_name: str) -> None:  # type: ignore[no-untyped-def]
    with build_layout(project, tmp_path / "dist", demo_environ()) as layout:
        push(registry, layout, repo_name, "v1")
        blob_count = len(layout.manifest.blobs)
    ref = f"oci://{counting_proxy.host}/{repo_name}:v1"
    cache = BundleCache()
    first = cache.pull(ref)
    assert first.changed
    assert len(counting_proxy.blob_gets()) == blob_count  # config + every layer, once each
    counting_proxy.requests.clear()
    second = cache.pull(ref)
    assert not second.changed and second.path == first.path
    assert counting_proxy.blob_gets() == []
    assert len(counting_proxy.manifest_gets()) == 1


@pytest.mark.registry
def test_tampered_blob_fails_and_keeps_the_previous_entry(home: Path, tmp_path: Path, registry,
                                                          repo_name: str) -> None:  # type: ignore[no-untyped-def]
    good = make_demo_project(tmp_path / "good")
    with build_layout(good, tmp_path / "dist-good", demo_environ()) as layout:
        push(registry, layout, repo_name, "v1")
    cache = BundleCache()
    before = cache.pull(registry.ref(repo_name, "v1"))
    kept = snapshot(before.path)

    newer = make_demo_project(tmp_path / "newer", marker=b"newer")
    with build_layout(newer, tmp_path / "dist-newer", demo_environ()) as layout:
        push(registry, layout, repo_name, "v1")
        module = layout.manifest.module_layer
    blob = registry.blob_data_path(module.digest)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    blob.write_bytes(bytes(data))

    with pytest.raises(IntegrityError) as err:
        cache.pull(registry.ref(repo_name, "v1"))
    assert module.digest in str(err.value)
    assert snapshot(before.path) == kept, "the previous good copy is untouched"
    assert sorted(p.name for p in before.path.parent.iterdir()) == ["v1"], "no partial entry beside it"
    assert listing(home / "cache" / "downloads") == []
    assert [e.digest for e in cache.entries()] == [before.digest]


@pytest.mark.registry
def test_concurrent_pulls_of_the_same_reference(home: Path, project: Path, tmp_path: Path, registry,
                                                repo_name: str) -> None:  # type: ignore[no-untyped-def]
    with build_layout(project, tmp_path / "dist", demo_environ()) as layout:
        digest = push(registry, layout, repo_name, "v1")
    go = tmp_path / "go"
    code = (
        "import os, sys, time\n"
        "from hatch_mcpkit.store import BundleCache\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.005)\n"
        "r = BundleCache().pull(sys.argv[1])\n"
        "print(r.digest)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, registry.ref(repo_name, "v1")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    time.sleep(0.5)  # let every process import and wait at the start line
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == digest
    cache = BundleCache()
    (entry,) = cache.entries()
    assert entry.digest == digest
    assert bundle_files(entry.path) == bundle_files(project)
    assert json.loads((entry.path / "metadata.json").read_bytes())["digest"] == digest
    assert listing(home / "cache" / "downloads") == []
    assert sorted(p.name for p in entry.path.parent.iterdir()) == ["v1"]


@pytest.mark.registry
def test_layer_digests_must_match_the_bundle_config(home: Path, project: Path, tmp_path: Path, registry,
                                                    repo_name: str) -> None:  # type: ignore[no-untyped-def]
    """A manifest whose config blob lists other layers is refused before anything is installed (the order
    of the list does not matter: test_foreign_bundles.py pulls one whose config blob orders them otherwise)."""
    from hatch_mcpkit.bundle import BUNDLE_CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, Descriptor

    with build_layout(project, tmp_path / "dist", demo_environ()) as layout, registry.client() as client:
        push(registry, layout, repo_name, "v1")
        config = dict(layout.bundle_config)
        config["layerDigests"] = [*reversed(config["layerDigests"][1:]), "sha256:" + hashlib.sha256(b"x").hexdigest()]
        blob = json.dumps(config).encode()
        path = tmp_path / "config.json"
        path.write_bytes(blob)
        desc = Descriptor(BUNDLE_CONFIG_MEDIA_TYPE, "sha256:" + hashlib.sha256(blob).hexdigest(), len(blob))
        client.upload_blob(repo_name, desc, path)
        manifest = json.loads(layout.manifest.raw)
        manifest["config"] = desc.to_json()
        client.put_manifest(repo_name, "bad", json.dumps(manifest).encode(), MANIFEST_MEDIA_TYPE)
    with pytest.raises(BundleError, match="layerDigests"):
        BundleCache().pull(registry.ref(repo_name, "bad"))
    assert BundleCache().entries() == []
    assert listing(home / "cache" / "downloads") == []


# --------------------------------------------------------------------------- https:// (and http on loopback)


def test_https_archive_with_pin(home: Path, project: Path, web: tuple[str, Path]) -> None:
    base, root = web
    good = make_targz(project, root / "bundle.tar.gz", prefix="demo-tool/")
    cache = BundleCache()
    with pytest.raises(IntegrityError, match="pins"):
        cache.pull(f"{base}/bundle.tar.gz#sha256={'0' * 64}")
    assert cache.entries() == [] and listing(home / "cache" / "downloads") == []

    result = cache.pull(f"{base}/bundle.tar.gz#sha256={good}")
    assert result.changed
    assert bundle_files(result.path) == bundle_files(project)
    host = base.split("://")[1].replace(":", "_")
    assert result.path == home / "bundles" / "http" / host / "bundle.tar.gz" / f"sha256-{good}"
    meta = json.loads((result.path / "metadata.json").read_bytes())
    assert meta["archive_sha256"] == good and meta["reference"] == f"{base}/bundle.tar.gz"
    assert cache.find(f"{base}/bundle.tar.gz") == result.path
    assert not cache.pull(f"{base}/bundle.tar.gz").changed


def _evil_archive(path: Path, kind: str) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name in ("module.wasm", "config.yaml"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"\0asm"))
        info = tarfile.TarInfo("../escape.txt" if kind == "dotdot" else "link")
        if kind == "dotdot":
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        else:
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)


@pytest.mark.parametrize("kind", ["dotdot", "symlink"])
def test_https_archive_with_unsafe_members_is_refused(home: Path, web: tuple[str, Path], kind: str) -> None:
    base, root = web
    _evil_archive(root / "evil.tar.gz", kind)
    with pytest.raises(BundleError, match=r"unsafe path|not a regular file"):
        BundleCache().pull(f"{base}/evil.tar.gz")
    assert not (home / "cache" / "escape.txt").exists()
    assert listing(home / "cache" / "downloads") == []
    assert BundleCache().entries() == []


def test_plain_http_is_only_for_loopback(home: Path) -> None:
    with pytest.raises(InvalidReferenceError, match="loopback"):
        BundleCache().pull("http://example.com/bundle.tar.gz")


def test_unset_variables_do_not_block_a_pull_but_bad_config_does(home: Path, project: Path) -> None:
    assert "MCPKIT_TEST_UNSET_DIR" not in os.environ
    config = project / "config.yaml"
    config.write_text(config.read_text().replace("A demo tool", '"A demo tool for ${MCPKIT_TEST_UNSET_DIR}"'))
    result = BundleCache().pull(str(project))  # a folder's config.yaml is data: ${...} is literal text
    assert b"for ${MCPKIT_TEST_UNSET_DIR}" in (result.path / "config.yaml").read_bytes()
    config.write_text(config.read_text().replace("fs:///tmp", "fs://${MCPKIT_TEST_UNSET_DIR}"))
    with pytest.raises(ConfigError, match=r"allow\[0\]\.uri: .*literal text, never expanded"):
        BundleCache().pull(str(project))
    (project / "config.yaml").write_text((project / "config.yaml").read_text().replace("echo", "bad name!"))
    with pytest.raises(ConfigError, match=r"mcp\.tools\[0\]\.name"):
        BundleCache().pull(str(project))
