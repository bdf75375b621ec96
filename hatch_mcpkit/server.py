"""The MCP server: the tools of one :class:`~hatch_mcpkit.runtime.Runtime`, or of several.

A server answers from a *tool table*: rows of (exposed name, runtime, tool, that
bundle's own concurrency limiter), :class:`ServedTool`. One bundle's table keeps its
tools' own names (:func:`build_server`); the gateway (:mod:`hatch_mcpkit.gateway`)
joins several bundles' rows under ``<key>__<tool>`` names (:func:`table_server`). Every
call takes the same path (``_call``) whichever table it came from.

The command line (``mcpkit server`` / ``mcpkit run``: what to serve, options, the launch
banner) lives in :mod:`hatch_mcpkit.cli`; this module is only the server.

Built on the official ``mcp`` SDK's low-level ``Server``: ``initialize``,
``tools/list`` (from config.yaml), ``tools/call``, ``ping`` and cancellation.
Each call runs in a worker thread, at most ``--max-concurrency`` at a time: there
its arguments are checked against the tool's ``input_schema`` (the SDK does not do
it on stdio; :mod:`hatch_mcpkit._validation`: no retrieval, RE2 patterns, a time
budget) and, when they pass, the module runs in a fresh sandboxed instance
(:mod:`hatch_mcpkit.runtime`). A bad argument is a tool result with ``isError``
naming the field (SEP-1303); an unknown tool is a JSON-RPC invalid-params error. The
event loop only moves messages, so ``ping`` and ``notifications/cancelled`` are answered
while a call runs, and a call whose ``_meta`` carries a ``progressToken`` gets
``notifications/progress`` while it runs. A second ``initialize`` is refused: the
version agreed first holds for the session. SIGINT and SIGTERM stop a stdio server,
cancelling the calls in flight (:mod:`hatch_mcpkit._signals`).

stdout carries only protocol messages; everything else goes to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anyio import CapacityLimiter
    from mcp.server.lowlevel import Server
    from mcp_types import CallToolResult

    from hatch_mcpkit._signals import Stop
    from hatch_mcpkit.config import Tool
    from hatch_mcpkit.runtime import CallHandle, Runtime

__all__ = ["DEFAULT_CONCURRENCY", "ServedTool", "build_server", "serve", "serve_stdio", "table_server", "tool_rows"]

log = logging.getLogger("hatch_mcpkit.server")

DEFAULT_CONCURRENCY = 4
PROGRESS_INTERVAL_S = 5.0  # between two notifications/progress for a call that asked for them
PROGRESS_ENV = "MCPKIT_PROGRESS_INTERVAL_MS"
CANCEL_WAIT_S = 5.0  # how long a cancelled call is waited for (it stops at its next 10 ms epoch tick)


# --------------------------------------------------------------------------- the tool table


@dataclass(frozen=True)
class ServedTool:
    """One row of a server's tool table: the name clients see, and what answers it.

    ``limiter`` is the bundle's own: every row of one bundle shares it, so a bundle
    whose calls hang holds only its own slots, never another bundle's.
    """

    name: str
    runtime: Runtime
    tool: Tool
    limiter: CapacityLimiter


def tool_rows(runtime: Runtime, *, max_concurrency: int = DEFAULT_CONCURRENCY,
              exposed: Callable[[str], str] | None = None) -> list[ServedTool]:
    """The rows of one bundle, in config order; ``exposed`` maps a tool name to the name served."""
    import anyio

    limiter = anyio.CapacityLimiter(max(1, max_concurrency))
    return [ServedTool(exposed(tool.name) if exposed else tool.name, runtime, tool, limiter)
            for tool in runtime.config.tools]


# --------------------------------------------------------------------------- the MCP server


def build_server(runtime: Runtime, *, max_concurrency: int = DEFAULT_CONCURRENCY) -> Server[Any]:
    """A low-level ``mcp`` Server that serves ``runtime``'s tools under their own names.

    The runtime has already refused a bundle whose schemas are unsafe to validate with
    (:class:`~hatch_mcpkit._validation.ToolSchemas`); its validators are used here.
    """
    config = runtime.config
    return table_server(tool_rows(runtime, max_concurrency=max_concurrency), name=config.name,
                        version=config.server_version, description=config.description or None)


def _listing(rows: Sequence[ServedTool]) -> dict[str, list[Any]]:
    """tools/list answers by era: "" (2025-06-18 and later: every field) and the older versions'."""
    import mcp_types as types

    tools = [
        types.Tool(
            name=row.name,
            title=row.tool.title,
            description=row.tool.description,
            input_schema=row.tool.input_schema,
            output_schema=row.tool.output_schema,
            annotations=types.ToolAnnotations.model_validate(row.tool.annotations, by_alias=True)
            if row.tool.annotations else None,
        )
        for row in rows
    ]
    # what clients of older protocol versions get: only the fields their version defines
    return {
        "": tools,
        "2025-03-26": [t.model_copy(update={"title": None, "output_schema": None}) for t in tools],
        "2024-11-05": [t.model_copy(update={"title": None, "output_schema": None, "annotations": None})
                       for t in tools],
    }


def _era(ctx: Any) -> str:
    """"2024-11-05", "2025-03-26" or "" (2025-06-18 and later: every field)."""
    version = str(getattr(ctx, "protocol_version", "") or "")
    if not version:
        return ""
    return "2024-11-05" if version < "2025-03-26" else "2025-03-26" if version < "2025-06-18" else ""


def table_server(rows: Sequence[ServedTool], *, name: str, version: str,
                 description: str | None = None) -> Server[Any]:
    """A low-level ``mcp`` Server over a tool table (one bundle's rows, or a gateway's).

    tools/list is the rows in the order given; a name appears once (a duplicate is a
    bug in the caller, refused here).
    """
    import mcp_types as types
    from mcp.server.lowlevel import Server
    from mcp.shared.exceptions import MCPError

    table = {row.name: row for row in rows}
    if len(table) != len(rows):
        raise ValueError("a tool table serves each name once")
    listing = _listing(rows)

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        if params is not None and params.cursor is not None:  # one page: no cursor was ever handed out
            raise MCPError(code=types.INVALID_PARAMS, message=f"Invalid cursor {params.cursor!r}: tools/list has "
                           "a single page; call it without a cursor")
        return types.ListToolsResult(tools=listing[_era(ctx)])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        row = table.get(params.name)
        if row is None:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"Unknown tool: {params.name!r}; {name} has: {', '.join(table)}",
            )
        handle = CallHandle()
        work = partial(_call, row, dict(params.arguments or {}), handle)
        if _progress_token(ctx) is None:  # the common case: no progress task, no context manager
            outcome = await _in_worker(work, handle, row.limiter, row.name)
        else:
            async with _progress(ctx, row):
                outcome = await _in_worker(work, handle, row.limiter, row.name)
        if outcome.structured_content is not None and _era(ctx):  # structuredContent came with 2025-06-18
            outcome = outcome.model_copy(update={"structured_content": None})
        return outcome

    from hatch_mcpkit.runtime import CallHandle

    server: Server[Any] = Server(name, version=version, description=description, on_list_tools=list_tools,
                                 on_call_tool=call_tool)
    server.middleware.append(_initialize_once)
    return server


async def _initialize_once(ctx: Any, call_next: Any) -> Any:
    """Refuse an ``initialize`` on a session that already has one.

    The version agreed at initialization holds for the whole session (MCP 2025-11-25,
    lifecycle: both parties MUST respect the negotiated protocol version); a second
    handshake would otherwise silently switch it, and with it the fields we send.
    """
    if ctx.method == "initialize" and ctx.session.client_params is not None:
        import mcp_types as types
        from mcp.shared.exceptions import MCPError

        raise MCPError(code=types.INVALID_REQUEST,
                       message=f"Invalid Request: the session is already initialized (protocol version "
                               f"{ctx.session.protocol_version}); initialize is sent once per connection -- "
                               "start a new connection to negotiate again")
    return await call_next(ctx)


@contextlib.asynccontextmanager
async def _progress(ctx: Any, row: ServedTool) -> AsyncIterator[None]:
    """``notifications/progress`` while the body runs, when the call's ``_meta`` asks for them.

    One at once, then one every :func:`_progress_interval` seconds: ``progress`` is the time
    the call has taken so far in ms and ``total`` its timeout in ms (left out once queueing
    for a slot has taken it past the timeout). Clients that reset their request timeout on
    progress (the TypeScript SDK's ``resetTimeoutOnProgress``) then wait for a long call
    instead of giving up after their own default (60 s).
    """
    if _progress_token(ctx) is None:
        yield
        return
    import anyio

    limits = row.runtime.limits(row.tool.name)
    total = float(limits.timeout_ms or row.runtime.host_limits.timeout_ms)
    interval = _progress_interval()
    start = time.monotonic()

    async def tick() -> None:
        while True:
            elapsed = round((time.monotonic() - start) * 1000, 1)
            await ctx.session.report_progress(elapsed, total if elapsed <= total else None,
                                              f"{row.name}: running for {elapsed / 1000:.0f} s "
                                              f"(timeout {total / 1000:g} s)")
            await anyio.sleep(interval)

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


def _progress_token(ctx: Any) -> Any:
    """The call's ``_meta.progressToken``, or None when it asked for no progress."""
    meta = getattr(ctx, "meta", None) or {}
    return meta.get("progress_token")


def _progress_interval() -> float:
    """Seconds between two progress notifications: 5, or ``MCPKIT_PROGRESS_INTERVAL_MS``."""
    raw = os.environ.get(PROGRESS_ENV, "")
    try:
        return max(0.01, int(raw) / 1000) if raw else PROGRESS_INTERVAL_S
    except ValueError:
        return PROGRESS_INTERVAL_S


async def _in_worker(work: Callable[[], CallToolResult], handle: CallHandle, limiter: Any,
                     name: str) -> CallToolResult:
    """Run one call in a worker thread, holding a slot of ``limiter`` while it runs.

    When the call is cancelled (the client's ``notifications/cancelled``, or the server
    stopping on a signal) the module is told to stop and the slot is freed at once; the
    cancelled task still waits, shielded and bounded, for the thread to end, so a server
    that stops never leaves a module running behind it.
    """
    import anyio

    finished, started, abandoned = threading.Event(), threading.Event(), threading.Event()
    gate = threading.Lock()

    def run() -> CallToolResult:
        with gate:
            if abandoned.is_set():  # cancelled while it queued for a slot: it never runs
                raise RuntimeError(f"call {name} was cancelled before it started")
            started.set()
        try:
            return work()
        finally:
            finished.set()

    try:
        return await anyio.to_thread.run_sync(run, limiter=limiter, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        handle.cancel()  # validation stops at its next keyword, the instance at its next epoch tick
        log.info("call %s cancelled", name)
        with gate:
            abandoned.set()
            if not started.is_set():  # nothing to wait for (a thread each would be tied up for CANCEL_WAIT_S)
                raise
        with anyio.CancelScope(shield=True):
            if not await anyio.to_thread.run_sync(finished.wait, CANCEL_WAIT_S):
                log.warning("call %s still running %.0f s after it was cancelled", name, CANCEL_WAIT_S)
        raise


def _call(row: ServedTool, arguments: dict[str, Any], handle: CallHandle) -> CallToolResult:
    """One tools/call, in a worker thread: the argument check, the run, the MCP result.

    Arguments that fail input_schema are a tool error naming the field (SEP-1303), so
    the model can correct the call; a tool that declares output_schema answers with
    structuredContent valid against it, or is an error saying why.
    """
    import mcp_types as types
    from pydantic import ValidationError

    def error(text: str) -> CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)

    runtime, tool, name = row.runtime, row.tool, row.name
    problems = runtime.schemas.arguments(tool, arguments, cancelled=lambda: handle.cancelled)
    if problems:
        return error(f"Invalid arguments for tool {name}: " + "; ".join(problems))
    log.debug("call %s started", name)
    result = runtime.call(tool.name, arguments, handle=handle)
    if result.is_error:
        log.info("call %s failed (%s) in %.1f ms", name, result.reason, result.duration_ms)
        if result.stderr_tail:
            log.debug("stderr of %s:\n%s", name, result.stderr_tail)
    else:
        log.info("call %s ok in %.1f ms", name, result.duration_ms)
    if tool.output_schema is not None and not result.is_error and result.structured_content is None:
        return error(f"{name} declares an output_schema but its module printed no JSON object "
                     "(structuredContent) to check against it; the result is withheld")
    try:
        return types.CallToolResult.model_validate(result.to_mcp(), by_alias=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(f"{name} returned invalid MCP content ({where}: {first.get('msg')})")


async def serve(runtime: Runtime, *, max_concurrency: int = DEFAULT_CONCURRENCY) -> Stop:
    """Serve ``runtime`` over this process's stdin/stdout until the client goes away or a signal."""
    return await serve_stdio(build_server(runtime, max_concurrency=max_concurrency))


async def serve_stdio(server: Server[Any]) -> Stop:
    """Serve ``server`` (from :func:`build_server` or :func:`table_server`) over stdin/stdout.

    SIGINT (Ctrl-C) and SIGTERM cancel the calls in flight and end the server; the
    returned :class:`~hatch_mcpkit._signals.Stop` says which signal it was (none when
    the client closed stdin) and the exit code that goes with it.
    """
    from hatch_mcpkit._signals import stopped_by_signals
    from hatch_mcpkit._stdio import stdio_streams

    async with stopped_by_signals() as stop, stdio_streams() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())
    if stop.signum:
        log.info("stopped by %s", stop.name)
    return stop
