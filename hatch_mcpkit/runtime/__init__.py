"""The wasmtime sandbox: one engine per server, one fresh instance per tool call.

Guest ABI (docs/guest-abi.md): argv ``[<server.name>, <tool>]``, environment ``MCPKIT_TOOL``
plus the keys policy allows (and only when the host has them), stdin = the call's arguments
as one JSON object, stdout = the result, stderr kept for error reports. A module sees only
the directories its policy grants, each held open from launch (read-only unless ``write`` is
granted; never a write grant over any MCPKIT_HOME or the bundle or a symlink on the way to
them, never a ``bundle:`` grant that leaves the bundle) and runs under a wall-clock timeout (epoch deadlines), store limits on memories, tables and
instances, an output cap and optionally a fuel budget -- each the smaller of the bundle's
and the host's (:class:`HostLimits`). Whatever a module does, the host keeps serving: every
failure becomes a :class:`ToolResult` with ``is_error=True`` and a reason.

Compiled code comes only from the store's :class:`~hatch_mcpkit.store.CodeCache`; nothing
that arrives with a bundle is ever loaded as native code.

Layout: ``_engine`` (engine, fingerprint, compiled code), ``_policy`` (grants, host limits),
``_call`` (one call's state, ticker, poll_oneoff, classification), ``_result`` (ToolResult,
output mapping), ``_runtime`` (Runtime), ``_wasmtime`` (the only module that touches
wasmtime-py's private API). wasmtime is imported lazily: importing this package costs nothing.
"""

from __future__ import annotations

from hatch_mcpkit.runtime._engine import engine_fingerprint, engine_settings, precompile
from hatch_mcpkit.runtime._policy import HostLimits, format_policy, parse_allow_dir
from hatch_mcpkit.runtime._result import CallHandle, ToolResult
from hatch_mcpkit.runtime._runtime import Runtime

__all__ = [
    "CallHandle",
    "HostLimits",
    "Runtime",
    "ToolResult",
    "engine_fingerprint",
    "engine_settings",
    "format_policy",
    "parse_allow_dir",
    "precompile",
]
