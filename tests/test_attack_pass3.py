"""A third attack pass over this release: siblings of the second pass's findings across the whole
code base, the foreign-bundle path, the library's project API, the HTTP transport and progress.

Each test is one attack tried for real -- a cloned project, a hostile registry or bundle, raw HTTP
sent to a running ``mcpkit server --http`` -- and asserts the *safe* outcome:

* a project's trust policy (``MCPKIT_HOME/trust.yaml`` or a pyproject ``key``) written after
  ``sync`` is enforced by ``lock.locked_bundles()`` itself, the function the docs give Python
  callers for "what mcpkit serve starts from", not only by the CLI's gateway;
* ``GET /mcp`` on the stateless HTTP server is 405: it was an SSE stream that never carries anything,
  held open for as long as the client liked (the TypeScript SDK opens one per session), and every
  graceful stop waited the whole grace for them, logging a traceback each;
* an OCI layout folder whose manifest declares a 1 TiB (sparse) layer is refused by
  ``--max-bundle-size`` before any blob is read, as archives and registry pulls are;
* ``mcpkit bundle push`` of a folder someone else made, whose module.wasm is a FIFO or a symlink to
  ``/dev/zero``: a clear error at once, not a hang or an internal error;
* under ``-vv`` a client's notification method with a newline cannot draw a log line of its own;
* calls cancelled while they queue for a concurrency slot are not waited for: no false warnings, no
  thread tied up for seconds each, no stop held up for minutes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests._support import MCPKIT, mcpkit_env, run_mcpkit
from tests.builders import make_project, pushed_project


def _project(folder: Path, bundles: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(f'[project]\nname = "app"\nversion = "0"\n\n[tool.mcpkit.bundles]\n{bundles}')
    return folder


# --------------------------------------------------------------------------- C1: the library's project API


@pytest.mark.registry
def test_locked_bundles_enforces_the_trust_policy_written_after_sync(
        registry: Any, repo_name: str, tmp_path: Path) -> None:
    """docs/project-bundles.md: "From Python, the same list is locked_bundles(find_project(), BundleCache())".
    A caller building its own server from that list must not serve what `mcpkit serve` refuses."""
    from hatch_mcpkit.errors import SignatureError
    from hatch_mcpkit.lock import locked_bundles
    from hatch_mcpkit.project import find_project
    from hatch_mcpkit.store import BundleCache

    home = tmp_path / "home"
    pushed_project(registry, tmp_path, repo_name, name="weather")
    app = _project(tmp_path / "app", f'weather = "oci://{registry.host}/{repo_name}:1"\n')
    proc = run_mcpkit("sync", home=home, cwd=app)
    assert proc.returncode == 0, proc.stderr
    assert [b.key for b in locked_bundles(find_project(app), BundleCache(home))] == ["weather"]
    (home / "trust.yaml").write_text("default: enforce\n")
    with pytest.raises(SignatureError, match="the trust policy requires a signature"):
        locked_bundles(find_project(app), BundleCache(home))
    (home / "trust.yaml").write_text("default: warn\n")
    said: list[str] = []
    assert len(locked_bundles(find_project(app), BundleCache(home), warn=said.append)) == 1
    assert said and "not verified" in said[0]


# --------------------------------------------------------------------------- C2: GET /mcp on a stateless server


def _read_response(conn: Any, timeout: float) -> bytes:
    """What the server sends on ``conn`` until it has sent a whole response without a body, or closes."""
    import time

    got = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in got and (left := deadline - time.monotonic()) > 0:
        conn.settimeout(left)
        try:
            chunk = conn.recv(4096)
        except TimeoutError:
            break
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.cargo
def test_a_get_stream_is_refused_so_it_cannot_hold_the_server(hostile_bundle_dir: Path) -> None:
    """The TypeScript SDK opens ``GET /mcp`` after initializing. Stateless, nothing can ever be sent on it,
    yet it was a 200 SSE stream kept open for as long as the client liked (a server task and ~85 KB each;
    measured: 300 of them all open 15 s later), and SIGTERM then waited the whole grace and logged a
    traceback per stream. The transport allows 405 for GET; the client then goes on without it."""
    import socket

    from tests.plugins.clients import mcpkit_http

    with mcpkit_http("server", str(hostile_bundle_dir), "-q") as served:
        conns = []
        for _ in range(20):
            conn = socket.create_connection(("127.0.0.1", served.port))
            conn.sendall(f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\nAccept: text/event-stream\r\n"
                         f"Authorization: Bearer {served.token}\r\n\r\n".encode())
            conns.append(conn)
        try:
            for conn in conns:
                answer = _read_response(conn, 10)
                assert answer.startswith(b"HTTP/1.1 405 "), answer[:200]
                assert b"text/event-stream" not in answer
            unauthenticated = socket.create_connection(("127.0.0.1", served.port))
            unauthenticated.sendall(f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n\r\n".encode())
            assert _read_response(unauthenticated, 10).startswith(b"HTTP/1.1 401 ")  # the token still comes first
            unauthenticated.close()
            assert served.stop() == 0
        finally:
            for conn in conns:
                conn.close()
        assert "Traceback" not in served.stderr and "graceful shutdown exceeded" not in served.stderr, served.stderr


# --------------------------------------------------------------------------- C3: a layout folder's declared sizes


def _layout_folder_with_a_huge_layer(tmp_path: Path, size: int) -> Path:
    """A valid bundle's OCI layout, unpacked to a folder, with one more layer: ``size`` bytes (sparse on disk)."""
    import hashlib
    import json
    import tarfile

    from tests.builders import build_archive

    built = build_archive(make_project(tmp_path / "src"), tmp_path / "out")
    folder = tmp_path / "layout"
    with tarfile.open(built.path) as tar:
        tar.extractall(folder, filter="data")
    blobs = folder / "blobs" / "sha256"
    index = json.loads((folder / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    fake = "ab" * 32
    with open(blobs / fake, "wb") as fh:
        fh.truncate(size)
    manifest["layers"].append({"mediaType": "application/octet-stream", "digest": f"sha256:{fake}", "size": size,
                               "annotations": {"org.opencontainers.image.title": "data/big.bin"}})
    raw = json.dumps(manifest).encode()
    digest = hashlib.sha256(raw).hexdigest()
    (blobs / digest).write_bytes(raw)
    index["manifests"][0].update(digest=f"sha256:{digest}", size=len(raw))
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def test_a_layout_folder_declaring_more_than_the_bundle_size_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """An archive is unpacked within --max-bundle-size, and a registry's layers are checked against it
    before download; a layout *folder* (a cloned repository, an unpacked download) had every blob hashed
    first, whatever it declared: a 1 TiB sparse file (nothing on disk) kept `inspect`, `run` and `server`
    reading zeros for many minutes before the digest failed."""
    folder = _layout_folder_with_a_huge_layer(tmp_path, 1 << 40)
    for command in (["inspect", str(folder)], ["run", str(folder)]):
        proc = run_mcpkit(*command, home=tmp_path / "home", timeout=60)
        assert proc.returncode == 1, proc.stderr[-500:]
        assert "maximum bundle size" in proc.stderr and "data/big.bin" in proc.stderr, proc.stderr[-500:]
        assert "internal error" not in proc.stderr


# --------------------------------------------------------------------------- C4: push of a folder someone else made


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
@pytest.mark.parametrize("form", ["folder", "files"])
def test_pushing_a_folder_whose_module_is_not_a_file_is_a_clear_error(tmp_path: Path, kind: str, form: str) -> None:
    """Mirroring a downloaded or cloned bundle folder (`mcpkit bundle push ./b oci://mine/...`): its
    module.wasm was read with a plain read after a size check that /dev/zero (size 0) passes -- a
    MemoryError, "internal error" (exit 70) -- and a FIFO held the command for ever. Sibling of A7/B1."""
    folder = make_project(tmp_path / "b")
    module = folder / "module.wasm"
    module.unlink()
    if kind == "fifo":
        os.mkfifo(module)
    else:
        module.symlink_to("/dev/zero")
    given = [str(folder)] if form == "folder" else [str(module), str(folder / "config.yaml")]
    proc = subprocess.run(["bash", "-c", 'ulimit -v 4000000; exec "$@"', "-", *MCPKIT, "bundle", "push", *given,
                           "oci://127.0.0.1:1/mirror/tool:1"], env=mcpkit_env(tmp_path / "home"), capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stderr[-500:]
    assert "module.wasm is a" in proc.stderr and "not a regular file" in proc.stderr, proc.stderr[-500:]
    assert "internal error" not in proc.stderr


# --------------------------------------------------------------------------- C5: log lines under -v/-vv


@pytest.mark.cargo
def test_a_client_cannot_draw_a_log_line_of_its_own(hostile_bundle_dir: Path, tmp_path: Path) -> None:
    """`mcpkit server -vv` logs the method of a notification it has no handler for; a client (or, over
    HTTP, any token holder) naming it ``"x\\nmcpkit: ..."`` printed a line of its own: the log filter kept
    newlines (for a guest's stderr, which is logged as a block). Now every line after a record's first is
    marked as its continuation."""
    import json

    forged = "\nmcpkit: INFO hatch_mcpkit.server: FORGED"
    messages = [
        {"jsonrpc": "2.0", "id": 0, "method": "initialize",
         "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "method": "notifications/x" + forged},
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
    ]
    proc = subprocess.run([*MCPKIT, "server", str(hostile_bundle_dir), "-vv"], capture_output=True, timeout=60,
                          input=b"".join(json.dumps(m).encode() + b"\n" for m in messages),
                          env=mcpkit_env(tmp_path / "home"), check=False)
    err = proc.stderr.decode()
    assert "notifications/x" in err, err[-2000:]  # the record was logged ...
    assert not [line for line in err.splitlines() if "FORGED" in line and line.startswith("mcpkit:")], err[-2000:]


# --------------------------------------------------------------------------- C6: cancelled while queued


@pytest.mark.cargo
@pytest.mark.parametrize("how", ["cancelled", "stdin-closed"])
def test_calls_cancelled_while_queued_for_a_slot_are_not_waited_for(hostile_bundle_dir: Path, tmp_path: Path,
                                                                    how: str) -> None:
    """A client queues 100 calls behind `--max-concurrency 1` and cancels them (or goes away). Each one that
    never got a slot was still "waited for" up to CANCEL_WAIT_S on a thread of anyio's default pool (40):
    the server logged 99 false "still running 5 s after it was cancelled" warnings and took ~15 s to exit
    (10,000 queued calls: over 20 minutes, shielded from every signal)."""
    import json
    import time

    from hatch_mcpkit.server import CANCEL_WAIT_S

    proc = subprocess.Popen([*MCPKIT, "server", str(hostile_bundle_dir), "-v", "--max-concurrency", "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=mcpkit_env(tmp_path / "home"))
    assert proc.stdin is not None and proc.stderr is not None
    messages: list[dict[str, Any]] = [
        {"jsonrpc": "2.0", "id": 0, "method": "initialize",
         "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        *({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "sleep", "arguments": {}}}
          for i in range(1, 101)),
    ]
    if how == "cancelled":
        messages += [{"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": i}}
                     for i in range(2, 101)]
    proc.stdin.write(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
    proc.stdin.flush()
    time.sleep(0.5)  # the calls are queued (and cancelled)
    start = time.monotonic()
    proc.stdin.close()
    try:
        proc.wait(timeout=120)
    finally:
        proc.kill()
    took = time.monotonic() - start
    err = proc.stderr.read().decode()
    assert "still running" not in err, err[-1500:]
    assert took < CANCEL_WAIT_S, f"the server took {took:.1f} s to stop"
