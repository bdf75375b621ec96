"""The one place that touches wasmtime-py's private API (``wasmtime._ffi``).

Three things the public API does not offer:

* **a per-store interrupt**: cancelling one call (``tools/call`` cancellation, output over
  its cap) needs the store's epoch-deadline *callback*; the public ``Store.set_epoch_deadline``
  only traps at a fixed tick. Calls without a cancel handle use the public deadline alone.
* **guest stdout/stderr through our own table**: wasmtime-py's ``WasiConfig.stdout_custom``
  keeps callbacks in a table that is not thread-safe before wasmtime-py 50 (its finalizers run
  on wasmtime's worker threads) and calls a Python finalizer from those threads, which aborts
  the process when one is still pending at exit. Here each call's callbacks live in a dict
  keyed by an integer that never repeats, and no finalizer is registered at all.
* **stdin from memory**: ``WasiConfig.stdin_file`` only takes a path, so arguments would go
  through a pipe, a ``/dev/fd`` open and, for large ones, a writer thread; the C API's
  ``wasi_config_set_stdin_bytes`` hands the bytes over directly.
* **``_start`` by name, called bare**: ``instance.exports(store)["_start"](store)`` reads every
  export and asks the function for its type (eight C calls, each releasing and retaking the
  GIL, which a busy server's event loop then has to hand back); :func:`run_start` looks the
  export up by name and calls it with no arguments in two, through wasmtime-py's own trap
  handling (``enter_wasm``), so a trap, an exit or an error raises exactly what
  ``Func.__call__`` raises.

It also hides the one public API difference between the supported wasmtime-py releases
(45 to 50): :func:`preopen` (``preopen_dir`` took permission enums before 48, ``fs_mutable`` since).

Every private name used is listed in :data:`PRIVATE_NAMES` (besides two attributes of wasmtime-py's
own objects, ``Store._context()`` and ``Instance._instance``, which every call exercises); ``tests/test_runtime.py``
imports each one, so a wasmtime release that removes one fails that test loudly.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import threading
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "PRIVATE_NAMES", "Hooks", "attach_interrupt", "attach_output", "check_supported", "missing_names",
    "preopen", "register", "run_start", "set_stdin", "unregister",
]

PRIVATE_NAMES = (
    "wasmtime._ffi.wasmtime_store_epoch_deadline_callback",
    "wasmtime._ffi.wasmtime_context_t",
    "wasmtime._ffi.wasmtime_update_deadline_kind_t",
    "wasmtime._ffi.wasmtime_error_new",
    "wasmtime._ffi.wasi_config_set_stdout_custom",
    "wasmtime._ffi.wasi_config_set_stderr_custom",
    "wasmtime._ffi.wasi_config_set_stdin_bytes",
    "wasmtime._ffi.wasm_byte_vec_t",
    "wasmtime._ffi.wasm_byte_vec_new",
    "wasmtime._ffi.wasmtime_instance_export_get",
    "wasmtime._ffi.wasmtime_extern_t",
    "wasmtime._ffi.wasmtime_func_call",
    "wasmtime._ffi.WASMTIME_EXTERN_FUNC",
    "wasmtime._func.enter_wasm",
)


class Hooks(Protocol):
    """What one call exposes to the host callbacks."""

    def on_stdout(self, data: bytes) -> int: ...
    def on_stderr(self, data: bytes) -> int: ...
    def should_stop(self) -> str | None: ...


_LIVE: dict[int, Hooks] = {}
_KEYS = itertools.count(1)
_INIT = threading.Lock()
_FFI: dict[str, Any] = {}


def register(hooks: Hooks) -> int:
    """A fresh key for ``hooks`` (``next()`` and a dict store are atomic under the GIL)."""
    key = next(_KEYS)
    _LIVE[key] = hooks
    return key


def unregister(key: int) -> None:
    _LIVE.pop(key, None)


def missing_names() -> list[str]:
    """The private names this wasmtime-py no longer has (empty when all are there)."""
    import importlib

    missing = []
    for name in PRIVATE_NAMES:
        module, attr = name.rsplit(".", 1)
        try:
            found = hasattr(importlib.import_module(module), attr)
        except ImportError:
            found = False
        if not found:
            missing.append(name)
    return missing


def check_supported() -> None:
    """Refuse, with a clear error, a wasmtime-py the runtime cannot run on (too old, or a private name gone)."""
    import wasmtime

    from hatch_mcpkit.errors import SandboxError

    missing = missing_names()
    if not hasattr(wasmtime.Linker, "instantiate_pre"):
        missing.append("wasmtime.Linker.instantiate_pre (wasmtime-py 45 and later)")
    if missing:
        from importlib.metadata import version

        raise SandboxError(
            f"wasmtime-py {version('wasmtime')} lacks what the mcpkit runtime needs: {', '.join(missing)}",
            hint="install a supported release: pip install 'wasmtime>=45,<51'",
        )


def _ffi() -> dict[str, Any]:
    if _FFI:
        return _FFI
    with _INIT:
        if not _FFI:
            from wasmtime import _ffi as ffi

            out_proto = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_void_p, ctypes.POINTER(ctypes.c_ubyte),
                                         ctypes.c_size_t)
            deadline_proto = ctypes.CFUNCTYPE(
                ctypes.c_size_t, ctypes.POINTER(ffi.wasmtime_context_t), ctypes.c_void_p,
                ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
            )

            def on_deadline(_ctx: Any, data: int | None, delta: Any, kind: Any) -> int:
                hooks = _LIVE.get(data or 0)
                if hooks is None or hooks.should_stop():
                    err = ffi.wasmtime_error_new(b"mcpkit: call interrupted by the host")
                    return ctypes.cast(err, ctypes.c_void_p).value or 0
                delta[0] = 1
                kind[0] = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
                return 0

            _FFI.update(
                stdout=out_proto(_writer(lambda h: h.on_stdout)),
                stderr=out_proto(_writer(lambda h: h.on_stderr)),
                deadline=deadline_proto(on_deadline),
                no_finalizer=ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p)),
                set_stdout=ffi.wasi_config_set_stdout_custom,
                set_stderr=ffi.wasi_config_set_stderr_custom,
                set_deadline=ffi.wasmtime_store_epoch_deadline_callback,
                set_stdin=ffi.wasi_config_set_stdin_bytes,
                byte_vec=ffi.wasm_byte_vec_t,
                byte_vec_new=ffi.wasm_byte_vec_new,
            )
    return _FFI


def _writer(pick: Callable[[Hooks], Callable[[bytes], int]]) -> Callable[[int | None, Any, int], int]:
    def write(key: int | None, ptr: Any, size: int) -> int:
        hooks = _LIVE.get(key or 0)
        if hooks is None:  # the call is over: nobody reads this any more
            return -errno.EPIPE
        try:
            return pick(hooks)(ctypes.string_at(ptr, size))
        except Exception:  # never let an exception cross into wasmtime
            return -errno.EIO

    return write


def attach_output(wasi: Any, key: int) -> None:
    """Send the guest's stdout and stderr of this WasiConfig to the hooks registered as ``key``."""
    ffi = _ffi()
    ptr = wasi.ptr()
    ffi["set_stdout"](ptr, ffi["stdout"], key, ffi["no_finalizer"])
    ffi["set_stderr"](ptr, ffi["stderr"], key, ffi["no_finalizer"])


def attach_interrupt(store: Any, key: int) -> None:
    """Check ``should_stop()`` of the hooks registered as ``key`` at every epoch tick of ``store``."""
    ffi = _ffi()
    ffi["set_deadline"](store.ptr(), ffi["deadline"], key, ffi["no_finalizer"])


_UBYTE_P = ctypes.POINTER(ctypes.c_ubyte)
_PREOPEN: list[Callable[[Any, str, str, bool], None]] = []


def set_stdin(wasi: Any, data: bytes) -> None:
    """The guest's stdin is ``data`` (copied into wasmtime), then end of file."""
    ffi = _ffi()
    vec = ffi["byte_vec"]()
    ffi["byte_vec_new"](ctypes.byref(vec), len(data), ctypes.cast(ctypes.c_char_p(data), _UBYTE_P))
    ffi["set_stdin"](wasi.ptr(), ctypes.byref(vec))  # wasmtime takes ownership of the copy


def preopen(wasi: Any, host: str, guest: str, writable: bool) -> None:
    """``WasiConfig.preopen_dir``, read-only unless ``writable``, on every supported wasmtime-py.

    wasmtime opens ``host`` right here (not when the store starts), following a ``/proc/self/fd/N``
    to the very folder held open as N: that is how each call gets the folder checked at launch.
    """
    if not _PREOPEN:
        import inspect

        import wasmtime

        if "fs_mutable" in inspect.signature(wasmtime.WasiConfig.preopen_dir).parameters:
            _PREOPEN.append(lambda w, h, g, rw: w.preopen_dir(h, g, fs_mutable=rw))
        else:  # wasmtime-py 45-47
            def by_perms(w: Any, h: str, g: str, rw: bool) -> None:
                d, f = getattr(wasmtime, "DirPerms"), getattr(wasmtime, "FilePerms")  # noqa: B009 (gone in 48+)
                w.preopen_dir(h, g, d.READ_WRITE if rw else d.READ_ONLY, f.READ_WRITE if rw else f.READ_ONLY)

            _PREOPEN.append(by_perms)
    _PREOPEN[0](wasi, host, guest, writable)


_START = b"_start"


def run_start(store: Any, instance: Any) -> None:
    """Call the instance's ``_start`` (no parameters, no results); raises what ``Func.__call__`` would.

    The module was checked at load to export ``_start`` as a function of that type; should the
    export still be missing or not a function, :class:`wasmtime.WasmtimeError` says so.
    """
    import wasmtime
    from wasmtime import _ffi as ffi
    from wasmtime._func import enter_wasm

    context = store._context()
    item: Any = ffi.wasmtime_extern_t()
    if not ffi.wasmtime_instance_export_get(context, ctypes.byref(instance._instance), _START, len(_START),
                                            ctypes.byref(item)) or item.kind != ffi.WASMTIME_EXTERN_FUNC.value:
        raise wasmtime.WasmtimeError("the module exports no _start function")
    with enter_wasm(store) as trap:
        error = ffi.wasmtime_func_call(context, ctypes.byref(item.of.func), None, 0, None, 0, trap)
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
