"""MCP over stdin/stdout, read and written on the event loop itself.

The SDK's ``stdio_server`` moves every line through a worker thread (one hand-off to
read a request, two to write its answer); on a small machine those hand-offs cost
more than running a tool. When stdin is a pipe or a socket (how every MCP client
starts a server) or a terminal (someone trying it by hand) this transport waits for it
with the event loop's selector instead, and answers lines that are not JSON-RPC itself
(``-32700`` / ``-32600``); stdout may then be anything writable (a pipe is waited for, a
file or terminal is written directly). Waiting on the loop also keeps the server
stoppable: a thread blocked reading a terminal cannot be cancelled, so Ctrl-C would
have to wait for the next Enter. A stdin the loop cannot wait on (a regular file,
``/dev/null``, which never block) gets the SDK's transport.

Like the SDK, it claims the descriptors while serving: fd 0 reads the null device and
fd 1 writes to stderr, so nothing else in the process (a library's stray ``print``)
can reach the protocol stream; both are restored afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import stat
import sys
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["stdio_streams"]

_CHUNK = 1 << 16
MAX_LINE = 64 << 20  # a longer line is dropped unread (answered with -32700), not buffered for ever
_PIPE_BUF = 4096  # a write this size to a writable pipe never blocks (POSIX atomic write)


def _is_stream(fd: int) -> bool:
    """A pipe, a socket or a terminal: something the event loop can wait on."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _claimed(fd: int, replacement: int) -> Any:
    """A private duplicate of ``fd`` (the wire) while ``fd`` itself points at ``replacement``."""
    private = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.dup2(replacement, fd)
    try:
        yield private
    finally:
        os.dup2(private, fd)
        os.close(private)


@contextlib.asynccontextmanager
async def stdio_streams() -> AsyncIterator[tuple[Any, Any]]:
    """``(read_stream, write_stream)`` for ``Server.run`` over this process's stdin/stdout."""
    if not (_is_stream(0) and _is_open(1)):
        from mcp.server.stdio import stdio_server

        async with stdio_server() as streams:
            yield streams
        return
    sys.stdout.flush()
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        with _claimed(0, null) as wire_in, _claimed(1, 2) as wire_out:
            async with _serve(wire_in, wire_out) as streams:
                yield streams
    finally:
        os.close(null)


@contextlib.asynccontextmanager
async def _serve(wire_in: int, wire_out: int) -> AsyncIterator[tuple[Any, Any]]:
    import anyio
    from mcp.shared.message import SessionMessage

    read_send, read_recv = anyio.create_memory_object_stream[Any](0)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](0)
    lock = anyio.Lock()  # one frame at a time on the wire

    async def send(data: bytes) -> None:
        async with lock:
            await _write(wire_out, data)

    async def reader() -> None:
        async with read_send:
            async for line in _lines(wire_in):
                if line is None:
                    await send(_error(None, -32700, f"Parse error: a line longer than {MAX_LINE >> 20} MiB was "
                                      "dropped"))
                    continue
                message, error = _parse(line)
                if message is not None:
                    await read_send.send(SessionMessage(message))
                elif error is not None:
                    await send(error)

    async def writer() -> None:
        async with write_recv:
            async for item in write_recv:
                data = item.message.model_dump_json(by_alias=True, exclude_unset=True)
                await send(data.encode() + b"\n")

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        tg.start_soon(writer)
        try:
            yield read_recv, write_send
        finally:
            tg.cancel_scope.cancel()


async def _lines(fd: int) -> AsyncIterator[bytes | None]:
    """Each non-blank line; ``None`` for a line over MAX_LINE (dropped as it arrives, never buffered)."""
    import anyio

    pending = bytearray()
    dropping = False
    while True:
        await anyio.wait_readable(fd)
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:
            continue
        if not chunk:
            break
        end = chunk.find(b"\n")
        if end < 0:
            if not dropping:
                pending += chunk
                if len(pending) > MAX_LINE:
                    dropping = True
                    pending.clear()
                    yield None
            continue
        if dropping:  # the rest of an oversized line
            dropping = False
            chunk = chunk[end + 1 :]
        elif len(pending) + end > MAX_LINE:
            pending.clear()
            chunk = chunk[end + 1 :]
            yield None
        *lines, rest = (bytes(pending) + chunk).split(b"\n")
        pending = bytearray(rest)
        for line in lines:
            if len(line) > MAX_LINE:
                yield None
            elif line.strip():
                yield line
    if pending.strip() and not dropping:
        yield bytes(pending)


async def _write(fd: int, data: bytes) -> None:
    """All of ``data``, never blocking the loop on a client that does not read."""
    import anyio

    view = memoryview(data)
    while view:
        if not select.select([], [fd], [], 0)[1]:
            await anyio.wait_writable(fd)
        view = view[os.write(fd, view[:_PIPE_BUF]):]


def _parse(line: bytes) -> tuple[Any, bytes | None]:
    """(a JSON-RPC message, None) or (None, the error answer to write, or None to drop it)."""
    import mcp_types as types

    text = line.decode("utf-8", errors="replace")
    try:
        message = types.jsonrpc_message_adapter.validate_json(text, by_name=False)
    except Exception:  # pydantic ValidationError, or depth/size problems inside it
        message = None
    if message is not None and not (isinstance(message, types.JSONRPCNotification) and b'"id"' in line):
        return message, None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None, _error(None, -32700, "Parse error: the line is not JSON (or is nested too deeply)")
    if message is not None and not (isinstance(value, dict) and "id" in value):
        return message, None  # '"id"' was only inside the params
    ident = value.get("id") if isinstance(value, dict) else None
    if isinstance(value, dict) and "method" in value and "id" not in value:
        return None, None  # a malformed notification gets no answer (JSON-RPC 2.0)
    if isinstance(value, dict) and "method" not in value and ("result" in value or "error" in value):
        return None, None  # a malformed response: nothing to answer
    readable = ident if isinstance(ident, (str, int)) and not isinstance(ident, bool) else None
    return None, _error(readable, -32600, "Invalid Request: not a JSON-RPC 2.0 request")


def _error(ident: str | int | None, code: int, message: str) -> bytes:
    body: dict[str, Any] = {"jsonrpc": "2.0"}
    if ident is not None:  # an id that cannot be read is left out (a null id is refused by some clients)
        body["id"] = ident
    body["error"] = {"code": code, "message": message}
    return json.dumps(body).encode() + b"\n"
