"""The ``mcpkit`` command: push, pull, list, inspect and remove bundles; serve and run them.

One parser owns every subcommand. ``mcpkit bundle <cmd>`` and the short forms
``mcpkit <cmd>`` (used by the Hatch ``mcpkit`` environment's scripts) are the same
commands. ``mcpkit server`` and ``mcpkit run`` resolve what to serve with
:mod:`hatch_mcpkit.resolve`, build a :class:`~hatch_mcpkit.runtime.Runtime` and hand it
to :func:`hatch_mcpkit.server.serve` (the MCP server itself).

Every untrusted string printed (tags, repository names, annotations, descriptions,
layer titles, registry messages) goes through :mod:`hatch_mcpkit._text` first.

Every :class:`~hatch_mcpkit.errors.McpkitError` is printed as
``mcpkit: error: <message>`` with its exit code; set ``MCPKIT_DEBUG=1`` for
tracebacks. Ctrl-C exits with 130 (a pull in progress leaves nothing behind).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatch_mcpkit.__about__ import __version__
from hatch_mcpkit._text import clean, clean_block
from hatch_mcpkit.errors import BundleError, InvalidReferenceError, McpkitError, SignatureError, UsageError

if TYPE_CHECKING:
    from hatch_mcpkit.auth import Credentials
    from hatch_mcpkit.bundle import Manifest
    from hatch_mcpkit.config import Config
    from hatch_mcpkit.reference import Reference
    from hatch_mcpkit.resolve import BundleDir
    from hatch_mcpkit.runtime import Runtime
    from hatch_mcpkit.store import BundleCache, CacheEntry, PullOptions, PullResult

__all__ = ["build_parser", "main", "open_runtime"]

PROG = "mcpkit"
DEFAULT_CONCURRENCY = 4
UNKNOWN_TOOLS = "unknown until pulled (no mcpkit config blob; config.yaml lists them)"
MAX_CHECKED_TAGS = 1000  # tags of one repository whose manifests `list --registry` reads


# --------------------------------------------------------------------------- output helpers


def _out(text: str = "") -> None:
    print(text, flush=True)


def _warn(text: str) -> None:
    """One warning, one line: a newline in a name inside it cannot draw a line of its own."""
    print(f"{PROG}: warning: {clean(text, limit=None)}", file=sys.stderr, flush=True)


def _info(text: str) -> None:
    print(f"{PROG}: {clean(text, limit=None)}", file=sys.stderr, flush=True)


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
    rows = [[clean(c, limit=200) for c in r] for r in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _cache(args: argparse.Namespace) -> BundleCache:
    from hatch_mcpkit.store import BundleCache

    return BundleCache(args.home)


def _size_limit(args: argparse.Namespace) -> int | None:
    """``--max-bundle-size`` in bytes (``None``: $MCPKIT_MAX_BUNDLE_SIZE, else the default)."""
    from hatch_mcpkit.bundle import max_bundle_size

    limit = getattr(args, "max_bundle_size", None)
    return max_bundle_size(limit) if limit is not None else None


class _ProgressLine:
    """A pull's progress on one terminal line of stderr: bytes done / total, percent, rate.

    Redrawn at most every :attr:`INTERVAL` seconds and once at the end; the line is ended when the
    last byte arrives or when the pull stops early (:meth:`close`), so an error starts on a line of its own.
    """

    INTERVAL = 0.1

    def __init__(self, label: str) -> None:
        import time

        self._clock = time.monotonic
        self.label = clean(label, limit=80)
        self.started = self._clock()
        self.drawn = 0.0
        self.open = False

    def __call__(self, done: int, total: int) -> None:
        """``total`` 0: not known (a web server that sends no Content-Length)."""
        now = self._clock()
        finished = 0 < total <= done
        if not finished and now - self.drawn < self.INTERVAL:
            return
        self.drawn = now
        rate = done / max(now - self.started, 1e-3)
        of = f" / {_human_size(total)}  {100 * min(done, total) // total:3d}%" if total else ""
        sys.stderr.write(f"\r{PROG}: pulling {self.label}  {_human_size(done)}{of}  {_human_size(int(rate))}/s\x1b[K")
        self.open = not finished
        if finished:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.open = False


@contextlib.contextmanager
def _pull_progress(args: argparse.Namespace) -> Iterator[Callable[[int, int], None] | None]:
    """Progress for a pull: on a terminal only, and not with ``-q``."""
    if getattr(args, "quiet", False) or not sys.stderr.isatty():
        yield None
        return
    line = _ProgressLine(args.reference)
    try:
        yield line
    finally:
        line.close()


def _pull_options(args: argparse.Namespace, progress: Callable[[int, int], None] | None = None) -> PullOptions:
    from hatch_mcpkit.store import PullOptions

    password = _read_password(args)
    username = getattr(args, "username", None)
    if password is not None and not username:
        raise UsageError("--password-stdin needs --username")
    return PullOptions(offline=getattr(args, "offline", False), insecure=getattr(args, "insecure", False),
                       ca_file=getattr(args, "ca_file", None), username=username, password=password,
                       max_bundle_size=_size_limit(args),
                       transfer_deadline=getattr(args, "transfer_deadline", None), verify=_verifier(args),
                       progress=progress)


def _trust(args: argparse.Namespace) -> Callable[[Reference], Any]:
    """The trust requirement of a registry reference: the policy files' rules plus ``--key``."""
    from hatch_mcpkit.trust import KeySet, TrustPolicy

    policy = TrustPolicy.load(_cache(args).home)
    keys = getattr(args, "key", None)
    extra = KeySet(tuple(Path(k).expanduser() for k in keys), "--key") if keys else None
    return lambda ref: policy.requirement(ref, extra)


def _verifier(args: argparse.Namespace) -> Any:
    from hatch_mcpkit.trust import verifier

    return verifier(_trust(args), _warn)


def _check_cached(args: argparse.Namespace, path: Path, label: str) -> None:
    """A cached registry bundle must show the signatures the policy (and ``--key``) require now."""
    from hatch_mcpkit.reference import Reference
    from hatch_mcpkit.store import read_metadata
    from hatch_mcpkit.trust import check_installed

    meta = read_metadata(path)
    if not meta.get("source"):  # unreadable: what was verified is unknown, so with any policy, refuse
        from hatch_mcpkit.trust import TrustPolicy

        if getattr(args, "key", None) or TrustPolicy.load(_cache(args).home).layers:
            raise SignatureError(f"{clean(label)}: {path / 'metadata.json'} cannot be read, so whether the cached "
                                 "bundle was verified is unknown; refusing to run it under a trust policy",
                                 reason="policy", hint=f"pull it again: mcpkit bundle pull {clean(label)}")
        return
    if meta.get("source") != "oci" or not meta.get("registry") or not meta.get("repository"):
        if getattr(args, "key", None):
            raise UsageError(f"--key verifies bundles from a registry; {label!r} is a {meta.get('source')} bundle")
        return  # policies name registry references; local and https bundles are what the user chose
    ref = Reference(str(meta["registry"]), str(meta["repository"]), None)
    check_installed(_trust(args)(ref), meta, label, _warn)


def _precompile(store: BundleCache, result: PullResult) -> None:
    """Compile a freshly pulled module for this machine (an optimisation: the server compiles on demand)."""
    if not result.changed:
        return
    try:
        from hatch_mcpkit import runtime
    except ImportError:  # no runtime extras here: pulling works without them
        return
    try:
        runtime.precompile(result.path, code_cache=store.code_cache)
    except Exception as exc:
        why = exc.message if isinstance(exc, McpkitError) else str(exc)
        _warn(f"could not precompile {result.path / 'module.wasm'}: {why} (it will be compiled when it runs)")


def _read_line_unbuffered(limit: int = 64 * 1024) -> str:
    """One line from fd 0 and not a byte more: `mcpkit run` serves MCP from the same stdin afterwards."""
    data = bytearray()
    while len(data) < limit:
        byte = os.read(0, 1)
        if not byte or byte == b"\n":
            break
        data += byte
    return data.decode("utf-8", "replace")


def _read_password(args: argparse.Namespace) -> str | None:
    if not getattr(args, "password_stdin", False):
        return None
    data = _read_line_unbuffered() if not sys.stdin.isatty() else ""
    password = data.rstrip("\r\n")
    if not password:
        raise McpkitError("--password-stdin was given but standard input held no password",
                          hint="e.g. echo \"$TOKEN\" | mcpkit bundle push --username me --password-stdin ...")
    return password


def _credentials(args: argparse.Namespace, registry: str, config: Config | None = None, *,
                 repository: str | None = None) -> Credentials | None:
    from hatch_mcpkit.auth import resolve_credentials

    password = _read_password(args)
    username = getattr(args, "username", None)
    if password is not None and not username:
        raise UsageError("--password-stdin needs --username")
    auth = config.distribution.auth if config is not None and config.distribution is not None else None
    return resolve_credentials(registry, username=username, password=password, config_auth=auth,
                               repository=repository)


# --------------------------------------------------------------------------- push


def _cmd_push(args: argparse.Namespace) -> int:
    from hatch_mcpkit.bundle import build_bundle, is_layout_folder
    from hatch_mcpkit.config import load_config
    from hatch_mcpkit.publish import push_archive
    from hatch_mcpkit.reference import looks_local

    archive: Path | None = None
    module: Path | None = Path(args.module) if args.module else None
    config_path: Path | None = Path(args.config) if args.config else None
    target: str | None = args.target
    # The positional forms: ARCHIVE [TARGET] | MODULE CONFIG [TARGET] | CONFIG [TARGET] | TARGET
    for item in args.items:
        lower = item.lower()
        if lower.endswith(".wasm"):
            module = Path(item)
        elif lower.endswith((".yaml", ".yml")):
            config_path = Path(item)
        elif is_layout_folder(Path(item)) or (looks_local(item) and not Path(item).is_dir()):
            archive = Path(item)  # an OCI layout: a folder, or a tar of any name (x.mcpkit.tar, ./x.oci)
        elif looks_local(item):
            config_path = Path(item, "config.yaml")  # a bundle folder: module.wasm + config.yaml
        elif target is None:
            target = item
        else:
            raise UsageError(f"unexpected argument {item!r}",
                             hint="mcpkit bundle push [--config config.yaml | ARCHIVE | MODULE CONFIG] [oci://...]")
    if archive is not None and (module is not None or config_path is not None):
        raise UsageError("give either a bundle archive (or OCI layout folder) or a module and config.yaml, not both")
    tags = list(args.tag or [])
    if target and tags:  # oci://repo:v1 --tag latest pushes both tags
        from hatch_mcpkit.reference import written_tag

        tag = written_tag(target)
        if tag is not None:
            tags.insert(0, tag)
    password = _read_password(args)
    sign_key = None
    if args.sign_key:  # loaded first: a missing or wrong password fails before anything is pushed
        from hatch_mcpkit.signing import load_private_key

        sign_key = load_private_key(args.sign_key)

    own_config = None  # the publisher's own config.yaml; an archive's is data and never used to push
    with tempfile.TemporaryDirectory(prefix="mcpkit-push-") as tmp:
        if archive is None:
            from hatch_mcpkit.wasm import check_guest_module

            if config_path is None:
                config_path = (module.parent if module is not None else Path.cwd()) / "config.yaml"
            own_config = _publishers_config(config_path, args.home)
            config = own_config or load_config(config_path)  # a cached bundle's config.yaml is data
            module = module or config_path.parent / "module.wasm"
            check_guest_module(module)
            archive = build_bundle(config, module, Path(tmp)).path
        result = push_archive(archive, target=target, tags=list(dict.fromkeys(tags)), username=args.username,
                              password=password, insecure=args.insecure, ca_file=args.ca_file,
                              deadline=getattr(args, "transfer_deadline", None),
                              publisher_config=own_config, sign_key=sign_key,
                              home=Path(args.home) if args.home else None)
    _info(f"blobs: {result.uploaded} uploaded, {result.mounted} mounted from another repository, "
          f"{result.present} already there")
    _out(f"digest: {result.digest}")
    for reference in result.references:
        _out(f"pushed oci://{clean(reference)}")
    if result.signature:
        _out(f"signed {result.digest} (signature oci://{clean(result.repository)}@{result.signature})")
    return 0


def _publishers_config(path: Path, home: str | None) -> Config | None:
    """config.yaml to push from: the publisher's own, expanded from this environment -- unless it is a
    cached bundle's (someone else's): that one is data, never expanded, and says nothing about where to push."""
    from hatch_mcpkit.config import load_config
    from hatch_mcpkit.store import in_a_cache

    if not in_a_cache(path, home):
        return load_config(path, os.environ)
    _warn(f"{path} belongs to a bundle in the mcpkit cache: it is pushed as it is (no ${{VAR}} is filled in "
          "from this environment) and its distribution section is not used")
    return None


# --------------------------------------------------------------------------- pull


def _cmd_pull(args: argparse.Namespace) -> int:
    from hatch_mcpkit.reference import FileRef, HttpsRef, classify

    cache = _cache(args)
    if args.key and isinstance(classify(args.reference, insecure=args.insecure), (FileRef, HttpsRef)):
        raise UsageError(f"--key verifies bundles from a registry; {args.reference!r} is not an oci:// reference")
    with _pull_progress(args) as progress:
        result = cache.pull(args.reference, _pull_options(args, progress))
    if args.offline or args.key:  # (a bare name of a local entry is not verified by the pull itself)
        _check_cached(args, result.path, args.reference)
    for warning in result.warnings:
        _warn(warning)
    _precompile(cache, result)
    meta = result.entry.metadata()
    state = "pulled" if result.changed else ("found in cache" if args.offline else "up to date")
    if result.repaired:
        state = "repaired (the cached files did not match the manifest)"
    _out(f"{clean(result.entry.reference)}: {state}")
    _out(f"  name:    {clean(result.entry.name)} {clean(meta.get('version', ''))}".rstrip())
    _out(f"  digest:  {clean(result.digest)}")
    for line in _signer_lines(meta, result.digest):
        _out(f"  signed:  {line}")
    _out(f"  path:    {clean(result.path)}")
    return 0


def _signer_lines(meta: dict[str, Any], digest: str) -> list[str]:
    """Who signed an installed entry (from its metadata.json), one line per verified key."""
    record = meta.get("signature")
    if not isinstance(record, dict) or record.get("digest") != digest:
        return []
    return [f"key {clean(str(s.get('key_id')))} (verified {clean(str(record.get('verified_at')))})"
            for s in record.get("signers") or () if isinstance(s, dict)]


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
        "signature": meta.get("signature"),  # who signed what was installed (pull --key, trust policy)
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
    from hatch_mcpkit._referrers import is_fallback_tag
    from hatch_mcpkit.errors import RegistryError
    from hatch_mcpkit.reference import parse_registry_scope, parse_repository
    from hatch_mcpkit.registry import MAX_LISTING_ITEMS, RegistryClient

    text = args.registry.strip()
    registry, namespace = parse_registry_scope(text)
    credentials = _credentials(args, registry, repository=namespace or None)
    listing: dict[str, list[str]] = {}
    total = 0
    with RegistryClient(registry, credentials=credentials, insecure=args.insecure, ca_file=args.ca_file,
                        deadline=getattr(args, "transfer_deadline", None)) as client:
        try:
            repos = client.catalog()
            repos = [r for r in repos if not namespace or r == namespace or r.startswith(namespace + "/")]
        except RegistryError as exc:
            if not namespace:
                raise
            _warn(f"{exc.message}; listing {namespace} as one repository")
            repos = [parse_repository(f"{registry}/{namespace}").repository]
        hidden = 0
        for repo in sorted(repos):
            try:
                tags = [tag for tag in client.list_tags(repo) if not is_fallback_tag(tag)]
            except RegistryError as exc:
                if len(repos) == 1:
                    raise
                _warn(f"cannot list tags of {clean(repo)}: {exc.message}")
                continue
            total += len(tags)
            if total > MAX_LISTING_ITEMS:  # each listing is capped; so is the sum of them
                raise RegistryError(f"registry {clean(registry)} lists more than {MAX_LISTING_ITEMS} tags "
                                    "across its repositories; stopped reading there",
                                    hint="name a repository or a namespace (mcpkit list --registry HOST/NAMESPACE)")
            listing[repo], others = _bundle_tags(client, registry, repo, tags)
            hidden += others
    if hidden:
        _warn(f"{hidden} tag{'s' if hidden != 1 else ''} that are not mcpkit bundles (other artifacts) not shown")
    if args.json:
        _out(json.dumps([{"repository": f"{registry}/{r}", "tags": t} for r, t in listing.items()], indent=2))
        return 0
    if not listing:
        _out(f"no repositories under {clean(text)}")
        return 0
    for repo, tags in listing.items():
        if not tags:
            _out(f"oci://{clean(registry)}/{clean(repo)}  (no tags)")
        for tag in tags:
            _out(f"oci://{clean(registry)}/{clean(repo)}:{clean(tag)}")
    return 0


def _bundle_tags(client: Any, registry: str, repository: str, tags: list[str]) -> tuple[list[str], int]:
    """The tags whose manifest is an mcpkit bundle (checked side by side), and how many are not."""
    from concurrent.futures import ThreadPoolExecutor

    from hatch_mcpkit.bundle import Manifest
    from hatch_mcpkit.errors import BundleError, IntegrityError, RegistryError
    from hatch_mcpkit.reference import Reference

    def is_bundle(tag: str) -> bool:
        ref = Reference(registry, repository, tag)
        try:
            Manifest.parse(client.fetch_manifest(ref).raw, str(ref))
        except (BundleError, IntegrityError):
            return False
        except RegistryError as exc:
            if exc.status == 404:  # deleted since the listing
                return False
            raise
        return True

    if len(tags) > MAX_CHECKED_TAGS:
        _warn(f"{clean(repository)} has {len(tags)} tags; only the first {MAX_CHECKED_TAGS} were checked")
        tags = sorted(tags)[:MAX_CHECKED_TAGS]
    with ThreadPoolExecutor(max_workers=8) as pool:
        verdicts = list(pool.map(is_bundle, tags))
    bundles = sorted(tag for tag, ok in zip(tags, verdicts, strict=True) if ok)
    return bundles, len(tags) - len(bundles)


# --------------------------------------------------------------------------- keys and signatures


def _cmd_key_generate(args: argparse.Namespace) -> int:
    from hatch_mcpkit import signing

    key_path, pub_path = signing.generate_key(args.prefix)
    if not os.environ.get(signing.PASSWORD_ENV):
        _warn(f"{key_path} is not encrypted; set {signing.PASSWORD_ENV} to encrypt the next key you generate")
    _out(f"private key: {clean(key_path)} (mode 0600; keep it secret)")
    _out(f"public key:  {clean(pub_path)}")
    _out(f"key id:      {signing.key_id(signing.load_public_key(pub_path))}")
    return 0


def _signing_client(args: argparse.Namespace) -> tuple[Reference, Any]:
    from hatch_mcpkit.reference import parse_reference
    from hatch_mcpkit.registry import RegistryClient

    ref = parse_reference(args.reference)
    client = RegistryClient(ref.registry, credentials=_credentials(args, ref.registry, repository=ref.repository),
                            insecure=args.insecure,
                            ca_file=args.ca_file, deadline=getattr(args, "transfer_deadline", None))
    return ref, client


def _cmd_sign(args: argparse.Namespace) -> int:
    from hatch_mcpkit import _referrers, _signatures, signing

    key = signing.load_private_key(args.key)  # a wrong password fails before anything is sent
    ref, client = _signing_client(args)
    with client:
        digest = client.resolve(ref)  # once: what is signed is this digest, whatever the tag does next
        attached = _signatures.attach(client, ref, digest, key)
    _out(f"signed oci://{clean(ref.repo)}@{digest}")
    _out(f"  key id:    {signing.key_id(key.public_key())}")
    where = "the registry's referrers API" if attached.indexed_by_registry else \
        f"the fallback tag {_referrers.fallback_tag(digest)}"
    _out(f"  signature: oci://{clean(ref.repo)}@{attached.referrer} (listed by {where})")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from hatch_mcpkit import _signatures, signing

    public_key = signing.load_public_key(args.key)
    ref, client = _signing_client(args)
    with client:
        digest = client.resolve(ref)
        signer = _signatures.require(client, ref, digest, public_key)
    _out(f"verified oci://{clean(ref.repo)}@{digest}: signed by key {signer.key_id}")
    return 0


def _add_signature_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sign", help="sign a bundle in a registry with a key (a Sigstore bundle, as cosign writes it)",
        description="Resolve REF to its manifest digest once, sign that digest with the private key and push "
        "the signature as an OCI referrer (on registries without the referrers API, listed in the "
        "sha256-<hex> fallback tag). An encrypted key needs MCPKIT_KEY_PASSWORD.",
    )
    p.add_argument("reference", metavar="REF", help="oci://REGISTRY/REPO:TAG or @sha256:...")
    p.add_argument("--key", required=True, metavar="PREFIX.key", help="the private key (mcpkit key generate)")
    _add_registry_options(p)
    p.set_defaults(func=_cmd_sign)

    p = sub.add_parser(
        "verify", help="check that a bundle in a registry is signed by a key",
        description="Resolve REF to its manifest digest once and exit 0 only when a valid signature by the "
        "key covers exactly that digest; otherwise say why (missing, another key, tampered, another digest).",
    )
    p.add_argument("reference", metavar="REF", help="oci://REGISTRY/REPO:TAG or @sha256:...")
    p.add_argument("--key", required=True, metavar="PREFIX.pub", help="the public key to trust")
    _add_registry_options(p)
    p.set_defaults(func=_cmd_verify)


def _add_key_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    key = sub.add_parser("key", help="signing keys", description="Create ECDSA P-256 signing keys.")
    key_sub = key.add_subparsers(dest="key_command", metavar="COMMAND")
    p = key_sub.add_parser(
        "generate", help="write PREFIX.key (private, mode 0600) and PREFIX.pub",
        description="Write an ECDSA P-256 key pair: PREFIX.key (PKCS#8 PEM, encrypted with "
        "MCPKIT_KEY_PASSWORD when it is set) and PREFIX.pub (SPKI PEM, what verifiers need). "
        "Existing files are never overwritten.",
    )
    p.add_argument("prefix", metavar="PREFIX", help="path and file name without extension, e.g. keys/release")
    p.set_defaults(func=_cmd_key_generate)
    key.set_defaults(func=lambda _args: _usage(key))


# --------------------------------------------------------------------------- inspect


def _manifest_view(manifest: Manifest, bundle_config: dict[str, Any], reference: str) -> dict[str, Any]:
    return {
        "reference": reference,
        "digest": manifest.digest,
        "artifactType": manifest.artifact_type,
        "name": bundle_config.get("name"),
        "version": bundle_config.get("version"),
        "description": bundle_config.get("description"),
        "architecture": bundle_config.get("architecture"),
        "os": bundle_config.get("os"),
        "tools": bundle_config.get("tools", []),  # None: not known before config.yaml is downloaded
        "config": {"mediaType": manifest.config.media_type, "digest": manifest.config.digest,
                   "size": manifest.config.size},
        "layers": [
            {"title": name, "mediaType": d.media_type, "digest": d.digest, "size": d.size}
            for name, d in manifest.files
        ],
        "size": manifest.size,
        "annotations": dict(manifest.annotations),
    }


def _inspect_oci(ref: Reference, args: argparse.Namespace) -> dict[str, Any]:
    from hatch_mcpkit.bundle import known_bundle_config, parse_bundle_config
    from hatch_mcpkit.registry import RegistryClient

    credentials = _credentials(args, ref.registry, repository=ref.repository)
    with RegistryClient(ref.registry, credentials=credentials, insecure=args.insecure,
                        ca_file=args.ca_file, deadline=getattr(args, "transfer_deadline", None)) as client:
        manifest = client.get_manifest(ref)
        if manifest.derived:  # pushed without mcpkit's config blob: only the manifest speaks for it
            config = known_bundle_config(manifest)
        else:
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
        "signature": meta.get("signature"),
    }


def _inspect_view(args: argparse.Namespace) -> dict[str, Any]:
    from hatch_mcpkit.bundle import BundleLayout, is_layout_folder
    from hatch_mcpkit.reference import FileRef, NameRef, OciRef, classify

    cache = _cache(args)
    source = classify(args.reference, insecure=args.insecure)
    cached = cache.cached_by_name(args.reference) if isinstance(source, (NameRef, OciRef)) else None
    if cached is not None:
        return _inspect_cached(cached)
    if isinstance(source, FileRef):
        path = source.resolved().path
        if path.suffix in (".wasm", ".yaml", ".yml") or (path.is_dir() and not is_layout_folder(path)):
            from hatch_mcpkit.bundle import check_bundle_folder

            check_bundle_folder(path if path.is_dir() else path.parent, str(source.path))
            raise BundleError(f"{source.path}: inspect reads bundles (a .mcpkit.tar, a layout, a registry or the cache)",
                              hint="pull it first (mcpkit bundle pull PATH) and inspect it by name")
        with BundleLayout.open(path, max_bytes=_size_limit(args)) as layout:
            return _manifest_view(layout.manifest, layout.bundle_config, str(source.path))
    if isinstance(source, OciRef) and not args.offline:
        return _inspect_oci(source.reference, args)
    if isinstance(source, NameRef):
        from hatch_mcpkit.resolve import find_cached

        return _inspect_cached(find_cached(cache, source.name))
    return _inspect_cached(cache.find_entry(args.reference))


def _cmd_inspect(args: argparse.Namespace) -> int:
    view = _inspect_view(args)
    if args.json:
        _out(json.dumps(view, indent=2))
        return 0
    _out(f"Reference:   {clean(view['reference'])}")
    _out(f"Digest:      {clean(view['digest'])}")
    _out(f"Name:        {clean(view.get('name') or '-')} {clean(view.get('version') or '')}".rstrip())
    if view.get("description"):
        _out(f"Description: {clean(view['description'])}")
    tools = view.get("tools", [])
    _out(f"Tools:       {clean(', '.join(str(t) for t in tools) or '-') if tools is not None else UNKNOWN_TOOLS}")
    _out(f"Size:        {_human_size(view.get('size'))}")
    if view.get("path"):
        _out(f"Cached at:   {clean(view['path'])}")
        signed = _signer_lines(view, str(view["digest"]))
        _out(f"Signed:      {signed[0] if signed else 'not verified'}")
        for line in signed[1:]:
            _out(f"             {line}")
    _out("Layers:")
    table = [[str(d.get("title")), str(d.get("mediaType", "")), _human_size(d.get("size")), str(d.get("digest"))]
             for d in view.get("layers", [])]
    _out("\n".join("  " + line for line in _table(table, ["TITLE", "MEDIA TYPE", "SIZE", "DIGEST"]).splitlines()))
    annotations = view.get("annotations") or {}
    if annotations:
        _out("Annotations:")
        for key, value in sorted(annotations.items()):
            _out(f"  {clean(key, limit=200)}: {clean(value)}")
    return 0


# --------------------------------------------------------------------------- rm


def _cmd_rm(args: argparse.Namespace) -> int:
    cache = _cache(args)
    for text in args.references:
        for entry in cache.remove(text):
            _out(f"removed {clean(entry.reference)} ({clean(entry.path)})")
    return 0


# --------------------------------------------------------------------------- server and run


def _runtime_class() -> type[Runtime]:
    try:
        from hatch_mcpkit.runtime import Runtime
    except ImportError as exc:
        raise McpkitError(
            f"serving a bundle needs the runtime extras, which are not importable here ({exc})",
            hint="install them with: pip install 'hatch-mcpkit[run]'",
        ) from None
    return Runtime


@contextlib.contextmanager
def _bundle_to_serve(args: argparse.Namespace, store: BundleCache) -> Iterator[BundleDir]:
    from hatch_mcpkit.reference import FileRef, classify
    from hatch_mcpkit.resolve import open_bundle, open_local

    if args.command == "run":
        with _pull_progress(args) as progress, open_bundle(
                args.reference, store, _pull_options(args, progress), announce=_info,
                on_pull=lambda result: _precompile(store, result)) as found:
            yield found
        return
    if args.config:
        with open_local(FileRef(Path(args.config).expanduser().absolute())) as found:
            yield found
        return
    if args.from_bundle:
        entry = store.find_entry(args.from_bundle)
        from hatch_mcpkit.resolve import BundleDir

        yield BundleDir(entry.path, args.from_bundle, cached=True)
        return
    if args.path:
        ref = classify(args.path)
        if not isinstance(ref, FileRef):
            with open_bundle(args.path, store, _pull_options(args), pull=False) as found:
                yield found
            return
        with open_local(ref) as found:
            yield found
        return
    raise UsageError("nothing to serve", hint="use --from-bundle NAME, --config PATH/config.yaml or a PATH")


def _allow_dir_grants(specs: list[str]) -> list[Any]:
    """``--allow-dir`` specs as storage grants; a malformed one is a usage error (exit 2)."""
    from hatch_mcpkit.errors import SandboxError
    from hatch_mcpkit.runtime import parse_allow_dir

    try:
        return [parse_allow_dir(spec) for spec in specs]
    except SandboxError as exc:
        raise UsageError(exc.message, hint=exc.hint) from None


def _host_limits(args: argparse.Namespace) -> Any:
    """The host ceilings: ``--max-*`` options over ``MCPKIT_MAX_*`` over the defaults."""
    from hatch_mcpkit.runtime import HostLimits

    return HostLimits.from_env().with_options(memory_mb=args.max_memory_mb, timeout_ms=args.max_timeout_ms,
                                              max_output_kb=args.max_output_kb)


@contextlib.contextmanager
def open_runtime(args: argparse.Namespace) -> Iterator[Runtime]:
    """The Runtime the parsed ``server``/``run`` command line asks for (with launch-time policy changes)."""
    from hatch_mcpkit.config import load_config

    runtime_cls = _runtime_class()
    grants = _allow_dir_grants(args.allow_dir)
    store = _cache(args)
    with _bundle_to_serve(args, store) as found:
        if found.cached:
            _check_cached(args, found.path, found.label)
        elif getattr(args, "key", None):
            raise UsageError(f"--key verifies bundles from a registry; {found.label!r} is a local bundle")
        if not found.module.is_file():
            raise InvalidReferenceError(f"{found.label}: {found.module} is missing",
                                        hint="a bundle needs module.wasm beside config.yaml")
        config = load_config(found.config)
        runtime = runtime_cls(
            config, found.module, bundle_dir=found.path, extra_grants=grants,
            extra_env_keys=args.env, deny_guests=args.deny_dir, deny_env_keys=args.deny_env,
            code_cache=store.code_cache, protected_paths=[store.home], host_limits=_host_limits(args),
        )
        try:
            yield runtime
        finally:
            runtime.close()


def _announce(runtime: Runtime, label: str, quiet: bool) -> None:
    from hatch_mcpkit.runtime import format_policy

    for warning in runtime.warnings():  # always shown: the module can touch the user's files
        print(f"{PROG}: {clean(warning)}", file=sys.stderr)  # one line each: a path cannot draw another
    if quiet:
        return
    config = runtime.config
    print(f"{PROG}: serving {clean(config.name)} {clean(config.server_version)} ({len(config.tools)} tools: "
          f"{clean(', '.join(runtime.tools))}) from {clean(label)} [{runtime.module_source}, "
          f"{runtime.load_ms:.0f} ms]", file=sys.stderr)
    for line in format_policy(runtime):
        print(f"{PROG}: policy: {clean(line)}", file=sys.stderr)


class _CleanLog(logging.Filter):
    """Log lines quote what clients send (an ``Origin`` header, a method name, a tool's stderr): control
    characters escaped, and every line after a record's first marked ``  | `` as its continuation, so
    a newline in a client's method name or a guest's stderr cannot draw a ``mcpkit: ...`` line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self._block(record.getMessage()), None
        if record.exc_info and not record.exc_text:  # a traceback quotes exception text: the same rule
            record.exc_text = "  | " + self._block(logging.Formatter().formatException(record.exc_info))
        return True

    @staticmethod
    def _block(text: str) -> str:
        first, *rest = clean_block(text, limit=None).split("\n")
        return "\n".join([first, *(f"  | {line}" for line in rest)])


def _serve_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="mcpkit: %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_CleanLog())
    if args.verbose < 2:
        for noisy in ("mcp", "httpx", "anyio", "uvicorn"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _http_plan(args: argparse.Namespace) -> Any:
    """``--http``: bound and with its token taken out of the environment before any bundle loads."""
    if not getattr(args, "http", None):
        for flag, given in (("--no-auth", getattr(args, "no_auth", False)),
                            ("--allow-host", getattr(args, "allow_host", None)),
                            ("--allow-origin", getattr(args, "allow_origin", None))):
            if given:
                raise UsageError(f"{flag} is an option of the HTTP transport", hint="add --http HOST:PORT")
        return None
    from hatch_mcpkit._http import prepare

    return prepare(args.http, no_auth=args.no_auth, allow_hosts=args.allow_host, allow_origins=args.allow_origin)


def _announce_http(plan: Any) -> None:
    from hatch_mcpkit._http import TOKEN_ENV, is_wildcard, own_hosts

    if is_wildcard(plan.options.host) and not plan.options.allow_hosts:
        _warn(f"only requests for Host {', '.join(own_hosts(plan.options))} are answered (others get 421); "
              "add the names clients use with --allow-host NAME[:PORT]")
    if plan.generated:
        _info(f"bearer token for this run (set {TOKEN_ENV} to choose it): {plan.options.token}")
    elif plan.options.token is None:
        _warn("--no-auth: any program on this machine can call these tools")
    _info(f"listening on {plan.url} (streamable HTTP, stateless)")


def _run_server(server: Any, plan: Any) -> int:
    """Serve over stdio (``plan`` None) or HTTP until the client goes away or a signal stops it."""
    if plan is None:
        import anyio

        from hatch_mcpkit.server import serve_stdio

        try:
            stop = anyio.run(serve_stdio, server)
        finally:
            sys.stderr.flush()
    else:
        from hatch_mcpkit._http import serve_http

        stop = serve_http(server, plan.options, plan.sock, on_ready=lambda: _announce_http(plan))
    if stop.signum:  # Ctrl-C or SIGTERM: stdio cancels calls in flight, HTTP lets them finish first
        _info(f"stopped ({stop.name})")
    return int(stop.exit_code)


def _cmd_serve(args: argparse.Namespace) -> int:
    _serve_logging(args)
    plan = _http_plan(args)
    label = getattr(args, "reference", None) or args.from_bundle or args.config or args.path or ""
    with open_runtime(args) as runtime:
        _announce(runtime, label, args.quiet)
        from hatch_mcpkit.server import build_server

        return _run_server(build_server(runtime, max_concurrency=args.max_concurrency), plan)


def _cmd_gateway(args: argparse.Namespace) -> int:
    from hatch_mcpkit.gateway import open_project

    _serve_logging(args)
    plan = _http_plan(args)
    with open_project(_cache(args), project=Path(args.project) if args.project else None, names=args.names,
                      max_concurrency=args.max_concurrency, warn=_warn, host_limits=_host_limits(args)) as gateway:
        for member, runtime in gateway.members:
            _announce(runtime, f"{member.key} = {member.label}", args.quiet)
        if not args.quiet:
            _info(f"gateway: {len(gateway.members)} bundles as one MCP server; tools are named <key>__<tool>")
        return _run_server(gateway.server, plan)


# --------------------------------------------------------------------------- parser


# --------------------------------------------------------------------------- project: lock, sync


def _project(args: argparse.Namespace) -> tuple[Any, PullOptions, Any]:
    """The project (``--project``, else the nearest pyproject.toml), pull options and its trust policy."""
    from hatch_mcpkit.project import find_project
    from hatch_mcpkit.trust import TrustPolicy

    project = find_project(Path(args.project) if args.project else None)
    return project, _pull_options(args), TrustPolicy.load(_cache(args).home, project.root)


def _report_lock(outcome: Any) -> None:
    for key, old, new in outcome.moved:
        _info(f"{key}: {old} \u2192 {new}")
    for key in outcome.added:
        _info(f"{key}: locked {outcome.lock.entries[key].digest}")
    for key in outcome.removed:
        _info(f"{key}: removed from the lock")
    state = "written" if outcome.written else "unchanged"
    _info(f"{outcome.lock.path}: {state} ({len(outcome.lock.entries)} bundle(s))")


def _cmd_lock(args: argparse.Namespace) -> int:
    from hatch_mcpkit import lock

    project, opts, policy = _project(args)
    if args.check:
        reasons = lock.stale_reasons(project, lock.load_lock(project.lock_path))
        if reasons:
            from hatch_mcpkit.errors import StaleLockError

            raise StaleLockError(f"{project.lock_path} is stale:\n" + "\n".join(f"    {r}" for r in reasons),
                                 hint="run `mcpkit lock` and commit mcpkit.lock")
        _info(f"{project.lock_path}: up to date with {project.pyproject}")
        return 0
    _report_lock(lock.lock_project(project, opts, policy, warn=_warn, jobs=args.jobs))
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from hatch_mcpkit import lock

    project, opts, policy = _project(args)
    store = _cache(args)
    outcome = lock.sync(project, store, opts, policy, warn=_warn, frozen=args.frozen, prune=args.prune,
                        jobs=args.jobs)
    if outcome.lock is not None:
        _report_lock(outcome.lock)
    for key in outcome.pulled:
        _info(f"{key}: pulled {outcome.locked.entries[key].digest}")
    for reference in outcome.pruned:
        _info(f"removed {reference} (not in the lock; --prune)")
    _info(f"{len(outcome.pulled)} pulled, {len(outcome.present)} already in {store.bundles_dir}")
    return 0


def _jobs_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of parallel transfers from 1 to 64")
    return value


def _add_project_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, helptext, description in (
        ("lock", "resolve [tool.mcpkit.bundles] and write mcpkit.lock",
         "Resolve every reference in [tool.mcpkit.bundles] of pyproject.toml to a manifest digest, check the "
         "signatures the trust policy and each entry's key require, and write mcpkit.lock beside pyproject.toml "
         "(only when it changes). A tag that moved is shown as `KEY: OLD -> NEW` on stderr."),
        ("sync", "install exactly the bundles of mcpkit.lock into the cache",
         "Pull every bundle of mcpkit.lock by digest, side by side, skipping those already installed and intact. "
         "A missing or stale lock is locked first (only what changed); with --frozen it is an error (exit 4) "
         "and no tag is resolved. Nothing is removed from the cache unless --prune is given."),
    ):
        p = sub.add_parser(name, help=helptext, description=description)
        p.add_argument("--project", metavar="PATH", help="the project folder or its pyproject.toml "
                       "(default: the nearest pyproject.toml at or above the working directory)")
        p.add_argument("--jobs", "-j", type=_jobs_arg, default=None, metavar="N",
                       help="transfers side by side (default 8)")
        if name == "lock":
            p.add_argument("--check", action="store_true",
                           help="resolve nothing: exit 4 when mcpkit.lock is missing or stale, 0 when it matches")
        else:
            p.add_argument("--frozen", action="store_true",
                           help="use mcpkit.lock as it is: a missing or stale lock is an error (exit 4), "
                           "no tag is resolved")
            p.add_argument("--prune", action="store_true",
                           help="also remove cached versions of the project's repositories that the lock "
                           "does not name (other bundles in the cache are never touched)")
        _add_registry_options(p, credentials=False)
        _add_size_limit(p)
        _add_home(p)
        p.set_defaults(func=_cmd_lock if name == "lock" else _cmd_sync)


def _add_home(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: `mcpkit --home DIR server ...` keeps the top-level value
    p.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS,
                   help="bundle cache directory (default: $MCPKIT_HOME or ~/.mcpkit)")


def _size_arg(text: str) -> int:
    from hatch_mcpkit.bundle import parse_size

    try:
        return parse_size(text, what="--max-bundle-size")
    except McpkitError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _add_size_limit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-bundle-size", metavar="SIZE", default=None, type=_size_arg,
                   help="refuse a bundle whose layers declare more than SIZE bytes together, before downloading "
                   "(e.g. 200M, 2G; default $MCPKIT_MAX_BUNDLE_SIZE, else 1G)")


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    _add_launch_policy_options(p)
    p.add_argument("--offline", action="store_true", help="never download; use only the local cache")
    _add_runtime_options(p)


def _add_launch_policy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-dir", action="append", default=[], metavar="HOST[:GUEST][:ro|rw]",
                   help="also let the module see a host directory (read-only unless :rw); "
                        "replaces a config grant with the same guest path")
    p.add_argument("--deny-dir", action="append", default=[], metavar="GUEST",
                   help="withdraw the config's grant at this guest path")
    p.add_argument("--env", action="append", default=[], metavar="KEY",
                   help="also pass this host environment variable to the module")
    p.add_argument("--deny-env", action="append", default=[], metavar="KEY",
                   help="withhold an environment variable the config allows")


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    _add_home(p)
    p.add_argument("--max-concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N",
                   help=f"tool calls running at once (default {DEFAULT_CONCURRENCY})")
    from hatch_mcpkit.runtime import HostLimits

    for flag, field, var, unit in (("memory-mb", "memory_mb", "MEMORY_MB", "MiB"),
                                   ("timeout-ms", "timeout_ms", "TIMEOUT_MS", "ms"),
                                   ("output-kb", "max_output_kb", "OUTPUT_KB", "KiB")):
        p.add_argument(f"--max-{flag}", type=int, default=None, metavar="N",
                       help=f"host ceiling in {unit}: a bundle gets the smaller of its own limit and this one "
                            f"(default $MCPKIT_MAX_{var}, else {getattr(HostLimits(), field)})")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log to stderr (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="do not print the policy at start, nor download progress")


def _add_http_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http", metavar="HOST:PORT",
                   help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio (stateless; a bearer token "
                   "from $MCPKIT_SERVER_TOKEN, else one generated and printed once; port 0 picks a free port)")
    p.add_argument("--no-auth", action="store_true",
                   help="serve HTTP without the bearer token (refused unless HOST is a loopback address)")
    p.add_argument("--allow-host", action="append", default=[], metavar="HOST[:PORT]",
                   help="also accept this Host header (the name clients or a balancer use; HOST:* for any port)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="also accept browser requests from this Origin (e.g. https://app.example.com)")


def _add_serve_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    server = sub.add_parser("server", help="serve a cached bundle, a config.yaml or a bundle path over MCP",
                            description="Serve a bundle as an MCP server over stdio (or streamable HTTP with --http): "
                            "a cached bundle by name "
                            "(--from-bundle), a config.yaml with module.wasm beside it (--config), or a local "
                            "PATH (./folder, an OCI layout folder or .tar of any name such as x.mcpkit.tar or ./x.oci, x/config.yaml). "
                            "A bare name always means the cache.")
    what = server.add_mutually_exclusive_group()
    what.add_argument("--from-bundle", metavar="NAME",
                      help="a bundle in the local cache (name, name:tag or reference)")
    what.add_argument("--config", metavar="PATH", help="a config.yaml with module.wasm beside it")
    what.add_argument("path", nargs="?", metavar="PATH",
                      help="a bundle directory, config.yaml, module.wasm, or an OCI layout (folder or .tar)")
    _add_serve_options(server)
    _add_http_options(server)
    server.set_defaults(func=_cmd_serve)

    serve = sub.add_parser("serve", help="serve the project's locked bundles as one MCP server (stdio or --http)",
                           description="Serve the bundles of mcpkit.lock (all, or those NAMES) from the cache as one "
                           "MCP server, each tool as <key>__<tool>; each bundle keeps its own policy (narrowed by "
                           "[tool.mcpkit.bundles]), limits and --max-concurrency. Nothing is fetched: run "
                           "`mcpkit sync` first (a missing or stale lock is an error, exit 4).")
    serve.add_argument("names", nargs="*", metavar="NAME", help="keys of [tool.mcpkit.bundles] to serve (default: all)")
    serve.add_argument("--project", metavar="PATH", help="the project folder or its pyproject.toml "
                       "(default: the nearest pyproject.toml at or above the working directory)")
    _add_runtime_options(serve)
    _add_http_options(serve)
    serve.set_defaults(func=_cmd_gateway)

    run = sub.add_parser("run", help="pull NAME|URI|PATH into the cache if needed and serve it over MCP stdio",
                         description="Serve a bundle over MCP stdio, pulling it into the cache first when it is a "
                         "registry reference or https:// archive that is not cached yet. A bare name always means "
                         "the cache; a local path must look like one (./x, /abs, x.tar, x/config.yaml).")
    run.add_argument("reference", metavar="NAME|URI|PATH")
    _add_key_option(run)
    _add_registry_options(run)
    _add_size_limit(run)
    _add_serve_options(run)
    run.set_defaults(func=_cmd_serve)


def _add_key_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", action="append", metavar="PREFIX.pub",
                   help="require a valid signature by this public key over the manifest digest that is installed, "
                   "checked before any layer is downloaded (repeat: any one of the keys); adds to the trust policy")


def _deadline(text: str) -> float:
    from hatch_mcpkit._transport import transfer_deadline

    try:
        return transfer_deadline(float(text))
    except (ValueError, UsageError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds") from None


def _add_registry_options(p: argparse.ArgumentParser, *, credentials: bool = True) -> None:
    p.add_argument("--insecure", action="store_true",
                   help="allow plain HTTP to a registry or host that is not loopback (TLS is never skipped: use --ca-file for a private CA)")
    p.add_argument("--ca-file", metavar="PEM", help="trust this CA certificate bundle for TLS (a private registry; "
                   "else MCPKIT_CA_FILE, REQUESTS_CA_BUNDLE, SSL_CERT_FILE; plus the registry's certs.d folder)")
    p.add_argument("--transfer-deadline", type=_deadline, metavar="SECONDS",
                   help="give up on one transfer after this long, start to last byte "
                        "(else MCPKIT_TRANSFER_DEADLINE, else 900)")
    if credentials:
        p.add_argument("--username", "-u", metavar="USER",
                       help="registry user name (else distribution.auth, MCPKIT_REGISTRY_USERNAME, docker config, "
                            "podman's auth.json)")
        p.add_argument("--password-stdin", action="store_true",
                       help="read the registry password or token from standard input (never pass it as an argument)")


def _add_bundle_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "push", help="push a bundle to an OCI registry",
        description="Push a bundle to an OCI registry. Forms: `push [--config config.yaml]` builds the bundle "
        "from config.yaml and the module.wasm beside it and pushes it to distribution.registry with its tags; "
        "`push dist/NAME-VERSION.mcpkit.tar [oci://REPO[:TAG]]` pushes a built archive (any OCI layout: a .tar of "
        "any name, ./x.oci, or a layout folder); "
        "`push module.wasm config.yaml oci://REPO:TAG` pushes the pair to the given place.",
    )
    p.add_argument("items", nargs="*", metavar="ARG",
                   help="an OCI layout (.tar or folder), or module.wasm and config.yaml, then optionally oci://REPOSITORY[:TAG]")
    p.add_argument("--config", "-c", metavar="PATH", help="config.yaml to build the bundle from (default ./config.yaml)")
    p.add_argument("--module", "-m", metavar="PATH", help="the compiled module (default: module.wasm beside config.yaml)")
    p.add_argument("--to", dest="target", metavar="REF", help="where to push (default: distribution.registry)")
    p.add_argument("--tag", "-t", action="append", metavar="TAG",
                   help="tag to apply (repeatable; default: distribution.tags, else the version)")
    p.add_argument("--sign-key", metavar="PREFIX.key",
                   help="sign the pushed manifest digest with this private key (as mcpkit bundle sign does; "
                   "MCPKIT_KEY_PASSWORD when it is encrypted)")
    _add_registry_options(p)
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("pull", help="pull a bundle into the local cache",
                       description="Fetch a bundle, verify every blob by SHA-256 and install it in the cache "
                       "(MCPKIT_HOME, default ~/.mcpkit). URI: oci://REGISTRY/REPO:TAG, oci://REGISTRY/REPO@sha256:..., "
                       "file:///path/module.wasm (config.yaml beside it), a .mcpkit.tar, a directory, "
                       "https://host/bundle.tar.gz[#sha256=HEX], or the name of a cached bundle (pulls it again).")
    p.add_argument("reference", metavar="URI", help="what to pull")
    p.add_argument("--offline", action="store_true", help="use the cache only; fail if the bundle is not there")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="show no download progress (shown only when standard error is a terminal)")
    _add_key_option(p)
    _add_registry_options(p)
    _add_size_limit(p)
    _add_home(p)
    p.set_defaults(func=_cmd_pull)

    p = sub.add_parser("list", aliases=["ls"], help="list cached bundles, or the bundles in a registry",
                       description="Without options: the bundles in the local cache. With --registry: the "
                       "bundles in a registry, by repository and tag -- signatures, their sha256-<hex> "
                       "fallback tags and other artifacts are left out (needs a registry that allows listing).")
    p.add_argument("--registry", "-r", metavar="HOST[/NAMESPACE]",
                   help="list the bundles in this registry (or namespace, or one repository)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_registry_options(p)
    _add_home(p)
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("inspect", help="show a bundle's manifest, tools, layers and annotations",
                       description="Show a bundle without downloading its layers: from a registry (manifest and "
                       "config blob only), a local OCI layout (.tar of any name, or folder), or the cache (by name or reference).")
    p.add_argument("reference", metavar="REF", help="oci:// reference, OCI layout (.tar or folder), cached name or reference")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--offline", action="store_true", help="look the reference up in the cache instead of the registry")
    _add_registry_options(p)
    _add_size_limit(p)
    _add_home(p)
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("rm", aliases=["remove"], help="remove bundles from the local cache",
                       description="Remove cached bundles by name, name:tag or full reference.")
    p.add_argument("references", nargs="+", metavar="NAME|REF", help="what to remove")
    _add_home(p)
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
    _add_signature_commands(bundle_sub)
    bundle.set_defaults(func=lambda _args: _usage(bundle))
    _add_bundle_commands(sub)  # top-level short forms: mcpkit pull|push|list|inspect|rm
    _add_serve_commands(sub)
    _add_project_commands(sub)
    _add_key_commands(sub)
    parser.set_defaults(func=lambda _args: _usage(parser))
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# --------------------------------------------------------------------------- entry point


def _debug() -> bool:
    return os.environ.get("MCPKIT_DEBUG", "").lower() not in ("", "0", "false", "no")


def _run(argv: list[str]) -> int:
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
        print(f"{PROG}: error: {clean_block(exc)}", file=sys.stderr, flush=True)
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
            print(f"{PROG}: internal error: {type(exc).__name__}: {clean_block(exc)}", file=sys.stderr)
            print(f"{PROG}: set MCPKIT_DEBUG=1 to see the traceback, and please report it", file=sys.stderr)
        return 70


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
