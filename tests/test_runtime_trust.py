"""Attacks on the sandbox from a hostile bundle, each driven through the real runtime or server.

Every test here reproduces a way a bundle got out of its box (see docs/security.md) and
shows the safe outcome. Hand-written guests are WAT, compiled with ``wasmtime.wat2wasm``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hatch_mcpkit.errors import SandboxError
from hatch_mcpkit.runtime import HostLimits, Runtime, parse_allow_dir
from hatch_mcpkit.store import CodeCache

SERVER = [sys.executable, "-m", "hatch_mcpkit"]

PRELUDE = """
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
"""

GENUINE = "(module " + PRELUDE + """
  (memory (export "memory") 1)
  (data (i32.const 16) "{\\"content\\": \\"genuine\\"}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 22))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def wat_bundle(dest: Path, wat: str, *, tools: tuple[str, ...] = ("run",), limits: str = "",
               storage: str = "") -> Path:
    """A bundle folder whose module.wasm is ``wat``, with one tool per name."""
    import wasmtime

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "module.wasm").write_bytes(wasmtime.wat2wasm(wat))
    tool_lines = "".join(f"    - {{name: {t}, description: t, input_schema: {{type: object}}}}\n" for t in tools)
    (dest / "config.yaml").write_text(
        'version: "1.0"\nserver: {name: wat-guest, version: 0.1.0, description: test guest}\n'
        f"mcp:\n  tools:\n{tool_lines}"
        f"policy:\n  limits: {{{limits or 'timeout_ms: 3000, memory_mb: 16'}}}\n{storage}"
    )
    return dest


class Server:
    """``mcpkit server ARGS`` over raw stdio: initialize, then requests one at a time."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([*SERVER, "server", *args, "-q"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.next_id = 1
        self.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                    "clientInfo": {"name": "attack", "version": "0"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()

    def request(self, method: str, params: Any) -> dict[str, Any]:
        ident, self.next_id = self.next_id, self.next_id + 1
        self.send({"jsonrpc": "2.0", "id": ident, "method": method, "params": params})
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            assert line, f"the server exited: {self.stderr()}"
            frame = json.loads(line)
            if frame.get("id") == ident:
                return frame  # type: ignore[no-any-return]

    def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        frame = self.request("tools/call", {"name": tool, "arguments": arguments})
        assert "result" in frame, frame
        return frame["result"]  # type: ignore[no-any-return]

    def peak_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=30)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")


def launch_error(*args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([*SERVER, "server", *args, "-q"], input=b"", capture_output=True, timeout=60,
                          env=env, check=False)
    assert proc.returncode != 0, "the server started"
    assert proc.stdout == b""
    return proc.stderr.decode(errors="replace")


# ----------------------------------------------------------------- native code from the bundle


@pytest.mark.cargo
def test_cwasm_shipped_in_a_bundle_folder_is_never_loaded(hostile_wasm: Path, tmp_path: Path) -> None:
    """A folder ships ``module.cwasm`` (real native code for this engine, compiled from another
    module) plus the precompile record an older mcpkit trusted. Serving the folder must run the
    folder's module.wasm: the planted code would write a marker through the grant."""
    import wasmtime

    out = tmp_path / "out"
    out.mkdir()
    bundle = wat_bundle(tmp_path / "bundle", GENUINE, tools=("write_file",),
                        storage=f"  storage: {{allow: [{{uri: 'fs://{out}', guest: /out, access: [read, write]}}]}}\n")
    cfg = wasmtime.Config()
    cfg.epoch_interruption = True
    cfg.consume_fuel = False
    cfg.cranelift_opt_level = "speed"
    evil = bytes(wasmtime.Module(wasmtime.Engine(cfg), hostile_wasm.read_bytes()).serialize())
    (bundle / "module.cwasm").write_bytes(evil)
    settings = {"wasmtime": wasmtime_version(), "arch": os.uname().machine, "system": "Linux",
                "epoch_interruption": True, "consume_fuel": False, "cranelift_opt_level": "speed"}
    record = {
        "module_sha256": hashlib.sha256((bundle / "module.wasm").read_bytes()).hexdigest(),
        "cwasm_sha256": hashlib.sha256(evil).hexdigest(),
        "engine_fingerprint": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
        "engine": settings,
    }
    (bundle / "metadata.json").write_text(json.dumps({"precompiled": record}))
    args = {"path": "/out/marker", "text": "native code ran"}
    # the runtime itself never reads them (whoever hands it the folder)
    with Runtime.from_dir(bundle, code_cache=CodeCache(tmp_path / "home"), protected_paths=[tmp_path / "home"]) as rt:
        assert rt.module_source == "compiled"
        assert rt.call("write_file", args).content == [{"type": "text", "text": "genuine"}]
    assert not (out / "marker").exists(), "the bundle's own native code was loaded"
    # and through the command line: the folder is refused, or served with its own module.wasm
    env = {**os.environ, "MCPKIT_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([*SERVER, "server", str(bundle), "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "a", "version": "0"}}}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "write_file", "arguments": args}}
    out_bytes, err = proc.communicate(
        b"".join(json.dumps(m).encode() + b"\n" for m in (init, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                                                          call)), timeout=60)
    assert not (out / "marker").exists(), "the bundle's own native code was loaded by mcpkit server"
    if proc.returncode != 0:
        assert b"Compiled code is only ever made and loaded by the cache" in err
    else:
        assert b"genuine" in out_bytes


def wasmtime_version() -> str:
    from importlib.metadata import version

    return version("wasmtime")


# ----------------------------------------------------------------- store limits cover the total


def test_extra_memories_do_not_multiply_the_memory_limit(tmp_path: Path) -> None:
    memories = "".join(f"  (memory $m{i} 256)\n" for i in range(75))  # 75 x 16 MiB
    touches = "".join(f"    (i32.store8 $m{i} (i32.const 16777215) (i32.const 1))\n" for i in range(75))
    wat = f"(module {PRELUDE}\n  (memory (export \"memory\") 1)\n{memories}  (func (export \"_start\")\n{touches}))"
    with Runtime.from_dir(wat_bundle(tmp_path / "b", wat)) as rt:
        result = rt.call("run", {})
    assert result.is_error and result.reason == "memory", result.text
    assert "memory limit of 16 MiB" in result.text


def test_table_grow_is_capped_by_the_memory_limit(tmp_path: Path) -> None:
    wat = f"""(module {PRELUDE}
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (func (export "_start") (local $i i32)
    (block $done (loop $l
      (br_if $done (i32.eq (table.grow $t (ref.null func) (i32.const 1048576)) (i32.const -1)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 150)))))
    (call $exit (i32.add (i32.const 100) (local.get $i)))))"""
    with Runtime.from_dir(wat_bundle(tmp_path / "b", wat)) as rt:
        result = rt.call("run", {})
    assert result.reason == "exit", result.text
    grown = (result.exit_code or 0) - 100
    assert 0 <= grown <= 1, f"the table grew by {grown} Mi elements under memory_mb: 16"


# ----------------------------------------------------------------- write grants and bundle: grants


def test_write_grant_over_mcpkit_home_is_refused_at_launch(tmp_path: Path) -> None:
    """A bundle granted ``fs://~`` with write could plant code in another bundle's cache entry."""
    home = tmp_path / "user"
    victim = home / ".mcpkit" / "bundles" / "localhost" / "trusted" / "1"
    victim.mkdir(parents=True)
    bundle = wat_bundle(tmp_path / "bundle", GENUINE,
                        storage="  storage: {allow: [{uri: 'fs://~', guest: /home, access: [read, write]}]}\n")
    env = {**os.environ, "HOME": str(home), "MCPKIT_HOME": str(home / ".mcpkit")}
    err = launch_error(str(bundle), env=env)
    assert "MCPKIT_HOME" in err and str(home) in err and "refused" in err
    assert list(victim.iterdir()) == []


def test_write_grants_into_home_or_the_bundle_are_refused(tmp_path: Path) -> None:
    home = tmp_path / "mcpkit-home"
    (home / "bundles").mkdir(parents=True)
    bundle = wat_bundle(tmp_path / "bundle", GENUINE)
    (bundle / "data").mkdir()
    cases = [f"{home}:/h:rw", f"{home / 'bundles'}:/h:rw", f"{tmp_path}:/up:rw", f"{bundle}:/b:rw",
             f"{bundle / 'data'}:/d:rw"]
    for spec in cases:
        with pytest.raises(SandboxError) as info:
            Runtime.from_dir(bundle, extra_grants=[parse_allow_dir(spec)], protected_paths=[home])
        assert "refused" in str(info.value) and spec.split(":")[0] in str(info.value), spec
    # through a symlink as well
    (tmp_path / "innocent").symlink_to(home)
    with pytest.raises(SandboxError):
        Runtime.from_dir(bundle, extra_grants=[parse_allow_dir(f"{tmp_path / 'innocent'}:/x:rw")],
                         protected_paths=[home])
    # reading them, or writing beside them, stays possible
    side = tmp_path / "side"
    side.mkdir()
    with Runtime.from_dir(bundle, extra_grants=[parse_allow_dir(f"{home}:/h"), parse_allow_dir(f"{side}:/s:rw")],
                          protected_paths=[home]) as rt:
        assert [p.guest for p in rt.preopens] == ["/h", "/s"]


def test_write_grant_over_the_bundle_is_refused_through_the_cli(tmp_path: Path) -> None:
    bundle = wat_bundle(tmp_path / "bundle", GENUINE)
    env = {**os.environ, "MCPKIT_HOME": str(tmp_path / "home")}
    err = launch_error(str(bundle), "--allow-dir", f"{bundle}:/self:rw", env=env)
    assert "refused" in err and str(bundle) in err


def test_bundle_grant_symlinked_out_of_the_bundle_is_refused(tmp_path: Path) -> None:
    """A cloned repository's ``data`` is a symlink to the user's .ssh: the guest must not read it."""
    ssh = tmp_path / "user" / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY----- secret")
    bundle = wat_bundle(tmp_path / "bundle", GENUINE,
                        storage="  storage: {allow: [{uri: 'bundle:data', guest: /data, access: [read]}]}\n")
    (bundle / "data").symlink_to(ssh)
    with pytest.raises(SandboxError) as info:
        Runtime.from_dir(bundle)
    message = str(info.value)
    assert "bundle:data" in message and "outside the bundle" in message
    env = {**os.environ, "MCPKIT_HOME": str(tmp_path / "home")}
    err = launch_error(str(bundle), env=env)
    assert "outside the bundle" in err and "secret" not in err


# ----------------------------------------------------------------- a grant is the directory checked at launch


def swapper_wat(path: str, *, create: bool, swap: tuple[str, str]) -> str:
    """A guest that replaces the directory ``swap[0]`` of preopen 4 by a symlink to ``swap[1]`` (a
    relative path leaving the grant: WASI lets a guest create one), then opens ``path`` under
    preopen 3 -- created for writing when ``create``, else for reading -- and exits with the errno."""
    def data(at: int, text: str) -> str:
        escaped = "".join(f"\\{b:02x}" for b in text.encode())
        return f'(data (i32.const {at}) "{escaped}")'

    name, target = swap
    oflags, rights = (1, "0x1fffffff") if create else (0, "0x2")
    return f"""(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_remove_directory" (func $rmdir (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_symlink" (func $symlink (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  {data(100, name)} {data(200, target)} {data(300, path)}
  (func (export "_start")
    (drop (call $rmdir (i32.const 4) (i32.const 100) (i32.const {len(name)})))
    (drop (call $symlink (i32.const 200) (i32.const {len(target)}) (i32.const 4) (i32.const 100)
                         (i32.const {len(name)})))
    (call $exit (call $open (i32.const 3) (i32.const 0) (i32.const 300) (i32.const {len(path)}) (i32.const {oflags})
                            (i64.const {rights}) (i64.const {rights}) (i32.const 0) (i32.const 500)))))"""


def grants_yaml(*grants: tuple[Path, str, bool]) -> str:
    items = ", ".join(f"{{uri: 'fs://{host}', guest: {guest}, access: [{'read, write' if rw else 'read'}]}}"
                      for host, guest, rw in grants)
    return f"  storage: {{allow: [{items}]}}\n"


def test_a_write_grant_swapped_for_a_symlink_between_calls_stays_the_checked_directory(tmp_path: Path) -> None:
    """Write grants ``w`` and ``w/sub``: in call 1 the guest replaces ``sub`` by a symlink to ``../home``
    (MCPKIT_HOME). Opening the grant by path again in call 2 would hand the guest MCPKIT_HOME with
    write access (compiled code for the next run); it must get the directory checked at launch."""
    home = tmp_path / "home"
    (home / "compiled").mkdir(parents=True)
    work = tmp_path / "w"
    (work / "sub").mkdir(parents=True)
    wat = swapper_wat("compiled/planted.cwasm", create=True, swap=("sub", "../home"))
    bundle = wat_bundle(tmp_path / "b", wat, storage=grants_yaml((work, "/w", True), (work / "sub", "/sub", True)))
    with Runtime.from_dir(bundle, protected_paths=[home], code_cache=CodeCache(home)) as rt:
        assert [p.guest for p in rt.preopens] == ["/sub", "/w"]  # fd 3 is /sub, fd 4 is /w
        results = [rt.call("run", {}) for _ in range(2)]
    assert (work / "sub").is_symlink()  # the guest did swap it
    assert not (home / "compiled" / "planted.cwasm").exists(), "a guest wrote into MCPKIT_HOME"
    assert [r.exit_code for r in results] == [44, 44], "the guest created a file through the swapped grant"
    # the next launch checks the path again, and sees where it now leads
    with pytest.raises(SandboxError, match="refused"):
        Runtime.from_dir(bundle, protected_paths=[home])


def test_a_read_grant_swapped_for_a_symlink_between_calls_stays_the_checked_directory(tmp_path: Path) -> None:
    """Write grant ``w``, read grant ``w/keys``: the guest re-points ``keys`` at the user's ``.ssh``
    between calls; call 2 must still read the (now removed) folder granted at launch."""
    ssh = tmp_path / "secret"
    ssh.mkdir()
    (ssh / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY----- secret")
    work = tmp_path / "w"
    (work / "keys").mkdir(parents=True)
    wat = swapper_wat("id_ed25519", create=False, swap=("keys", "../secret"))
    bundle = wat_bundle(tmp_path / "b", wat, storage=grants_yaml((work, "/w", True), (work / "keys", "/keys", False)))
    with Runtime.from_dir(bundle, protected_paths=[tmp_path / "home"]) as rt:
        assert [p.guest for p in rt.preopens] == ["/keys", "/w"]
        results = [rt.call("run", {}) for _ in range(2)]
    assert (work / "keys").is_symlink()
    assert [r.exit_code for r in results] == [44, 44], "the guest opened the key through the swapped grant"


def test_a_folder_swapped_in_a_writable_grant_is_refused_at_the_next_launch(tmp_path: Path) -> None:
    """After the swap above, launching again must not follow the guest's symlink: ``w/sub -> ../notes``
    would turn the grant of ``w/sub`` into write access to a folder the user never granted."""
    notes = tmp_path / "notes"
    notes.mkdir()
    work = tmp_path / "w"
    work.mkdir()
    wat = swapper_wat("x", create=True, swap=("sub", "../notes"))
    for access in (True, False):  # a write grant, then a read grant of w/sub
        if (work / "sub").is_symlink():
            (work / "sub").unlink()
        (work / "sub").mkdir()
        bundle = wat_bundle(tmp_path / "b", wat, storage=grants_yaml((work, "/w", True), (work / "sub", "/sub", access)))
        with Runtime.from_dir(bundle, protected_paths=[tmp_path / "home"]) as rt:
            rt.call("run", {})
        assert (work / "sub").is_symlink()
        with pytest.raises(SandboxError, match="passes through the symlink") as info:
            Runtime.from_dir(bundle, protected_paths=[tmp_path / "home"])
        assert str(work / "sub") in str(info.value) and "/w" in str(info.value)
    assert list(notes.iterdir()) == []


def open_here(*paths: Path) -> list[str]:
    """Which of ``paths`` this process holds open."""
    fds = Path("/proc/self/fd")
    names = {str(p) for p in paths}
    found = []
    for fd in fds.iterdir():
        try:
            found.append(os.readlink(fd))
        except OSError:  # listdir's own fd, gone by now
            continue
    return sorted(n for n in found if n in names)


def test_granted_directories_are_held_open_only_while_the_runtime_is(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b-out"
    a.mkdir()
    b.mkdir()
    home = tmp_path / "home"
    bundle = wat_bundle(tmp_path / "b", GENUINE, storage=grants_yaml((a, "/a", False), (b, "/b", True)))
    rt = Runtime.from_dir(bundle, protected_paths=[home])
    assert open_here(a, b) == [str(a), str(b)]
    assert rt.call("run", {}).content == [{"type": "text", "text": "genuine"}]
    assert open_here(a, b) == [str(a), str(b)]
    rt.close()
    assert open_here(a, b) == []
    with pytest.raises(SandboxError, match="closed"):
        rt.call("run", {})  # a closed fd number may be another file by now: never preopened again
    # a launch refused after some grants were opened leaves nothing open either
    with pytest.raises(SandboxError, match="refused"):
        Runtime.from_dir(bundle, protected_paths=[home], extra_grants=[parse_allow_dir(f"{tmp_path}:/z:rw")])
    assert open_here(a, b) == []


@pytest.mark.parametrize("which", ["~/.mcpkit", "$MCPKIT_HOME"])
def test_with_home_elsewhere_every_other_home_is_out_of_reach(tmp_path: Path, which: str) -> None:
    """``mcpkit --home OTHER server``: a bundle granting itself write access over the user's usual
    ``~/.mcpkit`` (or ``$MCPKIT_HOME``) would plant compiled code for every later normal run."""
    user = tmp_path / "user"
    env = {**os.environ, "HOME": str(user)}
    env.pop("MCPKIT_HOME", None)
    if which == "~/.mcpkit":
        target, grant = user / ".mcpkit", "fs://~"
    else:
        target = tmp_path / "elsewhere" / "home"
        grant, env["MCPKIT_HOME"] = f"fs://{tmp_path / 'elsewhere'}", str(target)
    (target / "compiled").mkdir(parents=True)
    bundle = wat_bundle(tmp_path / "b", GENUINE,
                        storage=f"  storage: {{allow: [{{uri: '{grant}', guest: /g, access: [read, write]}}]}}\n")
    err = launch_error("--home", str(tmp_path / "other"), str(bundle), env=env)
    assert "refused" in err and "MCPKIT_HOME" in err and str(target) in err, err


def test_a_write_grant_over_the_symlink_leading_to_mcpkit_home_is_refused(tmp_path: Path) -> None:
    """MCPKIT_HOME reached through a symlink inside a folder the bundle may write (``w/link -> ../store``,
    home ``w/link/home``): the grant does not contain the home's *resolved* path, but the guest could
    re-point ``link`` to a folder of its own and so choose the compiled code the next run loads."""
    (tmp_path / "store" / "home").mkdir(parents=True)
    work = tmp_path / "w"
    work.mkdir()
    (work / "link").symlink_to("../store")
    bundle = wat_bundle(tmp_path / "b", GENUINE, storage=grants_yaml((work, "/w", True)))
    with pytest.raises(SandboxError, match="MCPKIT_HOME") as info:
        Runtime.from_dir(bundle, protected_paths=[work / "link" / "home"]).close()
    assert str(work / "link") in str(info.value)
    # read access to it stays possible
    with Runtime.from_dir(wat_bundle(tmp_path / "r", GENUINE, storage=grants_yaml((work, "/w", False))),
                          protected_paths=[work / "link" / "home"]) as rt:
        assert [p.guest for p in rt.preopens] == ["/w"]


@pytest.mark.parametrize("writable", ["w", "y"])
def test_every_symlink_on_the_way_to_a_protected_folder_is_fenced(tmp_path: Path, writable: str) -> None:
    """Two hops (``w/l1 -> $TMP/y/l2``, absolute, ``y/l2 -> ../store``): a write grant over the folder holding
    either link could re-point the way to MCPKIT_HOME; the bundle folder is fenced the same way."""
    (tmp_path / "store" / "home").mkdir(parents=True)
    for d in ("w", "y"):
        (tmp_path / d).mkdir()
    (tmp_path / "w" / "l1").symlink_to(tmp_path / "y" / "l2")
    (tmp_path / "y" / "l2").symlink_to("../store")
    granted = grants_yaml((tmp_path / writable, "/g", True))
    bundle = wat_bundle(tmp_path / "b", GENUINE, storage=granted)
    with pytest.raises(SandboxError, match="MCPKIT_HOME"):
        Runtime.from_dir(bundle, protected_paths=[tmp_path / "w" / "l1" / "home"])
    # a bundle folder run through such a path (``mcpkit run w/l1/b``)
    shipped = wat_bundle(tmp_path / "store" / "b", GENUINE, storage=granted)
    with pytest.raises(SandboxError, match="the bundle folder"):
        Runtime.from_dir(tmp_path / "w" / "l1" / "b", protected_paths=[tmp_path / "home"])
    assert shipped.is_dir()


# ----------------------------------------------------------------- host ceilings


FLOOD_FOREVER = f"""(module {PRELUDE}
  (memory (export "memory") 2)
  (func (export "_start")
    (memory.fill (i32.const 1024) (i32.const 120) (i32.const 65536))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $l (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))) (br $l))))"""


def test_host_output_ceiling_beats_the_bundles_limit(tmp_path: Path) -> None:
    bundle = wat_bundle(tmp_path / "b", FLOOD_FOREVER,
                        limits="timeout_ms: 3000, memory_mb: 16, max_output_kb: 100000000")
    env = {**os.environ, "MCPKIT_HOME": str(tmp_path / "home"), "MCPKIT_MAX_OUTPUT_KB": "2048"}
    server = Server(str(bundle), env=env)
    try:
        before = server.peak_rss_kib()
        started = time.monotonic()
        result = server.call("run", {})
        elapsed = time.monotonic() - started
        grown = server.peak_rss_kib() - before
    finally:
        assert server.close() == 0
    assert result["isError"] is True
    assert "output exceeded the limit of 2048 KiB" in result["content"][0]["text"]
    assert elapsed < 2.5, "the guest ran to its timeout instead of being stopped at the ceiling"
    assert grown < 48 * 1024, f"the server grew by {grown} KiB"


def test_host_limits_take_the_smaller_value(tmp_path: Path) -> None:
    host = HostLimits.from_env({"MCPKIT_MAX_MEMORY_MB": "8", "MCPKIT_MAX_TIMEOUT_MS": "500",
                                "MCPKIT_MAX_OUTPUT_KB": "4", "MCPKIT_MAX_FUEL": "1000000"})
    assert (host.memory_mb, host.timeout_ms, host.max_output_kb, host.fuel) == (8, 500, 4, 1_000_000)
    assert HostLimits.from_env({}) == HostLimits()
    bundle = wat_bundle(tmp_path / "b", FLOOD_FOREVER, limits="timeout_ms: 100000, memory_mb: 1024")
    with Runtime.from_dir(bundle, host_limits=host) as rt:
        limits = rt.limits("run")
        assert (limits.memory_mb, limits.timeout_ms, limits.max_output_kb, limits.fuel) == (8, 500, 4, 1_000_000)
        assert rt.consume_fuel  # a host fuel ceiling meters every call
        result = rt.call("run", {})
    assert result.reason == "output" and "4 KiB" in result.text
    for bad in ("0", "-3", "lots", "1e9"):
        with pytest.raises(Exception) as info:
            HostLimits.from_env({"MCPKIT_MAX_TIMEOUT_MS": bad})
        assert "MCPKIT_MAX_TIMEOUT_MS" in str(info.value)


SPIN = f"""(module {PRELUDE}
  (memory (export "memory") 1)
  (func (export "_start") (loop $l (br $l))))"""


def test_host_ceilings_from_the_command_line(tmp_path: Path) -> None:
    bundle = wat_bundle(tmp_path / "b", SPIN, limits="timeout_ms: 100000, memory_mb: 16")
    env = {**os.environ, "MCPKIT_HOME": str(tmp_path / "home"), "MCPKIT_MAX_TIMEOUT_MS": "5000"}
    server = Server(str(bundle), "--max-timeout-ms", "300", env=env)  # the option wins over the environment
    try:
        started = time.monotonic()
        result = server.call("run", {})
        elapsed = time.monotonic() - started
    finally:
        assert server.close() == 0
    assert result["isError"] is True and "timed out after 300 ms" in result["content"][0]["text"]
    assert elapsed < 2
    err = launch_error(str(bundle), env={**env, "MCPKIT_MAX_MEMORY_MB": "lots"})
    assert "MCPKIT_MAX_MEMORY_MB='lots'" in err
    assert "expected a whole number above 0" in launch_error(str(bundle), "--max-output-kb", "0", env=env)


# ----------------------------------------------------------------- poll_oneoff (the sleep replacement)


def _poll_guest(body: str) -> str:
    return f"""(module {PRELUDE}
  (memory (export "memory") 1)
  (func (export "_start") (local $r i32)
{body}))"""


def test_poll_oneoff_reads_the_clock_subscription_at_its_real_offsets(tmp_path: Path) -> None:
    # userdata 7, tag 0 (clock), clock id 1 at 16, junk in the padding 20..23, timeout 30 ms at 24
    wat = _poll_guest("""
    (i64.store (i32.const 0) (i64.const 7))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i32.store (i32.const 20) (i32.const -1))
    (i64.store (i32.const 24) (i64.const 30000000))
    (i64.store (i32.const 32) (i64.const 0))
    (i32.store16 (i32.const 40) (i32.const 0))
    (local.set $r (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
    (if (local.get $r) (then (call $exit (local.get $r))))
    (if (i64.ne (i64.load (i32.const 64)) (i64.const 7)) (then (call $exit (i32.const 99))))
    (if (i32.load16_u (i32.const 72)) (then (call $exit (i32.const 98))))
    (if (i32.load8_u (i32.const 74)) (then (call $exit (i32.const 97))))
    (if (i32.ne (i32.load (i32.const 128)) (i32.const 1)) (then (call $exit (i32.const 96))))
    (call $exit (i32.const 0))""")
    with Runtime.from_dir(wat_bundle(tmp_path / "b", wat)) as rt:
        started = time.monotonic()
        result = rt.call("run", {})
        elapsed = time.monotonic() - started
    assert not result.is_error and result.exit_code == 0, result.text
    assert 0.025 <= elapsed < 0.5, f"a 30 ms sleep took {elapsed:.3f}s"


@pytest.mark.parametrize(
    ("call", "errno"),
    [
        ("(call $poll (i32.const 0) (i32.const 0) (i32.const 5000000) (i32.const 0))", 28),  # millions: EINVAL
        ("(call $poll (i32.const 0) (i32.const 0) (i32.const -1) (i32.const 0))", 28),
        ("(call $poll (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))", 28),  # none
        ("(call $poll (i32.const 65530) (i32.const 0) (i32.const 1) (i32.const 0))", 21),  # EFAULT
        ("(call $poll (i32.const -16) (i32.const 0) (i32.const 1) (i32.const 0))", 21),
        ("(call $poll (i32.const 0) (i32.const 65520) (i32.const 1) (i32.const 0))", 21),
        ("(call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 65534))", 21),
    ],
)
def test_poll_oneoff_maps_every_bad_request_to_an_errno(tmp_path: Path, call: str, errno: int) -> None:
    # the subscription at 0 (if read) is a relative 1 ms clock
    wat = _poll_guest(f"""
    (i64.store (i32.const 24) (i64.const 1000000))
    (call $exit {call})""")
    with Runtime.from_dir(wat_bundle(tmp_path / "b", wat)) as rt:
        started = time.monotonic()
        result = rt.call("run", {})
        elapsed = time.monotonic() - started
        assert rt.call("run", {}).exit_code == errno  # and again: nothing stuck
    assert result.reason == "exit" and result.exit_code == errno, result.text
    assert elapsed < 1


def test_poll_oneoff_with_an_unknown_tag_is_einval(tmp_path: Path) -> None:
    wat = _poll_guest("""
    (i32.store8 (i32.const 8) (i32.const 9))
    (call $exit (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))""")
    with Runtime.from_dir(wat_bundle(tmp_path / "b", wat)) as rt:
        assert rt.call("run", {}).exit_code == 28


@pytest.mark.cargo
def test_a_50ms_sleep_answers_in_about_50ms_and_the_server_exits_0(hostile_bundle_dir: Path,
                                                                   tmp_path: Path) -> None:
    env = {**os.environ, "MCPKIT_HOME": str(tmp_path / "home")}
    server = Server(str(hostile_bundle_dir), env=env)
    try:
        server.call("echo", {})  # warm
        started = time.monotonic()
        result = server.call("nap", {})
        elapsed = time.monotonic() - started
        stopped = server.call("sleep", {})  # stopped mid-sleep at the 1 s timeout
    finally:
        code = server.close()
    assert result == {"content": [{"type": "text", "text": "rested"}], "isError": False}
    assert 0.045 <= elapsed < 0.5, f"a 50 ms sleep answered after {elapsed:.3f}s"
    assert stopped["isError"] is True and "timed out after 1000 ms" in stopped["content"][0]["text"]
    assert code == 0, server.stderr()


# ----------------------------------------------------------------- guest output and stderr


def test_deeply_nested_guest_output_is_a_clear_error(tmp_path: Path) -> None:
    depth = 100_000
    wat = f"""(module {PRELUDE}
  (memory (export "memory") 2)
  (data (i32.const 16) "{'[' * depth}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const {depth}))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""
    bundle = wat_bundle(tmp_path / "b", wat, limits="timeout_ms: 3000, memory_mb: 16, max_output_kb: 1024")
    with Runtime.from_dir(bundle) as rt:
        result = rt.call("run", {})
    assert result.is_error and result.reason == "invalid_output", result.text
    assert "nested more than" in result.text


def test_guest_stderr_is_terminal_safe(tmp_path: Path) -> None:
    wat = f"""(module {PRELUDE}
  (memory (export "memory") 1)
  (data (i32.const 16) "\\1b]52;c;cHduZWQ=\\07\\1b[2K\\e2\\80\\aefake line\\0a")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 33))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $exit (i32.const 1))))"""
    with Runtime.from_dir(wat_bundle(tmp_path / "b", wat)) as rt:
        result = rt.call("run", {})
    assert result.reason == "exit"
    for text in (result.stderr_tail, result.text):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
        assert "\\x1b]52;c;cHduZWQ=" in text and "fake line" in text


@pytest.mark.parametrize("start", [
    '(func (export "_start") (param i32))',
    '(func (export "_start") (result i32) (i32.const 7))',
    '(global (export "_start") i32 (i32.const 0))',
    '(memory (export "_start") 1)',
])
def test_a_start_export_that_is_not_a_plain_function_is_refused_at_load(tmp_path: Path, start: str) -> None:
    """``_start`` is called with no arguments straight through the C API: any other shape is refused up front."""
    from hatch_mcpkit.errors import ModuleError

    bundle = wat_bundle(tmp_path / "b", f"(module {start})")
    with pytest.raises(ModuleError, match="exports _start, but not as a function without parameters or results"):
        Runtime.from_dir(bundle, code_cache=CodeCache(tmp_path / "home"))


def test_a_trap_and_an_exit_through_the_bare_start_call_are_reported(tmp_path: Path) -> None:
    """Calling ``_start`` bare keeps wasmtime-py's trap handling: a trap and a non-zero exit are tool errors."""
    trap = wat_bundle(tmp_path / "trap", '(module (func (export "_start") unreachable))')
    exit_ = wat_bundle(tmp_path / "exit", """(module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start") (call $exit (i32.const 3))))""")
    with Runtime.from_dir(trap, code_cache=CodeCache(tmp_path / "home")) as rt:
        first, again = rt.call("run"), rt.call("run")
    assert (first.reason, again.reason) == ("trap", "trap")
    assert "the module panicked or aborted" in first.text
    with Runtime.from_dir(exit_, code_cache=CodeCache(tmp_path / "home")) as rt:
        result = rt.call("run")
    assert (result.reason, result.exit_code) == ("exit", 3)
    assert "exited with status 3" in result.text


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_module_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    """module.wasm replaced by a FIFO (a read would wait for a writer for ever) or a symlink to /dev/zero
    (endless): the runtime refuses it before reading, whoever built the Runtime."""
    import threading

    from hatch_mcpkit.errors import ModuleError

    bundle = wat_bundle(tmp_path / "b", '(module (func (export "_start")))')
    module = bundle / "module.wasm"
    module.unlink()
    if kind == "fifo":
        os.mkfifo(module)
    else:
        module.symlink_to("/dev/zero")
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            Runtime.from_dir(bundle, code_cache=CodeCache(tmp_path / "home")).close()
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive() and kind == "fifo":
        with open(module, "wb"):  # let the stuck reader go before failing
            pass
    assert not worker.is_alive() and outcome, "loading the module did not return"
    assert isinstance(outcome[0], ModuleError) and "not a regular file" in str(outcome[0]), outcome
