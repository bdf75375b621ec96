"""The ``mcpkit`` command: push, pull, list, inspect and remove bundles; serve and run them.

``mcpkit bundle <cmd>`` and the short forms ``mcpkit <cmd>`` (used by the Hatch
``mcpkit`` environment's scripts) are the same commands. ``mcpkit server`` and
``mcpkit run`` are handed to :mod:`hatch_mcpkit.server`.

Every :class:`~hatch_mcpkit.errors.McpkitError` is printed as
``mcpkit: error: <message>`` with its exit code; set ``MCPKIT_DEBUG=1`` for
tracebacks. Ctrl-C exits with 130 (a pull in progress leaves nothing behind).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatch_mcpkit.__about__ import __version__
from hatch_mcpkit.errors import BundleError, InvalidReferenceError, McpkitError

if TYPE_CHECKING:
    from hatch_mcpkit.auth import Credentials
    from hatch_mcpkit.bundle import Manifest
    from hatch_mcpkit.cache import BundleCache, CacheEntry
    from hatch_mcpkit.config import Config
    from hatch_mcpkit.reference import Reference

__all__ = ["main"]

PROG = "mcpkit"
BUNDLE_COMMANDS = ("push", "pull", "list", "inspect", "rm")
DELEGATED = ("server", "run")


# --------------------------------------------------------------------------- output helpers


def _out(text: str = "") -> None:
    print(text, flush=True)


def _warn(text: str) -> None:
    print(f"{PROG}: warning: {text}", file=sys.stderr, flush=True)


def _human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12] if digest else "-"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _cache(args: argparse.Namespace) -> BundleCache:
    from hatch_mcpkit.cache import BundleCache

    return BundleCache(args.home)


def _read_password(args: argparse.Namespace) -> str | None:
    if not getattr(args, "password_stdin", False):
        return None
    data = sys.stdin.readline() if not sys.stdin.isatty() else ""
    password = data.rstrip("\r\n")
    if not password:
        raise McpkitError("--password-stdin was given but standard input held no password",
                          hint="e.g. echo \"$TOKEN\" | mcpkit bundle push --username me --password-stdin ...")
    return password


def _credentials(args: argparse.Namespace, registry: str, config: Config | None = None) -> Credentials | None:
    from hatch_mcpkit.auth import resolve_credentials

    password = _read_password(args)
    username = getattr(args, "username", None)
    if password is not None and not username:
        raise McpkitError("--password-stdin needs --username")
    auth = config.distribution.auth if config is not None and config.distribution is not None else None
    return resolve_credentials(registry, username=username, password=password, config_auth=auth)


# --------------------------------------------------------------------------- push


def _cmd_push(args: argparse.Namespace) -> int:
    from hatch_mcpkit.bundle import ARCHIVE_SUFFIX, build_bundle
    from hatch_mcpkit.config import load_config
    from hatch_mcpkit.publish import push_archive

    archive: Path | None = None
    module: Path | None = Path(args.module) if args.module else None
    config_path: Path | None = Path(args.config) if args.config else None
    target: str | None = args.target
    # The positional forms: ARCHIVE [TARGET] | MODULE CONFIG [TARGET] | CONFIG [TARGET] | TARGET
    for item in args.items:
        lower = item.lower()
        if lower.endswith(ARCHIVE_SUFFIX) or (Path(item).is_dir() and (Path(item) / "oci-layout").is_file()):
            archive = Path(item)
        elif lower.endswith(".wasm"):
            module = Path(item)
        elif lower.endswith((".yaml", ".yml")):
            config_path = Path(item)
        elif target is None:
            target = item
        else:
            raise InvalidReferenceError(f"unexpected argument {item!r}",
                                 hint="mcpkit bundle push [--config config.yaml | ARCHIVE | MODULE CONFIG] [oci://...]")
    if archive is not None and (module is not None or config_path is not None):
        raise McpkitError("give either a .mcpkit.tar archive or a module and config.yaml, not both")
    tags = list(args.tag or [])
    if target and tags:  # oci://repo:v1 --tag latest pushes both tags
        last = target.removeprefix("oci://").rsplit("/", 1)[-1]
        if ":" in last and "@" not in last:
            tags.insert(0, last.rsplit(":", 1)[1])
    password = _read_password(args)

    with tempfile.TemporaryDirectory(prefix="mcpkit-push-") as tmp:
        if archive is None:
            from hatch_mcpkit.wasm import check_guest_module

            if config_path is None:
                config_path = (module.parent if module is not None else Path.cwd()) / "config.yaml"
            config = load_config(config_path)
            module = module or config_path.parent / "module.wasm"
            check_guest_module(module)
            archive = build_bundle(config, module, Path(tmp)).path
        result = push_archive(archive, target=target, tags=list(dict.fromkeys(tags)), username=args.username,
                              password=password, insecure=args.insecure, ca_file=args.ca_file)
    _out(f"digest: {result.digest}")
    for reference in result.references:
        _out(f"pushed oci://{reference}")
    return 0


# --------------------------------------------------------------------------- pull


def _cmd_pull(args: argparse.Namespace) -> int:
    from hatch_mcpkit.cache import PullOptions

    cache = _cache(args)
    password = _read_password(args)
    options = PullOptions(offline=args.offline, insecure=args.insecure, ca_file=args.ca_file,
                          username=args.username, password=password)
    result = cache.pull(args.reference, options)
    for warning in result.warnings:
        _warn(warning)
    meta = result.entry.metadata()
    state = "pulled" if result.changed else ("found in cache" if args.offline else "up to date")
    _out(f"{result.entry.reference}: {state}")
    _out(f"  name:    {result.entry.name} {meta.get('version', '')}".rstrip())
    _out(f"  digest:  {result.digest}")
    _out(f"  path:    {result.path}")
    return 0


# --------------------------------------------------------------------------- list


def _entry_row(entry: CacheEntry) -> dict[str, Any]:
    meta = entry.metadata()
    return {
        "name": entry.name,
        "version": meta.get("version"),
        "reference": entry.reference,
        "digest": entry.digest,
        "size": meta.get("size"),
        "pulled_at": entry.pulled_at,
        "path": str(entry.path),
        "tools": meta.get("tools", []),
    }


def _ago(stamp: str) -> str:
    try:
        then = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return stamp or "-"
    seconds = int((datetime.now(timezone.utc) - then).total_seconds())
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds // span}{unit} ago"
    return "just now"


def _cmd_list(args: argparse.Namespace) -> int:
    if args.registry:
        return _list_registry(args)
    rows = [_entry_row(e) for e in _cache(args).entries()]
    if args.json:
        _out(json.dumps(rows, indent=2))
        return 0
    if not rows:
        _out(f"no bundles cached in {_cache(args).bundles_dir}")
        _out("  pull one with: mcpkit bundle pull oci://REGISTRY/REPOSITORY:TAG")
        return 0
    table = [
        [r["name"], r["version"] or "-", r["reference"], _short(r["digest"]), _human_size(r["size"]),
         _ago(r["pulled_at"])]
        for r in rows
    ]
    _out(_table(table, ["NAME", "VERSION", "REFERENCE", "DIGEST", "SIZE", "PULLED"]))
    return 0


def _list_registry(args: argparse.Namespace) -> int:
    from hatch_mcpkit.errors import RegistryError
    from hatch_mcpkit.reference import parse_repository
    from hatch_mcpkit.registry import RegistryClient

    text = args.registry.strip()
    body = text[len("oci://"):] if text.startswith("oci://") else text
    host, _, namespace = body.partition("/")
    namespace = namespace.strip("/")
    if not host:
        raise InvalidReferenceError(f"{text!r}: give a registry host, e.g. --registry ghcr.io/myorg")
    registry = parse_repository(f"{host}/{namespace}").registry if namespace else host
    credentials = _credentials(args, registry)
    listing: dict[str, list[str]] = {}
    with RegistryClient(registry, credentials=credentials, insecure=args.insecure, ca_file=args.ca_file) as client:
        try:
            repos = client.catalog()
            repos = [r for r in repos if not namespace or r == namespace or r.startswith(namespace + "/")]
        except RegistryError as exc:
            if not namespace:
                raise
            _warn(f"{exc.message}; listing {namespace} as one repository")
            repos = [parse_repository(f"{host}/{namespace}").repository]
        for repo in sorted(repos):
            try:
                listing[repo] = sorted(client.list_tags(repo))
            except RegistryError as exc:
                if len(repos) == 1:
                    raise
                _warn(f"cannot list tags of {repo}: {exc.message}")
    if args.json:
        _out(json.dumps([{"repository": f"{registry}/{r}", "tags": t} for r, t in listing.items()], indent=2))
        return 0
    if not listing:
        _out(f"no repositories under {text}")
        return 0
    for repo, tags in listing.items():
        if not tags:
            _out(f"oci://{registry}/{repo}  (no tags)")
        for tag in tags:
            _out(f"oci://{registry}/{repo}:{tag}")
    return 0


# --------------------------------------------------------------------------- inspect


def _manifest_view(manifest: Manifest, bundle_config: dict[str, Any], reference: str) -> dict[str, Any]:
    from hatch_mcpkit.bundle import ARTIFACT_TYPE

    return {
        "reference": reference,
        "digest": manifest.digest,
        "artifactType": ARTIFACT_TYPE,
        "name": bundle_config.get("name"),
        "version": bundle_config.get("version"),
        "description": bundle_config.get("description"),
        "architecture": bundle_config.get("architecture"),
        "os": bundle_config.get("os"),
        "tools": bundle_config.get("tools", []),
        "config": {"mediaType": manifest.config.media_type, "digest": manifest.config.digest,
                   "size": manifest.config.size},
        "layers": [
            {"title": d.title, "mediaType": d.media_type, "digest": d.digest, "size": d.size}
            for d in manifest.layers
        ],
        "size": manifest.total_size,
        "annotations": dict(manifest.annotations),
    }


def _inspect_oci(ref: Reference, args: argparse.Namespace) -> dict[str, Any]:
    from hatch_mcpkit.bundle import parse_bundle_config
    from hatch_mcpkit.registry import RegistryClient

    credentials = _credentials(args, ref.registry)
    with RegistryClient(ref.registry, credentials=credentials, insecure=args.insecure,
                        ca_file=args.ca_file) as client:
        manifest = client.get_manifest(ref)
        config = parse_bundle_config(client.read_blob(ref.repository, manifest.config), str(ref), manifest)
    return _manifest_view(manifest, config, ref.uri if not ref.digest else f"oci://{ref.repo}@{ref.digest}")


def _inspect_cached(entry: CacheEntry) -> dict[str, Any]:
    meta = entry.metadata()
    layers = meta.get("layers", [])
    return {
        "reference": entry.reference,
        "digest": entry.digest,
        "name": entry.name,
        "version": meta.get("version"),
        "description": meta.get("description"),
        "tools": meta.get("tools", []),
        "layers": layers,
        "size": meta.get("size"),
        "annotations": meta.get("annotations", {}),
        "path": str(entry.path),
        "pulled_at": entry.pulled_at,
    }


def _cmd_inspect(args: argparse.Namespace) -> int:
    from hatch_mcpkit.bundle import BundleLayout
    from hatch_mcpkit.cache import classify

    source = classify(args.reference, insecure=args.insecure)
    cached = _cache(args).cached_by_name(args.reference) if source.kind in ("name", "oci") else None
    if cached is not None:
        view = _inspect_cached(cached)
    elif source.kind == "file":
        assert source.path is not None
        if source.path.suffix in (".wasm", ".yaml", ".yml"):
            raise BundleError(f"{source.path}: inspect reads bundles (a .mcpkit.tar, a layout, a registry or the cache)",
                              hint="pull it first (mcpkit bundle pull PATH) and inspect it by name")
        with BundleLayout.open(source.path) as layout:
            view = _manifest_view(layout.manifest, layout.bundle_config, str(source.path))
    elif source.kind == "name" or args.offline:
        view = _inspect_cached(_cache(args).find_entry(args.reference))
    elif source.kind == "oci":
        assert source.oci is not None
        view = _inspect_oci(source.oci, args)
    else:
        view = _inspect_cached(_cache(args).find_entry(args.reference))
    if args.json:
        _out(json.dumps(view, indent=2))
        return 0
    _out(f"Reference:   {view['reference']}")
    _out(f"Digest:      {view['digest']}")
    _out(f"Name:        {view.get('name')} {view.get('version') or ''}".rstrip())
    if view.get("description"):
        _out(f"Description: {view['description']}")
    _out(f"Tools:       {', '.join(view.get('tools') or []) or '-'}")
    _out(f"Size:        {_human_size(view.get('size'))}")
    if view.get("path"):
        _out(f"Cached at:   {view['path']}")
    _out("Layers:")
    table = [[str(d.get("title")), str(d.get("mediaType", "")), _human_size(d.get("size")), str(d.get("digest"))]
             for d in view.get("layers", [])]
    _out("\n".join("  " + line for line in _table(table, ["TITLE", "MEDIA TYPE", "SIZE", "DIGEST"]).splitlines()))
    annotations = view.get("annotations") or {}
    if annotations:
        _out("Annotations:")
        for key, value in sorted(annotations.items()):
            _out(f"  {key}: {value}")
    return 0


# --------------------------------------------------------------------------- rm


def _cmd_rm(args: argparse.Namespace) -> int:
    cache = _cache(args)
    for text in args.references:
        for entry in cache.remove(text):
            _out(f"removed {entry.reference} ({entry.path})")
    return 0


# --------------------------------------------------------------------------- delegation


def _delegate(argv: list[str]) -> int:
    try:
        from hatch_mcpkit.server import main as server_main
    except ImportError as exc:
        raise McpkitError(
            f"`mcpkit {argv[0]}` needs the runtime extras, which are not importable here ({exc})",
            hint="install them with: pip install 'hatch-mcpkit[run]'",
        ) from None
    return int(server_main(argv) or 0)


# --------------------------------------------------------------------------- parser


def _add_registry_options(p: argparse.ArgumentParser, *, credentials: bool = True) -> None:
    p.add_argument("--insecure", action="store_true",
                   help="allow plain HTTP to a registry or host that is not loopback (TLS is never skipped: use --ca-file for a private CA)")
    p.add_argument("--ca-file", metavar="PEM", help="trust this CA certificate bundle for TLS (a private registry)")
    if credentials:
        p.add_argument("--username", "-u", metavar="USER",
                       help="registry user name (else distribution.auth, MCPKIT_REGISTRY_USERNAME, docker config)")
        p.add_argument("--password-stdin", action="store_true",
                       help="read the registry password or token from standard input (never pass it as an argument)")


def _add_bundle_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "push", help="push a bundle to an OCI registry",
        description="Push a bundle to an OCI registry. Forms: `push [--config config.yaml]` builds the bundle "
        "from config.yaml and the module.wasm beside it and pushes it to distribution.registry with its tags; "
        "`push dist/NAME-VERSION.mcpkit.tar [oci://REPO[:TAG]]` pushes a built archive; "
        "`push module.wasm config.yaml oci://REPO:TAG` pushes the pair to the given place.",
    )
    p.add_argument("items", nargs="*", metavar="ARG",
                   help="a .mcpkit.tar archive, or module.wasm and config.yaml, then optionally oci://REPOSITORY[:TAG]")
    p.add_argument("--config", "-c", metavar="PATH", help="config.yaml to build the bundle from (default ./config.yaml)")
    p.add_argument("--module", "-m", metavar="PATH", help="the compiled module (default: module.wasm beside config.yaml)")
    p.add_argument("--to", dest="target", metavar="REF", help="where to push (default: distribution.registry)")
    p.add_argument("--tag", "-t", action="append", metavar="TAG",
                   help="tag to apply (repeatable; default: distribution.tags, else the version)")
    _add_registry_options(p)
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("pull", help="pull a bundle into the local cache",
                       description="Fetch a bundle, verify every blob by SHA-256 and install it in the cache "
                       "(MCPKIT_HOME, default ~/.mcpkit). URI: oci://REGISTRY/REPO:TAG, oci://REGISTRY/REPO@sha256:..., "
                       "file:///path/module.wasm (config.yaml beside it), a .mcpkit.tar, a directory, "
                       "https://host/bundle.tar.gz[#sha256=HEX], or the name of a cached bundle (pulls it again).")
    p.add_argument("reference", metavar="URI", help="what to pull")
    p.add_argument("--offline", action="store_true", help="use the cache only; fail if the bundle is not there")
    _add_registry_options(p)
    p.set_defaults(func=_cmd_pull)

    p = sub.add_parser("list", aliases=["ls"], help="list cached bundles, or the bundles in a registry",
                       description="Without options: the bundles in the local cache. With --registry: the "
                       "repositories and tags in a registry (needs a registry that allows listing).")
    p.add_argument("--registry", "-r", metavar="HOST[/NAMESPACE]",
                   help="list repositories and tags in this registry (or namespace, or one repository)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_registry_options(p)
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("inspect", help="show a bundle's manifest, tools, layers and annotations",
                       description="Show a bundle without downloading its layers: from a registry (manifest and "
                       "config blob only), a local .mcpkit.tar or layout, or the cache (by name or reference).")
    p.add_argument("reference", metavar="REF", help="oci:// reference, .mcpkit.tar, cached name or reference")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--offline", action="store_true", help="look the reference up in the cache instead of the registry")
    _add_registry_options(p)
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("rm", aliases=["remove"], help="remove bundles from the local cache",
                       description="Remove cached bundles by name, name:tag or full reference.")
    p.add_argument("references", nargs="+", metavar="NAME|REF", help="what to remove")
    p.set_defaults(func=_cmd_rm)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build, ship, pull and run WebAssembly MCP tool servers through OCI registries.",
        epilog="Run `mcpkit server --help` and `mcpkit run --help` for serving bundles. "
        "MCPKIT_HOME sets the cache location; MCPKIT_DEBUG=1 shows tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--home", metavar="DIR", default=None,
                        help="the cache directory (default: $MCPKIT_HOME, else ~/.mcpkit)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bundle = sub.add_parser("bundle", help="push, pull, list, inspect and remove bundles",
                            description="Work with bundles: push, pull, list, inspect, rm.")
    bundle_sub = bundle.add_subparsers(dest="bundle_command", metavar="COMMAND")
    _add_bundle_commands(bundle_sub)
    bundle.set_defaults(func=lambda _args: _usage(bundle))
    _add_bundle_commands(sub)  # top-level short forms: mcpkit pull|push|list|inspect|rm
    sub.add_parser("server", help="serve a bundle over MCP stdio (see `mcpkit server --help`)", add_help=False)
    sub.add_parser("run", help="pull if needed and serve NAME|URI|PATH (see `mcpkit run --help`)", add_help=False)
    parser.set_defaults(func=lambda _args: _usage(parser))
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# --------------------------------------------------------------------------- entry point


def _debug() -> bool:
    return os.environ.get("MCPKIT_DEBUG", "").lower() not in ("", "0", "false", "no")


def _run(argv: list[str]) -> int:
    if argv and argv[0] in DELEGATED:
        return _delegate(argv)
    if len(argv) >= 3 and argv[0] == "--home" and argv[2] in DELEGATED:  # mcpkit --home DIR server ...
        os.environ["MCPKIT_HOME"] = argv[1]
        return _delegate(argv[2:])
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mcpkit`` command; return the exit code (the console script exits with it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args)
    except McpkitError as exc:
        if _debug():
            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:
        # stdout went away (e.g. `mcpkit list | head`); don't complain
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep Python's exit flush quiet
        except OSError:
            pass
        return 141
    except Exception as exc:  # a bug: say so briefly, with the way to get details
        if _debug():
            traceback.print_exc()
        else:
            print(f"{PROG}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
            print(f"{PROG}: set MCPKIT_DEBUG=1 to see the traceback, and please report it", file=sys.stderr)
        return 70


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
