"""The credential chain: explicit, config, environment, Docker config (auths, credHelpers, credsStore)."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from hatch_mcpkit.auth import Credentials, containers_auth_paths, docker_config_path, resolve_credentials
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


# --------------------------------------------------------------------------- podman / skopeo / buildah


def write_json(path: Path, cfg: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return path


def b64(user: str, password: str = SECRET) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, str]:
    """HOME, XDG_RUNTIME_DIR and DOCKER_CONFIG in a temporary folder (nothing of this machine's)."""
    return {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
            "DOCKER_CONFIG": str(tmp_path / "docker")}


def test_containers_auth_files_in_their_order(dirs: dict[str, str]) -> None:
    run_file = Path(dirs["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    config_file = Path(dirs["HOME"]) / ".config" / "containers" / "auth.json"
    assert containers_auth_paths(dirs) == [run_file, config_file]
    write_json(config_file, {"auths": {"r.example.com": {"auth": b64("config-user")},
                                       "only.example.com": {"auth": b64("config-only")}}})
    creds = resolve_credentials("r.example.com", environ=dirs)
    assert creds is not None and (creds.username, creds.password) == ("config-user", SECRET)
    assert creds.source == f"containers auth file ({config_file})"
    # $XDG_RUNTIME_DIR/containers/auth.json (podman login's default) comes first ...
    write_json(run_file, {"auths": {"r.example.com": {"auth": b64("run-user")}}})
    creds = resolve_credentials("r.example.com", environ=dirs)
    assert creds is not None and creds.username == "run-user"
    # ... but a file without an answer for this registry does not hide the next one
    creds = resolve_credentials("only.example.com", environ=dirs)
    assert creds is not None and creds.username == "config-only"
    # Docker's config comes before all of them
    write_docker_config(dirs, {"auths": {"r.example.com": {"auth": b64("docker-user")}}})
    creds = resolve_credentials("r.example.com", environ=dirs)
    assert creds is not None and creds.username == "docker-user" and creds.source.startswith("docker config")
    assert resolve_credentials("r.example.com", environ=dirs, use_docker_config=False) is None
    # without XDG_RUNTIME_DIR podman uses /run/containers/<uid>/auth.json
    no_runtime = {k: v for k, v in dirs.items() if k != "XDG_RUNTIME_DIR"}
    assert containers_auth_paths(no_runtime)[0] == Path(f"/run/containers/{os.getuid()}/auth.json")
    assert containers_auth_paths({**no_runtime, "XDG_CONFIG_HOME": "/xdg"})[1] == Path("/xdg/containers/auth.json")


def test_registry_auth_file_replaces_the_default_locations(dirs: dict[str, str], tmp_path: Path) -> None:
    write_json(Path(dirs["XDG_RUNTIME_DIR"]) / "containers" / "auth.json",
               {"auths": {"r.example.com": {"auth": b64("run-user")}, "x.example.com": {"auth": b64("x")}}})
    named = write_json(tmp_path / "ci-auth.json", {"auths": {"r.example.com": {"auth": b64("named-user")}}})
    env = {**dirs, "REGISTRY_AUTH_FILE": str(named)}
    assert containers_auth_paths(env) == [named]
    creds = resolve_credentials("r.example.com", environ=env)
    assert creds is not None and creds.username == "named-user"
    assert resolve_credentials("x.example.com", environ=env) is None, "the default files are not read"
    assert resolve_credentials("r.example.com", environ={**dirs, "REGISTRY_AUTH_FILE": str(tmp_path / "none")}) is None


def test_the_most_specific_auth_json_key_wins(dirs: dict[str, str], tmp_path: Path) -> None:
    env = {**dirs, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}
    write_json(tmp_path / "auth.json", {"auths": {
        "quay.io": {"auth": b64("host-user")},
        "quay.io/org": {"auth": b64("org-user")},
        "quay.io/org/tool": {"auth": b64("repo-user")},
        "https://legacy.example.com/v1/": {"auth": b64("legacy-user")},
        "docker.io/library": {"auth": b64("hub-library")},
    }})

    def user(registry: str, repository: str | None) -> str | None:
        creds = resolve_credentials(registry, repository=repository, environ=env)
        return None if creds is None else creds.username

    assert user("quay.io", "org/tool") == "repo-user"
    assert user("quay.io", "org/tool/sub") == "repo-user"
    assert user("quay.io", "org/other") == "org-user"
    assert user("quay.io", "orgx/tool") == "host-user", "a key matches whole path components only"
    assert user("quay.io", None) == "host-user"
    assert user("quay.io:443", "org/tool") is None, "another port is another registry"
    assert user("legacy.example.com", "a/b") == "legacy-user", "a key with a scheme names its host"
    assert user("registry-1.docker.io", "library/alpine") == "hub-library"
    assert user("evil.example.com", "quay.io/org/tool") is None


def test_auth_json_helpers_identity_tokens_and_no_creds_store(helper_env: dict[str, str], tmp_path: Path) -> None:
    env = {**helper_env, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}
    write_json(tmp_path / "auth.json", {
        "credHelpers": {"registry.example.com": "test"},
        "credsStore": "test",  # a Docker setting; containers auth files have none
        "auths": {"ident.example.com": {"identitytoken": SECRET}, "empty.example.com": {}},
    })
    creds = resolve_credentials("registry.example.com", environ=env)
    assert creds is not None and (creds.username, creds.password) == ("helper-user", SECRET)
    ident = resolve_credentials("ident.example.com", environ=env)
    assert ident is not None and ident.identity_token == SECRET
    assert resolve_credentials("docker.io", environ=env) is None
    assert resolve_credentials("empty.example.com", environ=env) is None
    assert Path(helper_env["HELPER_LOG"]).read_text().split() == ["registry.example.com"]


@pytest.mark.parametrize("content", ["{not json", '{"auths": {"r.example.com": {"auth": "!!notbase64"}}}',
                                     '{"auths": {"r.example.com": {"auth": "bm9jb2xvbg=="}}}'])
def test_a_broken_auth_json_is_a_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "auth.json"
    path.write_text(content)
    env = {"DOCKER_CONFIG": str(tmp_path / "none"), "REGISTRY_AUTH_FILE": str(path)}
    with pytest.raises(AuthError, match=str(path)) as info:
        resolve_credentials("r.example.com", environ=env)
    assert "not valid JSON" in str(info.value) or "auth entry for 'r.example.com'" in str(info.value)


def test_an_auth_file_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "auth.json"
    os.mkfifo(fifo)  # nobody writes: a plain open() would hang here
    with pytest.raises(AuthError, match="FIFO"):
        resolve_credentials("r.example.com", environ={"DOCKER_CONFIG": str(tmp_path / "none"),
                                                      "REGISTRY_AUTH_FILE": str(fifo)})
