"""The credential chain: explicit, config, environment, Docker config (auths, credHelpers, credsStore)."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from hatch_mcpkit.auth import Credentials, docker_config_path, resolve_credentials
from hatch_mcpkit.config import Auth
from hatch_mcpkit.errors import AuthError, ConfigError

SECRET = "s3cr3t-Value-never-shown"

HELPER = """#!/bin/sh
# a docker credential helper: answers "get" from a JSON file keyed by server URL
[ "$1" = get ] || exit 2
read -r server
echo "$server" >> "$HELPER_LOG"
python3 - "$server" <<'PY'
import json, os, sys
store = json.load(open(os.environ["HELPER_STORE"]))
entry = store.get(sys.argv[1])
if entry is None:
    print("credentials not found in native keychain")
    sys.exit(1)
print(json.dumps({"ServerURL": sys.argv[1], "Username": entry[0], "Secret": entry[1]}))
PY
"""


@pytest.fixture
def helper_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A real docker-credential-test executable on PATH, backed by a JSON store."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "docker-credential-test"
    exe.write_text(HELPER)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    store = tmp_path / "store.json"
    store.write_text(json.dumps({
        "registry.example.com": ["helper-user", SECRET],
        "https://index.docker.io/v1/": ["hub-user", SECRET],
        "tokens.example.com": ["<token>", SECRET],
    }))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    env = {
        "HELPER_STORE": str(store),
        "HELPER_LOG": str(tmp_path / "helper.log"),
        "DOCKER_CONFIG": str(tmp_path / "docker"),
    }
    for key, value in env.items():  # the helper process reads these
        monkeypatch.setenv(key, value)
    return env


def write_docker_config(env: dict[str, str], cfg: dict[str, object]) -> Path:
    path = Path(env["DOCKER_CONFIG"]) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return path


def test_repr_never_shows_the_secret() -> None:
    creds = Credentials("alice", SECRET, source="test")
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert SECRET not in text
        assert "alice" in text
    assert Credentials(None, None, identity_token=SECRET).__repr__().count(SECRET) == 0


def test_explicit_wins_over_everything(tmp_path: Path) -> None:
    env = {"MCPKIT_REGISTRY_USERNAME": "env-user", "MCPKIT_REGISTRY_PASSWORD": "x"}
    creds = resolve_credentials("ghcr.io", username="cli-user", password="p", config_auth=Auth("u", "${P}"),
                                environ=env)
    assert creds is not None
    assert (creds.username, creds.password, creds.source) == ("cli-user", "p", "command line")
    with pytest.raises(AuthError, match="lack a password"):
        resolve_credentials("ghcr.io", username="cli-user", environ={})


def test_config_auth_expands_variables() -> None:
    env = {"DEMO_USER": "cfg-user", "DEMO_TOKEN": SECRET, "MCPKIT_REGISTRY_USERNAME": "e",
           "MCPKIT_REGISTRY_PASSWORD": "e"}
    creds = resolve_credentials("ghcr.io", config_auth=Auth("${DEMO_USER}", "${DEMO_TOKEN}"), environ=env)
    assert creds is not None
    assert (creds.username, creds.password) == ("cfg-user", SECRET)
    assert creds.source.startswith("config")
    with pytest.raises(ConfigError, match="DEMO_TOKEN"):
        resolve_credentials("ghcr.io", config_auth=Auth("${DEMO_USER}", "${DEMO_TOKEN}"),
                            environ={"DEMO_USER": "x"})


def test_environment(tmp_path: Path) -> None:
    base = {"DOCKER_CONFIG": str(tmp_path / "none")}
    pair = {**base, "MCPKIT_REGISTRY_USERNAME": "u", "MCPKIT_REGISTRY_PASSWORD": SECRET}
    creds = resolve_credentials("r.example.com", environ={**pair, "MCPKIT_REGISTRY_HOST": "r.example.com"})
    assert creds is not None and (creds.username, creds.password) == ("u", SECRET)
    assert creds.source.startswith("environment")
    with pytest.raises(AuthError, match="MCPKIT_REGISTRY_PASSWORD is not set") as info:
        resolve_credentials("r.example.com", environ={**base, "MCPKIT_REGISTRY_USERNAME": "u"})
    assert SECRET not in str(info.value)


def test_environment_credentials_name_their_registry(tmp_path: Path) -> None:
    pair = {"DOCKER_CONFIG": str(tmp_path / "none"), "MCPKIT_REGISTRY_USERNAME": "u",
            "MCPKIT_REGISTRY_PASSWORD": SECRET}
    for other in ("evil.example.com", "r.example.com:5000", "r.example.com.evil.net"):
        assert resolve_credentials(other, environ={**pair, "MCPKIT_REGISTRY_HOST": "r.example.com"}) is None
    hub = resolve_credentials("registry-1.docker.io", environ={**pair, "MCPKIT_REGISTRY_HOST": "docker.io"})
    assert hub is not None and hub.password == SECRET
    with pytest.raises(AuthError, match="MCPKIT_REGISTRY_HOST") as info:
        resolve_credentials("r.example.com", environ=pair)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("env", "user"),
    [
        ({"GITHUB_TOKEN": SECRET, "GITHUB_ACTOR": "octocat"}, "octocat"),
        ({"GITHUB_TOKEN": SECRET, "GITHUB_USER": "hubber"}, "hubber"),
        ({"GITHUB_TOKEN": SECRET}, "token"),
    ],
)
def test_github_token_for_ghcr_only(tmp_path: Path, env: dict[str, str], user: str) -> None:
    env = {**env, "DOCKER_CONFIG": str(tmp_path / "none")}
    creds = resolve_credentials("ghcr.io", environ=env)
    assert creds is not None and (creds.username, creds.password) == (user, SECRET)
    assert resolve_credentials("quay.io", environ=env) is None


def test_docker_config_auths_forms(tmp_path: Path) -> None:
    env = {"DOCKER_CONFIG": str(tmp_path / "docker")}
    b64 = base64.b64encode(f"b64-user:{SECRET}".encode()).decode()
    write_docker_config(env, {"auths": {
        "https://r1.example.com/v1/": {"auth": b64},
        "r2.example.com:5000": {"username": "plain-user", "password": SECRET},
        "r3.example.com": {"identitytoken": SECRET},
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
    }})
    c1 = resolve_credentials("r1.example.com", environ=env)
    assert c1 is not None and (c1.username, c1.password) == ("b64-user", SECRET)
    assert c1.source.startswith("docker config")
    c2 = resolve_credentials("r2.example.com:5000", environ=env)
    assert c2 is not None and (c2.username, c2.password) == ("plain-user", SECRET)
    c3 = resolve_credentials("r3.example.com", environ=env)
    assert c3 is not None and c3.identity_token == SECRET and c3.password is None
    for hub in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        c4 = resolve_credentials(hub, environ=env)
        assert c4 is not None and c4.username == "hub"
    assert resolve_credentials("other.example.com", environ=env) is None
    assert resolve_credentials("r1.example.com", environ=env, use_docker_config=False) is None


def test_docker_config_is_default_under_home(tmp_path: Path) -> None:
    assert docker_config_path({"HOME": str(tmp_path)}) == tmp_path / ".docker" / "config.json"
    assert docker_config_path({"DOCKER_CONFIG": str(tmp_path / "d")}) == tmp_path / "d" / "config.json"


def test_cred_helpers_and_store(helper_env: dict[str, str]) -> None:
    write_docker_config(helper_env, {"credHelpers": {"registry.example.com": "test", "tokens.example.com": "test"},
                                     "credsStore": "test", "auths": {"registry.example.com": {}}})
    creds = resolve_credentials("registry.example.com", environ=helper_env)
    assert creds is not None and (creds.username, creds.password) == ("helper-user", SECRET)
    assert "credential helper 'test'" in creds.source
    token = resolve_credentials("tokens.example.com", environ=helper_env)
    assert token is not None and token.identity_token == SECRET and token.username is None
    # credsStore, with Docker Hub's server URL
    hub = resolve_credentials("docker.io", environ=helper_env)
    assert hub is not None and hub.username == "hub-user"
    # "not found" from the store is an answer: anonymous
    assert resolve_credentials("unknown.example.com", environ=helper_env) is None
    asked = Path(helper_env["HELPER_LOG"]).read_text().split()
    assert asked == ["registry.example.com", "tokens.example.com", "https://index.docker.io/v1/",
                     "unknown.example.com"]


def test_missing_helper_is_a_clear_error(tmp_path: Path) -> None:
    env = {"DOCKER_CONFIG": str(tmp_path / "docker")}
    write_docker_config(env, {"credsStore": "does-not-exist-anywhere"})
    with pytest.raises(AuthError, match="docker-credential-does-not-exist-anywhere is not on PATH"):
        resolve_credentials("r.example.com", environ=env)


def test_broken_docker_config(tmp_path: Path) -> None:
    env = {"DOCKER_CONFIG": str(tmp_path / "docker")}
    path = write_docker_config(env, {})
    path.write_text("{not json")
    with pytest.raises(AuthError, match="not valid JSON"):
        resolve_credentials("r.example.com", environ=env)
