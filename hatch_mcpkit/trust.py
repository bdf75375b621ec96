"""The trust policy: which keys must have signed a registry bundle before it is installed or run.

Two files may hold a policy, both in the shape of ``schemas/trust.schema.json``:

* ``MCPKIT_HOME/trust.yaml`` -- the user's own;
* ``[tool.mcpkit.trust]`` in the ``pyproject.toml`` of the project mcpkit runs in (the nearest
  one at or above the working directory).

A rule maps a ``REGISTRY/REPOSITORY`` pattern (``*`` within one path segment, ``**`` across
segments) to public keys, one of which must have signed the manifest digest (two during a key
rotation). ``default`` says what happens to a reference no rule matches: ``enforce`` (a
signature is required: pass ``--key``), ``warn`` or ``off`` (the default without a policy).

Each file can only add requirements, never take one away: the first matching rule of *each*
file applies (so a bundle matched by both must carry a signature satisfying both), ``--key``
adds one more, and the stricter ``default`` wins. A cloned project cannot loosen the user's
own trust.yaml.

:func:`verifier` gives the store's pull the check it runs after the manifest is fetched and
before any blob is: by the digest that is then installed. :func:`check_installed` is what
``mcpkit run``/``server`` ask of a cached entry: they never re-fetch, but refuse an entry whose
``metadata.json`` records no signature the policy now requires.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatch_mcpkit._text import clean
from hatch_mcpkit._yaml import LineMap, load_yaml
from hatch_mcpkit.errors import ConfigError, Problem, SignatureError

if TYPE_CHECKING:
    from hatch_mcpkit.reference import Reference
    from hatch_mcpkit.registry import RegistryClient

__all__ = ["MODES", "POLICY_FILE", "KeySet", "Requirement", "TrustPolicy", "check_installed", "verifier"]

POLICY_FILE = "trust.yaml"
MODES = ("enforce", "warn", "off")
_SCHEMA = "schemas/trust.schema.json"
_MAX_POLICY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class KeySet:
    """Public key files of which one must have signed; ``source`` names where they were required."""

    keys: tuple[Path, ...]
    source: str

    def load(self) -> list[Any]:
        from hatch_mcpkit import signing

        loaded = []
        for path in self.keys:
            try:
                loaded.append(signing.load_public_key(path))
            except SignatureError as exc:
                raise SignatureError(f"{self.source}: {exc.message}", reason=exc.reason, hint=exc.hint) from None
        return loaded


@dataclass(frozen=True)
class Requirement:
    """What one registry reference must show: a signature for every key set, else ``mode`` decides."""

    key_sets: tuple[KeySet, ...]
    mode: str  # for no key set: enforce | warn | off
    mode_source: str

    @property
    def required(self) -> bool:
        return bool(self.key_sets) or self.mode == "enforce"


@dataclass(frozen=True)
class _Rule:
    pattern: str
    regex: re.Pattern[str]
    keys: tuple[Path, ...]
    source: str


@dataclass(frozen=True)
class _Layer:
    """One policy file's rules and default (``default`` None: the file does not say)."""

    rules: tuple[_Rule, ...] = ()
    default: str | None = None
    default_source: str = ""


@dataclass(frozen=True)
class TrustPolicy:
    layers: tuple[_Layer, ...] = field(default_factory=tuple)

    @classmethod
    def load(cls, home: Path, project_dir: Path | None = None) -> TrustPolicy:
        """The user's ``home/trust.yaml`` and the nearest project's ``[tool.mcpkit.trust]``."""
        layers = []
        path = home / POLICY_FILE
        if path.is_file():
            layers.append(_load_yaml(path))
        from hatch_mcpkit._pyproject import nearest

        pyproject = nearest(project_dir or Path.cwd())
        if pyproject is not None:
            layer = _load_pyproject(pyproject)
            if layer is not None:
                layers.append(layer)
        return cls(tuple(layers))

    def requirement(self, ref: Reference, extra: KeySet | None = None) -> Requirement:
        """What ``ref`` must show: each file's first matching rule, plus ``extra`` (``--key``)."""
        target = f"{_host(ref.registry)}/{ref.repository}"
        sets = [rule_set for layer in self.layers if (rule_set := _first_match(layer, target)) is not None]
        if extra is not None:
            sets.append(extra)
        mode, source = "off", "no trust policy"
        for layer in self.layers:
            if layer.default is not None and MODES.index(layer.default) < MODES.index(mode):
                mode, source = layer.default, layer.default_source
        return Requirement(tuple(sets), mode, source)


def _first_match(layer: _Layer, target: str) -> KeySet | None:
    for rule in layer.rules:
        if rule.regex.fullmatch(target):
            return KeySet(rule.keys, rule.source)
    return None


def _host(registry: str) -> str:
    """One spelling per registry, so a rule cannot be walked around by writing the host another way
    (``GHCR.IO``, ``ghcr.io:443``, ``index.docker.io``): matching more spellings only adds requirements."""
    from hatch_mcpkit.reference import DOCKER_HUB_ALIASES

    host = registry.lower().removesuffix(":443")
    return "docker.io" if host in DOCKER_HUB_ALIASES else host


def _pattern(text: str) -> re.Pattern[str]:
    registry, _, rest = text.removeprefix("oci://").partition("/")
    body = f"{_host(registry)}/{rest}" if rest else registry
    parts = re.split(r"(\*\*|\*)", body)
    out = "".join(".*" if p == "**" else "[^/]*" if p == "*" else re.escape(p) for p in parts)
    return re.compile(out)


# --------------------------------------------------------------------------- reading policy files


def _schema_problems(data: Any, file: str, lines: LineMap, prefix: tuple[str, ...] = ()) -> list[Problem]:
    """The schema's complaints in config.yaml's words (key path, line, did-you-mean)."""
    from hatch_mcpkit._configschema import document_problems

    return document_problems(data, _SCHEMA, file, lines, prefix)


def _layer(data: Mapping[str, Any], base: Path, file: str, lines: LineMap, prefix: str) -> _Layer:
    rules = []
    for n, item in enumerate(data.get("rules", [])):
        where = f"{file}:{lines[('rules', n)]}" if ("rules", n) in lines else file
        keys = tuple((base / key).expanduser() if not Path(key).expanduser().is_absolute()
                     else Path(key).expanduser() for key in item["keys"])
        rules.append(_Rule(item["match"], _pattern(item["match"]), keys,
                           f"{where}: {prefix}rules[{n}] ({item['match']})"))
    default = data.get("default")
    return _Layer(tuple(rules), default, f"{file}: {prefix}default = {default}")


def _load_yaml(path: Path) -> _Layer:
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(file, "", f"cannot read the trust policy: {exc.strerror}")]) from None
    if len(raw) > _MAX_POLICY_BYTES:
        raise ConfigError([Problem(file, "", f"larger than {_MAX_POLICY_BYTES} bytes; not a trust policy")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(file, "", f"file is not UTF-8 (byte {exc.start})")]) from None
    data, lines, problems = load_yaml(text, file)
    if data is None and not problems:
        data = {}
    if not problems:
        problems = _schema_problems(data, file, lines)
    if problems:
        raise ConfigError(problems, hint="see docs/signing.md (Require signatures)")
    return _layer(data, path.parent, file, lines, "")


def _load_pyproject(path: Path) -> _Layer | None:
    from hatch_mcpkit._pyproject import read_tool_table

    table = read_tool_table(path, "trust")
    if table is None:
        return None
    file = str(path)
    problems = _schema_problems(table.data, file, table.lines, table.prefix)
    if problems:
        raise ConfigError(problems, hint="see docs/signing.md (Require signatures)")
    return _layer(table.data, path.parent, file, table.lines, f"{table.where}.")


# --------------------------------------------------------------------------- checking


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def verifier(
    requirement: Callable[[Reference], Requirement], warn: Callable[[str], None],
) -> Callable[[RegistryClient, Reference, str], dict[str, Any] | None]:
    """The store's pull check: called with the manifest digest it is about to install, before any blob.

    Returns the ``signature`` record for ``metadata.json`` (None when nothing was verified), or
    raises :class:`SignatureError` (missing, wrong-key, tampered, digest, ...): nothing is installed.
    """

    def verify(client: RegistryClient, ref: Reference, digest: str) -> dict[str, Any] | None:
        from hatch_mcpkit import _signatures

        needed = requirement(ref)
        where = f"oci://{ref.registry}/{ref.repository}@{digest}"
        if not needed.key_sets:
            _unsigned(needed, where, warn, pulled=True)
            return None
        keyed = [(key_set, key_set.load()) for key_set in needed.key_sets]  # a bad key file fails first
        found = _signatures.collect(client, ref, digest)
        signers = []
        for key_set, keys in keyed:
            try:
                signer = _signatures.check(found, ref, digest, keys)
            except SignatureError as exc:
                raise SignatureError(f"{exc.message}; required by {key_set.source}", reason=exc.reason,
                                     hint=exc.hint or "nothing was downloaded or installed") from None
            signers.append({**signer.as_dict(), "required_by": key_set.source})
        return {"digest": digest, "verified_at": _now(), "signers": signers}

    return verify


def _unsigned(needed: Requirement, where: str, warn: Callable[[str], None], *, pulled: bool) -> None:
    if needed.mode == "enforce":
        what = "pulling" if pulled else "running"
        raise SignatureError(
            f"{where}: the trust policy requires a signature ({needed.mode_source}), but no rule names a key "
            f"for it; refusing {what} it",
            reason="policy",
            hint="add a rule with the publisher's key to the trust policy, or pull it with --key PREFIX.pub",
        )
    if needed.mode == "warn":
        warn(f"{where} is not verified: no trust rule names a key for it ({needed.mode_source})")


def check_installed(needed: Requirement, metadata: Mapping[str, Any], label: str,
                    warn: Callable[[str], None]) -> None:
    """Refuse a cached entry whose ``metadata.json`` shows no signature ``needed`` requires (never re-fetches)."""
    digest = str(metadata.get("digest", ""))
    record = metadata.get("signature")
    signers = record.get("signers") if isinstance(record, dict) and record.get("digest") == digest else None
    verified = {str(s.get("key_id")) for s in signers or () if isinstance(s, dict)}
    reference = str(metadata.get("reference", label))
    from hatch_mcpkit import signing

    for key_set in needed.key_sets:
        ids = {signing.key_id(key) for key in key_set.load()}
        if not ids & verified:
            state = "was installed without a verified signature" if not verified else \
                f"was verified with another key (key id {', '.join(sorted(verified))})"
            raise SignatureError(
                f"{clean(label)}: the cached bundle ({clean(digest)}) {state}, but {key_set.source} now "
                f"requires a signature by {_names(key_set.keys)}; refusing to run it",
                reason="policy",
                hint=f"re-pull it with the key: mcpkit bundle pull {clean(reference)} --key "
                     f"{clean(str(key_set.keys[0]))}",
            )
    if not needed.key_sets and not verified:
        _unsigned(needed, f"{clean(label)} ({clean(digest)})", warn, pulled=False)


def _names(keys: Sequence[Path]) -> str:
    return " or ".join(clean(str(k)) for k in keys)
