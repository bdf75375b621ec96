"""`mcpkit sync` pulls many bundles as one batch: one index write at the end, one client per registry.

What the batch must not cost: every entry is still installed whole (verified, renamed into place under
its lock) as it arrives; another process that meets an installed but not yet indexed entry finds it
intact; an entry that disappears before the index is written is not indexed, and the sync says so.
Driven through the real CLI against the session's registry; the moments in between are held open by
a gate on the recording proxy (tests.faultproxy), and connections are counted by a plain TCP relay.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hatch_mcpkit.lock import locked_bundles
from hatch_mcpkit.project import find_project
from hatch_mcpkit.store import BundleCache
from tests.builders import make_project, push_project
from tests.faultproxy import Fault, FaultProxy

pytestmark = pytest.mark.registry

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MCPKIT_HOME", str(tmp_path / "home"))


def _mcpkit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    from hatch_mcpkit.cli import main

    code = main(list(argv))
    return code, capsys.readouterr().err


def _project(registry: Any, tmp_path: Path, repo_name: str, host: str, count: int) -> tuple[Path, list[Any]]:
    manifests, lines = [], []
    for i in range(count):
        key = f"b{i}"
        root = make_project(tmp_path / f"src-{i}", name=f"tool{i}", seed=f"{repo_name}-{i}".encode())
        manifests.append(push_project(registry, root, tmp_path / f"out-{i}", f"{repo_name}/{key}", "1"))
        lines.append(f'{key} = "oci://{host}/{repo_name}/{key}:1"')
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\n\n[tool.mcpkit.bundles]\n'
                                           + "\n".join(lines) + "\n")
    return folder, manifests


def _indexed(home: Path) -> set[str]:
    index = home / "bundles" / "registry.json"
    if not index.exists():
        return set()
    return {row["digest"] for rows in json.loads(index.read_text()).values() for row in rows}


def _entry_dir(home: Path, digest: str) -> Path:
    return next(p.parent for p in (home / "bundles").rglob("metadata.json")
                if json.loads(p.read_text()).get("digest") == digest)


def _held_at(fault_proxy: FaultProxy, manifest: Any, action: Callable[[], None]) -> Fault:
    return fault_proxy.add(Fault("gate", method="GET", path=f"/blobs/{manifest.module_layer.digest}", action=action))


def test_entries_are_indexed_together_at_the_end_and_another_process_meanwhile_finds_them_intact(
    fault_proxy: FaultProxy, registry: Any, repo_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    folder, (first, second) = _project(registry, tmp_path, repo_name, fault_proxy.host, 2)
    assert _mcpkit(capsys, "lock", "--project", str(folder))[0] == 0
    home = tmp_path / "home"
    seen: dict[str, Any] = {}

    def meanwhile() -> None:  # the first bundle is installed, the second one is being downloaded
        seen["on disk"] = (_entry_dir(home, first.digest) / "module.wasm").is_file()
        seen["indexed"] = _indexed(home)
        layers = "|".join(d.digest for d in first.layers)
        downloads = fault_proxy.count("GET", f"/blobs/({layers})")
        ref = f"oci://{fault_proxy.host}/{repo_name}/b0@{first.digest}"
        seen["pull"] = subprocess.run([sys.executable, "-m", "hatch_mcpkit", "bundle", "pull", ref],
                                      env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                                      text=True, timeout=120)
        seen["downloaded"] = fault_proxy.count("GET", f"/blobs/({layers})") - downloads
        seen["indexed after"] = _indexed(home)

    fault_proxy.clear()
    gate = _held_at(fault_proxy, second, meanwhile)
    code, err = _mcpkit(capsys, "sync", "--frozen", "--jobs", "1", "--project", str(folder))
    assert code == 0, err
    assert gate.hits == 1
    assert seen["on disk"] and seen["indexed"] == set()  # installed whole, its row not written yet
    assert seen["pull"].returncode == 0, seen["pull"].stderr
    assert seen["downloaded"] == 0  # the other process found it intact: no layer fetched again
    assert seen["indexed after"] == {first.digest}
    assert _indexed(home) == {first.digest, second.digest}
    assert len(locked_bundles(find_project(folder), BundleCache())) == 2


def test_an_entry_gone_before_the_index_is_written_is_not_indexed_and_is_named(
    fault_proxy: FaultProxy, registry: Any, repo_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    folder, (first, second) = _project(registry, tmp_path, repo_name, fault_proxy.host, 2)
    assert _mcpkit(capsys, "lock", "--project", str(folder))[0] == 0
    home = tmp_path / "home"
    fault_proxy.clear()
    _held_at(fault_proxy, second, lambda: shutil.rmtree(_entry_dir(home, first.digest)))
    code, err = _mcpkit(capsys, "sync", "--frozen", "--jobs", "1", "--project", str(folder))
    assert code == 1, err
    assert f"/b0@{first.digest}" in err and "removed from" in err and "by another process" in err
    assert _indexed(home) == {second.digest}  # the index never points at a folder that is not there
    code, err = _mcpkit(capsys, "sync", "--frozen", "--project", str(folder))  # and the next sync repairs it
    assert code == 0 and "1 pulled, 1 already" in err, err
    assert _indexed(home) == {first.digest, second.digest}


class _Relay:
    """A plain TCP relay to ``upstream`` on loopback that counts the connections it is asked for."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            server = socket.create_connection(self.upstream)
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def relay(registry: Any) -> Iterator[_Relay]:
    relay = _Relay(registry.host)
    try:
        yield relay
    finally:
        relay.close()


def test_the_pulls_of_a_sync_share_one_client_per_registry(
    relay: _Relay, registry: Any, repo_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    folder, manifests = _project(registry, tmp_path, repo_name, relay.host, 6)
    assert _mcpkit(capsys, "lock", "--project", str(folder))[0] == 0
    before = relay.connections
    code, err = _mcpkit(capsys, "sync", "--frozen", "--jobs", "2", "--project", str(folder))
    assert code == 0 and "6 pulled" in err, err
    # one scheme probe, then at most two pulls x two requests side by side on kept-alive connections;
    # a client per pull would open at least two (probe + request) for each of the six
    assert relay.connections - before <= 5
    assert _indexed(tmp_path / "home") == {m.digest for m in manifests}


def test_each_batch_writes_its_own_rows_and_pulls_outside_a_batch_are_indexed_at_once(
    registry: Any, repo_name: str, tmp_path: Path,
) -> None:
    refs = []
    for i in range(3):
        root = make_project(tmp_path / f"src-{i}", name=f"tool{i}", seed=f"{repo_name}-own-{i}".encode())
        manifest = push_project(registry, root, tmp_path / f"out-{i}", f"{repo_name}/own{i}", "1")
        refs.append((f"oci://{registry.host}/{repo_name}/own{i}@{manifest.digest}", manifest.digest))
    home = tmp_path / "home"
    store = BundleCache(home)
    with store.batch() as outer:
        outer.pull(refs[0][0])
        store.pull(refs[1][0])  # not through the batch: indexed as it is installed
        assert _indexed(home) == {refs[1][1]}
        with store.batch() as inner:  # a second batch at the same time keeps its own rows
            inner.pull(refs[2][0])
        assert _indexed(home) == {refs[1][1], refs[2][1]}
    assert _indexed(home) == {digest for _, digest in refs}
