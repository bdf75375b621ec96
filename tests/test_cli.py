"""The ``mcpkit`` command, run as a user runs it: a subprocess with MCPKIT_HOME in a temporary folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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


def interrupt_pull(env: dict[str, str], url: str) -> tuple[int, str]:
    """Start ``mcpkit pull URL`` (a trickling download), press Ctrl-C once bytes arrive: exit code and stderr."""
    exe = shutil.which("mcpkit")
    need(exe, "the mcpkit console script on PATH")
    assert exe is not None
    downloads = Path(env["MCPKIT_HOME"]) / "cache" / "downloads"
    proc = subprocess.Popen([exe, "pull", url], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
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
    return proc.returncode, err


def test_ctrl_c_exits_130_and_leaves_nothing(env: dict[str, str], slow_web: str) -> None:
    home = Path(env["MCPKIT_HOME"])
    code, err = interrupt_pull(env, slow_web)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert listing(home / "cache" / "downloads") == []
    assert not (home / "bundles" / "registry.json").exists()


# --------------------------------------------------------------------------- names in the cache


def _pull_into_cache(env: dict[str, str], registry, tmp_path: Path, repository: str, tag: str,  # type: ignore[no-untyped-def]
                     version: str = "1.0.0") -> str:
    """Push the demo project (``version`` changes its digest) to ``repository:tag`` and pull it; its digest."""
    from tests.builders import push_project

    project = make_demo_project(tmp_path / f"proj-{version}", version=version)
    manifest = push_project(registry, project, tmp_path / f"out-{repository.replace('/', '-')}-{tag}",
                            repository, tag)
    mcpkit(env, "pull", "-q", f"oci://{registry.host}/{repository}:{tag}")
    return str(manifest.digest)


@pytest.mark.registry
def test_one_bundle_under_two_references_is_picked(env: dict[str, str], tmp_path: Path, registry,  # type: ignore[no-untyped-def]
                                                   repo_name: str) -> None:
    """The same content pulled from two places is one bundle: its name finds it, with no ambiguity."""
    first = _pull_into_cache(env, registry, tmp_path, f"{repo_name}-a", "v1")
    second = _pull_into_cache(env, registry, tmp_path, f"{repo_name}-b", "v1")
    assert first == second
    assert len(json.loads(mcpkit(env, "list", "--json").stdout)) == 2
    view = json.loads(mcpkit(env, "inspect", "demo-tool", "--json").stdout)
    assert view["digest"] == first and view["reference"].endswith(f"{repo_name}-b:v1")  # the latest pull
    assert json.loads(mcpkit(env, "inspect", "demo-tool:v1", "--json").stdout)["digest"] == first


@pytest.mark.registry
def test_different_bundles_under_one_name_are_an_error_listing_each_way_to_choose(
        env: dict[str, str], tmp_path: Path, registry, repo_name: str) -> None:  # type: ignore[no-untyped-def]
    one = _pull_into_cache(env, registry, tmp_path, f"{repo_name}-a", "v1")
    two = _pull_into_cache(env, registry, tmp_path, f"{repo_name}-b", "v2", version="2.0.0")
    three = _pull_into_cache(env, registry, tmp_path, f"{repo_name}-c", "v2", version="3.0.0")
    assert len({one, two, three}) == 3
    proc = mcpkit(env, "inspect", "demo-tool", ok=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("mcpkit: error: 'demo-tool' is ambiguous: it matches 3 cached bundles with different content")
    ref = {d: f"oci://{registry.host}/{repo_name}-{x}:v{'1' if x == 'a' else '2'}"
           for d, x in ((one, "a"), (two, "b"), (three, "c"))}
    ways = {d: [f"demo-tool@{d}", ref[d]] for d in (one, two, three)}
    ways[one].append("demo-tool:v1")  # a tag only one of them has; v2 names two bundles, so it is not offered
    for digest, names in ways.items():
        for name in names:
            assert name in proc.stderr, (name, proc.stderr)
            assert json.loads(mcpkit(env, "inspect", name, "--json", "--offline").stdout)["digest"] == digest
    assert "demo-tool:v2" not in proc.stderr
    assert mcpkit(env, "inspect", "demo-tool:v2", ok=False).returncode == 2
    assert "hint: name the one you mean" in proc.stderr


@pytest.mark.registry
def test_name_tag_means_the_tag_first_then_the_version(env: dict[str, str], tmp_path: Path, registry,  # type: ignore[no-untyped-def]
                                                       repo_name: str) -> None:
    first = _pull_into_cache(env, registry, tmp_path, f"{repo_name}-a", "v1")  # version 1.0.0
    second = _pull_into_cache(env, registry, tmp_path, f"{repo_name}-b", "1.0.0", version="2.0.0")
    assert first != second

    def digest(name: str) -> str:
        return str(json.loads(mcpkit(env, "inspect", name, "--json", "--offline").stdout)["digest"])

    assert digest("demo-tool:1.0.0") == second  # a tag it was pulled by, though another declares version 1.0.0
    assert digest("demo-tool:2.0.0") == second  # no such tag: the version it declares
    assert digest("demo-tool:v1") == first


@pytest.mark.registry
def test_an_unknown_name_is_told_the_closest_cached_name(env: dict[str, str], tmp_path: Path, registry,  # type: ignore[no-untyped-def]
                                                         repo_name: str) -> None:
    _pull_into_cache(env, registry, tmp_path, repo_name, "v1")
    typo = mcpkit(env, "inspect", "demo-tol", ok=False)
    assert typo.returncode == 3
    assert "no cached bundle matches 'demo-tol'" in typo.stderr and "did you mean 'demo-tool'?" in typo.stderr
    tagged = mcpkit(env, "server", "--from-bundle", "demo-tol:v1", ok=False)
    assert tagged.returncode == 3 and "did you mean 'demo-tool:v1'?" in tagged.stderr
    other_tag = mcpkit(env, "rm", "demo-tool:v9", ok=False)
    assert other_tag.returncode == 3 and "cached as demo-tool:v1" in other_tag.stderr
    far = mcpkit(env, "inspect", "zzz", ok=False)
    assert far.returncode == 3 and "did you mean" not in far.stderr and "mcpkit bundle pull" in far.stderr


# --------------------------------------------------------------------------- pull progress


def _pull_on_a_terminal(env: dict[str, str], *args: str) -> tuple[int, str]:
    """``mcpkit pull ARGS`` with stderr on a pseudo-terminal (stdout piped): exit code and what the terminal got."""
    import pty

    exe = shutil.which("mcpkit")
    need(exe, "the mcpkit console script on PATH")
    assert exe is not None
    master, slave = pty.openpty()
    proc = subprocess.Popen([exe, "pull", *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave)
    os.close(slave)
    seen = bytearray()
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not data:
            break
        seen += data
    os.close(master)
    proc.communicate(timeout=60)
    return proc.returncode, seen.decode("utf-8", "replace")


@pytest.mark.registry
@pytest.mark.slow
def test_pull_progress_on_a_terminal_only(env: dict[str, str], tmp_path: Path, fault_proxy,  # type: ignore[no-untyped-def]
                                          registry, repo_name: str) -> None:
    from tests.builders import make_project, push_project
    from tests.faultproxy import Fault

    project = make_project(tmp_path / "big", size=2 * 1024 * 1024)  # a 2 MiB module, trickled below
    manifest = push_project(registry, project, tmp_path / "out", repo_name, "v1")
    module = manifest.module_layer

    def trickle() -> None:  # 128 KiB every 50 ms: a pull of about a second, a long one at this scale
        fault_proxy.add(Fault("throttle", method="GET", path=f"/blobs/{module.digest}", size=128 * 1024,
                              seconds=0.05))

    ref = fault_proxy.ref(repo_name, "v1")
    trickle()
    code, screen = _pull_on_a_terminal(env, ref)
    assert code == 0, screen
    updates = [u for u in re.split(r"[\r\n]", screen) if u.startswith("mcpkit: pulling ")]
    assert len(updates) >= 4, screen  # several redraws while the bytes arrive
    total = "2.0 MiB"
    assert all(f" / {total} " in u and u.endswith("/s\x1b[K") for u in updates), updates
    assert re.search(rf"pulling {re.escape(ref)}  {total} / {total}  100%  [0-9.]+ (KiB|MiB)/s\x1b\[K\r?\n", screen), screen
    assert len({u.split("  ")[1] for u in updates}) >= 3, updates  # the bytes done grow

    # a second pull has nothing to download: no progress at all
    _, again = _pull_on_a_terminal(env, ref)
    assert "mcpkit: pulling" not in again
    # -q silences it; so does a stderr that is not a terminal
    mcpkit(env, "rm", ref)
    trickle()
    code, quiet = _pull_on_a_terminal(env, "-q", ref)
    assert code == 0 and "mcpkit: pulling" not in quiet and "\r" not in quiet
    mcpkit(env, "rm", ref)
    trickle()
    piped = mcpkit(env, "pull", ref)
    assert "pulled" in piped.stdout
    assert piped.stderr == "", piped.stderr


# --------------------------------------------------------------------------- exit codes


class Run:
    """What an exit-code case may use: the environment, a folder, the session's registry, a trickling server."""

    def __init__(self, env: dict[str, str], tmp_path: Path, registry, repo_name: str, slow_web: str) -> None:  # type: ignore[no-untyped-def]
        self.env, self.tmp_path, self.registry, self.repo_name, self.slow_web = env, tmp_path, registry, repo_name, slow_web

    def __call__(self, *args: str) -> tuple[int, str]:
        proc = mcpkit(self.env, *args, ok=False)
        return proc.returncode, proc.stderr

    def pushed(self) -> str:
        """oci://REGISTRY/REPO, holding the demo bundle under the tag v1."""
        from tests.builders import push_project

        push_project(self.registry, make_demo_project(self.tmp_path / "proj"), self.tmp_path / "out",
                     self.repo_name, "v1")
        return f"oci://{self.registry.host}/{self.repo_name}"


def _stdout_closed(run: Run) -> tuple[int, str]:
    exe = shutil.which("mcpkit")
    assert exe is not None
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([exe, "list"], env=run.env, stdout=write_end, stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    os.close(read_end)  # nobody reads what it prints (as `mcpkit list | head -0`)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def _a_bug(run: Run) -> tuple[int, str]:
    # the one fault injected by hand: an internal error needs a bug, and there is no known one to trigger
    code = "import sys; from hatch_mcpkit import cli; cli._run = lambda argv: {}['bug']; sys.exit(cli.main(['list']))"
    proc = subprocess.run([sys.executable, "-c", code], env=run.env, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stderr


def _project_without_lock(run: Run) -> Path:
    folder = run.tmp_path / "project"
    folder.mkdir()
    (folder / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\n\n[tool.mcpkit.bundles]\n'
                                           f'demo = "{run.pushed()}:v1"\n')
    return folder


EXIT_CASES: dict[str, tuple[int, Callable[[Run], tuple[int, str]], str]] = {
    # id: (exit code, how to get it, what stderr says)
    "success": (0, lambda run: run("list"), ""),
    "registry-down": (1, lambda run: run("pull", "oci://127.0.0.1:9/demo/tool:1"), "cannot reach registry"),
    "usage": (2, lambda run: run("pull"), "the following arguments are required: URI"),
    "bad-reference": (2, lambda run: run("pull", "oci://127.0.0.1:5000/Bad_Repo:1"), "invalid repository path"),
    "bad-config": (2, lambda run: run("push", "--config", str(run.tmp_path / "nope.yaml")), "nope.yaml"),
    "missing-tag": (3, lambda run: run("pull", f"{run.pushed()}:nope"), ":nope not found in registry"),
    "missing-tag-inspect": (3, lambda run: run("inspect", f"{run.pushed()}:nope"), ":nope not found in registry"),
    "missing-tag-run": (3, lambda run: run("run", f"{run.pushed()}:nope"), ":nope not found in registry"),
    "missing-repository": (3, lambda run: run("pull", f"oci://{run.registry.host}/{run.repo_name}/none:v1"),
                           "not found in registry"),
    "not-cached": (3, lambda run: run("server", "--from-bundle", "no-such-tool"), "no cached bundle matches"),
    "stale-lock": (4, lambda run: run("sync", "--frozen", "--project", str(_project_without_lock(run))), "mcpkit.lock"),
    "internal-error": (70, _a_bug, "internal error: KeyError"),
    "interrupted": (130, lambda run: interrupt_pull(run.env, run.slow_web), "interrupted"),
    "stdout-closed": (141, _stdout_closed, ""),
}


def documented_exit_codes() -> set[int]:
    table = (Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md").read_text()
    return {int(code) for code in re.findall(r"^\| `(\d+)` \|", table, flags=re.M)}


def test_the_documented_exit_codes_are_the_ones_tested() -> None:
    assert documented_exit_codes() == {code for code, _, _ in EXIT_CASES.values()}


@pytest.mark.registry
@pytest.mark.parametrize("case", list(EXIT_CASES))
def test_documented_exit_code(case: str, env: dict[str, str], tmp_path: Path, registry, repo_name: str,  # type: ignore[no-untyped-def]
                              slow_web: str) -> None:
    expected, trigger, says = EXIT_CASES[case]
    code, err = trigger(Run(env, tmp_path, registry, repo_name, slow_web))
    assert code == expected, err
    assert says in err and "Traceback" not in err
    if expected in (1, 3):
        assert err.count("mcpkit: error: ") == 1, err  # one message (a `run` says first that it pulls)


def test_pull_progress_of_a_web_archive_with_and_without_a_declared_size(env: dict[str, str],
                                                                         tmp_path: Path) -> None:
    import http.server
    import io
    import tarfile
    import threading

    from tests.builders import make_project, tiny_module

    project = make_project(tmp_path / "web", module=tiny_module(os.urandom(1024 * 1024)))  # gzip cannot shrink it
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("module.wasm", "config.yaml", "README.md"):
            tar.add(project / name, arcname=name)
    body = buf.getvalue()

    class Trickle(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            if self.path == "/sized.tar.gz":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()  # else the body ends when the connection closes (HTTP/1.0)
            for i in range(0, len(body), 64 * 1024):
                self.wfile.write(body[i:i + 64 * 1024])
                self.wfile.flush()
                time.sleep(0.03)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        code, screen = _pull_on_a_terminal(env, f"{base}/sized.tar.gz")
        assert code == 0, screen
        updates = [u for u in re.split(r"[\r\n]", screen) if u.startswith("mcpkit: pulling ")]
        size = f"{len(body) / 1024 / 1024:.1f} MiB"
        assert len(updates) >= 3 and all(f" / {size} " in u for u in updates), screen
        assert re.search(rf"  {size} / {size}  100%  [0-9.]+ (KiB|MiB)/s\x1b\[K\r?\n", screen), screen

        code, screen = _pull_on_a_terminal(env, f"{base}/unsized.tar.gz")
        assert code == 0, screen
        updates = [u for u in re.split(r"[\r\n]", screen) if u.startswith("mcpkit: pulling ")]
        assert len(updates) >= 3 and not any(" / " in u for u in updates), screen  # no total to show
        assert re.search(r"/s\x1b\[K\r?\n", screen), screen  # the line is ended once the pull is over
    finally:
        server.shutdown()
        server.server_close()
