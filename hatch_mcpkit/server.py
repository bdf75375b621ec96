"""The MCP server: a :class:`~hatch_mcpkit.runtime.Runtime`'s tools over stdio.

The command line (``mcpkit server`` / ``mcpkit run``: what to serve, options, the launch
banner) lives in :mod:`hatch_mcpkit.cli`; this module is only the server.

Built on the official ``mcp`` SDK's low-level ``Server``: ``initialize``,
``tools/list`` (from config.yaml), ``tools/call``, ``ping`` and cancellation.
Each call runs in a worker thread, at most ``--max-concurrency`` at a time: there
its arguments are checked against the tool's ``input_schema`` (the SDK does not do
it on stdio; :mod:`hatch_mcpkit._validation`: no retrieval, RE2 patterns, a time
budget) and, when they pass, the module runs in a fresh sandboxed instance
(:mod:`hatch_mcpkit.runtime`). A bad argument is a tool result with ``isError``
naming the field (SEP-1303); an unknown tool is a JSON-RPC invalid-params error. The event loop only moves messages, so ``ping`` and
``notifications/cancelled`` are answered while a call runs.

stdout carries only protocol messages; everything else goes to stderr.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcp.server.lowlevel import Server
    from mcp_types import CallToolResult

    from hatch_mcpkit.config import Tool
    from hatch_mcpkit.runtime import CallHandle, Runtime

__all__ = ["DEFAULT_CONCURRENCY", "build_server", "serve"]

log = logging.getLogger("hatch_mcpkit.server")

DEFAULT_CONCURRENCY = 4


# --------------------------------------------------------------------------- the MCP server


def build_server(runtime: Runtime, *, max_concurrency: int = DEFAULT_CONCURRENCY) -> Server[Any]:
    """A low-level ``mcp`` Server that serves ``runtime``'s tools.

    The runtime has already refused a bundle whose schemas are unsafe to validate with
    (:class:`~hatch_mcpkit._validation.ToolSchemas`); its validators are used here.
    """
    import anyio
    import mcp_types as types
    from mcp.server.lowlevel import Server
    from mcp.shared.exceptions import MCPError

    from hatch_mcpkit.runtime import CallHandle

    config = runtime.config
    tools = [
        types.Tool(
            name=tool.name,
            title=tool.title,
            description=tool.description,
            input_schema=tool.input_schema,
            output_schema=tool.output_schema,
            annotations=types.ToolAnnotations.model_validate(tool.annotations, by_alias=True)
            if tool.annotations else None,
        )
        for tool in config.tools
    ]
    # what clients of older protocol versions get: only the fields their version defines
    older = {
        "2025-03-26": [t.model_copy(update={"title": None, "output_schema": None}) for t in tools],
        "2024-11-05": [t.model_copy(update={"title": None, "output_schema": None, "annotations": None})
                       for t in tools],
    }
    limiter = anyio.CapacityLimiter(max(1, max_concurrency))

    def era(ctx: Any) -> str:
        """"2024-11-05", "2025-03-26" or "" (2025-06-18 and later: every field)."""
        version = str(getattr(ctx, "protocol_version", "") or "")
        if not version:
            return ""
        return "2024-11-05" if version < "2025-03-26" else "2025-03-26" if version < "2025-06-18" else ""

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        if params is not None and params.cursor is not None:  # one page: no cursor was ever handed out
            raise MCPError(code=types.INVALID_PARAMS, message=f"Invalid cursor {params.cursor!r}: tools/list has "
                           "a single page; call it without a cursor")
        return types.ListToolsResult(tools=older.get(era(ctx), tools))

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        name = params.name
        tool = runtime.tools.get(name)
        if tool is None:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"Unknown tool: {name!r}; {config.name} has: {', '.join(runtime.tools)}",
            )
        handle = CallHandle()
        work = partial(_call, runtime, tool, dict(params.arguments or {}), handle)
        try:
            outcome = await anyio.to_thread.run_sync(work, limiter=limiter, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            handle.cancel()  # validation stops at its next keyword, the instance at its next epoch tick
            log.info("call %s cancelled", name)
            raise
        if outcome.structured_content is not None and era(ctx):  # structuredContent came with 2025-06-18
            outcome = outcome.model_copy(update={"structured_content": None})
        return outcome

    return Server(
        config.name,
        version=config.server_version,
        description=config.description or None,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _call(runtime: Runtime, tool: Tool, arguments: dict[str, Any],
          handle: CallHandle) -> CallToolResult:
    """One tools/call, in a worker thread: the argument check, the run, the MCP result.

    Arguments that fail input_schema are a tool error naming the field (SEP-1303), so
    the model can correct the call; a tool that declares output_schema answers with
    structuredContent valid against it, or is an error saying why.
    """
    import mcp_types as types
    from pydantic import ValidationError

    def error(text: str) -> CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)

    problems = runtime.schemas.arguments(tool, arguments, cancelled=lambda: handle.cancelled)
    if problems:
        return error(f"Invalid arguments for tool {tool.name}: " + "; ".join(problems))
    result = runtime.call(tool.name, arguments, handle=handle)
    if result.is_error:
        log.info("call %s failed (%s) in %.1f ms", tool.name, result.reason, result.duration_ms)
        if result.stderr_tail:
            log.debug("stderr of %s:\n%s", tool.name, result.stderr_tail)
    else:
        log.info("call %s ok in %.1f ms", tool.name, result.duration_ms)
    if tool.output_schema is not None and not result.is_error and result.structured_content is None:
        return error(f"{tool.name} declares an output_schema but its module printed no JSON object "
                     "(structuredContent) to check against it; the result is withheld")
    try:
        return types.CallToolResult.model_validate(result.to_mcp(), by_alias=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(f"{tool.name} returned invalid MCP content ({where}: {first.get('msg')})")


async def serve(runtime: Runtime, *, max_concurrency: int = DEFAULT_CONCURRENCY) -> None:
    """Serve ``runtime`` over this process's stdin/stdout until the client goes away."""
    from hatch_mcpkit._stdio import stdio_streams

    server = build_server(runtime, max_concurrency=max_concurrency)
    async with stdio_streams() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())
