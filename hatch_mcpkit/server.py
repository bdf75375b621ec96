"""``mcpkit server`` / ``mcpkit run``: a bundle as an MCP stdio server.

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

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatch_mcpkit.errors import InvalidReferenceError, McpkitError, ToolCallError, UsageError

if TYPE_CHECKING:
    from mcp.server.lowlevel import Server

    from hatch_mcpkit.runtime import Runtime

__all__ = ["build_parser", "build_server", "main", "open_runtime", "serve"]

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


# --------------------------------------------------------------------------- resolving what to run


@dataclass
class _Target:
    bundle_dir: Path
    module: Path
    config: Path
    label: str
    cleanup: list[Any] = field(default_factory=list)


def _local_target(path: Path) -> _Target | None:
    """A bundle directory, a config.yaml (module.wasm beside it), a module.wasm, or a .mcpkit.tar."""
    path = path.expanduser()
    if path.is_dir():
        if (path / "config.yaml").is_file():
            return _Target(path, path / "module.wasm", path / "config.yaml", str(path))
        raise InvalidReferenceError(f"{path} is not a bundle directory: it has no config.yaml",
                             hint="a bundle directory holds module.wasm and config.yaml")
    if not path.is_file():
        return None
    if path.suffix in (".yaml", ".yml"):
        return _Target(path.parent, path.parent / "module.wasm", path, str(path))
    if path.suffix == ".wasm":
        return _Target(path.parent, path, path.parent / "config.yaml", str(path))
    if path.name.endswith(".tar"):
        from hatch_mcpkit.bundle import BundleLayout

        tmp = tempfile.TemporaryDirectory(prefix="mcpkit-run-")
        dest = Path(tmp.name)
        with BundleLayout.open(path) as layout:
            layout.extract_files(dest)
        return _Target(dest, dest / "module.wasm", dest / "config.yaml", str(path), [tmp])
    raise InvalidReferenceError(f"{path}: not a bundle (expected a directory, config.yaml, module.wasm or .mcpkit.tar)")


def _looks_local(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or text.endswith((".yaml", ".yml", ".wasm", ".tar")) or (
        os.sep in text and Path(text).exists()
    )


def _cache(home: str | None) -> Any:
    from hatch_mcpkit.cache import BundleCache

    return BundleCache(Path(home) if home else None)


def _resolve(args: argparse.Namespace) -> _Target:
    if args.command == "server":
        if args.config:
            cfg = Path(args.config).expanduser()
            if not cfg.is_file():
                raise InvalidReferenceError(f"--config {cfg}: no such file",
                                     hint="give the path of a config.yaml with module.wasm beside it")
            return _Target(cfg.parent, cfg.parent / "module.wasm", cfg, str(cfg))
        if args.from_bundle:
            entry = _cache(args.home).find(args.from_bundle)
            return _Target(Path(entry), Path(entry) / "module.wasm", Path(entry) / "config.yaml", args.from_bundle)
        if args.path:
            target = _local_target(Path(args.path))
            if target is None:
                raise InvalidReferenceError(f"{args.path}: no such file or directory",
                                     hint="to serve a cached bundle by name use --from-bundle NAME")
            return target
        raise UsageError("nothing to serve", hint="use --from-bundle NAME, --config PATH/config.yaml or a PATH")

    ref: str = args.reference
    if ref.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        target = _local_target(Path(unquote(urlsplit(ref).path)))
        if target is None:
            raise InvalidReferenceError(f"{ref}: no such file or directory")
        return target
    if _looks_local(ref) or Path(ref).exists():
        target = _local_target(Path(ref))
        if target is not None:
            return target
        if _looks_local(ref):
            raise InvalidReferenceError(f"{ref}: no such file or directory")
    from hatch_mcpkit.cache import PullOptions
    from hatch_mcpkit.errors import BundleNotFoundError

    cache = _cache(args.home)
    try:
        entry = Path(cache.find(ref))
    except BundleNotFoundError:
        if args.offline:
            raise
        print(f"mcpkit: pulling {ref} ...", file=sys.stderr)
        result = cache.pull(ref, PullOptions(offline=False, insecure=args.insecure))
        entry = Path(result.path)
    return _Target(entry, entry / "module.wasm", entry / "config.yaml", ref)


@contextlib.contextmanager
def open_runtime(args: argparse.Namespace) -> Iterator[Runtime]:
    """The Runtime the parsed command line asks for (with launch-time policy changes)."""
    from hatch_mcpkit.config import load_config
    from hatch_mcpkit.runtime import Runtime, parse_allow_dir

    target = _resolve(args)
    try:
        if not target.module.is_file():
            raise InvalidReferenceError(f"{target.label}: {target.module} is missing",
                                 hint="a bundle needs module.wasm beside config.yaml")
        config = load_config(target.config)
        grants = [parse_allow_dir(spec) for spec in args.allow_dir]
        runtime = Runtime(
            config, target.module, bundle_dir=target.bundle_dir, extra_grants=grants,
            extra_env_keys=args.env, deny_guests=args.deny_dir, deny_env_keys=args.deny_env,
        )
        try:
            yield runtime
        finally:
            runtime.close()
    finally:
        for item in target.cleanup:
            item.cleanup()


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcpkit", description="Serve a WebAssembly MCP bundle over stdio.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--allow-dir", action="append", default=[], metavar="HOST[:GUEST][:ro|rw]",
                       help="also let the module see a host directory (read-only unless :rw); "
                            "replaces a config grant with the same guest path")
        p.add_argument("--deny-dir", action="append", default=[], metavar="GUEST",
                       help="withdraw the config's grant at this guest path")
        p.add_argument("--env", action="append", default=[], metavar="KEY",
                       help="also pass this host environment variable to the module")
        p.add_argument("--deny-env", action="append", default=[], metavar="KEY",
                       help="withhold an environment variable the config allows")
        p.add_argument("--offline", action="store_true", help="never download; use only the local cache")
        p.add_argument("--home", metavar="DIR", default=None,
                       help="bundle cache directory (default: $MCPKIT_HOME or ~/.mcpkit)")
        p.add_argument("--max-concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N",
                       help=f"tool calls running at once (default {DEFAULT_CONCURRENCY})")
        p.add_argument("-v", "--verbose", action="count", default=0, help="log to stderr (-vv for debug)")
        p.add_argument("-q", "--quiet", action="store_true", help="do not print the policy at start")

    server = sub.add_parser("server", help="serve a cached bundle, a config.yaml or a bundle path")
    what = server.add_mutually_exclusive_group()
    what.add_argument("--from-bundle", metavar="NAME", help="a bundle in the local cache (name, name:tag or reference)")
    what.add_argument("--config", metavar="PATH", help="a config.yaml with module.wasm beside it")
    what.add_argument("path", nargs="?", metavar="PATH",
                      help="a bundle directory, config.yaml, module.wasm or .mcpkit.tar")
    common(server)

    run = sub.add_parser("run", help="serve NAME|URI|PATH, pulling it into the cache first if needed")
    run.add_argument("reference", metavar="NAME|URI|PATH")
    run.add_argument("--insecure", action="store_true", help="allow plain HTTP to a registry that is not loopback")
    common(run)
    return parser


def _announce(runtime: Runtime, label: str, quiet: bool) -> None:
    from hatch_mcpkit.runtime import format_policy

    for warning in runtime.warnings():  # always shown: the module can touch the user's files
        print(f"mcpkit: {warning}", file=sys.stderr)
    if quiet:
        return
    config = runtime.config
    print(f"mcpkit: serving {config.name} {config.server_version} ({len(config.tools)} tools: "
          f"{', '.join(runtime.tools)}) from {label} [{runtime.module_source}, {runtime.load_ms:.0f} ms]",
          file=sys.stderr)
    for line in format_policy(runtime):
        print(f"mcpkit: policy: {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """``main(["server", ...])`` or ``main(["run", ...])``; returns the exit code."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="mcpkit: %(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:
        for noisy in ("mcp", "httpx", "anyio"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    try:
        with open_runtime(args) as runtime:
            _announce(runtime, getattr(args, "reference", None) or args.from_bundle or args.config or args.path,
                      args.quiet)
            import anyio

            anyio.run(partial(serve, runtime, max_concurrency=args.max_concurrency))
    except McpkitError as exc:
        print(f"mcpkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    finally:
        sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
