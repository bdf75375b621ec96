"""References: OCI grammar, Docker Hub rules, digests, cache paths, classification."""

from __future__ import annotations

from pathlib import Path

import pytest

from hatch_mcpkit.errors import InvalidReferenceError
from hatch_mcpkit.reference import (
    FileRef,
    HttpsRef,
    NameRef,
    OciRef,
    Reference,
    classify,
    is_loopback,
    looks_local,
    parse_reference,
    parse_repository,
    use_plain_http,
)

HEX = "0123456789abcdef" * 4

GOOD = [
    # text, registry, api_host, repository, tag, digest
    ("oci://ghcr.io/org/tool:1.0", "ghcr.io", "ghcr.io", "org/tool", "1.0", None),
    ("ghcr.io/org/tool:v1.0.0", "ghcr.io", "ghcr.io", "org/tool", "v1.0.0", None),
    ("ghcr.io/org/tool", "ghcr.io", "ghcr.io", "org/tool", "latest", None),
    (f"oci://localhost:5000/org/tool@sha256:{HEX}", "localhost:5000", "localhost:5000", "org/tool", None,
     f"sha256:{HEX}"),
    (f"127.0.0.1:5000/a/b/c:t@sha256:{HEX}", "127.0.0.1:5000", "127.0.0.1:5000", "a/b/c", "t", f"sha256:{HEX}"),
    ("localhost/tool", "localhost", "localhost", "tool", "latest", None),
    ("[::1]:5000/tool:x", "[::1]:5000", "[::1]:5000", "tool", "x", None),
    # Docker Hub rules
    ("docker.io/tool", "docker.io", "registry-1.docker.io", "library/tool", "latest", None),
    ("tool:1", "docker.io", "registry-1.docker.io", "library/tool", "1", None),
    ("oci://org/tool", "docker.io", "registry-1.docker.io", "org/tool", "latest", None),
    ("docker.io/org/tool:2", "docker.io", "registry-1.docker.io", "org/tool", "2", None),
    ("index.docker.io/tool", "index.docker.io", "registry-1.docker.io", "library/tool", "latest", None),
    # separators allowed by the distribution grammar
    ("r.example.com/a__b/c-d/e.f/g_h---i:T_1.x-y", "r.example.com", "r.example.com", "a__b/c-d/e.f/g_h---i",
     "T_1.x-y", None),
    ("my-registry.example:443/x", "my-registry.example:443", "my-registry.example:443", "x", "latest", None),
]


@pytest.mark.parametrize(("text", "registry", "api_host", "repository", "tag", "digest"), GOOD)
def test_parse_good(text: str, registry: str, api_host: str, repository: str, tag: str | None,
                    digest: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.api_host, ref.repository, ref.tag, ref.digest) == (
        registry, api_host, repository, tag, digest)
    # the canonical form parses back to the same reference
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.uri) == ref


BAD = [
    ("", "empty"),
    ("oci://", "empty"),
    ("https://ghcr.io/org/tool", "unsupported scheme"),
    ("ghcr.io/Org/tool", "invalid repository path component 'Org'"),
    ("ghcr.io/org//tool", "empty path component"),
    ("ghcr.io/org/tool-", "invalid repository path component 'tool-'"),
    ("ghcr.io/org/.tool", "invalid repository path component"),
    ("ghcr.io/org/tool:", "invalid tag ''"),
    ("ghcr.io/org/tool:-x", "invalid tag '-x'"),
    ("ghcr.io/org/tool:" + "a" * 129, "invalid tag"),
    ("ghcr.io/org/tool@sha256:abc", "expected 64 lowercase hex digits, got 3"),
    (f"ghcr.io/org/tool@sha256:{HEX.upper()}", "64 lowercase hex"),
    (f"ghcr.io/org/tool@sha512:{HEX}{HEX}", "unsupported digest algorithm 'sha512'"),
    ("ghcr.io/org/tool@" + HEX, "expected sha256:<64 hex digits>"),
    ("host:99999/tool", "invalid port '99999'"),
    ("host:port/tool", "invalid port 'port'"),
    ("bad_host.io/tool", "invalid registry host name 'bad_host.io'"),
    ("-bad.io/tool", "invalid registry host name"),
    ("[::zz]:5000/tool", "invalid IPv6 address"),
    ("ghcr.io/", "missing repository"),
    ("ghcr.io/org/to ol", "white space"),
    ("ghcr.io/" + "a/" * 130 + "b", "longer than 255"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_parse_bad(text: str, message: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_reference(text)
    assert message in str(info.value)
    if text:
        assert repr(text.strip()) in str(info.value) or message == "empty"


def test_cache_parts() -> None:
    assert parse_reference("ghcr.io/org/tool:1.0").cache_parts() == ("ghcr.io", "org", "tool", "1.0")
    assert parse_reference("tool").cache_parts() == ("docker.io", "library", "tool", "latest")
    pinned = parse_reference(f"localhost:5000/org/tool:1.0@sha256:{HEX}")
    assert pinned.cache_parts() == ("localhost_5000", "org", "tool", f"sha256-{HEX}")
    assert pinned.identifier == f"sha256:{HEX}"
    assert parse_reference("ghcr.io/org/tool:1.0").identifier == "1.0"


def test_with_digest() -> None:
    ref = parse_reference("ghcr.io/org/tool:1.0").with_digest(f"sha256:{HEX}")
    assert str(ref) == f"ghcr.io/org/tool:1.0@sha256:{HEX}"
    with pytest.raises(InvalidReferenceError):
        ref.with_digest("sha256:nothex")


@pytest.mark.parametrize(
    ("text", "registry", "repository"),
    [
        ("ghcr.io/myorg/weather-tool", "ghcr.io", "myorg/weather-tool"),
        ("oci://localhost:5000/tool", "localhost:5000", "tool"),
        ("docker.io/tool", "docker.io", "library/tool"),
        ("myorg/tool", "docker.io", "myorg/tool"),
    ],
)
def test_parse_repository(text: str, registry: str, repository: str) -> None:
    repo = parse_repository(text)
    assert (repo.registry, repo.repository) == (registry, repository)
    assert str(repo) == f"{registry}/{repository}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ghcr.io/org/tool:1.0", "includes a tag"),
        (f"ghcr.io/org/tool@sha256:{HEX}", "names a digest"),
        ("", "empty registry repository"),
        ("ghcr.io/Org/x", "invalid repository path component 'Org'"),
    ],
)
def test_parse_repository_bad(text: str, message: str) -> None:
    with pytest.raises(InvalidReferenceError, match=message):
        parse_repository(text)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True), ("localhost:5000", True), ("127.0.0.1", True), ("127.1.2.3:80", True),
        ("[::1]:5000", True), ("::1", True), ("foo.localhost", True),
        ("ghcr.io", False), ("10.0.0.1:5000", False), ("[::2]:5000", False), ("localhost.example.com", False),
        ("128.0.0.1", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    assert use_plain_http(host) is loopback
    assert use_plain_http(host, insecure=True) is True


def test_classify(tmp_path: Path) -> None:
    assert classify("oci://ghcr.io/org/tool:1") == OciRef(parse_reference("ghcr.io/org/tool:1"))
    assert classify("ghcr.io/org/tool") == OciRef(Reference("ghcr.io", "org/tool", "latest", None))
    assert classify("weather-tool") == NameRef("weather-tool")
    assert classify("file:///opt/x/module.wasm") == FileRef(Path("/opt/x/module.wasm"))
    assert classify("file:///opt/my%20dir/x.mcpkit.tar") == FileRef(Path("/opt/my dir/x.mcpkit.tar"))
    assert classify("/abs/dir") == FileRef(Path("/abs/dir"))
    assert classify("dist/x.mcpkit.tar", cwd=tmp_path) == FileRef(tmp_path / "dist/x.mcpkit.tar")
    (tmp_path / "bundle-dir").mkdir()
    # a bare name is the cache even when a folder of that name exists here; a path must look like one
    assert classify("bundle-dir", cwd=tmp_path) == NameRef("bundle-dir")
    assert classify("./bundle-dir", cwd=tmp_path) == FileRef(tmp_path / "bundle-dir")
    assert classify("bundle-dir/config.yaml", cwd=tmp_path) == FileRef(tmp_path / "bundle-dir/config.yaml")
    (tmp_path / "org" / "tool").mkdir(parents=True)
    assert classify("org/tool", cwd=tmp_path) == OciRef(parse_reference("docker.io/org/tool"))
    assert classify(f"https://example.com/b.tar.gz#sha256={HEX.upper()}") == HttpsRef(
        "https://example.com/b.tar.gz", HEX)
    assert classify("https://example.com/b.tar.gz") == HttpsRef("https://example.com/b.tar.gz", None)
    assert classify("http://127.0.0.1:8000/b.tar.gz") == HttpsRef("http://127.0.0.1:8000/b.tar.gz", None)


def test_an_oci_layout_of_any_name_is_local_when_it_looks_like_a_path(tmp_path: Path) -> None:
    """An OCI layout tar may have any name: `foo.tar` and `./bar.oci` are local, a bare `bar.oci` is the
    cache (even with such a file here), and a folder needs a path that looks like one."""
    (tmp_path / "bar.oci").write_bytes(b"")
    (tmp_path / "layout").mkdir()
    assert classify("foo.tar", cwd=tmp_path) == FileRef(tmp_path / "foo.tar")
    assert classify("dist/foo.TAR", cwd=tmp_path) == FileRef(tmp_path / "dist/foo.TAR")
    assert classify("./bar.oci", cwd=tmp_path) == FileRef(tmp_path / "bar.oci")
    assert classify(str(tmp_path / "bar.oci")) == FileRef(tmp_path / "bar.oci")
    assert classify("bar.oci", cwd=tmp_path) == NameRef("bar.oci")
    assert classify("./layout", cwd=tmp_path) == FileRef(tmp_path / "layout")
    assert classify("layout", cwd=tmp_path) == NameRef("layout")
    assert [looks_local(t) for t in ("foo.tar", "./bar.oci", "~/x.oci", "/x", "bar.oci", "layout")] == [
        True, True, True, True, False, False]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http://example.com/b.tar.gz", "refusing plain HTTP"),
        ("https://example.com/b.tar.gz#md5=abc", "unsupported fragment"),
        ("https://example.com/b.tar.gz#sha256=abc", "invalid #sha256= pin"),
        ("file://otherhost/x.wasm", "only local files"),
        ("ftp://x/y", "unsupported scheme 'ftp'"),
        ("", "empty reference"),
    ],
)
def test_classify_bad(text: str, message: str) -> None:
    with pytest.raises(InvalidReferenceError, match=message):
        classify(text)


def test_http_off_loopback_only_with_insecure() -> None:
    with pytest.raises(InvalidReferenceError, match="refusing plain HTTP"):
        classify("http://example.com/b.tar.gz")
    assert classify("http://example.com/b.tar.gz", insecure=True) == HttpsRef("http://example.com/b.tar.gz", None)


def test_keys_are_canonical() -> None:
    assert classify("ghcr.io/org/tool").key == "oci://ghcr.io/org/tool:latest"  # type: ignore[union-attr]
    assert classify("oci://ghcr.io/org/tool:1").key == "oci://ghcr.io/org/tool:1"  # type: ignore[union-attr]
    assert classify(f"ghcr.io/org/tool:1@sha256:{HEX}").key == f"oci://ghcr.io/org/tool@sha256:{HEX}"  # type: ignore[union-attr]
    assert classify("tool").key == "tool"  # type: ignore[union-attr]
    assert classify("/x/y.mcpkit.tar").key == "file:///x/y.mcpkit.tar"  # type: ignore[union-attr]


def test_cache_names_and_written_tags() -> None:
    from hatch_mcpkit.reference import CacheName, parse_cache_name, written_tag

    assert parse_cache_name("weather-tool") == CacheName("weather-tool")
    assert parse_cache_name("weather-tool:1.0") == CacheName("weather-tool", "1.0")
    assert parse_cache_name("weather-tool@sha256:abc") == CacheName("weather-tool", None, "sha256:abc")
    for not_a_name in ("ghcr.io/org/tool", "oci://x/y", "Tool", "t:-bad", "t@md5:x"):
        assert parse_cache_name(not_a_name) is None
    assert written_tag("oci://ghcr.io/org/tool:v1") == "v1"
    assert written_tag("localhost:5000/org/tool") is None
    assert written_tag(f"ghcr.io/org/tool:v1@sha256:{HEX}") is None


def test_registry_scope() -> None:
    from hatch_mcpkit.reference import parse_registry_scope

    assert parse_registry_scope("ghcr.io") == ("ghcr.io", "")
    assert parse_registry_scope("oci://localhost:5000/org/") == ("localhost:5000", "org")
    assert parse_registry_scope("docker.io/myorg") == ("docker.io", "myorg")
    for bad in ("", "/org", "ghcr.io/Org", "host:99999/x"):
        with pytest.raises(InvalidReferenceError):
            parse_registry_scope(bad)
