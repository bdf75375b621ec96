"""The ``mcpkit`` command, run as a user runs it: a subprocess with MCPKIT_HOME in a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._support import need
from tests.builders import DEMO_SECRET, build_layout, bundle_files, demo_environ, listing, make_demo_project
from tests.test_cache import CountingProxy, run_counting_proxy

PASSWORD = "testpass"  # the auth registry's password (tests/plugins/registry.py)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MCPKIT_", "DOCKER_CONFIG"))}
    e["MCPKIT_HOME"] = str(tmp_path / "home")
    e["MCPKIT_TEST_TOKEN"] = DEMO_SECRET
    e["DOCKER_CONFIG"] = str(tmp_path / "no-docker-config")
    e["SOURCE_DATE_EPOCH"] = "1700000000"
    # publishing expands config.yaml with the publisher's environment (pulling does not need it)
    e["MCPKIT_TEST_UNSET_DIR"] = "/tmp"
    return e


@pytest.fixture
def counting_proxy(registry) -> Iterator[CountingProxy]:  # type: ignore[no-untyped-def]
    with run_counting_proxy(registry.host) as proxy:
        yield proxy


def mcpkit(env: dict[str, str], *args: str, input: str | None = None, ok: bool = True,
           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("mcpkit")
    need(exe, "the mcpkit console script on PATH (pip install -e .)")
    assert exe is not None
    proc = subprocess.run([exe, *args], env=env, input=input, capture_output=True, text=True, timeout=120,
                          cwd=cwd)
    assert "Traceback" not in proc.stderr, proc.stderr
    for secret in (DEMO_SECRET, PASSWORD):
        assert secret not in proc.stdout + proc.stderr
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def configure(project: Path, registry_host: str, repository: str) -> None:
    text = (project / "config.yaml").read_text()
    text = text.replace("127.0.0.1:5000/demo/demo-tool", f"{registry_host}/{repository}")
    text = text.replace("  include:", "  tags: [v1, latest]\n  include:")
    (project / "config.yaml").write_text(text)


def test_version_and_help(env: dict[str, str]) -> None:
    from hatch_mcpkit import __version__

    assert mcpkit(env, "--version").stdout.strip() == f"mcpkit {__version__}"
    top = mcpkit(env, "--help").stdout
    for word in ("bundle", "push", "pull", "list", "inspect", "rm", "server", "run"):
        assert word in top
    push_help = mcpkit(env, "bundle", "push", "--help").stdout
    for option in ("--config", "--module", "--tag", "--username", "--password-stdin", "--insecure", "--ca-file"):
        assert option in push_help
    assert "--offline" in mcpkit(env, "pull", "--help").stdout
    bare = mcpkit(env, "bundle", ok=False)
    assert bare.returncode == 2 and "push" in bare.stderr


@pytest.mark.registry
def test_push_pull_list_inspect_rm(env: dict[str, str], tmp_path: Path, registry,  # type: ignore[no-untyped-def]
                                   repo_name: str, counting_proxy: CountingProxy) -> None:
    project = make_demo_project(tmp_path / "proj")
    configure(project, counting_proxy.host, repo_name)
    with build_layout(project, tmp_path / "expected", demo_environ()) as layout:
        expected = layout.manifest.digest
        config_digest = layout.manifest.config.digest

    # push --config: built from config.yaml + module.wasm, to distribution.registry with its tags
    out = mcpkit(env, "bundle", "push", "--config", str(project / "config.yaml")).stdout.splitlines()
    ref = f"oci://{counting_proxy.host}/{repo_name}"
    assert out == [f"digest: {expected}", f"pushed {ref}:v1", f"pushed {ref}:latest", f"pushed {ref}@{expected}"]

    # inspect a registry reference: manifest + config blob, no layer download
    counting_proxy.requests.clear()
    view = json.loads(mcpkit(env, "inspect", f"{ref}:v1", "--json").stdout)
    assert [p.rsplit("/", 1)[1] for p in counting_proxy.blob_gets()] == [config_digest]
    assert view["digest"] == expected and view["name"] == "demo-tool" and view["tools"] == ["echo", "add"]
    assert [layer["title"] for layer in view["layers"]][:2] == ["module.wasm", "config.yaml"]
    assert view["annotations"]["org.opencontainers.image.version"] == "1.0.0"
    text = mcpkit(env, "bundle", "inspect", f"{ref}:v1").stdout
    assert "module.wasm" in text and expected in text and "echo, add" in text

    # pull, then again (up to date), then offline
    pulled = mcpkit(env, "bundle", "pull", f"{ref}:v1").stdout
    assert f"{ref}:v1: pulled" in pulled and f"digest:  {expected}" in pulled
    path = Path(env["MCPKIT_HOME"]) / "bundles" / counting_proxy.host.replace(":", "_") / repo_name / "v1"
    assert f"path:    {path}" in pulled
    assert bundle_files(path) == bundle_files(project)
    assert "up to date" in mcpkit(env, "pull", f"{ref}:v1").stdout
    assert "found in cache" in mcpkit(env, "pull", f"{ref}:v1", "--offline").stdout

    table = mcpkit(env, "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "VERSION", "REFERENCE", "DIGEST", "SIZE", "PULLED"]
    assert table[1].split()[:4] == ["demo-tool", "1.0.0", f"{ref}:v1", expected.split(":")[1][:12]]
    rows = json.loads(mcpkit(env, "list", "--json").stdout)
    assert [(r["name"], r["digest"], r["path"]) for r in rows] == [("demo-tool", expected, str(path))]

    # the cache by name, and the registry listing
    cached = json.loads(mcpkit(env, "inspect", "demo-tool", "--json").stdout)
    assert cached["digest"] == expected and cached["path"] == str(path)
    tags = mcpkit(env, "list", "--registry", f"{counting_proxy.host}/{repo_name}").stdout.split()
    assert tags == [f"{ref}:latest", f"{ref}:v1"]
    assert f"{ref}:v1" in mcpkit(env, "list", "--registry", counting_proxy.host).stdout.split()

    removed = mcpkit(env, "rm", "demo-tool").stdout
    assert removed.strip() == f"removed {ref}:v1 ({path})"
    assert not path.exists()
    assert "no bundles cached" in mcpkit(env, "list").stdout
    missing = mcpkit(env, "rm", "demo-tool", ok=False)
    assert missing.returncode == 3 and missing.stderr.startswith("mcpkit: error: no cached bundle")


@pytest.mark.registry
def test_push_archive_and_module_pair(env: dict[str, str], tmp_path: Path, registry,  # type: ignore[no-untyped-def]
                                      repo_name: str) -> None:
    project = make_demo_project(tmp_path / "proj")
    with build_layout(project, tmp_path / "dist", demo_environ()) as layout:
        archive, digest = layout.source, layout.manifest.digest
    ref = f"oci://{registry.host}/{repo_name}"
    out = mcpkit(env, "push", str(archive), f"{ref}:a1").stdout.splitlines()
    assert out == [f"digest: {digest}", f"pushed {ref}:a1", f"pushed {ref}@{digest}"]
    out = mcpkit(env, "push", str(project / "module.wasm"), str(project / "config.yaml"), f"{ref}:p1",
                 "--tag", "p2").stdout.splitlines()
    assert out[1:3] == [f"pushed {ref}:p1", f"pushed {ref}:p2"]
    assert out[0] == f"digest: {digest}", "same inputs and SOURCE_DATE_EPOCH give the same digest"
    with registry.client() as client:
        assert sorted(client.list_tags(repo_name)) == ["a1", "p1", "p2"]


@pytest.mark.registry
def test_credentials_from_stdin_and_environment_never_printed(env: dict[str, str], tmp_path: Path,
                                                              auth_registry, repo_name: str) -> None:  # type: ignore[no-untyped-def]
    project = make_demo_project(tmp_path / "proj")
    ref = f"oci://{auth_registry.host}/{repo_name}:v1"
    denied = mcpkit(env, "push", str(project / "module.wasm"), ref, ok=False)
    assert denied.returncode != 0 and denied.stderr.startswith("mcpkit: error:")
    wrong = mcpkit(env, "push", str(project / "module.wasm"), ref, "--username", "testuser", "--password-stdin",
                   input="wrong-password\n", ok=False)
    assert wrong.returncode != 0 and "wrong-password" not in wrong.stdout + wrong.stderr
    out = mcpkit(env, "push", str(project / "module.wasm"), ref, "--username", "testuser", "--password-stdin",
                 input=f"{PASSWORD}\n").stdout
    assert f"pushed {ref}" in out

    anonymous = mcpkit(env, "pull", ref, ok=False)
    assert anonymous.returncode != 0
    env = {**env, "MCPKIT_REGISTRY_USERNAME": "testuser", "MCPKIT_REGISTRY_PASSWORD": PASSWORD,
           "MCPKIT_REGISTRY_HOST": auth_registry.host}
    pulled = mcpkit(env, "pull", ref).stdout
    assert "pulled" in pulled
    for p in Path(env["MCPKIT_HOME"]).rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert PASSWORD.encode() not in data and DEMO_SECRET.encode() not in data, p


def test_user_errors_are_one_message_with_exit_codes(env: dict[str, str], tmp_path: Path) -> None:
    missing = mcpkit(env, "pull", "no-such-tool", ok=False)
    assert missing.returncode == 3
    assert missing.stderr.startswith("mcpkit: error: no cached bundle matches 'no-such-tool'")
    assert "mcpkit bundle pull" in missing.stderr
    bad = mcpkit(env, "pull", "oci://127.0.0.1:5000/Bad_Repo:1", ok=False)
    assert bad.returncode == 2 and "invalid repository path component" in bad.stderr
    down = mcpkit(env, "pull", "oci://127.0.0.1:9/demo/tool:1", ok=False)
    assert down.returncode == 1 and down.stderr.startswith("mcpkit: error:")
    no_config = mcpkit(env, "push", "--config", str(tmp_path / "nope.yaml"), ok=False)
    assert no_config.returncode == 2 and "nope.yaml" in no_config.stderr


def test_debug_shows_the_traceback(env: dict[str, str]) -> None:
    exe = shutil.which("mcpkit")
    need(exe, "the mcpkit console script on PATH")
    assert exe is not None
    proc = subprocess.run([exe, "pull", "no-such-tool"], env={**env, "MCPKIT_DEBUG": "1"}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 3 and "Traceback" in proc.stderr


def test_server_and_run_are_delegated(env: dict[str, str]) -> None:
    try:
        import hatch_mcpkit.server  # noqa: F401
    except ImportError:
        proc = mcpkit(env, "server", "--from-bundle", "x", ok=False)
        assert proc.returncode == 1 and "runtime extras" in proc.stderr
        return
    for command in ("server", "run"):
        proc = mcpkit(env, command, "--help")
        assert command in proc.stdout
    proc = mcpkit(env, "server", "--from-bundle", "no-such-tool", ok=False)
    assert proc.returncode == 3 and "no cached bundle" in proc.stderr


def test_ctrl_c_exits_130_and_leaves_nothing(env: dict[str, str], slow_web: str) -> None:
    exe = shutil.which("mcpkit")
    need(exe, "the mcpkit console script on PATH")
    assert exe is not None
    home = Path(env["MCPKIT_HOME"])
    proc = subprocess.Popen([exe, "pull", slow_web], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    downloads = home / "cache" / "downloads"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the download is under way
        if any(p.is_file() and p.stat().st_size > 100_000 for p in downloads.rglob("*")):
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the download never started")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert listing(downloads) == []
    assert not (home / "bundles" / "registry.json").exists()
