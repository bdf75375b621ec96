"""A second attack pass, over what this release added: project bundles, the gateway, HTTP, foreign shapes.

Each test is one attack tried for real from the outside -- a cloned project (pyproject.toml +
mcpkit.lock + files beside them), a hostile registry or HTTP client -- driven through the real
``mcpkit`` command against the session's real registry, and asserts the *safe* outcome:

* a cloned project's trust policy names a "public key" that is ``/dev/stdin`` or a FIFO: a key is
  read as a bounded regular file, so ``mcpkit run``/``server``/``sync`` in that folder fail at once
  instead of waiting for ever (or eating the MCP client's messages from stdin);
* a cloned pyproject.toml or mcpkit.lock whose value is ``[[[[...`` nested 50,000 deep is a clear
  error naming the file (exit 2), not an internal error, for every command run in that folder;
* ``mcpkit sync --prune`` in a cloned project that names a repository another project of mine has
  locked at another digest leaves that project's bundle in the cache (docs: other projects' bundles
  are never touched), so the other project still serves;
* a cloned project whose ``mcpkit.lock`` is a folder: `mcpkit lock` says it cannot write the lock
  (exit 2), not "internal error" (`sync` already refused to read it);
* a cloned project draws no line of its own on the terminal: a key with a newline in its
  pyproject.toml or mcpkit.lock (any table), a lock ``reference`` or ``signed-by`` with one, or a
  served folder's config.yaml key -- every problem is one line, its controls escaped;
* ``--http``: a client that connects and never finishes its request headers (slowloris: no token
  needed) is disconnected after the header deadline, so unauthenticated connections cannot pile up
  until the server accepts no more; a client that sends its request is answered as before;
* stopped (regression): a project's ``policy`` narrowing holds in the running gateway: a bundle whose
  own config grants a writable host folder and an environment variable is served read-only, without
  the variable and without the tools left out, whatever the client asks;
* stopped (regression): ``--no-auth`` with addresses that are not loopback by the letter (``localhost.``,
  ``127.1``, ``0``, ``[::ffff:0.0.0.0]``) is refused; JSON-RPC batches, parse bombs, bad UTF-8 and
  unknown methods over HTTP are 4xx answers and the next call is served;
* stopped (regression): a podman auth.json login for ``HOST/orga`` is never sent for ``HOST/orga-evil``
  (a name it is a string prefix of) or ``HOST/orgb``, however the registry asks;
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests._support import REPO, run_mcpkit
from tests.builders import pushed_project
from tests.hostile_server import BASIC, SECRET, USER, Server, needs_basic, send, servers_fixture

servers = servers_fixture


# --------------------------------------------------------------------------- key files that are not files


@pytest.mark.registry
@pytest.mark.parametrize("kind", ["dev-stdin", "fifo"])
def test_a_cloned_projects_trust_key_that_is_not_a_file_is_refused_at_once(
        registry: Any, repo_name: str, tmp_path: Path, kind: str) -> None:
    """A git checkout can hold ``keys/team.pub -> /dev/stdin``; a tarball can hold a FIFO. The trust rule
    of the project's pyproject.toml names it; `mcpkit server NAME` in that folder opened it and waited:
    on a terminal for the user to type, under an MCP client reading the protocol messages meant for it."""
    home = tmp_path / "home"
    pushed_project(registry, tmp_path, repo_name, name="victim-tool")
    assert run_mcpkit("bundle", "pull", registry.ref(repo_name, "1"), home=home).returncode == 0
    project = tmp_path / "cloned"
    (project / "keys").mkdir(parents=True)
    key = project / "keys" / "team.pub"
    if kind == "fifo":
        os.mkfifo(key)
    else:
        key.symlink_to("/dev/stdin")
    (project / "pyproject.toml").write_text(
        '[project]\nname = "cloned"\nversion = "0"\n\n[tool.mcpkit.trust]\n'
        f'rules = [{{ match = "{registry.host}/**", keys = ["keys/team.pub"] }}]\n')
    reader, writer = os.pipe()  # stdin that stays open and silent, as an MCP client's is
    try:
        proc = run_mcpkit("server", "victim-tool", home=home, cwd=project, timeout=15, stdin=reader)
    except subprocess.TimeoutExpired:
        pytest.fail(f"mcpkit server waited on {kind} named as a public key by a cloned project")
    finally:
        os.close(writer)
        os.close(reader)
    assert proc.returncode == 1, proc.stderr
    assert "team.pub" in proc.stderr and "not a regular file" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- TOML nested past the reader


DEEP = "[" * 50_000 + "]" * 50_000


@pytest.mark.parametrize(("where", "command"), [("trust", "run"), ("bundles", "sync"), ("lock", "sync"),
                                                ("lock", "serve")])
def test_toml_nested_past_the_reader_is_a_clear_error(tmp_path: Path, where: str, command: str) -> None:
    """Every command run in a cloned folder reads its pyproject.toml's [tool.mcpkit.trust]; sync and serve
    read [tool.mcpkit.bundles] and mcpkit.lock. tomllib reads nesting by recursion."""
    project = tmp_path / "cloned"
    project.mkdir()
    body = f"[tool.mcpkit.trust]\nrules = {DEEP}\n" if where == "trust" else \
        f"[tool.mcpkit.bundles]\nx = {DEEP}\n" if where == "bundles" else \
        '[tool.mcpkit.bundles]\nx = "oci://127.0.0.1:9/a/b:1"\n'
    (project / "pyproject.toml").write_text(f'[project]\nname = "cloned"\nversion = "0"\n\n{body}')
    if where == "lock":
        (project / "mcpkit.lock").write_text(f"version = 1\nbundles = {DEEP}\n")
    args = ["run", "some-tool"] if command == "run" else [command, "--frozen"] if command == "sync" else [command]
    proc = run_mcpkit(*args, home=tmp_path / "home", cwd=project)
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 2, proc.stderr
    name = "mcpkit.lock" if where == "lock" else "pyproject.toml"
    assert name in proc.stderr and "nested too deeply" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- --prune and other projects


def _project(folder: Path, bundles: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(f'[project]\nname = "{folder.name}"\nversion = "0"\n\n'
                                           f'[tool.mcpkit.bundles]\n{bundles}')
    return folder


@pytest.mark.registry
def test_prune_in_a_cloned_project_never_removes_what_another_project_locked(
        registry: Any, repo_name: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    mine = pushed_project(registry, tmp_path, repo_name, name="weather", version="1.0.0", tag="1")
    theirs = pushed_project(registry, tmp_path, repo_name, name="weather", version="2.0.0", tag="2")
    app = _project(tmp_path / "app", f'weather = "oci://{registry.host}/{repo_name}:1"\n')
    cloned = _project(tmp_path / "cloned", f'w = "oci://{registry.host}/{repo_name}:2"\n')
    assert run_mcpkit("sync", home=home, cwd=app).returncode == 0
    proc = run_mcpkit("sync", "--prune", home=home, cwd=cloned)
    assert proc.returncode == 0, proc.stderr
    from hatch_mcpkit.store import BundleCache

    digests = {e.digest for e in BundleCache(home).entries()}
    assert {mine.digest, theirs.digest} <= digests, proc.stderr
    assert run_mcpkit("serve", home=home, cwd=app, timeout=30).returncode == 0  # stdin closed: serves, then ends
    # a lock that is gone (the other project deleted) protects nothing any more
    (app / "mcpkit.lock").unlink()
    proc = run_mcpkit("sync", "--prune", home=home, cwd=cloned)
    assert proc.returncode == 0 and mine.digest not in {e.digest for e in BundleCache(home).entries()}, proc.stderr


@pytest.mark.registry
def test_a_lock_that_is_a_folder_is_a_clear_error(registry: Any, repo_name: str, tmp_path: Path) -> None:
    pushed_project(registry, tmp_path, repo_name)
    cloned = _project(tmp_path / "cloned", f'w = "oci://{registry.host}/{repo_name}:1"\n')
    (cloned / "mcpkit.lock").mkdir()
    for command in ("lock", "sync"):
        proc = run_mcpkit(command, home=tmp_path / "home", cwd=cloned)
        assert "internal error" not in proc.stderr, proc.stderr
        said = "cannot write the lock" if command == "lock" else "is a folder, not a regular file"
        assert proc.returncode == 2 and "mcpkit.lock" in proc.stderr and said in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- podman logins by namespace


def test_a_namespace_login_goes_only_to_that_namespace(servers: Any, tmp_path: Path) -> None:
    import base64
    import json

    def route(handler: Any) -> None:
        if not needs_basic(handler):
            send(handler, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}',
                 {"Content-Type": "application/json"})

    server: Server = servers(route)
    auth = tmp_path / "auth.json"
    token = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
    auth.write_text(json.dumps({"auths": {f"{server.host}/orga": {"auth": token}}}))
    empty = tmp_path / "docker"
    empty.mkdir()
    env = {"REGISTRY_AUTH_FILE": str(auth), "DOCKER_CONFIG": str(empty), "HOME": str(tmp_path)}
    for repository in ("orga-evil/tool", "orgb/tool", "orgb/orga/tool"):
        proc = run_mcpkit("bundle", "pull", f"oci://{server.host}/{repository}:1", home=tmp_path / "home", **env)
        assert proc.returncode != 0
        assert not any(SECRET in (s.authorization or "") or s.authorization == BASIC for s in server.seen), \
            (repository, [s.path for s in server.credentials_seen()])
        assert SECRET not in proc.stderr
    proc = run_mcpkit("bundle", "pull", f"oci://{server.host}/orga/tool:1", home=tmp_path / "home", **env)
    assert proc.returncode == 3, proc.stderr  # the login was used here (then: no such manifest)
    assert any(s.authorization == BASIC and s.path.startswith("/v2/orga/tool/") for s in server.seen)


# --------------------------------------------------------------------------- HTTP: connections that never speak


def _closed_by_then(conn: Any, deadline: float) -> bool:
    """Whether the server closes ``conn`` before ``deadline`` (whatever it says first)."""
    import time

    while (left := deadline - time.monotonic()) > 0:
        conn.settimeout(left)
        try:
            if conn.recv(4096) == b"":
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


@pytest.mark.cargo
def test_connections_that_never_finish_their_headers_are_closed(hostile_bundle_dir: Path) -> None:
    import socket
    import time

    from hatch_mcpkit._http import HEADER_TIMEOUT
    from tests.plugins.clients import mcpkit_http

    with mcpkit_http("server", str(hostile_bundle_dir), "-q") as served:
        silent = socket.create_connection(("127.0.0.1", served.port))
        partial = socket.create_connection(("127.0.0.1", served.port))
        partial.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # ... and the rest never comes
        answered = socket.create_connection(("127.0.0.1", served.port))
        answered.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}")
        answered.settimeout(10)
        assert answered.recv(4096).startswith(b"HTTP/1.1 401 ")
        deadline = time.monotonic() + HEADER_TIMEOUT + 5
        for conn in (silent, partial):
            try:
                assert _closed_by_then(conn, deadline), \
                    f"a connection without a whole request was still open {HEADER_TIMEOUT + 5} s later"
            finally:
                conn.close()
        answered.close()


@pytest.mark.cargo
def test_no_auth_needs_an_address_that_is_loopback_by_the_letter(hostile_bundle_dir: Path, tmp_path: Path) -> None:
    for address in ("localhost.:0", "127.1:0", "0:0", "[::ffff:0.0.0.0]:0", "[::ffff:7f00:1]:0"):
        proc = run_mcpkit("server", str(hostile_bundle_dir), "--http", address, "--no-auth", home=tmp_path / "home")
        assert proc.returncode == 2 and "--no-auth is refused" in proc.stderr, (address, proc.stderr)


@pytest.mark.cargo
def test_hostile_json_rpc_over_http_is_answered_and_the_server_goes_on(hostile_bundle_dir: Path) -> None:
    import json

    import httpx2 as httpx

    from tests.plugins.clients import mcpkit_http

    call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "echo", "arguments": {"a": 1}}}
    hostile = [
        json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, {"jsonrpc": "2.0", "id": 2, "method": "ping"}]),
        "[" * 100_000, '{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo\\ud800"',
        b'{"jsonrpc": "2.0", "id": 4, "method": "ping", "x": "\xff\xfe"}',
        json.dumps({"jsonrpc": "2.0", "id": 5, "method": "x" * 100_000}),
        json.dumps({"jsonrpc": "2.0", "id": {"nested": [1]}, "method": "ping"}),
    ]
    with mcpkit_http("server", str(hostile_bundle_dir), "-q") as served:
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
                   "Authorization": f"Bearer {served.token}"}
        for body in hostile:
            data = body if isinstance(body, bytes) else body.encode()
            r = httpx.post(served.url, content=data, headers=headers, timeout=30)
            assert r.status_code < 500, (body[:60], r.status_code, r.text[:300])
        r = httpx.post(served.url, content=json.dumps(call).encode(), headers=headers, timeout=30)
        assert r.status_code == 200 and '\\"a\\":1' in r.text.replace(" ", ""), r.text[:300]
        served.stop()
        assert "Traceback" not in served.stderr, served.stderr[-3000:]


# --------------------------------------------------------------------------- the narrowing, end to end


@pytest.mark.cargo
@pytest.mark.registry
def test_a_projects_narrowing_holds_in_the_running_gateway(registry: Any, repo_name: str, hostile_wasm: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio
    import yaml

    from tests.plugins.clients import Project, lock_and_sync, push_bundle, write_pyproject
    from tests.test_gateway import stdio_session

    shared = tmp_path / "shared"
    shared.mkdir()
    config = yaml.safe_load((REPO / "tests" / "fixtures" / "hostile-tool" / "config.yaml").read_text())
    config["policy"]["storage"]["allow"].append({"uri": f"fs://{shared}", "guest": "/out", "access": ["read", "write"]})
    push_bundle(registry, tmp_path, f"{repo_name}/greedy", yaml.safe_dump(config), hostile_wasm.read_bytes(),
                {"data/hello.txt": "hello\n"})
    folder = write_pyproject(tmp_path / "app", f'[tool.mcpkit.bundles.g]\nref = "oci://{registry.host}/{repo_name}/greedy:1"\n'
                             'policy = { tools = ["env_dump", "write_file", "read_file"], read_only = true, '
                             'environment = [], limits = { timeout_ms = 500 } }\n')
    project: Project = lock_and_sync(folder, tmp_path / "home")
    (shared / "seen.txt").write_text("before")

    monkeypatch.setenv("HOSTILE_ALLOWED", "granted-by-the-bundle-but-narrowed-away")  # the server inherits it

    async def go() -> None:
        async with stdio_session(project) as s:
            names = sorted(t.name for t in (await s.list_tools()).tools)
            assert names == ["g__env_dump", "g__read_file", "g__write_file"]
            dumped = await s.call_tool("g__env_dump", {})
            assert "HOSTILE_ALLOWED" not in dumped.content[0].text
            wrote = await s.call_tool("g__write_file", {"path": "/out/seen.txt", "text": "after"})
            assert wrote.is_error, wrote.content
            read = await s.call_tool("g__read_file", {"path": "/out/seen.txt"})
            assert not read.is_error and "before" in read.content[0].text, read.content
            with pytest.raises(Exception, match="Unknown tool"):
                await s.call_tool("g__spin", {})

    anyio.run(go)
    assert (shared / "seen.txt").read_text() == "before"


# --------------------------------------------------------------------------- lines drawn by a cloned project

FORGED = "mcpkit: FORGED"
_DIGEST = "sha256:" + "a" * 64
_LOCK_ENTRY = f'digest = "{_DIGEST}"\nspec = "{_DIGEST}"\n[[bundles.w.layers]]\ntitle = "module.wasm"\n' \
    f'digest = "{_DIGEST}"\nsize = 1\n'


@pytest.mark.parametrize("where", ["lock-key", "lock-reference", "lock-signed-by", "bundles-key", "trust-key",
                                   "config-yaml-key"])
def test_a_cloned_project_cannot_draw_a_line_on_the_terminal(tmp_path: Path, where: str) -> None:
    project = tmp_path / "cloned"
    project.mkdir()
    forged = f"x\\n{FORGED} {where}"  # TOML/YAML escape: a real newline once read
    bundles = f'"{forged}" = "oci://127.0.0.1:9/a/b:1"\n' if where == "bundles-key" else 'w = "oci://127.0.0.1:9/a/b:1"\n'
    trust = f'[tool.mcpkit.trust]\n"{forged}" = 1\n' if where == "trust-key" else ""
    (project / "pyproject.toml").write_text(f'[project]\nname = "cloned"\nversion = "0"\n\n'
                                            f'[tool.mcpkit.bundles]\n{bundles}{trust}')
    reference = f"oci://127.0.0.1:9/a/b:1\\n{FORGED} {where}" if where == "lock-reference" else "oci://127.0.0.1:9/a/b:1"
    signed = f'signed-by = ["{forged}"]\n' if where == "lock-signed-by" else ""
    extra = f'[bundles."{forged}"]\nreference = "x"\n' if where == "lock-key" else ""
    (project / "mcpkit.lock").write_text(f'version = 1\n{extra}[bundles.w]\nreference = "{reference}"\n{signed}'
                                         f'{_LOCK_ENTRY}')
    if where == "config-yaml-key":
        folder = project / "tool"
        folder.mkdir()
        (folder / "module.wasm").write_bytes(b"\0asm\1\0\0\0")
        (folder / "config.yaml").write_text(f'version: "1.0"\nserver: {{name: t, version: 0.1.0}}\n"{forged}": 1\n'
                                            "mcp: {tools: [{name: t, description: d, input_schema: {type: object}}]}\n")
        args = ["server", str(folder)]
    else:
        args = ["sync", "--frozen"]
    proc = run_mcpkit(*args, home=tmp_path / "home", cwd=project)
    assert proc.returncode in (2, 4) and "mcpkit: error:" in proc.stderr, proc.stderr  # refused (4: a stale lock)
    assert not any(line.startswith(FORGED) for line in proc.stderr.splitlines()), proc.stderr
