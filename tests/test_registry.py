"""The registry client against real distribution registries (plain, htpasswd, TLS)."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from hatch_mcpkit.auth import Credentials, resolve_credentials
from hatch_mcpkit.bundle import (
    ARTIFACT_TYPE,
    BUNDLE_CONFIG_MEDIA_TYPE,
    CONFIG_YAML_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    TITLE_ANNOTATION,
    WASM_MEDIA_TYPE,
    BundleLayout,
)
from hatch_mcpkit.errors import AuthError, IntegrityError, RegistryError
from hatch_mcpkit.reference import parse_reference
from hatch_mcpkit.registry import RegistryClient

from .builders import build_archive, config_yaml, make_project, tiny_module
from .plugins.registry import RunningRegistry, free_port

pytestmark = pytest.mark.registry

def make_bundle(root: Path, module: bytes | None = None) -> Path:
    """Build a real .mcpkit.tar (random module so blobs differ between tests)."""
    config = config_yaml("reg-tool", "1.2.3", description="Registry test tool",
                         registry="localhost:5000/test/reg-tool", include=("README.md",))
    make_project(root, name="reg-tool", config=config, files={"README.md": "# reg-tool\n"},
                 module=module if module is not None else tiny_module(os.urandom(100_000)))
    return build_archive(root, root / "dist").path


@pytest.fixture
def bundle(tmp_path: Path) -> BundleLayout:
    layout = BundleLayout.open(make_bundle(tmp_path / "proj"))
    yield layout
    layout.close()


def _count_uploads(client: RegistryClient) -> list[str]:
    """Record every upload request the client's session makes (a response hook)."""
    seen: list[str] = []

    def hook(resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        if "/blobs/uploads/" in resp.request.url and resp.request.method in ("POST", "PUT", "PATCH"):
            seen.append(f"{resp.request.method} {resp.status_code}")

    client.session.hooks["response"].append(hook)
    return seen


# --------------------------------------------------------------------------- round trip


def test_push_pull_round_trip(registry: RunningRegistry, repo_name: str, bundle: BundleLayout,
                              tmp_path: Path) -> None:
    with registry.client() as client:
        digest = client.push_layout(bundle, repo_name, ["1.2.3", "latest"])
        assert digest == bundle.manifest.digest  # the digest printed at build time is the registry's

        for tag in ("1.2.3", "latest"):
            manifest = client.get_manifest(parse_reference(f"{registry.host}/{repo_name}:{tag}"))
            assert manifest.digest == digest
            assert manifest.raw == bundle.manifest.raw
        pinned = client.get_manifest(parse_reference(f"{registry.host}/{repo_name}@{digest}"))
        assert pinned.digest == digest
        assert client.resolve(parse_reference(f"{registry.host}/{repo_name}:latest")) == digest

        for desc in bundle.manifest.blobs:
            dest = tmp_path / "out" / desc.hex
            client.fetch_blob(repo_name, desc, dest)
            assert dest.read_bytes() == bundle.read_blob(desc.digest)
        assert client.read_blob(repo_name, bundle.manifest.config) == bundle.read_blob(bundle.manifest.config.digest)
        assert client.stats.blobs_downloaded == len(bundle.manifest.blobs) + 1

        assert sorted(client.list_tags(repo_name)) == ["1.2.3", "latest"]
        assert repo_name in client.catalog()


def test_registry_serves_the_bundle_media_types(registry: RunningRegistry, repo_name: str,
                                                bundle: BundleLayout) -> None:
    with registry.client() as client:
        digest = client.push_layout(bundle, repo_name, ["v1"])
    resp = requests.get(f"{registry.url}/v2/{repo_name}/manifests/v1",
                        headers={"Accept": MANIFEST_MEDIA_TYPE}, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == MANIFEST_MEDIA_TYPE
    assert resp.headers["Docker-Content-Digest"] == digest
    assert resp.content == bundle.manifest.raw
    body = resp.json()
    assert body["artifactType"] == ARTIFACT_TYPE
    assert body["config"]["mediaType"] == BUNDLE_CONFIG_MEDIA_TYPE
    assert [(la["mediaType"], la["annotations"][TITLE_ANNOTATION]) for la in body["layers"]] == [
        (WASM_MEDIA_TYPE, "module.wasm"),
        (CONFIG_YAML_MEDIA_TYPE, "config.yaml"),
        ("text/markdown", "README.md"),
    ]
    blob = requests.get(f"{registry.url}/v2/{repo_name}/blobs/{body['layers'][0]['digest']}", timeout=10)
    assert blob.content == bundle.read_blob(body["layers"][0]["digest"])


def test_second_push_uploads_no_blobs(registry: RunningRegistry, repo_name: str, bundle: BundleLayout) -> None:
    with registry.client() as first:
        uploads = _count_uploads(first)
        first.push_layout(bundle, repo_name, ["a"])
        assert first.stats.blobs_uploaded == len(bundle.manifest.blobs)
        assert len(uploads) == 2 * len(bundle.manifest.blobs)  # POST + PUT per blob
    with registry.client() as second:
        uploads = _count_uploads(second)
        assert second.push_layout(bundle, repo_name, ["a", "b"]) == bundle.manifest.digest
        assert uploads == []
        assert second.stats.blobs_uploaded == 0
        assert second.stats.blobs_skipped == len(bundle.manifest.blobs)
        assert sorted(second.list_tags(repo_name)) == ["a", "b"]


def test_missing_manifest_names_the_reference(registry: RunningRegistry, repo_name: str) -> None:
    with registry.client() as client, pytest.raises(RegistryError) as info:
        client.get_manifest(parse_reference(f"{registry.host}/{repo_name}:nope"))
    assert info.value.status == 404
    assert f"{repo_name}:nope" in str(info.value)
    assert info.value.registry_message  # the registry's own errors[0].message


# --------------------------------------------------------------------------- integrity


def test_tampered_blob_is_refused(registry: RunningRegistry, repo_name: str, bundle: BundleLayout,
                                  tmp_path: Path) -> None:
    with registry.client() as client:
        client.push_layout(bundle, repo_name, ["t"])
        module = bundle.manifest.module_layer
        stored = registry.blob_data_path(module.digest)
        assert stored.is_file(), f"blob storage not found at {stored}"
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0x01
        stored.write_bytes(bytes(data))

        out = tmp_path / "pull"
        out.mkdir()
        (out / "module.wasm").write_bytes(b"previous good copy")
        with pytest.raises(IntegrityError) as info:
            client.fetch_blob(repo_name, module, out / "module.wasm")
        assert info.value.digest == module.digest
        assert module.digest in str(info.value)
        assert sorted(p.name for p in out.iterdir()) == ["module.wasm"]  # no temp file left
        assert (out / "module.wasm").read_bytes() == b"previous good copy"
        with pytest.raises(IntegrityError):
            client.read_blob(repo_name, module, max_size=10**7)


# --------------------------------------------------------------------------- failures


def test_closed_port_fails_fast() -> None:
    port = free_port()  # nothing listens here
    start = time.monotonic()
    with RegistryClient(f"127.0.0.1:{port}") as client, pytest.raises(RegistryError) as info:
        client.get_manifest(parse_reference(f"127.0.0.1:{port}/x/y:1"))
    elapsed = time.monotonic() - start
    assert elapsed < 10
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "cannot reach" in str(info.value)


def test_unresponsive_host_fails_within_ten_seconds() -> None:
    """A listener that never answers: bounded by the connect/read timeouts, not oras' minutes of retries."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        host = f"127.0.0.1:{server.getsockname()[1]}"
        start = time.monotonic()
        with RegistryClient(host, timeout=(1.0, 1.0)) as client, pytest.raises(RegistryError):
            client.list_tags("x/y")
        assert time.monotonic() - start < 10


def test_killed_registry_fails_cleanly(registry_factory: Any, tmp_path: Path, bundle: BundleLayout) -> None:
    reg: RunningRegistry = registry_factory("plain")
    with reg.client() as client:
        client.push_layout(bundle, "test/killed", ["1"])
        reg.kill()
        start = time.monotonic()
        with pytest.raises(RegistryError):
            client.fetch_blob("test/killed", bundle.manifest.module_layer, tmp_path / "m.wasm")
        assert time.monotonic() - start < 10
        assert not (tmp_path / "m.wasm").exists()
        assert [p for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


# --------------------------------------------------------------------------- auth and TLS

WRONG = "Wr0ng-s3cret-value-xyz"


def test_wrong_credentials_are_refused_quickly(auth_registry: RunningRegistry, repo_name: str,
                                               bundle: BundleLayout, caplog: pytest.LogCaptureFixture,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    bad = Credentials("testuser", WRONG, source="test")
    start = time.monotonic()
    with auth_registry.client(credentials=bad) as client, pytest.raises(AuthError) as info:
        client.push_layout(bundle, repo_name, ["1"])
    assert time.monotonic() - start < 5
    assert info.value.status == 401
    assert "refused" in str(info.value)
    secret_b64 = base64.b64encode(f"testuser:{WRONG}".encode()).decode()
    out, err = capsys.readouterr()
    for text in (str(info.value), repr(info.value), repr(bad), caplog.text, out, err):
        assert WRONG not in text
        assert secret_b64 not in text


def test_no_credentials_says_how_to_give_them(auth_registry: RunningRegistry) -> None:
    with auth_registry.client(credentials=None) as client, pytest.raises(AuthError) as info:
        client.list_tags("test/anything")
    assert "MCPKIT_REGISTRY_USERNAME" in str(info.value)


def test_htpasswd_over_tls(tls_auth_registry: RunningRegistry, repo_name: str, bundle: BundleLayout,
                           tmp_path: Path, caplog: pytest.LogCaptureFixture,
                           capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    assert tls_auth_registry.scheme == "https"
    with tls_auth_registry.client() as client:
        assert client.scheme == "https"
        digest = client.push_layout(bundle, repo_name, ["1"])
        assert client.get_manifest(parse_reference(f"{tls_auth_registry.host}/{repo_name}:1")).digest == digest
        client.fetch_blob(repo_name, bundle.manifest.module_layer, tmp_path / "m.wasm")
        assert (tmp_path / "m.wasm").read_bytes() == bundle.read_blob(bundle.manifest.module_layer.digest)
    out, err = capsys.readouterr()
    for text in (caplog.text, out, err):
        assert "testpass" not in text
        assert base64.b64encode(b"testuser:testpass").decode() not in text


def test_tls_without_the_ca_is_refused(tls_registry: RunningRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCPKIT_CA_FILE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    with RegistryClient(tls_registry.host) as client, pytest.raises(RegistryError) as info:
        client.list_tags("test/x")
    assert "TLS verification failed" in str(info.value)
    # with the CA (through the environment) it works
    monkeypatch.setenv("MCPKIT_CA_FILE", str(tls_registry.ca_file))
    with RegistryClient(tls_registry.host) as client, pytest.raises(RegistryError) as info:
        client.list_tags("test/none-here")
    assert info.value.status == 404


def test_docker_config_credentials(auth_registry: RunningRegistry, repo_name: str, bundle: BundleLayout,
                                   tmp_path: Path) -> None:
    docker_dir = tmp_path / "docker"
    docker_dir.mkdir()
    token = base64.b64encode(b"testuser:testpass").decode()
    (docker_dir / "config.json").write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    before = (docker_dir / "config.json").read_bytes()
    creds = resolve_credentials(auth_registry.host, environ={"DOCKER_CONFIG": str(docker_dir)})
    assert creds is not None
    assert creds.source.startswith("docker config")
    with RegistryClient(auth_registry.host, credentials=creds) as client:
        assert client.push_layout(bundle, repo_name, ["dc"]) == bundle.manifest.digest
        assert client.list_tags(repo_name) == ["dc"]
    assert (docker_dir / "config.json").read_bytes() == before  # read, never written


def test_environment_credentials(auth_registry: RunningRegistry, repo_name: str, bundle: BundleLayout,
                                 tmp_path: Path) -> None:
    env = {"MCPKIT_REGISTRY_USERNAME": "testuser", "MCPKIT_REGISTRY_PASSWORD": "testpass",
           "MCPKIT_REGISTRY_HOST": auth_registry.host, "DOCKER_CONFIG": str(tmp_path / "none")}
    creds = resolve_credentials(auth_registry.host, environ=env)
    assert creds is not None and creds.source.startswith("environment")
    with RegistryClient(auth_registry.host, credentials=creds) as client:
        client.push_layout(bundle, repo_name, ["env"])
        assert client.resolve(parse_reference(f"{auth_registry.host}/{repo_name}:env")) == bundle.manifest.digest


# --------------------------------------------------------------------------- bearer tokens


def test_bearer_tokens_carry_the_scope_each_request_needs(token_registry: Any, repo_name: str,
                                                          bundle: BundleLayout) -> None:
    reg, tokens = token_registry
    ref = parse_reference(f"{reg.host}/{repo_name}:1")
    with reg.client() as client:
        # a pull first: the client now holds a pull-only token ...
        with pytest.raises(RegistryError) as info:
            client.get_manifest(ref)
        assert info.value.status == 404
        assert tokens.requests[-1] == ("testuser", [f"repository:{repo_name}:pull"])
        # ... and a push must not reuse it: it asks for pull,push
        assert client.push_layout(bundle, repo_name, ["1"]) == bundle.manifest.digest
        assert ("testuser", [f"repository:{repo_name}:pull,push"]) in tokens.requests
        assert client.get_manifest(ref).digest == bundle.manifest.digest
        assert client.list_tags(repo_name) == ["1"]
        # tokens are cached per scope: two token requests for all of the above
        assert len(tokens.requests) == 2

    # anonymous: pull works with an anonymous pull token, push is refused
    with RegistryClient(reg.host) as anon:
        assert anon.get_manifest(ref).digest == bundle.manifest.digest
        with pytest.raises(AuthError):
            anon.push_layout(bundle, "test/anon-push", ["x"])
    assert (None, [f"repository:{repo_name}:pull"]) in tokens.requests


def test_bearer_token_with_wrong_password(token_registry: Any, repo_name: str) -> None:
    reg, _tokens = token_registry
    bad = Credentials("testuser", WRONG, source="test")
    with RegistryClient(reg.host, credentials=bad) as client, pytest.raises(AuthError) as info:
        client.list_tags(repo_name)
    assert info.value.status == 401
    assert "bad credentials" in str(info.value)
    assert WRONG not in str(info.value)


# --------------------------------------------------------------------------- who is asking


def test_every_request_carries_the_versioned_user_agent(tmp_path: Path) -> None:
    """Registry, token service and https download: the header a real server receives names mcpkit's version."""
    import http.server
    import platform
    import sys

    from hatch_mcpkit.__about__ import __version__
    from hatch_mcpkit._transport import download
    from tests.hostile_server import Server, send

    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        if h.path.startswith("/token"):
            send(h, 200, b'{"token": "t"}', {"Content-Type": "application/json"})
        elif h.path.startswith("/v2/") and h.headers.get("Authorization") != "Bearer t":
            send(h, 401, headers={"Www-Authenticate": f'Bearer realm="http://{h.headers["Host"]}/token",service="s"'})
        elif h.path.startswith("/v2/"):
            send(h, 200, b'{"name":"org/tool","tags":["1"]}', {"Content-Type": "application/json"})
        else:
            send(h, 200, b"archive bytes")

    server = Server(route).start()
    try:
        with RegistryClient(server.host) as client:
            assert client.list_tags("org/tool") == ["1"]
        download(f"{server.url}/bundle.tar.gz", tmp_path / "b", max_bytes=1024)
    finally:
        server.close()
    paths = [s.path.split("?", 1)[0] for s in server.seen]
    assert paths == ["/v2/org/tool/tags/list", "/token", "/v2/org/tool/tags/list", "/bundle.tar.gz"]
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    expected = f"hatch-mcpkit/{__version__} (python {python}; {platform.system().lower()} {platform.machine().lower()})"
    assert {s.user_agent for s in server.seen} == {expected}


# --------------------------------------------------------------------------- podman / skopeo / buildah logins


def _cli(env: dict[str, str], *args: str) -> Any:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "hatch_mcpkit", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_podman_logins_push_and_pull_through_the_cli(auth_registry: RunningRegistry, repo_name: str,
                                                     tmp_path: Path) -> None:
    """What `podman login` writes ($XDG_RUNTIME_DIR/containers/auth.json), ~/.config/containers/auth.json and
    REGISTRY_AUTH_FILE each let `mcpkit bundle push` and `mcpkit pull` log in to a real htpasswd registry."""
    archive = make_bundle(tmp_path / "proj")
    host = auth_registry.host
    home, run = tmp_path / "home", tmp_path / "run"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MCPKIT_REGISTRY_", "DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_"))}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(run), MCPKIT_HOME=str(tmp_path / "mcpkit"))

    def login(path: Path, entries: dict[str, tuple[str, str]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"auths": {key: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}
                                              for key, (u, p) in entries.items()}}))

    target = f"oci://{host}/{repo_name}:1"
    refused = _cli(env, "bundle", "push", str(archive), "--to", target)
    assert refused.returncode != 0 and "requires a user name and password" in refused.stderr

    login(run / "containers" / "auth.json", {host: ("testuser", "testpass")})
    pushed = _cli(env, "bundle", "push", str(archive), "--to", target)
    assert pushed.returncode == 0, pushed.stderr
    pulled = _cli(env, "pull", target)
    assert pulled.returncode == 0, pulled.stderr

    # ~/.config/containers/auth.json, keyed by the repository's namespace (the most specific key wins)
    (run / "containers" / "auth.json").unlink()
    namespace = repo_name.split("/")[0]
    login(home / ".config" / "containers" / "auth.json",
          {host: ("testuser", WRONG), f"{host}/{namespace}": ("testuser", "testpass")})
    assert _cli(env, "pull", target).returncode == 0
    wrong = _cli(env, "pull", f"oci://{host}/elsewhere/tool:1")
    assert wrong.returncode != 0 and "refused the credentials from containers auth file" in wrong.stderr
    assert WRONG not in wrong.stderr + wrong.stdout

    # REGISTRY_AUTH_FILE replaces the default files
    login(tmp_path / "ci-auth.json", {host: ("testuser", WRONG)})
    denied = _cli({**env, "REGISTRY_AUTH_FILE": str(tmp_path / "ci-auth.json")}, "pull", target)
    assert denied.returncode != 0 and "ci-auth.json" in denied.stderr
    login(tmp_path / "ci-auth.json", {host: ("testuser", "testpass")})
    (home / ".config" / "containers" / "auth.json").unlink()
    assert _cli({**env, "REGISTRY_AUTH_FILE": str(tmp_path / "ci-auth.json")}, "pull", target).returncode == 0


# --------------------------------------------------------------------------- certs.d folders


@pytest.fixture
def certs_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME in a temporary folder, no system certs.d roots and no CA variables: only what the test puts there."""
    from hatch_mcpkit import _transport

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(_transport, "CERTS_D_ROOTS", ())
    for variable in ("MCPKIT_CA_FILE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(variable, raising=False)
    return home


def _refused(host: str) -> None:
    with RegistryClient(host) as client, pytest.raises(RegistryError) as info:
        client.list_tags("test/none-here")
    assert "TLS verification failed" in str(info.value) and "certs.d" in str(info.value)


def _answers(host: str) -> None:
    with RegistryClient(host) as client, pytest.raises(RegistryError) as info:
        client.list_tags("test/none-here")
    assert info.value.status == 404, info.value


def test_a_certs_d_folder_trusts_its_registry_only(tls_registry: RunningRegistry, certs_home: Path, tmp_path: Path,
                                                    repo_name: str, bundle: BundleLayout,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A TLS registry with a private CA: refused without a certs.d entry, trusted with ~/.config/containers/certs.d/
    HOST:PORT/ca.crt (push, then `mcpkit pull` in another process); a server on another port with the very same
    certificate stays untrusted; the system roots (Docker's /etc/docker/certs.d/HOST:PORT/ca.crt form) work too."""
    import http.server

    from hatch_mcpkit import _transport
    from tests.hostile_server import Server, send

    assert tls_registry.ca_file is not None
    _refused(tls_registry.host)
    folder = certs_home / ".config" / "containers" / "certs.d" / tls_registry.host
    folder.mkdir(parents=True)
    (folder / "ca.crt").write_bytes(tls_registry.ca_file.read_bytes())
    _answers(tls_registry.host)
    with RegistryClient(tls_registry.host) as client:
        assert client.push_layout(bundle, repo_name, ["1"]) == bundle.manifest.digest
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCPKIT_", "DOCKER_CONFIG", "XDG_"))}
    env.update(MCPKIT_HOME=str(tmp_path / "mcpkit"), DOCKER_CONFIG=str(tmp_path / "none"))
    pulled = _cli(env, "pull", tls_registry.ref(repo_name, "1"))
    assert pulled.returncode == 0, pulled.stderr

    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        send(h, 404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}')

    same_cert = Server(route, tls=(tls_registry.ca_file, tls_registry.ca_file.parent / "key.pem")).start()
    try:
        _refused(same_cert.host)  # the entry is for HOST:PORT of the registry, not for whoever holds the certificate
    finally:
        same_cert.close()

    (folder / "ca.crt").unlink()
    _refused(tls_registry.host)
    folder.rmdir()  # (the first folder that exists is the one used, as podman does)
    system = tmp_path / "etc-docker-certs.d"
    (system / tls_registry.host).mkdir(parents=True)
    (system / tls_registry.host / "ca.crt").write_bytes(tls_registry.ca_file.read_bytes())
    monkeypatch.setattr(_transport, "CERTS_D_ROOTS", (tmp_path / "etc-containers-certs.d", system))
    _answers(tls_registry.host)


def _client_ca(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A client CA and a client certificate + key it signed (PEM files)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    client = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pusher")]))
              .issuer_name(ca_name).public_key(client_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
              .sign(ca_key, hashes.SHA256()))
    paths = tmp_path / "client-ca.pem", tmp_path / "client.cert", tmp_path / "client.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(client.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(client_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return paths


def test_a_certs_d_client_certificate_is_presented(tls_registry: RunningRegistry, certs_home: Path,
                                                   tmp_path: Path) -> None:
    """A registry that demands a client certificate (mutual TLS): the NAME.cert + NAME.key pair of its certs.d
    folder is presented; without it the handshake fails; half a pair is a clear error naming the file."""
    import http.server
    import ssl
    import threading

    from tests.hostile_server import send

    assert tls_registry.ca_file is not None
    client_ca, client_cert, client_key = _client_ca(tmp_path)
    peers: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            peer = self.connection.getpeercert()  # type: ignore[attr-defined]
            peers.append(dict(x[0] for x in peer["subject"])["commonName"])
            send(self, 404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}')

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(tls_registry.ca_file), str(tls_registry.ca_file.parent / "key.pem"))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(client_ca))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    try:
        folder = certs_home / ".config" / "containers" / "certs.d" / host
        folder.mkdir(parents=True)
        (folder / "ca.crt").write_bytes(tls_registry.ca_file.read_bytes())
        with RegistryClient(host, retry_pauses=()) as client, pytest.raises(RegistryError):
            client.list_tags("test/x")  # the server trusted, but no client certificate: no answer
        assert peers == []
        (folder / "client.cert").write_bytes(client_cert.read_bytes())
        with pytest.raises(RegistryError, match=r"client\.cert: client certificate without its pair"):
            RegistryClient(host)
        (folder / "client.key").write_bytes(client_key.read_bytes())
        _answers(host)
        assert peers == ["pusher"]
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- cross-repository mounts


def test_a_mount_token_may_pull_the_source_repository(token_registry: Any, repo_name: str,
                                                      bundle: BundleLayout) -> None:
    """Bearer tokens: the mount request asks for push on the target and pull on the source in one token, and
    the real registry mounts every blob (nothing uploaded)."""
    reg, tokens = token_registry
    source, target = f"{repo_name}/a", f"{repo_name}/b"
    blobs = bundle.manifest.blobs
    with reg.client() as client:
        client.push_layout(bundle, source, ["1"])
    with reg.client() as client:
        client.push_layout(bundle, target, ["1"], mount_from={d.digest: source for d in blobs})
        assert (client.stats.blobs_mounted, client.stats.blobs_uploaded) == (len(blobs), 0)
        assert client.get_manifest(parse_reference(f"{reg.host}/{target}:1")).digest == bundle.manifest.digest
    assert ("testuser", [f"repository:{target}:pull,push", f"repository:{source}:pull"]) in tokens.requests


def test_a_mount_the_registry_refuses_falls_back_to_an_upload(bundle: BundleLayout) -> None:
    """A registry that answers the mount with 401 (no right to read the source) or 404 (no mounts at all)
    gets an ordinary upload of that blob, and the push succeeds."""
    import http.server

    from tests.hostile_server import Server, send

    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        if h.command == "HEAD":
            send(h, 404)
        elif h.command == "POST" and "mount=" in h.path:
            refusal = 401 if bundle.manifest.module_layer.digest in h.path else 404
            send(h, refusal, b'{"errors":[{"code":"DENIED","message":"no"}]}',
                 {"Www-Authenticate": 'Basic realm="r"'} if refusal == 401 else {})
        elif h.command == "POST":
            send(h, 202, headers={"Location": "/v2/org/b/blobs/uploads/session"})
        else:
            send(h, 201, headers={"Location": h.path})

    server = Server(route).start()
    try:
        blobs = bundle.manifest.blobs
        with RegistryClient(server.host, credentials=Credentials("u", "p", source="test")) as client:
            client.push_layout(bundle, "org/b", ["1"], mount_from={d.digest: "org/a" for d in blobs})
            assert (client.stats.blobs_mounted, client.stats.blobs_uploaded) == (0, len(blobs))
    finally:
        server.close()
    posts = [s.path for s in server.seen if s.method == "POST"]
    assert sum("mount=" in p for p in posts) == len(blobs) and sum("mount=" not in p for p in posts) == len(blobs)
    assert len([s for s in server.seen if s.method == "PUT" and "/blobs/uploads/" in s.path]) == len(blobs)


def test_a_certs_d_folder_works_through_an_https_proxy(tls_registry: RunningRegistry, certs_home: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind HTTPS_PROXY (a real CONNECT tunnel here) the registry's certs.d roots still decide the handshake."""
    import select
    import socket
    import socketserver
    import threading

    assert tls_registry.ca_file is not None
    tunnels: list[str] = []

    class Tunnel(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline().decode()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            method, target, _ = line.split(" ", 2)
            if method != "CONNECT":
                self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            tunnels.append(target)
            host, port = target.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=10) as upstream:
                self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self.wfile.flush()
                ends = [self.connection, upstream]
                while True:
                    ready, _, _ = select.select(ends, [], [], 10)
                    if not ready:
                        return
                    for end in ready:
                        data = end.recv(65536)
                        if not data:
                            return
                        (upstream if end is self.connection else self.connection).sendall(data)

    proxy = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Tunnel)
    proxy.daemon_threads = True
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
        _refused(tls_registry.host)
        assert tunnels == [tls_registry.host], "the request went through the proxy"
        folder = certs_home / ".config" / "containers" / "certs.d" / tls_registry.host
        folder.mkdir(parents=True)
        (folder / "ca.crt").write_bytes(tls_registry.ca_file.read_bytes())
        _answers(tls_registry.host)
        assert tunnels == [tls_registry.host] * 2
    finally:
        proxy.shutdown()
        proxy.server_close()


@pytest.mark.parametrize("variable", ["--ca-file", "MCPKIT_CA_FILE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
def test_a_ca_file_that_is_not_there_is_named(tls_registry: RunningRegistry, registry: RunningRegistry,
                                              tmp_path: Path, variable: str) -> None:
    """A CA file that does not exist: exit 2 naming where it was given (not an internal error), once TLS is
    needed -- a plain-HTTP loopback registry still works with the same setting."""
    missing = str(tmp_path / "no-such-ca.pem")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MCPKIT_", "DOCKER_CONFIG")) and k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
    env.update(MCPKIT_HOME=str(tmp_path / "mcpkit"), DOCKER_CONFIG=str(tmp_path / "none"), HOME=str(tmp_path))
    option = ["--ca-file", missing] if variable == "--ca-file" else []
    if not option:
        env[variable] = missing
    proc = _cli(env, "list", "--registry", f"{tls_registry.host}/test", *option)
    assert proc.returncode == 2, proc.stderr
    assert f"{variable} names {missing}, which does not exist" in proc.stderr
    plain = _cli(env, "list", "--registry", f"{registry.host}/test", *option)
    assert plain.returncode == 0, plain.stderr
