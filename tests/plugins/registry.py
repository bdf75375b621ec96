"""Real OCI registries for the tests.

Two ways to run one, both real ``distribution`` registries:

* a container through testcontainers, with the image from ``MCPKIT_TEST_REGISTRY_IMAGE``
  (default ``registry:2``), when a Docker-compatible engine answers (``DOCKER_HOST``; see
  ``.ci/setup-registry.sh``, which sets up rootful podman and an image built from Debian's
  binary). Ports are published on 127.0.0.1 only; the blob storage is a bind mount so tamper
  tests can reach it.
* Debian's ``docker-registry`` binary run directly on a free loopback port (~30 ms).

Fixtures:

``registry``           plain HTTP, session-scoped; the container in CI (a missing engine fails
                       there), the container or the binary locally.
``auth_registry``      htpasswd (bcrypt) auth, user ``testuser`` / ``testpass``.
``tls_registry``       HTTPS with a self-signed certificate for 127.0.0.1 and localhost
                       (``.ca_file``).
``tls_auth_registry``  both.
``registry_factory``   start a private binary registry (``plain``/``auth``/``tls``/``tls-auth``)
                       that the test may stop or kill.
``repo_name``          a repository name unique to the test.

Session-scoped registries are shared: use ``repo_name`` so tests do not see each other.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests._support import IN_CI, need

USERNAME = "testuser"
PASSWORD = "testpass"
DEFAULT_IMAGE = "registry:2"
_STARTUP_TIMEOUT = 15.0


@dataclass
class RunningRegistry:
    """A registry the tests can talk to."""

    host: str  # "127.0.0.1:PORT"
    scheme: str  # "http" or "https"
    storage_dir: Path  # the registry's filesystem rootdirectory
    kind: str  # "container" or "binary"
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = None
    log_path: Path | None = None
    _stop: Callable[[], None] = field(default=lambda: None, repr=False)
    _kill: Callable[[], None] = field(default=lambda: None, repr=False)
    stopped: bool = False

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    def ref(self, repository: str, tag: str = "latest") -> str:
        return f"oci://{self.host}/{repository}:{tag}"

    def blob_data_path(self, digest: str) -> Path:
        """Where distribution's filesystem driver keeps a blob's bytes."""
        hexpart = digest.split(":", 1)[1]
        return self.storage_dir / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"

    def credentials(self) -> Any:
        from hatch_mcpkit.auth import Credentials

        if self.username is None:
            return None
        return Credentials(self.username, self.password, source="test")

    def client(self, **kwargs: Any) -> Any:
        """A RegistryClient set up for this registry (credentials and CA unless overridden)."""
        from hatch_mcpkit.registry import RegistryClient

        kwargs.setdefault("credentials", self.credentials())
        kwargs.setdefault("ca_file", self.ca_file)
        return RegistryClient(self.host, **kwargs)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self._stop()

    def kill(self) -> None:
        if not self.stopped:
            self.stopped = True
            self._kill()


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, ca_file: Path | None, deadline: float, alive: Callable[[], bool]) -> None:
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    while True:
        try:
            with urllib.request.urlopen(f"{url}/v2/", timeout=1, context=ctx):
                return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return
        except OSError:
            pass
        if not alive():
            raise RuntimeError(f"registry at {url} exited during start-up")
        if time.monotonic() > deadline:
            raise RuntimeError(f"registry at {url} did not answer within {_STARTUP_TIMEOUT} s")
        time.sleep(0.01)


def registry_binary() -> str | None:
    return os.environ.get("MCPKIT_REGISTRY_BIN") or shutil.which("docker-registry") or shutil.which("registry")


def make_htpasswd(path: Path, user: str = USERNAME, password: str = PASSWORD) -> None:
    htpasswd = shutil.which("htpasswd")
    need(htpasswd, "htpasswd (apt-get install apache2-utils; see .ci/setup-registry.sh)")
    assert htpasswd is not None
    out = subprocess.run([htpasswd, "-Bbn", user, password], check=True, capture_output=True, text=True)
    path.write_text(out.stdout)


def make_cert(directory: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    need(openssl, "openssl")
    assert openssl is not None
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "7",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def _config_yaml(addr: str, root: str, *, tls: tuple[str, str] | None, htpasswd: str | None) -> str:
    lines = [
        "version: 0.1",
        "log: {level: info, accesslog: {disabled: false}}",
        "storage:",
        f"  filesystem: {{rootdirectory: {root}}}",
        "  delete: {enabled: true}",
        "http:",
        f"  addr: {addr}",
        "  secret: test-only-secret",
    ]
    if tls:
        lines.append(f"  tls: {{certificate: {tls[0]}, key: {tls[1]}}}")
    if htpasswd:
        lines.append(f"auth: {{htpasswd: {{realm: test-realm, path: {htpasswd}}}}}")
    return "\n".join(lines) + "\n"


def start_binary_registry(mode: str = "plain", workdir: Path | None = None) -> RunningRegistry:
    """Run Debian's docker-registry on a free loopback port. ``mode``: plain, auth, tls, tls-auth."""
    binary = registry_binary()
    need(binary, "docker-registry binary (apt-get install docker-registry; see .ci/setup-registry.sh)")
    assert binary is not None
    work = workdir or Path(tempfile.mkdtemp(prefix="mcpkit-registry-"))
    work.mkdir(parents=True, exist_ok=True)
    storage = work / "data"
    storage.mkdir(exist_ok=True)
    tls = make_cert(work) if mode.startswith("tls") else None
    htpasswd = None
    if mode in ("auth", "tls-auth"):
        make_htpasswd(work / "htpasswd")
        htpasswd = str(work / "htpasswd")
    port = free_port()
    config = work / "config.yml"
    config.write_text(_config_yaml(f"127.0.0.1:{port}", str(storage),
                                   tls=(str(tls[0]), str(tls[1])) if tls else None, htpasswd=htpasswd))
    log_path = work / "registry.log"
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the process below
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    log.close()
    scheme = "https" if tls else "http"
    try:
        _wait_ready(f"{scheme}://127.0.0.1:{port}", tls[0] if tls else None,
                    time.monotonic() + _STARTUP_TIMEOUT, lambda: proc.poll() is None)
    except RuntimeError:
        proc.kill()
        proc.wait()
        raise

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    return RunningRegistry(
        host=f"127.0.0.1:{port}", scheme=scheme, storage_dir=storage, kind="binary",
        ca_file=tls[0] if tls else None,
        username=USERNAME if htpasswd else None, password=PASSWORD if htpasswd else None,
        log_path=log_path, _stop=stop, _kill=kill,
    )


def engine_answers() -> bool:
    """True when a Docker-compatible engine answers at DOCKER_HOST (or the default socket)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not Path(host[len("unix://"):]).exists():
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def start_container_registry(workdir: Path) -> RunningRegistry:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import HttpWaitStrategy

    image = os.environ.get("MCPKIT_TEST_REGISTRY_IMAGE", DEFAULT_IMAGE)
    storage = workdir / "data"
    storage.mkdir(parents=True, exist_ok=True)
    container = (
        DockerContainer(image)
        .with_exposed_ports(5000)
        .with_env("REGISTRY_STORAGE_DELETE_ENABLED", "true")
        .with_volume_mapping(str(storage), "/var/lib/registry", "rw")
        .waiting_for(HttpWaitStrategy(5000, "/v2/").with_poll_interval(0.05))
    )
    container.ports["5000"] = ("127.0.0.1", None)  # publish on loopback only
    container.start()
    try:
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(5000))
        if host not in ("127.0.0.1", "localhost"):
            host = "127.0.0.1"
    except Exception:
        container.stop()
        raise

    def stop() -> None:
        with contextlib.suppress(Exception):
            container.stop()

    def kill() -> None:
        with contextlib.suppress(Exception):
            container.get_wrapped_container().kill()
        stop()

    return RunningRegistry(host=f"{host}:{port}", scheme="http", storage_dir=storage, kind="container",
                           _stop=stop, _kill=kill)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A plain-HTTP registry shared by the session (a container when an engine answers)."""
    work = tmp_path_factory.mktemp("registry")
    if engine_answers():
        reg = start_container_registry(work)
    else:
        if IN_CI:
            need(False, "a Docker-compatible engine at DOCKER_HOST for the registry container "
                        "(run .ci/setup-registry.sh and source .ci/cache/registry-env.sh)")
        reg = start_binary_registry("plain", work)
    try:
        yield reg
    finally:
        reg.stop()


def _session_binary(tmp_path_factory: pytest.TempPathFactory, mode: str) -> Iterator[RunningRegistry]:
    reg = start_binary_registry(mode, tmp_path_factory.mktemp(f"registry-{mode}"))
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    yield from _session_binary(tmp_path_factory, "auth")


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    yield from _session_binary(tmp_path_factory, "tls")


@pytest.fixture(scope="session")
def tls_auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    yield from _session_binary(tmp_path_factory, "tls-auth")


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[Callable[[str], RunningRegistry]]:
    """Start private binary registries (mode: plain, auth, tls, tls-auth); stopped after the test."""
    started: list[RunningRegistry] = []

    def start(mode: str = "plain") -> RunningRegistry:
        reg = start_binary_registry(mode, tmp_path / f"registry-{len(started)}")
        started.append(reg)
        return reg

    yield start
    for reg in started:
        reg.stop()


@pytest.fixture
def repo_name(request: pytest.FixtureRequest) -> str:
    """A repository name unique to this test, valid under the OCI grammar."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower()).strip("-")
    while "--" in base:
        base = base.replace("--", "-")
    return f"test/{base[:60].strip('-')}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- bearer tokens


@dataclass
class TokenService:
    """A small JWT issuer for distribution's ``auth: token`` mode (RS256, x5c header).

    Grants what is asked for to ``testuser``/``testpass``; anonymous callers get ``pull`` only.
    ``requests`` records (user or None, [scopes]) per token request.
    """

    realm: str
    cert_path: Path
    requests: list[tuple[str | None, list[str]]]
    _shutdown: Callable[[], None]

    def stop(self) -> None:
        self._shutdown()


def start_token_service(work: Path, service: str = "test-registry", issuer: str = "test-issuer") -> TokenService:
    import datetime
    import http.server
    import json
    import threading
    import urllib.parse
    from base64 import b64decode, b64encode, urlsafe_b64encode

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = work / "token-cert.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    x5c = b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    log: list[tuple[str | None, list[str]]] = []

    def b64url(data: bytes) -> str:
        return urlsafe_b64encode(data).rstrip(b"=").decode()

    def make_token(user: str | None, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            resource, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            granted = wanted if user == USERNAME else [a for a in wanted if a == "pull"]
            access.append({"type": kind, "name": resource, "actions": granted})
        t = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [x5c]}
        claims = {"iss": issuer, "sub": user or "", "aud": service, "exp": t + 300, "nbf": t - 10, "iat": t,
                  "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            user: str | None = None
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                name, _, password = b64decode(header[6:]).decode().partition(":")
                if (name, password) != (USERNAME, PASSWORD):
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}')
                    return
                user = name
            scopes = query.get("scope", [])
            log.append((user, scopes))
            body = json.dumps({"token": make_token(user, scopes), "expires_in": 300}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def shutdown() -> None:
        server.shutdown()
        server.server_close()

    return TokenService(f"http://127.0.0.1:{server.server_address[1]}/token", cert_path, log, shutdown)


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[tuple[RunningRegistry, TokenService]]:
    """A binary registry in bearer-token mode with its token service; fresh per test."""
    binary = registry_binary()
    need(binary, "docker-registry binary (apt-get install docker-registry; see .ci/setup-registry.sh)")
    assert binary is not None
    tokens = start_token_service(tmp_path)
    storage = tmp_path / "data"
    storage.mkdir()
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(
        _config_yaml(f"127.0.0.1:{port}", str(storage), tls=None, htpasswd=None)
        + f"auth: {{token: {{realm: {tokens.realm}, service: test-registry, issuer: test-issuer, "
          f"rootcertbundle: {tokens.cert_path}}}}}\n"
    )
    log_path = tmp_path / "registry.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", None, time.monotonic() + _STARTUP_TIMEOUT,
                    lambda: proc.poll() is None)
        def stop() -> None:
            proc.terminate()
            proc.wait()

        def kill() -> None:
            proc.kill()
            proc.wait()

        reg = RunningRegistry(host=f"127.0.0.1:{port}", scheme="http", storage_dir=storage, kind="binary",
                              username=USERNAME, password=PASSWORD, log_path=log_path, _stop=stop, _kill=kill)
        yield reg, tokens
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
        tokens.stop()
