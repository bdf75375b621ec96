"""One tool call's moving parts: its state, the epoch ticker, the sleep replacement,
and turning a wasmtime failure into a reason.

Nothing here raises out of a host function: ``poll_oneoff`` answers every bad request with
a WASI errno, and stops (:class:`Stop`) only when the host ends the call.
"""

from __future__ import annotations

import errno
import logging
import struct
import threading
import time
from typing import Any

from hatch_mcpkit._text import clean_block
from hatch_mcpkit.config import Limits
from hatch_mcpkit.runtime._result import CallHandle, stop_message

__all__ = ["EPOCH_TICK_S", "CallState", "Stop", "Ticker", "classify_error", "classify_trap", "poll_oneoff"]

log = logging.getLogger("hatch_mcpkit.runtime")

EPOCH_TICK_S = 0.010  # one engine epoch tick; deadlines are checked at this granularity
STDERR_KEEP = 16 * 1024  # bytes of guest stderr kept per call
STDERR_TAIL_CHARS = 2000  # characters of it shown in an error result


class Stop(Exception):
    """Raised inside a host function when the host ends the call (timeout, cancel, output cap)."""


class CallState:
    """Everything one call's callbacks share; one per call, registered under an integer key."""

    __slots__ = ("cancel", "cap", "deadline", "out", "out_len", "overflow", "reason", "started_ns", "stderr")

    def __init__(self, deadline: float, cap: int, cancel: CallHandle | None) -> None:
        self.deadline = deadline
        self.cap = cap
        self.cancel = cancel
        self.out: list[bytes] = []
        self.out_len = 0
        self.overflow = False
        self.stderr = bytearray()
        self.reason: str | None = None  # set when the host stops the call
        self.started_ns = time.monotonic_ns()

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

    def stderr_tail(self) -> str:
        """The end of stderr, terminal-safe (it reaches logs and the client)."""
        text = bytes(self.stderr).decode("utf-8", errors="replace").rstrip()
        if len(text) > STDERR_TAIL_CHARS:
            text = "..." + text[-STDERR_TAIL_CHARS:]
        return clean_block(text, limit=None)


CURRENT = threading.local()  # .state: the CallState of the call running on this thread


# --------------------------------------------------------------------------- epoch ticker


class Ticker:
    """One background thread per engine advancing its epoch in step with the clock while calls run."""

    def __init__(self, engine: Any) -> None:
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
            elif self._active == 1:
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
        due = time.monotonic()
        while True:
            with self._lock:
                if self._active == 0 and not self._closed:
                    while self._active == 0 and not self._closed:
                        self._wake.wait()
                    due = time.monotonic()
                if self._closed:
                    return
            due += EPOCH_TICK_S
            delay = due - time.monotonic()
            if delay > 0:  # late (a loaded machine): catch up without sleeping
                time.sleep(delay)
            self._engine.increment_epoch()


def deadline_ticks(timeout_ms: int) -> int:
    """Epoch ticks for a timeout (the public deadline API)."""
    return max(1, -(-timeout_ms // int(EPOCH_TICK_S * 1000)))


# --------------------------------------------------------------------------- poll_oneoff

# WASI's own poll_oneoff blocks in the host (a sleep) where epoch interruption cannot reach,
# so a module could outlive its timeout. This one sleeps in small steps, honouring the
# call's deadline and cancellation. Layouts (wasi_snapshot_preview1):
#   subscription, 48 bytes: userdata u64 @0, tag u8 @8, then the union @16:
#     clock: id u32 @16, timeout u64 @24, precision u64 @32, flags u16 @40
#     fd_read / fd_write: fd u32 @16
#   event, 32 bytes: userdata u64 @0, error u16 @8, type u8 @10, nbytes u64 @16, flags u16 @24
SUB_SIZE, EVENT_SIZE = 48, 32
MAX_SUBSCRIPTIONS = 4096
_CLOCK, _FD_READ, _FD_WRITE = 0, 1, 2
_ABSTIME = 1
_REALTIME = 0
ERRNO_FAULT, ERRNO_INVAL = 21, 28
_SUB = struct.Struct("<QB7xIxxxxQQH6x")
_EVENT = struct.Struct("<QHBxxxxxQH6x")
_U32 = struct.Struct("<I")


def poll_oneoff(caller: Any, in_ptr: int, out_ptr: int, nsubs: int, nevents_ptr: int) -> int:
    """``poll_oneoff`` for the guest: an errno for every bad request, never an exception."""
    try:
        return _poll(caller, in_ptr & 0xFFFFFFFF, out_ptr & 0xFFFFFFFF, nsubs & 0xFFFFFFFF,
                     nevents_ptr & 0xFFFFFFFF)
    except Stop:
        raise
    except Exception as exc:  # a bug here must not become a JSON-RPC error: the guest sees EINVAL
        log.debug("poll_oneoff failed: %r", exc)
        return ERRNO_INVAL


def _poll(caller: Any, in_ptr: int, out_ptr: int, nsubs: int, nevents_ptr: int) -> int:
    import wasmtime

    if nsubs == 0 or nsubs > MAX_SUBSCRIPTIONS:
        return ERRNO_INVAL
    mem = caller.get("memory")
    if not isinstance(mem, wasmtime.Memory):
        return ERRNO_INVAL
    size = mem.data_len(caller)
    if (in_ptr + nsubs * SUB_SIZE > size or out_ptr + nsubs * EVENT_SIZE > size or nevents_ptr + 4 > size):
        return ERRNO_FAULT
    raw = bytes(mem.read(caller, in_ptr, in_ptr + nsubs * SUB_SIZE))
    state: CallState | None = getattr(CURRENT, "state", None)
    start = time.monotonic_ns()
    clocks: list[tuple[int, int]] = []  # (userdata, due in ns from start)
    ready: list[bytes] = []
    for i in range(nsubs):
        userdata, tag, clock_id, timeout, _precision, flags = _SUB.unpack_from(raw, i * SUB_SIZE)
        if tag == _CLOCK:
            clocks.append((userdata, _due(clock_id, timeout, flags, start, state)))
        elif tag in (_FD_READ, _FD_WRITE):  # stdin is a closed pipe, files are always ready
            ready.append(_EVENT.pack(userdata, 0, tag, 1, 0))
        else:
            return ERRNO_INVAL
    if not ready:
        wait = min(due for _, due in clocks)
        _sleep(start + wait, state)
        elapsed = time.monotonic_ns() - start
        ready = [_EVENT.pack(ud, 0, _CLOCK, 0, 0) for ud, due in clocks if due <= elapsed]
    mem.write(caller, b"".join(ready), out_ptr)
    mem.write(caller, _U32.pack(len(ready)), nevents_ptr)
    return 0


def _due(clock_id: int, timeout: int, flags: int, now_mono: int, state: CallState | None) -> int:
    """Nanoseconds from now until the subscription fires."""
    if not flags & _ABSTIME:
        return timeout
    if clock_id == _REALTIME:
        return max(0, timeout - time.time_ns())
    # The guest's monotonic clock starts near zero with its instance: count from the call's start.
    started = state.started_ns if state is not None else now_mono
    return max(0, timeout - (now_mono - started))


def _sleep(end_ns: int, state: CallState | None) -> None:
    while True:
        left = end_ns - time.monotonic_ns()
        if state is not None and state.should_stop():
            raise Stop()
        if left <= 0:
            return
        time.sleep(min(left / 1e9, EPOCH_TICK_S))


# --------------------------------------------------------------------------- classification


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

_LIMIT_WORDS = ("memory minimum size", "exceeds memory limits", "resource limit exceeded", "count of",
                "exceeds the limit", "table minimum size")


def classify_trap(exc: Any, limits: Limits, state: CallState) -> tuple[str, str]:
    code = exc.trap_code
    name = code.name if code is not None else ""
    if name == "OUT_OF_FUEL":
        return "fuel", stop_message("fuel", limits)
    if name == "INTERRUPT":
        return "timeout", stop_message("timeout", limits)
    if b"memory allocation of" in state.stderr:
        return "memory", stop_message("memory", limits)
    text = _TRAP_TEXT.get(name) or (exc.message.splitlines() or ["trap"])[0]
    return "trap", f"trapped: {text}"


def classify_error(exc: Any, limits: Limits, state: CallState) -> tuple[str, str]:
    message = str(exc)
    if b"memory allocation of" in state.stderr or any(word in message for word in _LIMIT_WORDS):
        return "memory", stop_message("memory", limits)
    if "all fuel consumed" in message:
        return "fuel", stop_message("fuel", limits)
    if "wasm trap: interrupt" in message:
        return "timeout", stop_message("timeout", limits)
    first = message.strip().splitlines()[0] if message.strip() else "wasmtime error"
    return "trap", f"trapped: {first}"
