"""The wasmtime sandbox: one engine per server, one fresh instance per tool call.

Guest ABI (see docs): argv ``[<server.name>, <tool>]``, environment ``MCPKIT_TOOL``
plus the keys policy allows (and only when the host has them), stdin = the call's
arguments as one JSON object, stdout = the result, stderr kept for error reports.
A module sees only the directories its policy grants (read-only unless ``write`` is
granted) and runs under a wall-clock timeout (epoch interruption), a memory cap
(store limits), an output cap and optionally a fuel budget. Whatever a module does,
the host keeps serving: every failure becomes a :class:`ToolResult` with
``is_error=True`` and a reason.

Precompiled code (``module.cwasm``) is native code, so it is only loaded when the
``precompiled`` record in ``metadata.json`` -- written by this module, next to it --
matches the module's SHA-256, the cwasm's own SHA-256, the wasmtime version and the
engine settings. Anything else is recompiled from ``module.wasm``.

wasmtime is imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import platform
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from hatch_mcpkit.config import Config, Limits, StorageGrant, Tool, load_config
from hatch_mcpkit.errors import ModuleError, SandboxError, ToolCallError

if TYPE_CHECKING:
    import wasmtime

__all__ = [
    "CallHandle",
    "Runtime",
    "ToolResult",
    "engine_settings",
    "format_policy",
    "parse_allow_dir",
    "precompile",
]

log = logging.getLogger("hatch_mcpkit.runtime")

MODULE_FILE = "module.wasm"
CWASM_FILE = "module.cwasm"
CONFIG_FILE = "config.yaml"
METADATA_FILE = "metadata.json"
RECORD_KEY = "precompiled"

MiB = 1 << 20
EPOCH_TICK_S = 0.010  # one engine epoch tick; deadlines are checked at this granularity
STDERR_KEEP = 16 * 1024  # bytes of guest stderr kept per call
STDERR_TAIL_CHARS = 2000  # characters of it shown in an error result
STDIN_DIRECT_MAX = 60 * 1024  # written straight into the pipe; larger payloads use a thread
CRANELIFT_OPT_LEVEL = "speed"


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ToolResult:
    """What one ``tools/call`` produced, already in MCP terms.

    ``reason`` is ``None`` on success, otherwise one of ``"tool"`` (the module
    answered ``{"error": ...}``), ``"timeout"``, ``"memory"``, ``"fuel"``,
    ``"output"`` (over max_output_kb), ``"trap"``, ``"exit"`` (non-zero status),
    ``"cancelled"``, ``"output_schema"`` or ``"invalid_output"``.
    """

    content: list[dict[str, Any]]
    structured_content: dict[str, Any] | None = None
    is_error: bool = False
    reason: str | None = None
    stderr_tail: str = ""
    exit_code: int | None = None
    duration_ms: float = 0.0  # the whole call: store, instance, run, mapping
    run_ms: float = 0.0  # inside the module (_start)

    @property
    def text(self) -> str:
        """All text content items joined by newlines (handy in tests and logs)."""
        return "\n".join(str(item.get("text", "")) for item in self.content if item.get("type") == "text")

    def to_mcp(self) -> dict[str, Any]:
        """The ``CallToolResult`` JSON object."""
        out: dict[str, Any] = {"content": self.content, "isError": self.is_error}
        if self.structured_content is not None:
            out["structuredContent"] = self.structured_content
        return out

    def raise_for_error(self) -> ToolResult:
        """Raise :class:`ToolCallError` when the call failed; return self otherwise."""
        if self.is_error:
            raise ToolCallError(self.text, reason=self.reason or "tool", stderr_tail=self.stderr_tail)
        return self


class CallHandle:
    """Lets another thread interrupt a running call (``tools/call`` cancellation)."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


# --------------------------------------------------------------------------- policy helpers


def parse_allow_dir(spec: str, *, cwd: Path | None = None) -> StorageGrant:
    """``HOST[:GUEST][:ro|rw]`` (the ``--allow-dir`` option) as a storage grant.

    GUEST defaults to the absolute host path; access defaults to read-only.
    """
    parts = spec.split(":")
    access: tuple[str, ...] = ("read",)
    if len(parts) > 1 and parts[-1] in ("ro", "rw"):
        access = ("read", "write") if parts.pop() == "rw" else ("read",)
    if not parts or not parts[0] or len(parts) > 2:
        raise SandboxError(
            f"--allow-dir {spec!r}: expected HOST[:GUEST][:ro|rw]",
            hint="for example --allow-dir ~/notes:/notes:rw",
        )
    host = Path(os.path.expanduser(parts[0]))
    if not host.is_absolute():
        host = (cwd or Path.cwd()) / host
    host = Path(os.path.normpath(host))
    guest = parts[1] if len(parts) == 2 and parts[1] else host.as_posix()
    gp = PurePosixPath(guest)
    if not gp.is_absolute() or ".." in gp.parts or str(gp) == "/":
        raise SandboxError(f"--allow-dir {spec!r}: the guest path {guest!r} must be absolute, not '/', without '..'")
    return StorageGrant(uri=f"fs://{host.as_posix()}", guest=str(gp), access=access)


@dataclass(frozen=True)
class _Preopen:
    host: Path
    guest: str
    writable: bool
    kind: str  # "bundle" or "fs"
    uri: str


def _effective_grants(
    config: Config, bundle_dir: Path, extra: Iterable[StorageGrant], deny_guests: Iterable[str]
) -> list[_Preopen]:
    by_guest: dict[str, StorageGrant] = {g.guest: g for g in config.policy.storage}
    for grant in extra:  # a launch-time grant for the same guest path replaces the config's
        by_guest[str(PurePosixPath(grant.guest))] = grant
    for guest in deny_guests:
        by_guest.pop(str(PurePosixPath(guest)), None)
    out: list[_Preopen] = []
    for grant in by_guest.values():
        host = grant.host_path(bundle_dir)
        if not host.is_dir():
            where = "shipped in the bundle" if grant.kind == "bundle" else "on this machine"
            raise SandboxError(
                f"storage grant {grant.uri} (guest {grant.guest}): {host} is not a directory {where}",
                hint="create the directory, or remove the grant from policy.storage (or --allow-dir)",
            )
        out.append(_Preopen(host.resolve(), grant.guest, grant.writable, grant.kind, grant.uri))
    return sorted(out, key=lambda p: p.guest)


def format_policy(runtime: Runtime) -> list[str]:
    """Human-readable lines describing what the module may touch (printed at launch)."""
    lines = []
    if not runtime.preopens:
        lines.append("storage: none")
    for p in runtime.preopens:
        mode = "read-write" if p.writable else "read-only"
        lines.append(f"storage: {p.guest} -> {p.host} ({mode}, {'shipped in the bundle' if p.kind == 'bundle' else p.uri})")
    if runtime.env_keys:
        env = runtime.environ
        shown = ", ".join(f"{k}{'' if k in env else ' (unset)'}" for k in runtime.env_keys)
        lines.append(f"environment: MCPKIT_TOOL, {shown}")
    else:
        lines.append("environment: MCPKIT_TOOL only")
    base = runtime.config.policy.limits
    lines.append(
        f"limits: timeout {base.timeout_ms} ms, memory {base.memory_mb} MiB, output {base.max_output_kb} KiB, "
        f"fuel {base.fuel if base.fuel else 'unlimited'}"
    )
    for tool in runtime.config.tools:
        own = tool.limits
        if any(v is not None for v in (own.timeout_ms, own.memory_mb, own.fuel, own.max_output_kb)):
            lim = runtime.config.limits_for(tool)
            lines.append(
                f"limits for {tool.name}: timeout {lim.timeout_ms} ms, memory {lim.memory_mb} MiB, "
                f"output {lim.max_output_kb} KiB, fuel {lim.fuel if lim.fuel else 'unlimited'}"
            )
    return lines


# --------------------------------------------------------------------------- engine + precompile


def _wasmtime_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wasmtime")
    except PackageNotFoundError:  # pragma: no cover - vendored installs
        import wasmtime

        return str(getattr(wasmtime, "__version__", "unknown"))


def engine_settings(consume_fuel: bool) -> dict[str, Any]:
    """Everything that must match for a ``.cwasm`` to be loadable by our engine."""
    return {
        "wasmtime": _wasmtime_version(),
        "arch": platform.machine(),
        "system": platform.system(),
        "epoch_interruption": True,
        "consume_fuel": consume_fuel,
        "cranelift_opt_level": CRANELIFT_OPT_LEVEL,
    }


def _fingerprint(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _needs_fuel(config: Config) -> bool:
    return any(config.limits_for(tool).fuel is not None for tool in config.tools)


def _make_engine(consume_fuel: bool) -> wasmtime.Engine:
    import wasmtime

    cfg = wasmtime.Config()
    cfg.epoch_interruption = True
    cfg.consume_fuel = consume_fuel
    cfg.cranelift_opt_level = CRANELIFT_OPT_LEVEL
    return wasmtime.Engine(cfg)


def _read_metadata(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _load_module(engine: wasmtime.Engine, settings: Mapping[str, Any], bundle_dir: Path, wasm_path: Path,
                 *, write: bool = True) -> tuple[wasmtime.Module, str]:
    """The module from a recorded, matching ``module.cwasm``, else compiled (and recorded).

    Returns ``(module, source)`` with source ``"cwasm"`` or ``"compiled"``.
    """
    import wasmtime

    try:
        wasm = wasm_path.read_bytes()
    except OSError as exc:
        raise ModuleError(f"cannot read the module {wasm_path}: {exc.strerror}",
                          hint="is this a bundle directory (module.wasm + config.yaml)?") from None
    wasm_sha = hashlib.sha256(wasm).hexdigest()
    fingerprint = _fingerprint(settings)
    cwasm_path = bundle_dir / CWASM_FILE
    meta_path = bundle_dir / METADATA_FILE
    record = _read_metadata(meta_path).get(RECORD_KEY)
    if (
        isinstance(record, dict)
        and record.get("module_sha256") == wasm_sha
        and record.get("engine_fingerprint") == fingerprint
        and isinstance(record.get("cwasm_sha256"), str)
    ):
        try:
            blob = cwasm_path.read_bytes()
        except OSError:
            blob = None
        if blob is not None and hashlib.sha256(blob).hexdigest() == record["cwasm_sha256"]:
            try:
                # Deserialize exactly the bytes that were hashed (no re-read of the file).
                return wasmtime.Module.deserialize(engine, blob), "cwasm"
            except wasmtime.WasmtimeError as exc:
                log.info("precompiled module %s is not loadable (%s); recompiling", cwasm_path, exc)
        else:
            log.info("precompiled module %s does not match its record; recompiling", cwasm_path)
    elif cwasm_path.exists():
        log.info("ignoring %s: no matching record in %s; recompiling", cwasm_path, meta_path)

    try:
        module = wasmtime.Module(engine, wasm)
    except wasmtime.WasmtimeError as exc:
        raise ModuleError(f"{wasm_path} is not a valid WebAssembly module: {exc}") from None
    if write:
        try:
            blob = bytes(module.serialize())
            _atomic_write(cwasm_path, blob)
            meta = _read_metadata(meta_path)
            meta[RECORD_KEY] = {
                "module_sha256": wasm_sha,
                "cwasm_sha256": hashlib.sha256(blob).hexdigest(),
                "engine_fingerprint": fingerprint,
                "engine": dict(settings),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            _atomic_write(meta_path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        except OSError as exc:
            log.info("cannot write the precompiled module to %s (%s); continuing without it", bundle_dir,
                     exc.strerror)
    return module, "compiled"


def precompile(entry_dir: Path, *, environ: Mapping[str, str] | None = None) -> Path:
    """Make sure ``entry_dir/module.cwasm`` exists and is recorded for this wasmtime.

    Used by the cache after a pull; cheap when the record already matches.
    Returns the path of the ``.cwasm``.
    """
    entry_dir = Path(entry_dir)
    config = load_config(entry_dir / CONFIG_FILE, environ)
    fuel = _needs_fuel(config)
    settings = engine_settings(fuel)
    _load_module(_make_engine(fuel), settings, entry_dir, entry_dir / MODULE_FILE, write=True)
    cwasm = entry_dir / CWASM_FILE
    if not cwasm.exists():
        raise SandboxError(f"cannot write {cwasm}", hint="check that the cache directory is writable")
    return cwasm


# --------------------------------------------------------------------------- epoch ticker


class _Ticker:
    """One background thread per engine advancing its epoch while calls run."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = engine
        self._active = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._thread: threading.Thread | None = None

    def enter(self) -> None:
        with self._lock:
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mcpkit-epoch", daemon=True)
                self._thread.start()
            self._wake.notify()

    def leave(self) -> None:
        with self._lock:
            self._active -= 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1)

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._active == 0 and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
            time.sleep(EPOCH_TICK_S)
            self._engine.increment_epoch()


# --------------------------------------------------------------------------- per-call state


class _CallState:
    __slots__ = ("cancel", "cap", "deadline", "out", "out_len", "overflow", "reason", "stderr")

    def __init__(self, deadline: float, cap: int, cancel: CallHandle | None) -> None:
        self.deadline = deadline
        self.cap = cap
        self.cancel = cancel
        self.out: list[bytes] = []
        self.out_len = 0
        self.overflow = False
        self.stderr = bytearray()
        self.reason: str | None = None  # set when the host stops the call

    def should_stop(self) -> str | None:
        if self.reason is None:
            if self.cancel is not None and self.cancel.cancelled:
                self.reason = "cancelled"
            elif self.overflow:
                self.reason = "output"
            elif time.monotonic() >= self.deadline:
                self.reason = "timeout"
        return self.reason

    def on_stdout(self, data: bytes) -> int:
        room = self.cap - self.out_len
        if len(data) > room:
            if room > 0:
                self.out.append(data[:room])
                self.out_len += room
            self.overflow = True
            return -errno.EPIPE
        self.out.append(data)
        self.out_len += len(data)
        return len(data)

    def on_stderr(self, data: bytes) -> int:
        self.stderr += data
        if len(self.stderr) > STDERR_KEEP:
            del self.stderr[: len(self.stderr) - STDERR_KEEP]
        return len(data)


_STATES: dict[int, _CallState] = {}
_STATES_LOCK = threading.Lock()
_NEXT_ID = [1]
_CURRENT = threading.local()


class _Stop(Exception):
    pass


def _register(state: _CallState) -> int:
    with _STATES_LOCK:
        key = _NEXT_ID[0]
        _NEXT_ID[0] += 1
        _STATES[key] = state
    return key


_FFI: dict[str, Any] = {}


def _deadline_callback() -> Any:
    """The ctypes epoch-deadline callback (created once; checks the call's state every tick)."""
    if "cb" not in _FFI:
        from wasmtime import _ffi as ffi

        proto = ctypes.CFUNCTYPE(
            ctypes.c_size_t,
            ctypes.POINTER(ffi.wasmtime_context_t),
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_uint64),
            ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
        )

        def on_deadline(_ctx: Any, data: int | None, delta: Any, kind: Any) -> int:
            state = _STATES.get(data or 0)
            if state is None or state.should_stop():
                err = ffi.wasmtime_error_new(b"mcpkit: call interrupted by the host")
                return ctypes.cast(err, ctypes.c_void_p).value or 0
            delta[0] = 1
            kind[0] = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
            return 0

        _FFI["cb"] = proto(on_deadline)
        _FFI["nofinal"] = ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p))
        _FFI["set"] = ffi.wasmtime_store_epoch_deadline_callback
    return _FFI


# poll_oneoff replacement: WASI's own blocks in the host (sleep) where epoch
# interruption cannot reach, so a module could outlive its timeout. This one sleeps
# in small steps, honouring the call's deadline and cancellation.
_SUB_SIZE, _EVENT_SIZE = 48, 32
_EVENTTYPE_CLOCK = 0
_CLOCK_ABSTIME = 1
_ERRNO_INVAL = 28


def _poll_oneoff(caller: Any, in_ptr: int, out_ptr: int, nsubs: int, nevents_ptr: int) -> int:
    import wasmtime

    state: _CallState | None = getattr(_CURRENT, "state", None)
    mem = caller.get("memory")
    if not isinstance(mem, wasmtime.Memory) or nsubs == 0:
        return _ERRNO_INVAL
    raw = bytes(mem.read(caller, in_ptr, in_ptr + nsubs * _SUB_SIZE))
    now_mono = time.monotonic_ns()
    wait_ns: int | None = None
    clocks: list[tuple[int, int]] = []  # (userdata, due in ns from now)
    ready: list[bytes] = []
    for i in range(nsubs):
        sub = raw[i * _SUB_SIZE : (i + 1) * _SUB_SIZE]
        userdata, tag = struct.unpack_from("<QB", sub, 0)
        if tag == _EVENTTYPE_CLOCK:
            clock_id, timeout, _precision, flags = struct.unpack_from("<IQQH", sub, 16)
            if flags & _CLOCK_ABSTIME:
                now = time.time_ns() if clock_id == 0 else now_mono
                due = max(0, timeout - now)
            else:
                due = timeout
            clocks.append((userdata, due))
            wait_ns = due if wait_ns is None else min(wait_ns, due)
        else:  # fd_read / fd_write: stdin is a closed pipe, files are always ready
            (fd,) = struct.unpack_from("<I", sub, 16)
            del fd
            ready.append(struct.pack("<QHBxxxxxQHxxxxxx", userdata, 0, tag, 1, 0))
    if not ready and wait_ns is not None:
        end = time.monotonic_ns() + wait_ns
        while True:
            left = end - time.monotonic_ns()
            if left <= 0:
                break
            if state is not None and state.should_stop():
                raise _Stop()
            time.sleep(min(left / 1e9, EPOCH_TICK_S))
        elapsed = time.monotonic_ns() - now_mono
        ready = [
            struct.pack("<QHBxxxxxQHxxxxxx", ud, 0, _EVENTTYPE_CLOCK, 0, 0) for ud, due in clocks if due <= elapsed
        ] or [struct.pack("<QHBxxxxxQHxxxxxx", clocks[0][0], 0, _EVENTTYPE_CLOCK, 0, 0)]
    mem.write(caller, b"".join(ready), out_ptr)
    mem.write(caller, struct.pack("<I", len(ready)), nevents_ptr)
    return 0


# --------------------------------------------------------------------------- the runtime


_TRAP_TEXT = {
    "STACK_OVERFLOW": "call stack exhausted (unbounded recursion?)",
    "MEMORY_OUT_OF_BOUNDS": "out-of-bounds memory access (a stack overflow in the module, or a bug)",
    "UNREACHABLE": "the module panicked or aborted (unreachable executed)",
    "INTEGER_DIVISION_BY_ZERO": "integer division by zero",
    "INTEGER_OVERFLOW": "integer overflow",
    "INDIRECT_CALL_TO_NULL": "indirect call to a null function",
    "BAD_SIGNATURE": "indirect call with the wrong signature",
    "BAD_CONVERSION_TO_INTEGER": "invalid float to integer conversion",
    "TABLE_OUT_OF_BOUNDS": "out-of-bounds table access",
}


class Runtime:
    """A bundle ready to serve tool calls, each in a fresh sandboxed instance.

    Thread-safe: ``call`` may run concurrently from several threads.
    """

    def __init__(
        self,
        config: Config,
        module_path: Path,
        *,
        bundle_dir: Path | None = None,
        extra_grants: Sequence[StorageGrant] = (),
        extra_env_keys: Sequence[str] = (),
        deny_guests: Sequence[str] = (),
        deny_env_keys: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
        write_cwasm: bool = True,
    ) -> None:
        import wasmtime

        t0 = time.perf_counter()
        self.config = config
        self.bundle_dir = Path(bundle_dir) if bundle_dir is not None else Path(module_path).parent
        self.module_path = Path(module_path)
        self.environ: Mapping[str, str] = dict(os.environ if environ is None else environ)
        self.preopens = _effective_grants(config, self.bundle_dir, extra_grants, deny_guests)
        keys = [k for k in (*config.policy.env_keys, *extra_env_keys) if k not in set(deny_env_keys)]
        self.env_keys: tuple[str, ...] = tuple(dict.fromkeys(k for k in keys if k != "MCPKIT_TOOL"))
        self.tools: dict[str, Tool] = {t.name: t for t in config.tools}
        self.consume_fuel = _needs_fuel(config)
        self.settings = engine_settings(self.consume_fuel)
        self.engine = _make_engine(self.consume_fuel)
        self.module, self.module_source = _load_module(
            self.engine, self.settings, self.bundle_dir, self.module_path, write=write_cwasm
        )
        exports = {e.name for e in self.module.exports}
        if "_start" not in exports:
            raise ModuleError(f"{self.module_path} exports no _start: build it as a WASI command (fn main)")
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        linker.allow_shadowing = True
        i32 = wasmtime.ValType.i32()
        linker.define_func(
            "wasi_snapshot_preview1", "poll_oneoff",
            wasmtime.FuncType([i32, i32, i32, i32], [i32]), _poll_oneoff, access_caller=True,
        )
        try:
            self._pre = linker.instantiate_pre(self.module)
        except wasmtime.WasmtimeError as exc:
            raise ModuleError(
                f"{self.module_path} needs imports this sandbox does not provide: {exc}",
                hint="a guest may import only wasi_snapshot_preview1",
            ) from None
        self._linker = linker
        self._ticker = _Ticker(self.engine)
        self._finalizer = weakref.finalize(self, self._ticker.close)
        self._validators: dict[str, Any] = {}
        self._out_validators: dict[str, Any] = {}
        self.load_ms = (time.perf_counter() - t0) * 1000

    # ---------------------------------------------------------------- constructors

    @classmethod
    def from_dir(
        cls,
        bundle_dir: Path | str,
        *,
        extra_grants: Sequence[StorageGrant] = (),
        extra_env_keys: Sequence[str] = (),
        deny_guests: Sequence[str] = (),
        deny_env_keys: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
        write_cwasm: bool = True,
    ) -> Runtime:
        """A bundle directory (a cache entry or any folder with module.wasm + config.yaml)."""
        bundle_dir = Path(bundle_dir)
        config = load_config(bundle_dir / CONFIG_FILE, environ)
        return cls(
            config, bundle_dir / MODULE_FILE, bundle_dir=bundle_dir, extra_grants=extra_grants,
            extra_env_keys=extra_env_keys, deny_guests=deny_guests, deny_env_keys=deny_env_keys,
            environ=environ, write_cwasm=write_cwasm,
        )

    def close(self) -> None:
        """Stop the epoch ticker and wait for wasmtime to release this process's output callbacks.

        wasmtime calls the stdout/stderr callbacks' finalizers from its own worker threads,
        a little after a store is dropped; one still pending when Python shuts down aborts
        the process, so a server waits here (briefly) before it exits.
        """
        self._finalizer()
        _drain_output_callbacks()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- info

    @property
    def name(self) -> str:
        return self.config.name

    def warnings(self) -> list[str]:
        """Launch warnings: grants that open the user's own files."""
        out = []
        for p in self.preopens:
            if p.kind == "fs":
                mode = "read and write" if p.writable else "read"
                out.append(f"warning: {self.name} may {mode} {p.host} on this machine (granted as {p.guest})")
        return out

    # ---------------------------------------------------------------- validation

    def validate_arguments(self, tool_name: str, arguments: Mapping[str, Any]) -> list[str]:
        """Every way ``arguments`` fails the tool's input_schema, as ``arguments.x.y: message``."""
        tool = self._tool(tool_name)
        validator = self._validators.get(tool.name)
        if validator is None:
            from jsonschema import validators

            cls = validators.validator_for(tool.input_schema, default=validators.Draft202012Validator)
            validator = cls(tool.input_schema)
            self._validators[tool.name] = validator
        problems = []
        for err in sorted(validator.iter_errors(arguments), key=lambda e: list(map(str, e.absolute_path))):
            path = list(err.absolute_path)
            if err.validator == "required" and isinstance(err.instance, dict):
                missing = [p for p in err.validator_value if p not in err.instance]
                path = [*path, missing[0]] if len(missing) == 1 else path
            problems.append(f"{_json_path('arguments', path)}: {err.message}")
        return problems

    def _tool(self, tool_name: str) -> Tool:
        tool = self.tools.get(tool_name)
        if tool is None:
            raise ToolCallError(
                f"unknown tool {tool_name!r}; {self.name} has: {', '.join(self.tools)}", reason="unknown_tool"
            )
        return tool

    # ---------------------------------------------------------------- calls

    def call(self, tool_name: str, arguments: Mapping[str, Any] | None = None, *,
             handle: CallHandle | None = None) -> ToolResult:
        """Run one tool call in a fresh instance. Never raises for what the module does.

        Raises :class:`ToolCallError` (reason ``unknown_tool``) for a tool the config
        does not declare. Arguments are not validated here (see validate_arguments).
        """
        import wasmtime

        tool = self._tool(tool_name)
        limits = self.config.limits_for(tool)
        t0 = time.perf_counter()
        timeout_ms = limits.timeout_ms or 10_000
        cap = (limits.max_output_kb or 1024) * 1024
        payload = json.dumps(dict(arguments or {}), separators=(",", ":")).encode()

        state = _CallState(time.monotonic() + timeout_ms / 1000, cap, handle)
        key = _register(state)
        ffi = _deadline_callback()
        writer: threading.Thread | None = None
        run_start = run_end = t0
        exit_code: int | None = None
        failure: tuple[str, str] | None = None  # (reason, message)
        self._ticker.enter()
        _CURRENT.state = state
        try:
            store = wasmtime.Store(self.engine)
            if limits.memory_mb:
                store.set_limits(memory_size=limits.memory_mb * MiB)
            if self.consume_fuel:
                store.set_fuel(limits.fuel if limits.fuel is not None else (1 << 62))
            ffi["set"](store.ptr(), ffi["cb"], key, ffi["nofinal"])
            store.set_epoch_deadline(1)

            wasi = wasmtime.WasiConfig()
            wasi.argv = [self.config.name, tool.name]
            env = [("MCPKIT_TOOL", tool.name)]
            env += [(k, self.environ[k]) for k in self.env_keys if k in self.environ]
            wasi.env = env
            for p in self.preopens:
                wasi.preopen_dir(str(p.host), p.guest, fs_mutable=p.writable)
            wasi.stdout_custom = state.on_stdout
            wasi.stderr_custom = state.on_stderr
            rfd, wfd = os.pipe()
            try:
                wasi.stdin_file = f"/dev/fd/{rfd}"
            finally:
                os.close(rfd)
            writer = _feed(wfd, payload)
            store.set_wasi(wasi)
            try:
                instance = self._pre.instantiate(store)
                start = instance.exports(store)["_start"]
                assert isinstance(start, wasmtime.Func)
                run_start = time.perf_counter()
                try:
                    start(store)
                finally:
                    run_end = time.perf_counter()
            except wasmtime.ExitTrap as exc:
                exit_code = exc.code
                if exc.code != 0:
                    failure = ("exit", f"exited with status {exc.code}")
            except _Stop:
                failure = ("stopped", "")
            except wasmtime.Trap as exc:
                failure = self._classify_trap(exc, limits, state)
            except wasmtime.WasmtimeError as exc:
                failure = self._classify_error(exc, limits, state)
            finally:
                del store  # closes the module's stdin pipe end and releases the callbacks
        finally:
            self._ticker.leave()
            _CURRENT.state = None
            with _STATES_LOCK:
                _STATES.pop(key, None)
            if writer is not None:
                writer.join(timeout=1)

        stop = state.reason
        if stop is not None:  # the host stopped it: that reason wins over the trap it caused
            failure = (stop, _stop_message(stop, limits))
        elif state.overflow:
            failure = ("output", _stop_message("output", limits))
        stderr_tail = _tail(state.stderr)
        stdout = b"".join(state.out)
        total = (time.perf_counter() - t0) * 1000
        run_ms = (run_end - run_start) * 1000
        if failure is not None:
            reason, message = failure
            text = f"{tool.name} failed: {message}"
            if stderr_tail:
                text += f"\n--- end of stderr ---\n{stderr_tail}"
            return ToolResult([{"type": "text", "text": text}], None, True, reason, stderr_tail,
                              exit_code, total, run_ms)
        return self._map_output(tool, stdout, stderr_tail, exit_code, total, run_ms)

    # ---------------------------------------------------------------- mapping

    def _classify_trap(self, exc: Any, limits: Limits, state: _CallState) -> tuple[str, str]:
        code = exc.trap_code
        name = code.name if code is not None else ""
        if name == "OUT_OF_FUEL":
            return "fuel", f"ran out of fuel ({limits.fuel} units)"
        if name == "INTERRUPT":
            return "timeout", _stop_message("timeout", limits)
        if b"memory allocation of" in state.stderr:
            return "memory", _stop_message("memory", limits)
        text = _TRAP_TEXT.get(name) or (exc.message.splitlines() or ["trap"])[0]
        return "trap", f"trapped: {text}"

    def _classify_error(self, exc: Any, limits: Limits, state: _CallState) -> tuple[str, str]:
        message = str(exc)
        if b"memory allocation of" in state.stderr or "memory minimum size" in message or "exceeds memory limits" in message:
            return "memory", _stop_message("memory", limits)
        if "all fuel consumed" in message:
            return "fuel", f"ran out of fuel ({limits.fuel} units)"
        first = message.strip().splitlines()[0] if message.strip() else "wasmtime error"
        return "trap", f"trapped: {first}"

    def _map_output(self, tool: Tool, stdout: bytes, stderr_tail: str, exit_code: int | None,
                    total: float, run_ms: float) -> ToolResult:
        text = stdout.decode("utf-8", errors="replace")
        stripped = text.strip()

        def done(content: list[dict[str, Any]], structured: dict[str, Any] | None = None, is_error: bool = False,
                 reason: str | None = None) -> ToolResult:
            return ToolResult(content, structured, is_error, reason, stderr_tail, exit_code, total, run_ms)

        if not stripped:
            return done([])
        try:
            value = json.loads(stripped)
        except ValueError:
            return done([{"type": "text", "text": text}])
        if isinstance(value, dict) and "content" in value:
            content = value["content"]
            structured = value.get("structuredContent")
            is_error = value.get("isError") is True
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            if not isinstance(content, list) or not all(
                isinstance(item, dict) and isinstance(item.get("type"), str) for item in content
            ):
                return done([{"type": "text", "text": f"{tool.name} returned invalid MCP content: \"content\" must "
                              "be a string or a list of content items with a \"type\""}], None, True, "invalid_output")
            if structured is not None and not isinstance(structured, dict):
                structured = None
            if structured is not None and not is_error:
                problem = self._check_output(tool, structured)
                if problem:
                    return done([{"type": "text", "text": problem}], None, True, "output_schema")
            return done(content, structured, is_error, "tool" if is_error else None)
        if isinstance(value, dict) and "error" in value:
            err = value["error"]
            message = err if isinstance(err, str) else json.dumps(err)
            return done([{"type": "text", "text": message}], None, True, "tool")
        content = [{"type": "text", "text": stripped}]
        if tool.output_schema is not None and isinstance(value, dict):
            problem = self._check_output(tool, value)
            if problem:
                return done([{"type": "text", "text": problem}], None, True, "output_schema")
            return done(content, value)
        return done(content)

    def _check_output(self, tool: Tool, value: dict[str, Any]) -> str | None:
        if tool.output_schema is None:
            return None
        validator = self._out_validators.get(tool.name)
        if validator is None:
            from jsonschema import validators

            cls = validators.validator_for(tool.output_schema, default=validators.Draft202012Validator)
            validator = cls(tool.output_schema)
            self._out_validators[tool.name] = validator
        errors = [f"{_json_path('output', list(e.absolute_path))}: {e.message}" for e in validator.iter_errors(value)]
        if errors:
            return f"{tool.name} returned output that does not match its output_schema: " + "; ".join(errors)
        return None


def _drain_output_callbacks(timeout: float = 2.0) -> None:
    from wasmtime import _wasi

    handles = getattr(getattr(_wasi, "CUSTOM_OUTPUTS", None), "handles", None)
    if handles is None:
        return
    end = time.monotonic() + timeout
    while handles and time.monotonic() < end:
        time.sleep(0.002)
    time.sleep(0.005)  # let the finalizing thread leave the interpreter


def _json_path(root: str, parts: Iterable[Any]) -> str:
    out = root
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _stop_message(reason: str, limits: Limits) -> str:
    if reason == "timeout":
        return f"timed out after {limits.timeout_ms} ms"
    if reason == "memory":
        return f"exceeded memory limit of {limits.memory_mb} MiB"
    if reason == "output":
        return f"output exceeded the limit of {limits.max_output_kb} KiB (max_output_kb)"
    if reason == "cancelled":
        return "cancelled by the client"
    return reason


def _tail(data: bytearray) -> str:
    text = bytes(data).decode("utf-8", errors="replace").rstrip()
    if len(text) > STDERR_TAIL_CHARS:
        text = "..." + text[-STDERR_TAIL_CHARS:]
    return text


def _feed(wfd: int, payload: bytes) -> threading.Thread | None:
    """Write the arguments into the stdin pipe and close it (a thread for large payloads)."""
    if len(payload) <= STDIN_DIRECT_MAX:
        try:
            view = memoryview(payload)
            while view:
                n = os.write(wfd, view)
                view = view[n:]
        finally:
            os.close(wfd)
        return None

    def pump() -> None:
        try:
            view = memoryview(payload)
            while view:
                n = os.write(wfd, view)
                view = view[n:]
        except OSError:  # the module exited without reading everything
            pass
        finally:
            os.close(wfd)

    thread = threading.Thread(target=pump, name="mcpkit-stdin", daemon=True)
    thread.start()
    return thread
