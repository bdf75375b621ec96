"""The Runtime: one engine per bundle, one fresh instance per tool call."""

from __future__ import annotations

import json
import os
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatch_mcpkit._validation import ToolSchemas
from hatch_mcpkit.config import Config, Limits, StorageGrant, Tool, load_config
from hatch_mcpkit.errors import ModuleError, ToolCallError
from hatch_mcpkit.runtime import _call, _wasmtime
from hatch_mcpkit.runtime._engine import load_module, make_engine
from hatch_mcpkit.runtime._policy import HostLimits, effective_grants
from hatch_mcpkit.runtime._result import (
    CallHandle,
    ToolResult,
    failure_result,
    map_output,
    stop_message,
)

if TYPE_CHECKING:

    from hatch_mcpkit.store import CodeCache

__all__ = ["Runtime"]

MODULE_FILE = "module.wasm"
CONFIG_FILE = "config.yaml"
MiB = 1 << 20
MAX_TABLES = 4
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class _Plan:
    """Everything about a tool's calls that does not change from call to call."""

    tool: Tool
    limits: Limits
    timeout_s: float
    ticks: int
    cap: int
    fuel: int | None
    store_limits: dict[str, int]
    argv: list[str]
    env: list[tuple[str, str]]


def _store_limits(limits: Limits) -> dict[str, int]:
    """Caps on the total a store may hold: one memory of memory_mb, at most MAX_TABLES tables
    whose elements together take no more than memory_mb, one instance."""
    memory = (limits.memory_mb or 0) * MiB
    return {"memory_size": memory, "memories": 1, "tables": MAX_TABLES,
            "table_elements": max(10_000, memory // 16 // MAX_TABLES), "instances": 1}


class Runtime:
    """A bundle ready to serve tool calls, each in a fresh sandboxed instance.

    Thread-safe: ``call`` may run concurrently from several threads.

    ``protected_paths`` (the MCPKIT_HOME in use) are fenced from write grants together with
    ``$MCPKIT_HOME``, ``~/.mcpkit`` and the bundle folder, whatever the caller passes.
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
        code_cache: CodeCache | None = None,
        protected_paths: Sequence[Path] | None = None,
        host_limits: HostLimits | None = None,
    ) -> None:
        _wasmtime.check_supported()
        t0 = time.perf_counter()
        self.config = config
        self.bundle_dir = Path(bundle_dir) if bundle_dir is not None else Path(module_path).parent
        self.module_path = Path(module_path)
        self.environ: Mapping[str, str] = dict(os.environ if environ is None else environ)
        from hatch_mcpkit.store import every_home

        self._grants = effective_grants(config, self.bundle_dir, extra_grants, deny_guests,
                                        every_home(protected_paths or ()))
        self._closers: list[Any] = [self._grants.close]
        self._finalizer = weakref.finalize(self, _close_all, self._closers)
        try:
            self._load(config, code_cache, extra_env_keys, deny_env_keys, host_limits)
        except BaseException:
            self._finalizer()
            raise
        self.load_ms = (time.perf_counter() - t0) * 1000

    def _load(self, config: Config, code_cache: CodeCache | None, extra_env_keys: Sequence[str],
              deny_env_keys: Sequence[str], host_limits: HostLimits | None) -> None:
        import wasmtime

        self.preopens = self._grants.preopens
        keys = [k for k in (*config.policy.env_keys, *extra_env_keys) if k not in set(deny_env_keys)]
        self.env_keys: tuple[str, ...] = tuple(dict.fromkeys(k for k in keys if k != "MCPKIT_TOOL"))
        self.tools: dict[str, Tool] = {t.name: t for t in config.tools}
        self.schemas = ToolSchemas(config)  # refuses unsafe schemas before any code is loaded
        self.host_limits = host_limits if host_limits is not None else HostLimits.from_env()
        self._plans = {t.name: self._plan(t) for t in config.tools}
        self.consume_fuel = any(p.fuel is not None for p in self._plans.values())
        self.engine = make_engine(self.consume_fuel)
        self.module, self.module_source = load_module(self.engine, self.consume_fuel, self.module_path, code_cache)
        start = next((e.type for e in self.module.exports if e.name == "_start"), None)
        if start is None:
            raise ModuleError(f"{self.module_path} exports no _start: build it as a WASI command (fn main)")
        if not isinstance(start, wasmtime.FuncType) or start.params or start.results:
            raise ModuleError(f"{self.module_path} exports _start, but not as a function without parameters "
                              "or results: build it as a WASI command (fn main)")
        self._pre = self._instance_pre(wasmtime)
        self._ticker = _call.Ticker(self.engine)
        self._closers.insert(0, self._ticker.close)

    def _plan(self, tool: Tool) -> _Plan:
        limits = self.host_limits.cap(self.config.limits_for(tool))
        timeout_ms = limits.timeout_ms or self.host_limits.timeout_ms
        env = [("MCPKIT_TOOL", tool.name)] + [(k, self.environ[k]) for k in self.env_keys if k in self.environ]
        return _Plan(tool, limits, timeout_ms / 1000, _call.deadline_ticks(timeout_ms),
                     (limits.max_output_kb or self.host_limits.max_output_kb) * 1024, limits.fuel,
                     _store_limits(limits), [self.config.name, tool.name], env)

    def _instance_pre(self, wasmtime: Any) -> Any:
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        linker.allow_shadowing = True
        i32 = wasmtime.ValType.i32()
        linker.define_func("wasi_snapshot_preview1", "poll_oneoff", wasmtime.FuncType([i32, i32, i32, i32], [i32]),
                           _call.poll_oneoff, access_caller=True)
        try:
            return linker.instantiate_pre(self.module)
        except wasmtime.WasmtimeError as exc:
            raise ModuleError(
                f"{self.module_path} needs imports this sandbox does not provide: {exc}",
                hint="a guest may import only wasi_snapshot_preview1",
            ) from None

    # ---------------------------------------------------------------- constructors

    @classmethod
    def from_dir(cls, bundle_dir: Path | str, **options: Any) -> Runtime:
        """A bundle directory (a cache entry or any folder with module.wasm + config.yaml).

        Its config.yaml is data: never expanded from any environment.
        """
        bundle_dir = Path(bundle_dir)
        config = load_config(bundle_dir / CONFIG_FILE)
        return cls(config, bundle_dir / MODULE_FILE, bundle_dir=bundle_dir, **options)

    def close(self) -> None:
        """Stop the epoch ticker and let go of the granted directories."""
        self._finalizer()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- info

    @property
    def name(self) -> str:
        return self.config.name

    def limits(self, tool_name: str) -> Limits:
        """The limits a call of this tool runs under: the bundle's, capped by the host's."""
        return self._plans[self._tool(tool_name).name].limits

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
        return self.schemas.arguments(self._tool(tool_name), arguments)

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
        plan = self._plans[self._tool(tool_name).name]
        t0 = time.perf_counter()
        payload = _ENCODE(dict(arguments or {})).encode()
        state = _call.CallState(time.monotonic() + plan.timeout_s, plan.cap, handle)
        key = _wasmtime.register(state)
        self._ticker.enter()
        _call.CURRENT.state = state
        try:
            exit_code, failure, run_ms = self._run(plan, state, key, payload, handle is not None)
        finally:
            _call.CURRENT.state = None
            self._ticker.leave()
            _wasmtime.unregister(key)
        return self._result(plan, state, exit_code, failure, (time.perf_counter() - t0) * 1000, run_ms)

    def _store(self, wasmtime: Any, plan: _Plan, key: int, interruptible: bool) -> Any:
        store = wasmtime.Store(self.engine)
        store.set_limits(**plan.store_limits)
        if self.consume_fuel:
            store.set_fuel(plan.fuel if plan.fuel is not None else (1 << 62))
        if interruptible:  # cancellation needs a check at every tick: the epoch callback
            _wasmtime.attach_interrupt(store, key)
            store.set_epoch_deadline(1)
        else:  # the public deadline traps by itself
            store.set_epoch_deadline(plan.ticks)
        return store

    def _wasi(self, wasmtime: Any, plan: _Plan, key: int, payload: bytes) -> Any:
        wasi = wasmtime.WasiConfig()
        wasi.argv = plan.argv
        wasi.env = plan.env
        self._grants.each(lambda held, p: _wasmtime.preopen(wasi, held, p.guest, p.writable))
        _wasmtime.attach_output(wasi, key)
        _wasmtime.set_stdin(wasi, payload)
        return wasi

    def _run(self, plan: _Plan, state: _call.CallState, key: int, payload: bytes,
             interruptible: bool) -> tuple[int | None, tuple[str, str] | None, float]:
        """Instantiate and run ``_start``: (exit code, (reason, message) or None, ms inside the module)."""
        import wasmtime

        store = self._store(wasmtime, plan, key, interruptible)
        store.set_wasi(self._wasi(wasmtime, plan, key, payload))
        exit_code: int | None = None
        failure: tuple[str, str] | None = None
        run_start = run_end = time.perf_counter()
        try:
            instance = self._pre.instantiate(store)
            run_start = time.perf_counter()
            try:
                _wasmtime.run_start(store, instance)
            finally:
                run_end = time.perf_counter()
        except wasmtime.ExitTrap as exc:
            exit_code = exc.code
            if exc.code != 0:
                failure = ("exit", f"exited with status {exc.code}")
        except _call.Stop:
            failure = ("stopped", "")
        except wasmtime.Trap as exc:
            failure = _call.classify_trap(exc, plan.limits, state)
        except wasmtime.WasmtimeError as exc:
            failure = _call.classify_error(exc, plan.limits, state)
        finally:
            del store  # now, not when a traceback that saw this frame is collected
        return exit_code, failure, (run_end - run_start) * 1000

    def _result(self, plan: _Plan, state: _call.CallState, exit_code: int | None,
                failure: tuple[str, str] | None, total: float, run_ms: float) -> ToolResult:
        stop = state.reason
        if stop is not None:  # the host stopped it: that reason wins over the trap it caused
            failure = (stop, stop_message(stop, plan.limits))
        elif state.overflow:
            failure = ("output", stop_message("output", plan.limits))
        stderr_tail = state.stderr_tail() if state.stderr else ""
        if failure is not None:
            return failure_result(plan.tool, *failure, stderr_tail, exit_code, total, run_ms)
        return map_output(plan.tool, b"".join(state.out), self.schemas.output, stderr_tail, exit_code,
                          total, run_ms)


def _close_all(closers: list[Any]) -> None:
    for close in closers:
        close()
