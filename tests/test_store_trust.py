"""Attacks on the store and the command line, run as a user meets them: a real ``mcpkit`` subprocess,
a hostile bundle built in the test, a real registry or a small hostile one written here.

* a folder in the working directory named like a cached bundle never shadows it;
* a ``.mcpkit.tar``, a layout or a bundle folder shipping ``module.cwasm`` / ``metadata.json`` is refused;
* a sparse archive declaring a 4 GiB member is refused before anything is unpacked;
* a manifest declaring a 50 GB layer is refused before any blob is requested;
* a tampered cache entry (module.wasm changed, files planted) is repaired by the next pull;
* a killed pull's work directory is swept by the next pull (its owner process is gone);
* terminal control sequences in annotations, descriptions and registry answers never reach the terminal.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._support import need
from tests.builders import DEMO_SECRET, build_archive, demo_environ, listing, make_demo_project

ESC = "\x1b"
OSC52 = f"{ESC}]52;c;cm0gLXJmIH4K\a"  # "write 'rm -rf ~' to the clipboard"
CURSOR = f"{ESC}[2A{ESC}[2K\r"  # up two lines, erase the line


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MCPKIT_", "DOCKER_CONFIG"))}
    e["MCPKIT_HOME"] = str(tmp_path / "home")
    e["DOCKER_CONFIG"] = str(tmp_path / "no-docker-config")
    e["MCPKIT_TEST_UNSET_DIR"] = "/tmp"
    e["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    return e


def mcpkit(env: dict[str, str], *args: str, ok: bool = True, cwd: Path | None = None,
           input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("mcpkit")
    need(exe, "the mcpkit console script on PATH (pip install -e .)")
    assert exe is not None
    proc = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          input=input)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert DEMO_SECRET not in proc.stdout + proc.stderr
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def list_tools(env: dict[str, str], *args: str, cwd: Path, first_line: str | None = None) -> list[str]:
    """Start ``mcpkit ARGS`` as an MCP server, initialize, list its tools, close stdin.

    ``first_line`` is written before the MCP messages (a password for ``--password-stdin``).
    """
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "test", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    exe = shutil.which("mcpkit")
    need(exe, "the mcpkit console script on PATH (pip install -e .)")
    assert exe is not None
    proc = subprocess.Popen([exe, *args, "-q"], env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((first_line + "\n" if first_line is not None else "")
                         + "".join(json.dumps(m) + "\n" for m in messages))
        proc.stdin.flush()
        for line in proc.stdout:  # keep stdin open until the answer is here
            answer = json.loads(line)
            if answer.get("id") == 2:
                return [t["name"] for t in answer["result"]["tools"]]
        raise AssertionError(f"no tools/list answer from mcpkit {args}: {proc.stderr.read() if proc.stderr else ''}")
    finally:
        watchdog.cancel()
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=30)
        assert proc.returncode == 0


def hostile_folder(root: Path, *, name: str) -> Path:
    """A bundle folder with a tool called ``evil`` that also ships compiled code and a precompile record."""
    make_demo_project(root, name=name)
    config = root / "config.yaml"
    config.write_text(config.read_text().replace("{name: echo,", "{name: evil,"))
    (root / "module.cwasm").write_bytes(b"\x7fELF native code the user never agreed to run")
    wasm_sha = hashlib.sha256((root / "module.wasm").read_bytes()).hexdigest()
    cwasm_sha = hashlib.sha256((root / "module.cwasm").read_bytes()).hexdigest()
    (root / "metadata.json").write_text(json.dumps(
        {"precompiled": {"module_sha256": wasm_sha, "cwasm_sha256": cwasm_sha, "engine_fingerprint": "x"}}))
    return root


# --------------------------------------------------------------------------- a bare name is the cache


def test_a_folder_in_the_working_directory_never_shadows_a_cached_bundle(env: dict[str, str],
                                                                        tmp_path: Path) -> None:
    trusted = make_demo_project(tmp_path / "trusted", name="shadow-tool")
    mcpkit(env, "pull", str(trusted))
    work = tmp_path / "work"
    hostile_folder(work / "shadow-tool", name="shadow-tool")
    for args in (("run", "shadow-tool"), ("server", "--from-bundle", "shadow-tool"), ("server", "shadow-tool")):
        assert list_tools(env, *args, cwd=work) == ["echo", "add"], args
    view = json.loads(mcpkit(env, "inspect", "shadow-tool", "--json", cwd=work).stdout)
    assert view["reference"].startswith("file://" + str(trusted))
    # the folder is still reachable, as a path that looks like one -- and then it is refused (reserved names)
    proc = mcpkit(env, "run", "./shadow-tool", cwd=work, ok=False)
    assert proc.returncode != 0 and "reserved" in proc.stderr
    # a folder here whose name is not cached: the error says how to name the folder
    make_demo_project(work / "local-tool", name="local-tool")
    proc = mcpkit(env, "run", "local-tool", cwd=work, ok=False)
    assert proc.returncode == 3 and "write ./local-tool" in proc.stderr
    assert list_tools(env, "run", "./local-tool", cwd=work) == ["echo", "add"]


@pytest.mark.registry
def test_run_keeps_the_credentials_and_ca_it_is_given(env: dict[str, str], tmp_path: Path, tls_auth_registry: Any,
                                                      repo_name: str) -> None:
    from tests.builders import make_project, push_project

    push_project(tls_auth_registry, make_project(tmp_path / "proj", name="private-tool"), tmp_path / "dist",
                 repo_name, "v1")
    ref = f"oci://{tls_auth_registry.host}/{repo_name}:v1"
    denied = mcpkit(env, "run", ref, "--ca-file", str(tls_auth_registry.ca_file), ok=False)
    assert denied.returncode != 0 and "Traceback" not in denied.stderr
    tools = list_tools(env, "run", ref, "--ca-file", str(tls_auth_registry.ca_file), "--username",
                       tls_auth_registry.username, "--password-stdin", cwd=tmp_path,
                       first_line=tls_auth_registry.password)
    assert tools == ["echo"]
    assert tls_auth_registry.password not in json.dumps([str(p) for p in Path(env["MCPKIT_HOME"]).rglob("*")])


# --------------------------------------------------------------------------- reserved names


def _with_members(archive: Path, members: dict[str, bytes]) -> Path:
    """The archive with extra regular files appended (e.g. module.cwasm beside the layout)."""
    import io

    with tarfile.open(archive, "a") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


RESERVED_PAYLOAD = {"module.cwasm": b"\x7fELF planted", "metadata.json": b'{"precompiled": {}}'}


@pytest.mark.parametrize("shape", ["archive", "layout-folder", "bundle-folder", "config", "module"])
def test_a_bundle_shipping_cache_reserved_names_is_refused(env: dict[str, str], tmp_path: Path, shape: str) -> None:
    project = make_demo_project(tmp_path / "proj", name="reserved-tool")
    archive = build_archive(project, tmp_path / "dist", demo_environ()).path
    if shape == "archive":
        target = str(_with_members(archive, RESERVED_PAYLOAD))
    elif shape == "layout-folder":
        layout = tmp_path / "layout"
        layout.mkdir()
        with tarfile.open(archive) as tar:
            tar.extractall(layout, filter="data")
        for name, data in RESERVED_PAYLOAD.items():
            (layout / name).write_bytes(data)
        target = str(layout)
    else:
        folder = hostile_folder(tmp_path / "folder", name="reserved-tool")
        target = {"bundle-folder": str(folder), "config": str(folder / "config.yaml"),
                  "module": str(folder / "module.wasm")}[shape]
    commands: list[tuple[str, ...]] = [("run", target), ("server", target), ("pull", target)]
    if shape in ("archive", "layout-folder", "bundle-folder"):
        commands.append(("inspect", target))
    if shape == "config":
        commands.append(("server", "--config", target))
    for args in commands:
        proc = mcpkit(env, *args, ok=False)
        assert proc.returncode != 0, (args, proc.stdout)
        assert "reserved" in proc.stderr, (args, proc.stderr)
    assert listing(Path(env["MCPKIT_HOME"]) / "bundles") == []


# --------------------------------------------------------------------------- archive bombs


def sparse_archive(tmp_path: Path, size: int = 4 * 1024**3) -> Path:
    """A ~10 KB ``.mcpkit.tar`` (GNU sparse) whose one blob unpacks to ``size`` bytes of zeros."""
    need(shutil.which("tar"), "GNU tar (for a sparse archive)")
    src = tmp_path / "sparse-src"
    (src / "blobs" / "sha256").mkdir(parents=True)
    (src / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (src / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    with open(src / "blobs" / "sha256" / ("0" * 64), "wb") as fh:
        fh.truncate(size)
    out = tmp_path / "sparse.mcpkit.tar"
    subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", str(out), "-C", str(src), "oci-layout", "index.json",
                    "blobs"], check=True)
    shutil.rmtree(src)
    return out


def test_a_sparse_archive_bomb_is_refused_before_unpacking(env: dict[str, str], tmp_path: Path) -> None:
    bomb = sparse_archive(tmp_path)
    assert bomb.stat().st_size < 64 * 1024
    for args in (("inspect", str(bomb)), ("run", str(bomb)), ("server", str(bomb)), ("pull", str(bomb))):
        proc = mcpkit(env, *args, ok=False)
        assert proc.returncode != 0
        assert "unpacks to more than" in proc.stderr and "4294967296 bytes" in proc.stderr, proc.stderr
        assert listing(tmp_path / "tmp") == [], "a temporary folder was left behind"
    assert listing(Path(env["MCPKIT_HOME"]) / "bundles") == []


def test_the_archive_cap_follows_max_bundle_size(env: dict[str, str], tmp_path: Path) -> None:
    project = make_demo_project(tmp_path / "proj", name="capped-tool")
    archive = build_archive(project, tmp_path / "dist", demo_environ()).path
    proc = mcpkit({**env, "MCPKIT_MAX_BUNDLE_SIZE": "100"}, "inspect", str(archive), ok=False)
    assert "unpacks to more than 100 bytes" in proc.stderr
    proc = mcpkit(env, "pull", str(archive), "--max-bundle-size", "1K", ok=False)
    assert "more than 1024 bytes" in proc.stderr
    mcpkit(env, "pull", str(archive), "--max-bundle-size", "1M")
    assert mcpkit(env, "pull", str(archive), "--max-bundle-size", "lots", ok=False).returncode == 2
    bad_env = mcpkit({**env, "MCPKIT_MAX_BUNDLE_SIZE": "lots"}, "pull", str(archive), ok=False)
    assert "MCPKIT_MAX_BUNDLE_SIZE 'lots' is not a size" in bad_env.stderr


# --------------------------------------------------------------------------- a hostile registry


@contextlib.contextmanager
def hostile_registry(manifest: dict[str, Any], tags: list[str] | None = None,
                     error: str | None = None) -> Iterator[tuple[str, list[str]]]:
    """A registry answering /v2/, one manifest under any name and tag, tag lists; every request is recorded.

    ``error`` makes every blob request fail with that registry error message.
    """
    raw = json.dumps(manifest).encode()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            requests.append(f"{self.command} {self.path}")
            if self.path.rstrip("/") == "/v2":
                self._send(200, b"{}", {"Content-Type": "application/json"})
            elif "/manifests/" in self.path:
                self._send(200, raw, {"Content-Type": manifest["mediaType"], "Docker-Content-Digest": digest})
            elif self.path.endswith("/tags/list"):
                body = json.dumps({"name": "evil/tool", "tags": tags or []}).encode()
                self._send(200, body, {"Content-Type": "application/json"})
            elif error is not None:
                body = json.dumps({"errors": [{"code": "DENIED", "message": error}]}).encode()
                self._send(403, body, {"Content-Type": "application/json"})
            else:
                self._send(404, b"", {})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def _descriptor(media_type: str, size: int, title: str | None = None, seed: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(
        (seed + media_type).encode()).hexdigest(), "size": size}
    if title:
        out["annotations"] = {"org.opencontainers.image.title": title}
    return out


def bundle_manifest(module_size: int, config_size: int = 300,
                    annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.mcpkit.bundle.v1",
        "config": _descriptor("application/vnd.mcpkit.bundle.config.v1+json", 200),
        "layers": [_descriptor("application/wasm", module_size, "module.wasm"),
                   _descriptor("application/vnd.mcpkit.config+yaml", config_size, "config.yaml")],
        "annotations": annotations or {},
    }


def test_a_manifest_declaring_a_50_gb_layer_is_refused_before_any_blob_request(env: dict[str, str]) -> None:
    with hostile_registry(bundle_manifest(50 * 10**9)) as (host, requests):
        for args in (("pull", f"{host}/evil/tool:v1"), ("run", f"oci://{host}/evil/tool:v1")):
            proc = mcpkit(env, *args, ok=False)
            assert proc.returncode != 0
            assert "'module.wasm'" in proc.stderr and "50000000000 bytes" in proc.stderr, proc.stderr
            assert "maximum bundle size of 1073741824 bytes" in proc.stderr
            assert not any("/blobs/" in r for r in requests), requests
    home = Path(env["MCPKIT_HOME"])
    assert listing(home / "bundles") == [] and listing(home / "cache" / "downloads") == []


def test_max_bundle_size_counts_the_layers_together(env: dict[str, str]) -> None:
    with hostile_registry(bundle_manifest(600 * 1024**2, 600 * 1024**2)) as (host, requests):
        proc = mcpkit(env, "pull", f"{host}/evil/tool:v1", "--max-bundle-size", "1000M", ok=False)
        assert "declare 1258291400 bytes together" in proc.stderr, proc.stderr
        assert "maximum bundle size of 1048576000 bytes" in proc.stderr
        proc = mcpkit({**env, "MCPKIT_MAX_BUNDLE_SIZE": "1000M"}, "run", f"{host}/evil/tool:v1", ok=False)
        assert "together" in proc.stderr, proc.stderr
        assert not any("/blobs/" in r for r in requests), requests


# --------------------------------------------------------------------------- tampered entries


@pytest.mark.registry
def test_a_tampered_entry_is_repaired_by_the_next_pull(env: dict[str, str], tmp_path: Path, registry: Any,
                                                      repo_name: str) -> None:
    from tests.builders import make_project, push_project, snapshot

    project = make_project(tmp_path / "proj", name="tamper-tool", files={"data/a.json": '{"a": 1}'})
    manifest = push_project(registry, project, tmp_path / "dist", repo_name, "v1")
    shipped = {k: v for k, v in snapshot(project).items() if k in ("module.wasm", "config.yaml", "README.md")}
    ref = registry.ref(repo_name, "v1")
    entry = Path(mcpkit(env, "pull", ref).stdout.split("path:")[1].strip())
    assert "up to date" in mcpkit(env, "pull", ref).stdout
    planted = b"\x7fELF planted native code"
    (entry / "module.wasm").write_bytes(b"\0asm\x01\0\0\0 tampered")
    (entry / "module.cwasm").write_bytes(planted)
    out = mcpkit(env, "pull", ref).stdout
    assert "repaired" in out
    assert {k: (entry / k).read_bytes() for k in shipped} == shipped
    assert not (entry / "module.cwasm").exists()
    # a planted file alone (the module untouched) is found too, as is a changed shipped file
    for rel, data in (("evil.so", b"planted"), (".mcpkit/hook", b"planted"), ("README.md", b"changed")):
        (entry / rel).parent.mkdir(parents=True, exist_ok=True)
        (entry / rel).write_bytes(data)
        assert "repaired" in mcpkit(env, "pull", ref).stdout, rel
        assert not (entry / "evil.so").exists() and not (entry / ".mcpkit").exists()
        assert {k: (entry / k).read_bytes() for k in shipped} == shipped
    assert json.loads((entry / "metadata.json").read_text())["digest"] == manifest.digest


# --------------------------------------------------------------------------- killed pulls


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_a_killed_pull_is_swept_by_the_next_pull(env: dict[str, str], tmp_path: Path, slow_web: str) -> None:
    exe = shutil.which("mcpkit")
    need(exe, "the mcpkit console script on PATH")
    assert exe is not None
    downloads = Path(env["MCPKIT_HOME"]) / "cache" / "downloads"
    proc = subprocess.Popen([exe, "bundle", "pull", slow_web], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: any(p.is_file() and p.stat().st_size > 100_000 for p in downloads.rglob("*")),
                  "the download to start")
    finally:
        proc.kill()  # SIGKILL: no chance to clean up
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    left = listing(downloads)
    assert any(p.startswith(f"http-{proc.pid}-") for p in left), left  # the orphan, recent (not 24 h old)
    mcpkit(env, "pull", str(make_demo_project(tmp_path / "proj", name="next-tool")))
    assert listing(downloads) == []


# --------------------------------------------------------------------------- terminal injection


def _rewrite_layout(archive: Path, dest: Path, *, annotations: dict[str, str], description: str,
                    **config_fields: Any) -> Path:
    """The archive as a layout folder whose manifest annotations and config-blob description are replaced."""
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    blobs = dest / "blobs" / "sha256"

    def put(data: bytes) -> tuple[str, int]:
        hexdigest = hashlib.sha256(data).hexdigest()
        (blobs / hexdigest).write_bytes(data)
        return f"sha256:{hexdigest}", len(data)

    index = json.loads((dest / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    config["description"] = description
    config.update(config_fields)
    manifest["config"]["digest"], manifest["config"]["size"] = put(json.dumps(config).encode())
    manifest["annotations"] = {**manifest["annotations"], **annotations}
    index["manifests"][0]["digest"], index["manifests"][0]["size"] = put(json.dumps(manifest).encode())
    (dest / "index.json").write_text(json.dumps(index))
    return dest


def test_control_sequences_from_a_bundle_never_reach_the_terminal(env: dict[str, str], tmp_path: Path) -> None:
    project = make_demo_project(tmp_path / "proj", name="inject-tool")
    archive = build_archive(project, tmp_path / "dist", demo_environ()).path
    layout = _rewrite_layout(archive, tmp_path / "layout", description=f"weather{OSC52}{CURSOR}fake line",
                             annotations={"org.opencontainers.image.description": f"x{OSC52}",
                                          f"io.evil{ESC}[31m": f"{CURSOR}read-only \u202e gnp.exe",
                                          "org.opencontainers.image.version": f"1{ESC}[8m"})
    outputs = [mcpkit(env, "inspect", str(layout)), mcpkit(env, "pull", str(layout)), mcpkit(env, "list"),
               mcpkit(env, "inspect", "inject-tool"), mcpkit(env, "inspect", "inject-tool", "--json")]
    for proc in outputs:
        assert ESC not in proc.stdout + proc.stderr and "\u202e" not in proc.stdout
    assert "\\x1b]52" in outputs[0].stdout  # shown, escaped


def test_registry_tags_and_messages_never_reach_the_terminal_raw(env: dict[str, str]) -> None:
    evil_tags = [f"v1{OSC52}", f"latest{CURSOR}"]
    with hostile_registry(bundle_manifest(10), tags=evil_tags, error=f"denied{OSC52}{CURSOR}") as (host, _):
        listed = mcpkit(env, "list", "--registry", f"{host}/evil/tool", ok=False)
        pulled = mcpkit(env, "pull", f"{host}/evil/tool:v1", ok=False)
    for proc in (listed, pulled):
        assert ESC not in proc.stdout + proc.stderr, proc
    assert pulled.returncode != 0


def _gz_tar_with_header(path: Path, kind: bytes, size: int) -> Path:
    """A gzip-compressed tar whose first member is an extended header (``kind``) declaring ``size`` bytes."""
    import gzip

    info = tarfile.TarInfo("header")
    info.type = kind
    info.size = size
    with gzip.open(path, "wb", compresslevel=6) as out:
        out.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        zeros = b"\0" * (1 << 20)
        for _ in range(size >> 20):
            out.write(zeros)
        out.write(b"\0" * 1024)
    return path


def _gz_tar_with_sparse_map(path: Path, numbers: int) -> Path:
    """A gzip-compressed tar with one GNU sparse 1.0 member whose sparse map (read into a list of
    tuples by tarfile) holds ``numbers`` entries."""
    import gzip

    info = tarfile.TarInfo("GNUSparseFile.0/blob")
    info.size = numbers * 2 + 16
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "blob",
                        "GNU.sparse.realsize": "10"}
    with gzip.open(path, "wb", compresslevel=6) as out:
        out.write(info.tobuf(format=tarfile.PAX_FORMAT))
        out.write(f"{numbers // 2}\n".encode())
        for _ in range(numbers >> 20):
            out.write(b"0\n" * (1 << 20))
        out.write(b"\0" * 1024)
    return path


@pytest.mark.parametrize("kind", ["pax", "gnu-longname", "sparse-map"])
def test_a_compressed_archive_with_a_huge_header_is_refused_without_reading_it(env: dict[str, str], tmp_path: Path,
                                                                               kind: str) -> None:
    """~400 KB on disk, a 400 MiB PAX (or GNU long name) header -- or a sparse map of 32 million
    numbers -- once decompressed: tarfile reads these whole into memory, so they are refused
    before that (peak memory stays small)."""
    bomb = tmp_path / "bomb.mcpkit.tar"
    if kind == "sparse-map":
        archive = _gz_tar_with_sparse_map(bomb, 32 << 20)
    else:
        archive = _gz_tar_with_header(bomb, tarfile.XHDTYPE if kind == "pax" else tarfile.GNUTYPE_LONGNAME, 400 << 20)
    assert archive.stat().st_size < 1 << 20
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report pytest's own peak
    need(Path("/proc/self/status").is_file(), "Linux /proc (to measure the command's peak memory)")
    measured = ("import sys\nfrom hatch_mcpkit.cli import main\nrc = main(sys.argv[1:])\n"
                "hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')]\n"
                "print('peak-kib', hwm[0], file=sys.stderr)\nsys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", measured, "inspect", str(archive)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert str(archive) in proc.stderr and "header" in proc.stderr, proc.stderr
    peak_kib = int(proc.stderr.rsplit("peak-kib", 1)[1].split()[0])
    assert peak_kib < 200 * 1024, f"peak memory {peak_kib // 1024} MiB"


# --------------------------------------------------------------------------- layout folders that are not files


@pytest.mark.parametrize(("name", "kind"), [("index.json", "dev-zero"), ("oci-layout", "fifo"), ("index.json", "fifo"),
                                            ("index.json", "huge")])
def test_a_layout_folder_whose_index_is_not_a_small_file_is_a_clear_error(env: dict[str, str], tmp_path: Path,
                                                                           name: str, kind: str) -> None:
    """A cloned repository laid out as an OCI layout whose ``index.json`` (or ``oci-layout``) is a
    symlink to ``/dev/zero``, a FIFO nobody writes, or an 8 GiB file: reading is bounded and never
    blocks -- a clear error naming the file, not a MemoryError or a hang."""
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    target = layout / name
    target.unlink()
    if kind == "dev-zero":
        target.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        with open(target, "wb") as fh:
            fh.truncate(8 << 30)  # sparse: nothing on disk
    proc = subprocess.run(["bash", "-c", 'ulimit -v 4000000; exec "$@"', "-", shutil.which("mcpkit") or "mcpkit",
                           "inspect", str(layout)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr[-500:]
    assert name in proc.stderr and "internal error" not in proc.stderr and "Traceback" not in proc.stderr, \
        proc.stderr[-500:]


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_bundle_folder_whose_config_is_not_a_file_is_a_clear_error(env: dict[str, str], tmp_path: Path,
                                                                      kind: str) -> None:
    """``mcpkit run ./cloned/config.yaml`` where config.yaml is a FIFO nobody writes (or /dev/zero):
    a clear error naming the file, not a process blocked for ever on the open."""
    from tests.builders import TINY_WASM

    folder = tmp_path / "cloned"
    folder.mkdir()
    (folder / "module.wasm").write_bytes(TINY_WASM)
    if kind == "fifo":
        os.mkfifo(folder / "config.yaml")
    else:
        (folder / "config.yaml").symlink_to("/dev/zero")
    proc = subprocess.run(["bash", "-c", 'ulimit -v 4000000; exec "$@"', "-", shutil.which("mcpkit") or "mcpkit",
                           "run", str(folder / "config.yaml")], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode != 0 and "config.yaml" in proc.stderr, proc.stderr[-500:]
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-500:]


# --------------------------------------------------------------------------- deeply nested JSON


def test_deeply_nested_json_is_a_clear_error(env: dict[str, str], tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    index = Path(env["MCPKIT_HOME"]) / "bundles" / "registry.json"
    index.parent.mkdir(parents=True)
    index.write_text(deep)
    proc = mcpkit(env, "list", ok=False)
    assert proc.returncode == 1 and "registry.json" in proc.stderr and "nested more than 64 levels" in proc.stderr
    index.unlink()

    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text('{"manifests": ' + deep + "}")
    proc = mcpkit(env, "inspect", str(layout), ok=False)
    assert "index.json" in proc.stderr and "nested more than 64 levels" in proc.stderr

    manifest = bundle_manifest(10, annotations={})
    manifest["annotations"] = {"x": "y"}
    with hostile_registry({**manifest, "extra": json.loads("[" * 80 + "]" * 80)}) as (host, requests):
        proc = mcpkit(env, "pull", f"{host}/evil/tool:v1", ok=False)
        assert "manifest" in proc.stderr and "nested more than 64 levels" in proc.stderr, proc.stderr
        assert not any("/blobs/" in r for r in requests)


def test_a_malformed_allow_dir_is_a_usage_error(env: dict[str, str], tmp_path: Path) -> None:
    project = make_demo_project(tmp_path / "proj", name="usage-tool")
    for spec in (":", "/x:relative", "/x:/"):
        proc = mcpkit(env, "server", str(project), "--allow-dir", spec, ok=False)
        assert proc.returncode == 2 and "--allow-dir" in proc.stderr, proc.stderr


@pytest.mark.parametrize(("field", "value", "message"), [
    ("name", "../../evil", "name must match"),
    ("name", "x" * 300, "name must match"),
    ("version", f"1{ESC}[2J", "version must be"),
    ("tools", ["get weather; rm -rf"], "tools must be a list of tool names"),
    ("description", "x" * 5000, "description must be a string of at most 4096"),
], ids=["traversal-name", "long-name", "escape-version", "bad-tool-name", "long-description"])
def test_config_blob_fields_are_validated_like_config_yaml(env: dict[str, str], tmp_path: Path, field: str,
                                                         value: Any, message: str) -> None:
    project = make_demo_project(tmp_path / "proj", name="blob-tool")
    archive = build_archive(project, tmp_path / "dist", demo_environ()).path
    fields = {"description": "ok", field: value}
    layout = _rewrite_layout(archive, tmp_path / "layout", annotations={}, **fields)
    for args in (("inspect", str(layout)), ("pull", str(layout))):
        proc = mcpkit(env, *args, ok=False)
        assert "invalid bundle config blob" in proc.stderr and message in proc.stderr, proc.stderr
        assert ESC not in proc.stderr
    assert listing(Path(env["MCPKIT_HOME"]) / "bundles") == []
