"""Hostile registries and download hosts: each attack is a small real HTTP(S) server written here.

What they prove (see docs/security.md): ``--insecure`` never turns certificate checks off; an
endless error body is read only up to a cap; a server that drips bytes hits the transfer
deadline; URLs a registry hands back (upload ``Location``, ``Link: rel=next``, redirects, a
401 from elsewhere) never receive the registry's credentials; environment credentials go
only to the registry they name; registry messages reach the terminal without control
sequences; deeply nested JSON is a clear error.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hatch_mcpkit._transport import download
from hatch_mcpkit.auth import Credentials
from hatch_mcpkit.bundle import BundleLayout
from hatch_mcpkit.errors import AuthError, McpkitError, RegistryError
from hatch_mcpkit.reference import parse_reference
from hatch_mcpkit.registry import RegistryClient
from hatch_mcpkit.store import BundleCache
from tests.builders import TINY_WASM, build_layout, make_project
from tests.hostile_server import SECRET, USER, Server, needs_basic, send, servers_fixture
from tests.plugins.registry import make_cert

MCPKIT = [sys.executable, "-m", "hatch_mcpkit"]


servers = servers_fixture


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("MCPKIT_HOME", str(h))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    for key in ("MCPKIT_REGISTRY_USERNAME", "MCPKIT_REGISTRY_PASSWORD", "MCPKIT_REGISTRY_HOST",
                "MCPKIT_TRANSFER_DEADLINE", "MCPKIT_CA_FILE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(key, raising=False)
    return h


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MCPKIT_", "DOCKER_CONFIG")) and k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
    env.update(MCPKIT_HOME=str(tmp_path / "cli-home"), DOCKER_CONFIG=str(tmp_path / "no-docker-config"), **extra)
    return env


def mcpkit(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*MCPKIT, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


# --------------------------------------------------------------------------- TLS: one policy


def _bundle_tgz(path: Path) -> Path:
    import io

    project = make_project(path.parent / "src")
    files = {"module.wasm": TINY_WASM, "config.yaml": (project / "config.yaml").read_bytes(), "README.md": b"# x\n"}
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


def test_insecure_never_skips_certificate_checks_on_https_downloads(servers: Callable[..., Server], tmp_path: Path,
                                                                    home: Path) -> None:
    """A self-signed https host: --insecure still refuses it; --ca-file (or the CA variables) make it work."""
    cert, key = make_cert(tmp_path)
    archive = _bundle_tgz(tmp_path / "bundle.tar.gz").read_bytes()
    web = servers(lambda h: send(h, 200, archive, {"Content-Type": "application/gzip"}), tls=(cert, key))
    url = f"{web.url}/bundle.tar.gz"

    with pytest.raises(RegistryError, match="TLS verification failed"):
        download(url, tmp_path / "a", max_bytes=1 << 20, insecure=True)
    assert not (tmp_path / "a").exists()
    env = cli_env(tmp_path)
    refused = mcpkit(env, "pull", url, "--insecure")
    assert refused.returncode != 0 and "TLS" in refused.stderr and "--ca-file" in refused.stderr

    download(url, tmp_path / "b", max_bytes=1 << 20, ca_file=str(cert))
    assert (tmp_path / "b").read_bytes() == archive
    pulled = mcpkit(env, "pull", url, "--ca-file", str(cert))
    assert pulled.returncode == 0, pulled.stderr
    for variable in ("MCPKIT_CA_FILE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        proc = mcpkit(cli_env(tmp_path / variable, **{variable: str(cert)}), "pull", url)
        assert proc.returncode == 0, (variable, proc.stderr)


def test_insecure_never_skips_certificate_checks_on_registries(tls_registry: Any, home: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with RegistryClient(tls_registry.host, insecure=True, scheme="https") as client, \
            pytest.raises(RegistryError) as info:
        client.list_tags("test/x")
    assert "TLS verification failed" in str(info.value)
    with RegistryClient(tls_registry.host) as client, pytest.raises(RegistryError) as info:
        client.list_tags("test/x")
    assert "TLS verification failed" in str(info.value)
    assert client.scheme == "https", "a certificate that fails is never a reason to fall back to plain HTTP"
    for variable in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(variable, str(tls_registry.ca_file))
        with RegistryClient(tls_registry.host) as client, pytest.raises(RegistryError) as info:
            client.list_tags("test/none-here")
        assert info.value.status == 404, variable
        monkeypatch.delenv(variable)


# --------------------------------------------------------------------------- bounded bodies and time


def test_an_endless_error_body_is_read_only_up_to_a_cap(servers: Callable[..., Server], home: Path) -> None:
    state: dict[str, int] = {"sent": 0}

    def endless(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(404)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        piece = b'{"errors":[{"code":"NAME_UNKNOWN","message":"' + b"A" * 65536
        h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        block = b"B" * 65536
        while state["sent"] < 256 * 1024 * 1024:  # the old client read all of it into memory
            h.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            state["sent"] += len(block)
        h.wfile.write(b"0\r\n\r\n")

    reg = servers(endless)
    start = time.monotonic()
    with pytest.raises(RegistryError) as info:
        BundleCache().pull(f"oci://{reg.host}/evil/tool:1")
    assert info.value.status == 404
    assert time.monotonic() - start < 10
    time.sleep(0.2)
    assert state["sent"] < 16 * 1024 * 1024, f"the client read {state['sent']} bytes of an error body"


def _drip(byte: bytes, content_type: str | None = None) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    """A handler that promises 1000 bytes and sends one a second, for 12 seconds at most."""
    def drip(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        if content_type:
            h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        for _ in range(12):
            h.wfile.write(byte)
            h.wfile.flush()
            time.sleep(1.0)

    return drip


def test_a_dripping_registry_hits_the_transfer_deadline(servers: Callable[..., Server], home: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """One byte a second never trips the 30 s read timeout; the overall deadline stops it."""
    reg = servers(_drip(b" ", "application/vnd.oci.image.manifest.v1+json"))
    monkeypatch.setenv("MCPKIT_TRANSFER_DEADLINE", "2")
    start = time.monotonic()
    with pytest.raises(RegistryError, match="transfer deadline") as info:
        BundleCache().pull(f"oci://{reg.host}/slow/tool:1")
    assert time.monotonic() - start < 6
    assert "MCPKIT_TRANSFER_DEADLINE" in str(info.value)
    assert len(reg.seen) == 1, "a deadline is not retried"


def test_a_dripping_download_hits_the_transfer_deadline(servers: Callable[..., Server], tmp_path: Path,
                                                        home: Path) -> None:
    web = servers(_drip(b"x"))
    start = time.monotonic()
    proc = mcpkit(cli_env(tmp_path, MCPKIT_TRANSFER_DEADLINE="2"), "pull", f"{web.url}/bundle.tar.gz")
    assert proc.returncode != 0 and "transfer deadline" in proc.stderr
    assert time.monotonic() - start < 8


def test_the_transfer_deadline_option_wins_over_the_environment(servers: Callable[..., Server],
                                                                 tmp_path: Path) -> None:
    reg = servers(_drip(b" ", "application/vnd.oci.image.manifest.v1+json"))
    start = time.monotonic()
    proc = mcpkit(cli_env(tmp_path, MCPKIT_TRANSFER_DEADLINE="600"), "pull", f"oci://{reg.host}/slow/tool:1",
                  "--transfer-deadline", "1.5")
    assert proc.returncode != 0 and "1.5 s transfer deadline" in proc.stderr
    assert time.monotonic() - start < 6


def test_a_bad_transfer_deadline_is_a_usage_error(tmp_path: Path) -> None:
    proc = mcpkit(cli_env(tmp_path, MCPKIT_TRANSFER_DEADLINE="soon"), "pull", "oci://127.0.0.1:9/x/y:1")
    assert proc.returncode == 2 and "MCPKIT_TRANSFER_DEADLINE" in proc.stderr
    proc = mcpkit(cli_env(tmp_path), "pull", "oci://127.0.0.1:9/x/y:1", "--transfer-deadline", "-1")
    assert proc.returncode == 2 and "--transfer-deadline" in proc.stderr


def test_a_tag_listing_that_never_ends_is_read_only_up_to_a_cap(servers: Callable[..., Server],
                                                                  tmp_path: Path) -> None:
    """Every page of tags/list carries 10,000 tags and a ``Link: rel=next`` to one more page: the
    client stops at a bounded number of tags with a clear error, not after holding every page."""
    pages = {"n": 0}

    def registry(h: http.server.BaseHTTPRequestHandler) -> None:
        if "/tags/list" not in h.path:
            send(h, 404)
            return
        pages["n"] += 1
        n = pages["n"]
        headers = {"Content-Type": "application/json"}
        if n < 60:  # 600,000 tags in all (a hostile registry would go on for ever)
            headers["Link"] = f'</v2/org/tool/tags/list?last=t{n}&n=10000>; rel="next"'
        send(h, 200, json.dumps({"name": "org/tool", "tags": [f"t{n}-{i}" for i in range(10_000)]}).encode(), headers)

    reg = servers(registry)
    proc = mcpkit(cli_env(tmp_path), "list", "--registry", f"{reg.host}/org/tool", timeout=300)
    assert proc.returncode != 0 and "more than 100000 tags" in proc.stderr, proc.stderr[-500:]
    assert pages["n"] <= 20, f"read {pages['n']} pages of tags"


def test_a_listing_page_of_huge_names_counts_toward_the_cap(servers: Callable[..., Server], home: Path) -> None:
    """Few items, each a megabyte long: the total of the pages read is capped too, not only the count."""
    name = "x" * (1 << 20)

    def registry(h: http.server.BaseHTTPRequestHandler) -> None:
        send(h, 200, json.dumps({"name": "org/tool", "tags": [name] * 4}).encode(),
             {"Content-Type": "application/json", "Link": '</v2/org/tool/tags/list?n=4>; rel="next"'})

    reg = servers(registry)
    with RegistryClient(reg.host) as client, pytest.raises(RegistryError, match=r"more than \d+ bytes of tags"):
        client.list_tags("org/tool")
    assert len(reg.seen) <= 20


def test_a_catalog_of_many_long_tag_lists_is_read_only_up_to_a_cap(servers: Callable[..., Server],
                                                                    tmp_path: Path) -> None:
    """``list --registry HOST``: a catalog of 40 repositories, each with 10,000 tags on one page --
    every listing is under the per-listing cap, the total is what is capped."""
    listed: list[str] = []

    def registry(h: http.server.BaseHTTPRequestHandler) -> None:
        if h.path.startswith("/v2/_catalog"):
            send(h, 200, json.dumps({"repositories": [f"org/r{i}" for i in range(40)]}).encode())
        elif "/tags/list" in h.path:
            listed.append(h.path)
            send(h, 200, json.dumps({"tags": [f"t{i}" for i in range(10_000)]}).encode())
        else:
            send(h, 404)

    reg = servers(registry)
    proc = mcpkit(cli_env(tmp_path), "list", "--registry", reg.host, timeout=300)
    assert proc.returncode != 0 and "more than 100000 tags" in proc.stderr, proc.stderr[-500:]
    assert len(listed) <= 11, f"listed {len(listed)} repositories"


# --------------------------------------------------------------------------- where credentials go


def _layout(tmp_path: Path) -> BundleLayout:
    return build_layout(make_project(tmp_path / "proj"), tmp_path / "dist")


def test_an_upload_location_on_another_host_never_gets_the_credentials(servers: Callable[..., Server],
                                                                        tmp_path: Path, home: Path) -> None:
    elsewhere = servers(lambda h: send(h, 201))

    def registry(h: http.server.BaseHTTPRequestHandler) -> None:
        if needs_basic(h):
            return
        if h.command == "HEAD":
            send(h, 404)
        elif h.command == "POST":
            send(h, 202, headers={"Location": f"{elsewhere.url}/upload/abc?state=1"})
        else:
            send(h, 201, headers={"Location": h.path})

    reg = servers(registry)
    with _layout(tmp_path) as layout, \
            RegistryClient(reg.host, credentials=Credentials(USER, SECRET, source="test")) as client:
        client.push_layout(layout, "org/tool", ["1"])
    assert reg.credentials_seen(), "the registry itself does get them"
    assert [s.method for s in elsewhere.seen] and all(s.method == "PUT" for s in elsewhere.seen)
    assert elsewhere.credentials_seen() == []


def test_a_401_from_another_host_is_not_answered_with_the_credentials(servers: Callable[..., Server],
                                                                       tmp_path: Path, home: Path) -> None:
    elsewhere = servers(needs_basic)

    def registry(h: http.server.BaseHTTPRequestHandler) -> None:
        if needs_basic(h):
            return
        if h.command == "HEAD":
            send(h, 404)
        elif h.command == "POST":
            send(h, 202, headers={"Location": f"{elsewhere.url}/upload/abc"})
        else:
            send(h, 201)

    reg = servers(registry)
    with _layout(tmp_path) as layout, pytest.raises(AuthError, match="another host"), \
            RegistryClient(reg.host, credentials=Credentials(USER, SECRET, source="test")) as client:
        client.push_layout(layout, "org/tool", ["1"])
    assert elsewhere.seen and elsewhere.credentials_seen() == []


def test_a_link_next_on_another_host_never_gets_the_credentials(servers: Callable[..., Server], home: Path) -> None:
    elsewhere = servers(lambda h: send(h, 200, b'{"name":"org/tool","tags":["stolen"]}'))

    def registry(h: http.server.BaseHTTPRequestHandler) -> None:
        if needs_basic(h):
            return
        send(h, 200, b'{"name":"org/tool","tags":["1"]}',
             {"Link": f'<{elsewhere.url}/v2/org/tool/tags/list?last=1>; rel="next"'})

    reg = servers(registry)
    with RegistryClient(reg.host, credentials=Credentials(USER, SECRET, source="test")) as client:
        assert client.list_tags("org/tool") == ["1", "stolen"]
    assert elsewhere.seen and elsewhere.credentials_seen() == []


def test_a_redirect_to_another_host_drops_the_credentials(servers: Callable[..., Server], tmp_path: Path,
                                                           home: Path) -> None:
    elsewhere = servers(lambda h: send(h, 200, b'{"name":"org/tool","tags":["x"]}'))

    def registry(h: http.server.BaseHTTPRequestHandler) -> None:
        if not needs_basic(h):
            send(h, 307, headers={"Location": f"{elsewhere.url}/v2/org/tool/tags/list"})

    reg = servers(registry)
    with RegistryClient(reg.host, credentials=Credentials(USER, SECRET, source="test")) as client:
        assert client.list_tags("org/tool") == ["x"]
    assert elsewhere.seen and elsewhere.credentials_seen() == []


def test_environment_credentials_go_only_to_the_registry_they_name(servers: Callable[..., Server],
                                                                    tmp_path: Path) -> None:
    """MCPKIT_REGISTRY_USERNAME/PASSWORD belong to MCPKIT_REGISTRY_HOST; any other registry asking gets nothing."""
    hostile = servers(needs_basic)
    ref = f"oci://{hostile.host}/org/tool:1"
    env = cli_env(tmp_path, MCPKIT_REGISTRY_USERNAME=USER, MCPKIT_REGISTRY_PASSWORD=SECRET,
                  MCPKIT_REGISTRY_HOST="registry.example.com")
    proc = mcpkit(env, "pull", ref)
    assert proc.returncode != 0
    assert hostile.seen and hostile.credentials_seen() == []
    # without MCPKIT_REGISTRY_HOST the pair is not sent anywhere: a clear error says what to set
    env.pop("MCPKIT_REGISTRY_HOST")
    proc = mcpkit(env, "pull", ref)
    assert proc.returncode != 0 and "MCPKIT_REGISTRY_HOST" in proc.stderr
    assert hostile.credentials_seen() == []
    assert SECRET not in proc.stderr + proc.stdout
    # naming this registry sends them to it
    proc = mcpkit({**env, "MCPKIT_REGISTRY_HOST": hostile.host}, "pull", ref)
    assert [s.authorization for s in hostile.credentials_seen()] != []


def test_podman_logins_go_only_to_the_registry_they_name(servers: Callable[..., Server], tmp_path: Path) -> None:
    """auth.json entries (REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json) for another registry -- even one
    written as a namespace of the hostile host's name, or with its name as a prefix -- are never sent to a registry
    that merely asks; an entry for the asking registry itself is."""
    import base64

    hostile = servers(needs_basic)
    entry = {"auth": base64.b64encode(f"{USER}:{SECRET}".encode()).decode()}
    auths = {"registry.example.com": entry, f"registry.example.com/{hostile.host}": entry,
             f"{hostile.host}.evil.example": entry, f"127.0.0.1/{hostile.host}": entry}
    run = tmp_path / "run"
    (run / "containers").mkdir(parents=True)
    (run / "containers" / "auth.json").write_text(json.dumps({"auths": auths}))
    (tmp_path / "ci-auth.json").write_text(json.dumps({"auths": auths}))
    env = cli_env(tmp_path, HOME=str(tmp_path / "home"), XDG_RUNTIME_DIR=str(run))
    ref = f"oci://{hostile.host}/org/tool:1"
    for extra in ({}, {"REGISTRY_AUTH_FILE": str(tmp_path / "ci-auth.json")}):
        proc = mcpkit({**env, **extra}, "pull", ref)
        assert proc.returncode != 0 and "requires a user name and password" in proc.stderr, proc.stderr
        assert hostile.seen and hostile.credentials_seen() == []
        assert SECRET not in proc.stdout + proc.stderr
    # an entry for this very registry (here: for its org/ namespace) is used
    (tmp_path / "ci-auth.json").write_text(json.dumps({"auths": {f"{hostile.host}/org": entry}}))
    mcpkit({**env, "REGISTRY_AUTH_FILE": str(tmp_path / "ci-auth.json")}, "pull", ref)
    assert hostile.credentials_seen()


def test_a_token_service_redirect_never_receives_the_refresh_token(servers: Callable[..., Server], tmp_path: Path,
                                                                    home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An identity (refresh) token from docker config travels in the token request's POST body. A 307
    from the token service to another host would re-send that body: it is refused, nothing is sent there."""
    from hatch_mcpkit.auth import resolve_credentials

    elsewhere = servers(lambda h: send(h, 200, b'{"token": "from-elsewhere"}'))
    token_service = servers(lambda h: send(h, 307, headers={"Location": f"{elsewhere.url}/steal"}))
    reg = servers(lambda h: send(h, 401, headers={
        "Www-Authenticate": f'Bearer realm="{token_service.url}/token",service="reg"'}))
    config = tmp_path / "docker"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"auths": {reg.host: {"identitytoken": "REFRESH-SECRET"}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    credentials = resolve_credentials(reg.host)
    assert credentials is not None and credentials.identity_token == "REFRESH-SECRET"
    with RegistryClient(reg.host, credentials=credentials) as client, pytest.raises(RegistryError) as info:
        client.get_manifest(parse_reference(f"{reg.host}/org/tool:1"))
    assert not any(b"REFRESH-SECRET" in s.body for s in elsewhere.seen), "the refresh token went to another host"
    assert elsewhere.seen == [], "nothing of the token request goes to another host"
    assert any(b"REFRESH-SECRET" in s.body for s in token_service.seen), "the token service itself got the token"
    assert "another host" in str(info.value), str(info.value)


# --------------------------------------------------------------------------- what a registry says


ESCAPES = "\x1b]52;c;ZXZpbA==\x07\x1b[2K\x1b[1A\rfake line\u202e"


def test_registry_messages_reach_the_terminal_without_control_sequences(servers: Callable[..., Server],
                                                                         tmp_path: Path) -> None:
    body = json.dumps({"errors": [{"code": "DENIED", "message": f"nope {ESCAPES}"}]}).encode()
    reg = servers(lambda h: send(h, 400, body, {"Content-Type": "application/json"}))
    proc = mcpkit(cli_env(tmp_path), "pull", f"oci://{reg.host}/org/tool:1")
    assert proc.returncode != 0 and "nope" in proc.stderr
    for char in ("\x1b", "\x07", "\r", "\u202e"):
        assert char not in proc.stderr + proc.stdout


@pytest.mark.parametrize("where", ["manifest", "token", "listing", "error"])
def test_deeply_nested_registry_json_is_a_clear_error(servers: Callable[..., Server], home: Path, where: str) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    token_url: list[str] = []

    def registry(h: http.server.BaseHTTPRequestHandler) -> None:
        if where == "token":
            if h.path.startswith("/token"):
                send(h, 200, b'{"token":' + deep + b"}")
            else:
                send(h, 401, headers={"Www-Authenticate": f'Bearer realm="{token_url[0]}",service="x"'})
        elif where == "error":
            send(h, 400, b'{"errors":' + deep + b"}")
        else:
            send(h, 200, deep, {"Content-Type": "application/json"})

    reg = servers(registry)
    token_url.append(f"{reg.url}/token")
    with RegistryClient(reg.host) as client, pytest.raises(McpkitError) as info:
        if where == "listing":
            client.list_tags("org/tool")
        else:
            client.fetch_manifest(parse_reference(f"{reg.host}/org/tool:1"))
    if where == "error":
        assert info.value.__class__ is RegistryError and info.value.status == 400
    else:
        assert "nested more than" in str(info.value)
