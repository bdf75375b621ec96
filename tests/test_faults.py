"""Faults: a registry that errors, hangs or dies, a full disk and Ctrl-C.

Each failure is a clear error within seconds (bounded retries, no oras-style minutes of
sleeping), the previous good cache entry is untouched, nothing partial is left, and the
next pull succeeds.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hatch_mcpkit.errors import RegistryError
from hatch_mcpkit.reference import parse_reference
from hatch_mcpkit.registry import RegistryClient
from hatch_mcpkit.store import BundleCache
from tests.builders import build_layout, check_cache_consistent, listing, make_project, push_project, snapshot
from tests.faultproxy import Fault, FaultProxy
from tests.plugins.registry import RunningRegistry, start_binary_registry

pytestmark = pytest.mark.registry

MCPKIT = [sys.executable, "-m", "hatch_mcpkit"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("MCPKIT_HOME", str(h))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    for key in ("MCPKIT_REGISTRY_USERNAME", "MCPKIT_REGISTRY_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    return h


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every RegistryClient made from here on waits at most 1 s for a connection or for data."""
    defaults = dict(RegistryClient.__init__.__kwdefaults__ or {})
    assert "timeout" in defaults
    defaults["timeout"] = (1.0, 1.0)
    monkeypatch.setattr(RegistryClient.__init__, "__kwdefaults__", defaults)


def cli_env(home: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCPKIT_", "DOCKER_CONFIG"))}
    env["MCPKIT_HOME"] = str(home)
    env["DOCKER_CONFIG"] = str(tmp_path / "no-docker-config")
    return env


@pytest.fixture
def previous(tmp_path: Path, registry: Any, fault_proxy: FaultProxy, repo_name: str, home: Path) -> dict[str, Any]:
    """A good v1 in the cache (through the proxy) and a newer v2 behind the same tag."""
    old = push_project(registry, make_project(tmp_path / "old", version="1.0.0"), tmp_path / "d1", repo_name, "v1")
    ref = fault_proxy.ref(repo_name, "v1")
    entry = BundleCache().pull(ref).path
    new = push_project(registry, make_project(tmp_path / "new", version="2.0.0", size=300_000), tmp_path / "d2",
                       repo_name, "v1")
    fault_proxy.clear()
    return {"ref": ref, "entry": entry, "before": snapshot(entry), "old": old, "new": new,
            "index": (home / "bundles" / "registry.json").read_bytes()}


def assert_previous_intact(state: dict[str, Any], home: Path) -> None:
    assert snapshot(state["entry"]) == state["before"], "the previous good entry changed"
    assert sorted(p.name for p in state["entry"].parent.iterdir()) == [state["entry"].name], "a partial entry"
    assert (home / "bundles" / "registry.json").read_bytes() == state["index"]
    check_cache_consistent(home)


def assert_next_pull_succeeds(state: dict[str, Any], home: Path) -> None:
    result = BundleCache().pull(state["ref"])
    assert result.changed and result.digest == state["new"].digest
    check_cache_consistent(home)


# --------------------------------------------------------------------------- 5xx and timeouts


def test_a_few_500s_are_retried(previous: dict[str, Any], fault_proxy: FaultProxy, home: Path) -> None:
    manifest = fault_proxy.add(Fault("status", method="GET", path="/manifests/", times=2, status=500))
    blob = fault_proxy.add(Fault("status", method="GET", path="/blobs/", times=1, status=503))
    assert_next_pull_succeeds(previous, home)
    assert manifest.hits == 2 and blob.hits == 1
    assert fault_proxy.count("GET", "/manifests/") == 3


@pytest.mark.parametrize("path", ["/manifests/", "/blobs/"])
def test_persistent_500s_give_a_clear_error_quickly(previous: dict[str, Any], fault_proxy: FaultProxy, home: Path,
                                                    path: str) -> None:
    fault = fault_proxy.add(Fault("status", method="GET", path=path, times=None, status=500))
    start = time.monotonic()
    with pytest.raises(RegistryError) as info:
        BundleCache().pull(previous["ref"])
    elapsed = time.monotonic() - start
    assert info.value.status == 500
    assert fault_proxy.host in str(info.value) and "injected fault" in str(info.value)
    assert fault.hits == 3, "three tries, no more"
    assert elapsed < 5
    assert_previous_intact(previous, home)
    fault_proxy.faults.clear()
    assert_next_pull_succeeds(previous, home)


@pytest.mark.parametrize("path", ["/manifests/", "/blobs/"])
def test_a_hung_registry_times_out_without_retrying(previous: dict[str, Any], fault_proxy: FaultProxy, home: Path,
                                                    short_timeouts: None, path: str) -> None:
    fault = fault_proxy.add(Fault("delay", method="GET", path=path, times=None, seconds=3.0))
    start = time.monotonic()
    with pytest.raises(RegistryError, match="stopped answering"):
        BundleCache().pull(previous["ref"])
    assert time.monotonic() - start < 2.5
    assert fault.hits == 1, "a timeout is not retried"
    assert_previous_intact(previous, home)
    fault_proxy.faults.clear()
    time.sleep(2.1)  # let the delayed handler finish
    assert_next_pull_succeeds(previous, home)


def test_dropped_connections_are_retried_a_bounded_number_of_times(previous: dict[str, Any],
                                                                   fault_proxy: FaultProxy, home: Path) -> None:
    once = fault_proxy.add(Fault("drop", method="GET", path="/blobs/", times=1))
    assert_next_pull_succeeds(previous, home)
    assert once.hits == 1
    BundleCache().remove(previous["ref"])
    always = fault_proxy.add(Fault("drop", method="GET", path="/manifests/", times=None))
    start = time.monotonic()
    with pytest.raises(RegistryError, match="cannot reach"):
        BundleCache().pull(previous["ref"])
    assert always.hits == 3 and time.monotonic() - start < 5


# --------------------------------------------------------------------------- the registry dies


@pytest.fixture
def private_registry(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A registry of our own (killable) whose storage survives a restart, behind a proxy."""
    work = tmp_path / "registry"
    holder: dict[str, Any] = {"reg": start_binary_registry("plain", work)}
    proxy = FaultProxy(holder["reg"].host).start()
    holder["proxy"] = proxy

    def restart() -> RunningRegistry:
        holder["reg"].kill()
        fresh = start_binary_registry("plain", work)  # same storage, new port
        holder["reg"] = fresh
        proxy.upstream = fresh.host
        return fresh

    holder["restart"] = restart
    try:
        yield holder
    finally:
        proxy.close()
        holder["reg"].stop()


def test_registry_killed_mid_pull(private_registry: dict[str, Any], tmp_path: Path, home: Path) -> None:
    proxy: FaultProxy = private_registry["proxy"]
    reg: RunningRegistry = private_registry["reg"]
    push_project(reg, make_project(tmp_path / "old"), tmp_path / "d1", "test/killed", "v1")
    ref = proxy.ref("test/killed", "v1")
    state: dict[str, Any] = {"ref": ref, "entry": BundleCache().pull(ref).path}
    state["before"] = snapshot(state["entry"])
    state["index"] = (home / "bundles" / "registry.json").read_bytes()
    state["new"] = push_project(reg, make_project(tmp_path / "new", version="2.0.0", size=300_000), tmp_path / "d2",
                                "test/killed", "v1")
    # the first layer download kills the registry and cuts the connection
    kill = proxy.add(Fault("call", method="GET", path=f"/blobs/{state['new'].module_layer.digest}",
                           action=reg.kill))
    start = time.monotonic()
    with pytest.raises(RegistryError) as info:
        BundleCache().pull(ref)
    assert time.monotonic() - start < 10
    assert kill.hits == 1 and reg.stopped
    assert proxy.host in str(info.value)
    assert_previous_intact(state, home)
    private_registry["restart"]()
    assert_next_pull_succeeds(state, home)


def test_registry_killed_mid_push(private_registry: dict[str, Any], tmp_path: Path, home: Path) -> None:
    proxy: FaultProxy = private_registry["proxy"]
    reg: RunningRegistry = private_registry["reg"]
    project = make_project(tmp_path / "proj", size=300_000)
    kill = proxy.add(Fault("call", method="PUT", path="/blobs/uploads/", action=reg.kill))
    with build_layout(project, tmp_path / "dist") as layout:
        start = time.monotonic()
        with RegistryClient(proxy.host) as client, pytest.raises(RegistryError) as info:
            client.push_layout(layout, "test/pushed", ["v1"])
        assert time.monotonic() - start < 10
        assert kill.hits == 1
        assert proxy.host in str(info.value)
        restarted = private_registry["restart"]()
        with restarted.client() as direct:  # nothing half-pushed is visible under the tag
            with pytest.raises(RegistryError) as missing:
                direct.get_manifest(parse_reference(f"{restarted.host}/test/pushed:v1"))
            assert missing.value.status == 404
        with RegistryClient(proxy.host) as client:
            assert client.push_layout(layout, "test/pushed", ["v1"]) == layout.manifest.digest
        digest = layout.manifest.digest
    result = BundleCache().pull(proxy.ref("test/pushed", "v1"))
    assert result.digest == digest
    check_cache_consistent(home)


# --------------------------------------------------------------------------- a full disk


@contextlib.contextmanager
def small_disk(path: Path, size: str = "2m") -> Iterator[str]:
    """A size-limited directory: a tmpfs when mounting is allowed (yields "tmpfs"), else "rlimit"."""
    path.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    ok = False
    if mount and os.geteuid() == 0:
        ok = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, check=False).returncode == 0
    try:
        yield "tmpfs" if ok else "rlimit"
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _limit_file_size() -> None:  # runs in the child before exec
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 1024 * 1024, 2 * 1024 * 1024))


def test_disk_full_keeps_the_previous_entry(tmp_path: Path, registry: Any, repo_name: str) -> None:
    with small_disk(tmp_path / "disk") as how:
        home = tmp_path / "disk" / "home"
        env = cli_env(home, tmp_path)
        preexec = _limit_file_size if how == "rlimit" else None
        push_project(registry, make_project(tmp_path / "old"), tmp_path / "d1", repo_name, "v1")
        ref = registry.ref(repo_name, "v1")
        first = subprocess.run([*MCPKIT, "pull", ref], env=env, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        entry = home / "bundles" / registry.host.replace(":", "_") / repo_name / "v1"
        before = snapshot(entry)
        index = (home / "bundles" / "registry.json").read_bytes()
        # v2 is bigger than the whole disk (or the file size limit)
        new = push_project(registry, make_project(tmp_path / "new", version="2.0.0", size=3 * 1024 * 1024),
                           tmp_path / "d2", repo_name, "v1")
        full = subprocess.run([*MCPKIT, "pull", ref], env=env, capture_output=True, text=True, timeout=60,
                              preexec_fn=preexec)
        assert full.returncode not in (0, 70), full.stderr  # 70 would be an internal error
        assert "Traceback" not in full.stderr
        assert full.stderr.startswith("mcpkit: error:"), full.stderr
        assert "space" in full.stderr.lower() or "too large" in full.stderr.lower(), full.stderr
        assert str(home) in full.stderr, "the message says where"
        assert snapshot(entry) == before
        assert (home / "bundles" / "registry.json").read_bytes() == index
        assert listing(home / "cache" / "downloads") == []
        check_cache_consistent(home)
        # once there is room, the pull works
        shutil.rmtree(entry)
        (home / "bundles" / "registry.json").unlink()
        if how == "tmpfs":
            subprocess.run(["mount", "-o", "remount,size=16m", str(tmp_path / "disk")], check=True)
        again = subprocess.run([*MCPKIT, "pull", ref], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert (entry / "module.wasm").stat().st_size == new.module_layer.size
        check_cache_consistent(home)


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_mid_transfer_keeps_the_previous_entry(previous: dict[str, Any], fault_proxy: FaultProxy,
                                                      home: Path, tmp_path: Path) -> None:
    slow = fault_proxy.add(Fault("throttle", method="GET", path=f"/blobs/{previous['new'].module_layer.digest}",
                                 times=1, size=16 * 1024, seconds=0.2))
    proc = subprocess.Popen([*MCPKIT, "bundle", "pull", previous["ref"]], env=cli_env(home, tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert slow.started.wait(30), "the transfer never started"
        time.sleep(0.3)
        part = [p for p in listing(home / "cache" / "downloads") if p.endswith(".part")]
        assert part, "a partial download exists while the transfer runs"
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert_previous_intact(previous, home)
    assert listing(home / "cache" / "downloads") == []
    assert_next_pull_succeeds(previous, home)
