"""Secrets never leak, and plain HTTP never goes anywhere but loopback without --insecure.

Credentials come from config.yaml ``${VAR}``, the environment and docker config; after a push,
pull, list and inspect every captured output and every file under MCPKIT_HOME, dist and the
project is searched for the password and for its base64 basic-auth form.

The plain-HTTP checks run behind a guard that refuses (and records) any connection or name
lookup that is not loopback, so they send no traffic anywhere else even if a check regresses.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hatch_mcpkit.errors import AuthError, InvalidReferenceError, McpkitError, RegistryError
from hatch_mcpkit.registry import RegistryClient
from hatch_mcpkit.store import BundleCache
from tests.builders import build_layout, make_project, push_project
from tests.faultproxy import Fault, FaultProxy

MCPKIT = [sys.executable, "-m", "hatch_mcpkit"]
USER, PASSWORD = "testuser", "testpass"  # the auth registry's account (tests/plugins/registry.py)
FORBIDDEN = (PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
FAR = "10.255.255.1"  # never contacted: the guard refuses it


def assert_clean(*texts: str, roots: tuple[Path, ...] = ()) -> int:
    """No secret in any text or in any file under ``roots``; returns how many files were searched."""
    for text in texts:
        for secret in FORBIDDEN:
            assert secret not in text, f"secret in output: ...{text[max(0, text.find(secret) - 80):][:200]}"
    searched = 0
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file() and not p.is_symlink():
                data = p.read_bytes()
                searched += 1
                for secret in FORBIDDEN:
                    assert secret.encode() not in data, f"secret stored in {p}"
    return searched


def run(env: dict[str, str], *args: str, ok: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*MCPKIT, *args], env=env, capture_output=True, text=True, timeout=120, cwd=cwd)
    assert "Traceback" not in proc.stderr, proc.stderr
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCPKIT_", "DOCKER_CONFIG", "SEC_"))}
    env["MCPKIT_HOME"] = str(tmp_path / "home")
    env["DOCKER_CONFIG"] = str(tmp_path / "no-docker-config")
    env["SOURCE_DATE_EPOCH"] = "1700000000"
    return env


AUTH = ("${SEC_USER}", "${SEC_TOKEN}")  # distribution.auth, expanded by the publisher


@pytest.mark.registry
def test_credentials_from_config_env_and_docker_config_never_leak(auth_registry: Any, tmp_path: Path,
                                                                  base_env: dict[str, str], repo_name: str) -> None:
    home = Path(base_env["MCPKIT_HOME"])
    project = make_project(tmp_path / "proj", registry=f"{auth_registry.host}/{repo_name}", tags=("v1", "latest"),
                           auth=AUTH)
    outputs: list[str] = []

    # 1. push with distribution.auth from ${SEC_USER}/${SEC_TOKEN}
    env = {**base_env, "SEC_USER": USER, "SEC_TOKEN": PASSWORD}
    push = run(env, "bundle", "push", "--config", str(project / "config.yaml"))
    outputs += [push.stdout, push.stderr]
    ref = f"oci://{auth_registry.host}/{repo_name}:v1"
    assert f"pushed {ref}" in push.stdout
    # the built archive keeps the ${...} text, never the value
    with build_layout(project, tmp_path / "dist", environ={"SEC_USER": USER, "SEC_TOKEN": PASSWORD}) as layout:
        config_yaml = layout.read_blob(layout.manifest.layers[1].digest).decode()
    assert "${SEC_TOKEN}" in config_yaml

    # 2. pull, list, inspect with MCPKIT_REGISTRY_USERNAME / MCPKIT_REGISTRY_PASSWORD
    env = {**base_env, "MCPKIT_REGISTRY_USERNAME": USER, "MCPKIT_REGISTRY_PASSWORD": PASSWORD,
           "MCPKIT_REGISTRY_HOST": auth_registry.host}
    for args in (["pull", ref], ["list"], ["list", "--json"], ["inspect", ref, "--json"], ["inspect", ref],
                 ["inspect", "fault-tool", "--json"], ["list", "--registry", f"{auth_registry.host}/{repo_name}"]):
        proc = run(env, *args)
        outputs += [proc.stdout, proc.stderr]
        if args[:3] == ["inspect", ref, "--json"]:
            assert json.loads(proc.stdout)["digest"].startswith("sha256:")
    # refused credentials: the message does not echo them either
    wrong = run({**env, "MCPKIT_REGISTRY_PASSWORD": PASSWORD + "-nope"}, "pull", ref.replace(":v1", ":latest"),
                ok=False)
    assert wrong.returncode != 0 and PASSWORD + "-nope" not in wrong.stdout + wrong.stderr
    outputs += [wrong.stdout, wrong.stderr]

    # 3. docker config (auths), read only
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"auths": {auth_registry.host: {"auth": FORBIDDEN[1]}}}))
    before = (docker / "config.json").read_bytes()
    env = {**base_env, "DOCKER_CONFIG": str(docker), "MCPKIT_HOME": str(tmp_path / "home2")}
    for args in (["pull", ref.replace(":v1", ":latest")], ["inspect", ref, "--json"], ["list", "--json"]):
        proc = run(env, *args)
        outputs += [proc.stdout, proc.stderr]
    assert (docker / "config.json").read_bytes() == before

    # 4. a server started from the pulled bundle
    server = subprocess.run([*MCPKIT, "server", "--from-bundle", "fault-tool", "-vv"], env=env,
                            input="", capture_output=True, text=True, timeout=60)
    outputs += [server.stdout, server.stderr]

    searched = assert_clean(*outputs, roots=(home, tmp_path / "home2", tmp_path / "dist", project))
    assert searched >= 10
    assert (home / "bundles" / "registry.json").is_file() and (tmp_path / "home2" / "bundles").is_dir()


@pytest.mark.registry
def test_debug_logs_never_carry_credentials(auth_registry: Any, tmp_path: Path, repo_name: str,
                                            monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)  # hatch_mcpkit, urllib3 and everything else
    monkeypatch.setenv("MCPKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "none"))
    monkeypatch.setenv("MCPKIT_REGISTRY_USERNAME", USER)
    monkeypatch.setenv("MCPKIT_REGISTRY_PASSWORD", PASSWORD)
    monkeypatch.setenv("MCPKIT_REGISTRY_HOST", auth_registry.host)
    with build_layout(make_project(tmp_path / "p"), tmp_path / "dist") as layout, \
            auth_registry.client() as client:
        client.push_layout(layout, repo_name, ["v1"])
        text = repr(client) + repr(client._credentials)
    result = BundleCache().pull(f"oci://{auth_registry.host}/{repo_name}:v1")
    assert result.changed
    out, err = capfd.readouterr()
    assert "Authorization" not in caplog.text
    assert_clean(caplog.text, out, err, text, roots=(tmp_path / "home",))


# --------------------------------------------------------------------------- plain HTTP only for loopback


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse (and record) every connection and name lookup that is not loopback, in this process."""
    from hatch_mcpkit.reference import is_loopback

    attempts: list[str] = []
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else str(address)
        if self.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(str(host)):
            attempts.append(f"connect {host}")
            raise OSError(f"test guard: no traffic to {host}")
        return real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not is_loopback(str(host if not isinstance(host, bytes) else host.decode())):
            attempts.append(f"lookup {host}")
            raise socket.gaierror(f"test guard: no lookup of {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts


def test_plain_http_registry_client_is_refused_before_connecting(loopback_only: list[str]) -> None:
    for host in ("registry.invalid", FAR, "example.com:5000", "[2001:db8::1]:5000"):
        with pytest.raises(RegistryError, match="refusing plain HTTP") as info:
            RegistryClient(host, scheme="http")
        assert "--insecure" in str(info.value)
        assert RegistryClient(host).scheme == "https", "the default for a remote host is HTTPS"
        assert RegistryClient(host, insecure=True).scheme == "http", "--insecure allows it"
    assert RegistryClient("127.0.0.1:5000", scheme="http").scheme == "http"
    assert loopback_only == []


@pytest.mark.parametrize("url", [f"http://{FAR}/bundle.tar.gz", "http://registry.invalid:8080/b.tar.gz",
                                 "http://user:pw@example.invalid/b.tar.gz"])
def test_plain_http_archive_is_refused_before_connecting(url: str, loopback_only: list[str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPKIT_HOME", str(tmp_path / "home"))
    with pytest.raises(InvalidReferenceError, match="loopback") as info:
        BundleCache().pull(url)
    assert "https" in str(info.value)
    assert loopback_only == []
    assert not (tmp_path / "home" / "bundles").exists()


def test_cli_refuses_plain_http_without_insecure(tmp_path: Path, base_env: dict[str, str]) -> None:
    """The command line, with the same guard installed through sitecustomize."""
    guard = tmp_path / "guard"
    guard.mkdir()
    log = tmp_path / "attempts.log"
    (guard / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import socket
        _connect, _gai = socket.socket.connect, socket.getaddrinfo
        def _bad(host):
            from hatch_mcpkit.reference import is_loopback
            return not is_loopback(str(host))
        def connect(self, address):
            host = address[0] if isinstance(address, tuple) else address
            if self.family in (socket.AF_INET, socket.AF_INET6) and _bad(host):
                open({str(log)!r}, "a").write("connect %s\\n" % (host,))
                raise OSError("test guard")
            return _connect(self, address)
        def getaddrinfo(host, *a, **k):
            if host is not None and _bad(host):
                open({str(log)!r}, "a").write("lookup %s\\n" % (host,))
                raise socket.gaierror("test guard")
            return _gai(host, *a, **k)
        socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
    """))
    env = {**base_env, "PYTHONPATH": os.pathsep.join([str(guard), base_env.get("PYTHONPATH", "")])}
    proc = run(env, "pull", f"http://{FAR}/bundle.tar.gz", ok=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("mcpkit: error:") and "loopback" in proc.stderr and "--insecure" in proc.stderr
    proc = run(env, "run", f"http://{FAR}/bundle.tar.gz", ok=False)
    assert proc.returncode != 0 and "loopback" in proc.stderr
    assert not log.exists(), log.read_text()


@pytest.mark.registry
def test_token_service_on_plain_http_elsewhere_is_refused(fault_proxy: FaultProxy, loopback_only: list[str],
                                                          repo_name: str) -> None:
    """A loopback registry may not send credentials to a plain-HTTP token service elsewhere."""
    fault_proxy.add(Fault("status", status=401, times=None, headers={
        "Www-Authenticate": f'Bearer realm="http://{FAR}/token",service="evil",scope="repository:x:pull"'}))
    from hatch_mcpkit.auth import Credentials

    with RegistryClient(fault_proxy.host, credentials=Credentials(USER, PASSWORD, source="test")) as client, \
            pytest.raises(AuthError, match="plain-HTTP token service") as info:
        client.list_tags(repo_name)
    assert_clean(str(info.value))
    assert loopback_only == []


@pytest.mark.registry
def test_registry_redirect_to_plain_http_elsewhere_is_refused(fault_proxy: FaultProxy, registry: Any,
                                                              loopback_only: list[str], repo_name: str,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPKIT_HOME", str(tmp_path / "home"))
    manifest = push_project(registry, make_project(tmp_path / "p"), tmp_path / "d", repo_name, "v1")
    fault_proxy.add(Fault("status", method="GET", path=f"/blobs/{manifest.module_layer.digest}", status=307,
                          times=None, headers={"Location": f"http://{FAR}/blob"}))
    with pytest.raises(McpkitError, match="plain HTTP") as info:
        BundleCache().pull(fault_proxy.ref(repo_name, "v1"))
    assert FAR in str(info.value)
    assert loopback_only == []
    assert not (tmp_path / "home" / "bundles" / "registry.json").exists()


def test_archive_redirect_to_plain_http_elsewhere_is_refused(loopback_only: list[str], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import http.server
    import threading

    class Redirect(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"http://{FAR}/bundle.tar.gz")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MCPKIT_HOME", str(tmp_path / "home"))
    try:
        with pytest.raises(McpkitError, match=r"refusing a redirect to plain HTTP"):
            BundleCache().pull(f"http://127.0.0.1:{server.server_address[1]}/bundle.tar.gz")
    finally:
        server.shutdown()
        server.server_close()
    assert loopback_only == []
