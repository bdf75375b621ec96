"""A tool call's outcome in MCP terms, and the guest-ABI rules that map stdout onto it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hatch_mcpkit import _json
from hatch_mcpkit.config import Limits, Tool
from hatch_mcpkit.errors import McpkitError, ToolCallError

__all__ = ["CallHandle", "ToolResult", "failure_result", "map_output", "stop_message"]


@dataclass(frozen=True)
class ToolResult:
    """What one ``tools/call`` produced, already in MCP terms.

    ``reason`` is ``None`` on success, otherwise one of ``"tool"`` (the module
    answered ``{"error": ...}``), ``"timeout"``, ``"memory"``, ``"fuel"``,
    ``"output"`` (over max_output_kb), ``"trap"``, ``"exit"`` (non-zero status),
    ``"cancelled"``, ``"output_schema"`` or ``"invalid_output"``.
    ``stderr_tail`` is the end of the guest's stderr, already terminal-safe.
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


def stop_message(reason: str, limits: Limits) -> str:
    if reason == "timeout":
        return f"timed out after {limits.timeout_ms} ms"
    if reason == "memory":
        return f"exceeded memory limit of {limits.memory_mb} MiB"
    if reason == "output":
        return f"output exceeded the limit of {limits.max_output_kb} KiB (max_output_kb)"
    if reason == "cancelled":
        return "cancelled by the client"
    if reason == "fuel":
        return f"ran out of fuel ({limits.fuel} units)"
    return reason


def failure_result(tool: Tool, reason: str, message: str, stderr_tail: str, exit_code: int | None,
                   total: float, run_ms: float) -> ToolResult:
    text = f"{tool.name} failed: {message}"
    if stderr_tail:
        text += f"\n--- end of stderr ---\n{stderr_tail}"
    return ToolResult([{"type": "text", "text": text}], None, True, reason, stderr_tail, exit_code, total, run_ms)


class _BadOutput(McpkitError):
    pass


OutputCheck = Callable[[Tool, dict[str, Any]], "str | None"]


def map_output(tool: Tool, stdout: bytes, check: OutputCheck, stderr_tail: str, exit_code: int | None,
               total: float, run_ms: float) -> ToolResult:
    """The guest ABI's stdout rules (see docs/guest-abi.md)."""

    def done(content: list[dict[str, Any]], structured: dict[str, Any] | None = None, is_error: bool = False,
             reason: str | None = None) -> ToolResult:
        return ToolResult(content, structured, is_error, reason, stderr_tail, exit_code, total, run_ms)

    text = stdout.decode("utf-8", errors="replace")
    stripped = text.strip()
    if not stripped:
        return done([])
    try:
        value = _json.load(stripped, where=f"{tool.name}'s output", error=_BadOutput, max_bytes=len(stripped) + 1)
    except _BadOutput as exc:
        if "nested more than" in exc.message:
            return done([{"type": "text", "text": exc.message}], None, True, "invalid_output")
        return done([{"type": "text", "text": text}])
    if isinstance(value, dict) and "content" in value:
        return _mcp_content(tool, value, check, done)
    if isinstance(value, dict) and "error" in value:
        err = value["error"]
        message = err if isinstance(err, str) else json.dumps(err)
        return done([{"type": "text", "text": message}], None, True, "tool")
    content = [{"type": "text", "text": stripped}]
    if tool.output_schema is not None and isinstance(value, dict):
        problem = check(tool, value)
        if problem:
            return done([{"type": "text", "text": problem}], None, True, "output_schema")
        return done(content, value)
    return done(content)


def _mcp_content(tool: Tool, value: dict[str, Any], check: OutputCheck,
                 done: Callable[..., ToolResult]) -> ToolResult:
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
        problem = check(tool, structured)
        if problem:
            return done([{"type": "text", "text": problem}], None, True, "output_schema")
    return done(content, structured, is_error, "tool" if is_error else None)
