"""The MCP server: a :class:`~hatch_mcpkit.runtime.Runtime`'s tools over stdio.

The command line (``mcpkit server`` / ``mcpkit run``: what to serve, options, the launch
banner) lives in :mod:`hatch_mcpkit.cli`; this module is only the server.

Built on the official ``mcp`` SDK's low-level ``Server``: ``initialize``,
``tools/list`` (from config.yaml), ``tools/call``, ``ping`` and cancellation.
Arguments are checked against the tool's ``input_schema`` before the module runs
(the SDK does not do it on stdio); a bad argument is a JSON-RPC invalid-params
error naming the field. Each call runs in a worker thread, in a fresh sandboxed
instance (:mod:`hatch_mcpkit.runtime`), at most ``--max-concurrency`` at a time, so
``ping`` and ``notifications/cancelled`` are answered while a call runs.

stdout carries only protocol messages; everything else goes to stderr.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from hatch_mcpkit.errors import ToolCallError

if TYPE_CHECKING:
    from mcp.server.lowlevel import Server

    from hatch_mcpkit.runtime import Runtime

__all__ = ["DEFAULT_CONCURRENCY", "build_server", "serve"]

log = logging.getLogger("hatch_mcpkit.server")

DEFAULT_CONCURRENCY = 4


# --------------------------------------------------------------------------- the MCP server


def build_server(runtime: Runtime, *, max_concurrency: int = DEFAULT_CONCURRENCY) -> Server[Any]:
    """A low-level ``mcp`` Server that serves ``runtime``'s tools."""
    import anyio
    import mcp_types as types
    from mcp.server.lowlevel import Server
    from mcp.shared.exceptions import MCPError
    from pydantic import ValidationError

    from hatch_mcpkit.runtime import CallHandle

    config = runtime.config
    tools = [
        types.Tool(
            name=tool.name,
            description=tool.description,
            input_schema=tool.input_schema,
            output_schema=tool.output_schema,
        )
        for tool in config.tools
    ]
    limiter = anyio.CapacityLimiter(max(1, max_concurrency))

    async def list_tools(_ctx: Any, _params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(_ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        name = params.name
        arguments = dict(params.arguments or {})
        if name not in runtime.tools:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"Unknown tool: {name!r}; {config.name} has: {', '.join(runtime.tools)}",
            )
        problems = runtime.validate_arguments(name, arguments)
        if problems:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"Invalid arguments for tool {name}: " + "; ".join(problems),
                data={"errors": problems},
            )
        handle = CallHandle()
        try:
            result = await anyio.to_thread.run_sync(
                partial(runtime.call, name, arguments, handle=handle), limiter=limiter, abandon_on_cancel=True
            )
        except anyio.get_cancelled_exc_class():
            handle.cancel()  # the instance stops at its next epoch tick
            log.info("call %s cancelled", name)
            raise
        except ToolCallError as exc:  # unknown tool raced a config we already checked
            raise MCPError(code=types.INVALID_PARAMS, message=str(exc)) from None
        if result.is_error:
            log.info("call %s failed (%s) in %.1f ms", name, result.reason, result.duration_ms)
            if result.stderr_tail:
                log.debug("stderr of %s:\n%s", name, result.stderr_tail)
        else:
            log.info("call %s ok in %.1f ms", name, result.duration_ms)
        try:
            return types.CallToolResult.model_validate(result.to_mcp(), by_alias=True)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=f"{name} returned invalid MCP content ({where}: "
                                           f"{first.get('msg')})")],
                is_error=True,
            )

    return Server(
        config.name,
        version=config.server_version,
        description=config.description or None,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def serve(runtime: Runtime, *, max_concurrency: int = DEFAULT_CONCURRENCY) -> None:
    """Serve ``runtime`` over this process's stdin/stdout until the client goes away."""
    from mcp.server.stdio import stdio_server

    server = build_server(runtime, max_concurrency=max_concurrency)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())
