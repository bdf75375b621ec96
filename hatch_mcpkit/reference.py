"""Bundle references: ``oci://``, bare registry references, ``file://``, ``https://`` and paths.

``parse_reference(text)`` reads an OCI reference (``oci://ghcr.io/org/tool:1.0``,
``oci://localhost:5000/org/tool@sha256:<hex>``, ``ghcr.io/org/tool``) into a
:class:`Reference`, applying Docker's rules: a first component with a dot, a colon or
``localhost`` is a registry host, otherwise the name lives on Docker Hub (``docker.io``,
API host ``registry-1.docker.io``) and a one-part name gets ``library/``. No tag and no
digest means ``latest``.

``classify(text)`` is the one place that decides what kind of thing a user gave mcpkit:
:class:`OciRef`, :class:`FileRef` (``file://``, a path to a module, a ``.mcpkit.tar`` or a
directory), :class:`HttpsRef` (an archive over HTTPS, optionally pinned with
``#sha256=<hex>``) or :class:`NameRef` (a bundle name to look up in the local cache).
Each kind has a ``key``: the canonical text the cache index stores.

The one "is it a local path" rule: a path must look like one (``/abs``, ``./x``, ``../x``,
``~/x``, ``x.mcpkit.tar``, ``x/config.yaml``, ``x.wasm``, ``file://``). Whether something of
that name happens to exist in the working directory never matters, so a folder there can
never shadow a cached bundle (a bare name always means the cache) or a registry reference.

Validation follows the OCI distribution spec grammar; every error is a
:class:`~hatch_mcpkit.errors.InvalidReferenceError` that quotes the reference and says what is wrong.
This module imports only the standard library.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from hatch_mcpkit.errors import InvalidReferenceError

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_ALIASES",
    "DOCKER_HUB_API",
    "AnyRef",
    "CacheName",
    "FileRef",
    "HttpsRef",
    "NameRef",
    "OciRef",
    "Reference",
    "Repository",
    "classify",
    "is_loopback",
    "is_repository_path",
    "is_tag",
    "looks_local",
    "oci_key",
    "parse_cache_name",
    "parse_reference",
    "parse_registry_scope",
    "parse_repository",
    "use_plain_http",
    "written_tag",
]

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})  # the one table

_LABEL = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\Z")
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*\Z")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
_HEX64_RE = re.compile(r"^[a-f0-9]{64}\Z")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*\Z")
_MAX_NAME_LENGTH = 255
_LOCAL_SUFFIXES = (".wasm", ".tar", ".tgz", ".tar.gz", ".yaml", ".yml")


# --------------------------------------------------------------------------- hosts


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1`` (with or without a port / brackets)."""
    name = _split_port(host)[0].lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_repository_path(text: str) -> bool:
    """Whether ``text`` is a repository path by the OCI name grammar (``org/tool``), as a registry must list it."""
    return 0 < len(text) <= _MAX_NAME_LENGTH and all(_PATH_COMPONENT_RE.match(p) for p in text.split("/"))


def is_tag(text: str) -> bool:
    """Whether ``text`` is a tag by the OCI grammar (``[A-Za-z0-9_][A-Za-z0-9._-]{0,127}``)."""
    return _TAG_RE.match(text) is not None


def use_plain_http(host: str, *, insecure: bool = False) -> bool:
    """The plain-HTTP rule: HTTP only for loopback hosts or when the user said ``--insecure``."""
    return insecure or is_loopback(host)


def _split_port(host: str) -> tuple[str, str | None]:
    if host.startswith("["):
        end = host.find("]")
        if end == -1:
            return host, None
        rest = host[end + 1 :]
        return host[: end + 1], rest[1:] if rest.startswith(":") else None
    if host.count(":") == 1:
        name, port = host.split(":")
        return name, port
    return host, None


def _check_host(host: str, text: str) -> None:
    name, port = _split_port(host)
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidReferenceError(f"invalid port {port!r} in registry {host!r} of reference {text!r}")
    elif host.endswith(":"):
        raise InvalidReferenceError(f"empty port in registry {host!r} of reference {text!r}")
    if name.startswith("["):
        if not name.endswith("]"):
            raise InvalidReferenceError(f"unclosed '[' in registry {host!r} of reference {text!r}")
        try:
            ipaddress.IPv6Address(name[1:-1])
        except ValueError:
            raise InvalidReferenceError(f"invalid IPv6 address {name!r} in reference {text!r}") from None
        return
    if ":" in name:
        raise InvalidReferenceError(
            f"invalid registry {host!r} in reference {text!r}",
            hint="write an IPv6 registry address in brackets, e.g. [::1]:5000",
        )
    if not _HOSTNAME_RE.match(name) or len(name) > 253:
        raise InvalidReferenceError(
            f"invalid registry host name {name!r} in reference {text!r}: use letters, digits, '-' and '.'"
        )


def _looks_like_host(component: str) -> bool:
    """Docker's rule: the first path component is a registry when it has a '.' or ':' or is localhost."""
    return "." in component or ":" in component or component == "localhost" or component.startswith("[")


# --------------------------------------------------------------------------- repositories


@dataclass(frozen=True)
class Repository:
    """A registry plus a repository path, without tag or digest (``distribution.registry``)."""

    registry: str
    repository: str

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry in DOCKER_HUB_ALIASES else self.registry

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}"


def _strip_scheme(text: str) -> str:
    if text.startswith("oci://"):
        return text[len("oci://") :]
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise InvalidReferenceError(f"unsupported scheme {scheme!r} in OCI reference {text!r}: use oci:// or no scheme")
    return text


def _split_registry(name: str, text: str) -> tuple[str, str]:
    if not name:
        raise InvalidReferenceError(f"empty repository name in reference {text!r}")
    first, sep, rest = name.partition("/")
    if sep and _looks_like_host(first):
        registry, repository = first, rest
        _check_host(registry, text)
    else:
        registry, repository = DOCKER_HUB, name
    if registry in DOCKER_HUB_ALIASES and "/" not in repository:
        repository = f"library/{repository}"
    if not repository:
        raise InvalidReferenceError(f"missing repository after registry {registry!r} in reference {text!r}")
    for component in repository.split("/"):
        if not component:
            raise InvalidReferenceError(f"empty path component in repository {repository!r} of reference {text!r}")
        if not _PATH_COMPONENT_RE.match(component):
            raise InvalidReferenceError(
                f"invalid repository path component {component!r} in reference {text!r}",
                hint="repository names use lowercase letters, digits and single '.', '_', '__' or '-' separators",
            )
    if len(registry) + 1 + len(repository) > _MAX_NAME_LENGTH:
        raise InvalidReferenceError(f"repository name in reference {text!r} is longer than {_MAX_NAME_LENGTH} characters")
    return registry, repository


def parse_repository(text: str) -> Repository:
    """Parse ``[oci://]host[:port]/path`` (no tag, no digest), as in ``distribution.registry``."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidReferenceError("empty registry repository: write e.g. ghcr.io/myorg/my-tool")
    body = _strip_scheme(text.strip())
    if "@" in body:
        raise InvalidReferenceError(
            f"{text!r} names a digest; distribution.registry is a repository such as ghcr.io/myorg/my-tool"
        )
    last = body.rsplit("/", 1)[-1]
    if ":" in last and "/" in body:
        raise InvalidReferenceError(
            f"{text!r} includes a tag; give the repository only and list tags under distribution.tags"
        )
    registry, repository = _split_registry(body, text)
    return Repository(registry, repository)


def parse_registry_scope(text: str) -> tuple[str, str]:
    """``[oci://]host[:port][/namespace]`` (``mcpkit list --registry``): the registry and a repository
    prefix (``""`` for the whole registry), each checked like a reference's."""
    body = _strip_scheme(text.strip()).rstrip("/")
    host, _, namespace = body.partition("/")
    if not host:
        raise InvalidReferenceError(f"{text!r}: give a registry host, e.g. ghcr.io/myorg")
    _check_host(host, text)
    namespace = namespace.strip("/")
    if namespace:
        registry, _repository = _split_registry(f"{host}/{namespace}", text)
        return registry, namespace
    return host, ""


# --------------------------------------------------------------------------- references


@dataclass(frozen=True)
class Reference:
    """One OCI artifact: ``registry/repository`` plus a tag and/or a digest.

    ``registry`` is the host[:port] as the user wrote it (``docker.io`` for Docker Hub);
    ``api_host`` is where requests go (``registry-1.docker.io`` for Docker Hub).
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry in DOCKER_HUB_ALIASES else self.registry

    @property
    def repo(self) -> Repository:
        return Repository(self.registry, self.repository)

    @property
    def identifier(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        if self.digest:
            return self.digest
        return self.tag or "latest"

    @property
    def uri(self) -> str:
        return f"oci://{self}"

    def with_digest(self, digest: str) -> Reference:
        _check_digest(digest, digest)
        return Reference(self.registry, self.repository, self.tag, digest)

    def cache_parts(self) -> tuple[str, ...]:
        """Path components under ``bundles/``: registry, repository parts, tag or ``sha256-<hex>``.

        A pinned digest wins over a tag (the content is what is cached). The ``:`` of a port
        becomes ``_`` so the path is valid on every file system (host names cannot contain
        ``_``, so this is unambiguous).
        """
        last = self.digest.replace(":", "-") if self.digest else (self.tag or "latest")
        return (self.registry.replace(":", "_"), *self.repository.split("/"), last)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _check_digest(digest: str, text: str) -> None:
    algorithm, sep, hexpart = digest.partition(":")
    if not sep:
        raise InvalidReferenceError(f"invalid digest {digest!r} in reference {text!r}: expected sha256:<64 hex digits>")
    if algorithm != "sha256":
        raise InvalidReferenceError(f"unsupported digest algorithm {algorithm!r} in reference {text!r}: only sha256 is supported")
    if not _HEX64_RE.match(hexpart):
        raise InvalidReferenceError(
            f"invalid sha256 digest in reference {text!r}: expected 64 lowercase hex digits, got {len(hexpart)}"
            + (" characters" if hexpart and not re.fullmatch(r"[0-9a-fA-F]*", hexpart) else "")
        )


def parse_reference(text: str) -> Reference:
    """Parse ``[oci://]host[:port]/repository[:tag][@sha256:<hex>]`` (Docker Hub rules apply)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidReferenceError("empty reference: write e.g. oci://ghcr.io/org/tool:1.0")
    original = text
    body = _strip_scheme(text.strip())
    if any(c.isspace() for c in body):
        raise InvalidReferenceError(f"reference {original!r} contains white space")
    digest: str | None = None
    if "@" in body:
        body, digest = body.split("@", 1)
        _check_digest(digest, original)
    tag: str | None = None
    slash = body.rfind("/")
    colon = body.rfind(":")
    if colon > slash:
        body, tag = body[:colon], body[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise InvalidReferenceError(
                f"invalid tag {tag!r} in reference {original!r}",
                hint="tags are up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
            )
    registry, repository = _split_registry(body, original)
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, repository, tag, digest)


def oci_key(ref: Reference) -> str:
    """The canonical ``oci://`` text of a reference (its tag dropped when a digest pins it)."""
    key = f"oci://{ref.registry}/{ref.repository}"
    if ref.digest:
        return f"{key}@{ref.digest}"
    return f"{key}:{ref.tag or 'latest'}"


def written_tag(text: str) -> str | None:
    """The tag the user actually wrote in ``text`` (``None`` for none, or for a digest reference)."""
    body = _strip_scheme(text.strip())
    if "@" in body:
        return None
    last = body.rsplit("/", 1)[-1]
    return parse_reference(text).tag if ":" in last else None


@dataclass(frozen=True)
class CacheName:
    """``name``, ``name:tag`` or ``name@sha256:<hex or prefix>``: a short way to name a cached bundle."""

    name: str
    tag: str | None = None
    digest: str | None = None


_CACHE_NAME_RE = re.compile(
    r"^([a-z0-9][a-z0-9._-]*)(?::([A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?(?:@(sha256:[0-9a-f]{1,64}))?$"
)


def parse_cache_name(text: str) -> CacheName | None:
    """Read a short cache name; ``None`` when ``text`` is not of that shape (it has a ``/`` or a scheme)."""
    m = _CACHE_NAME_RE.match(text.strip())
    return CacheName(m.group(1), m.group(2), m.group(3)) if m else None


# --------------------------------------------------------------------------- classify


@dataclass(frozen=True)
class OciRef:
    reference: Reference

    @property
    def key(self) -> str:
        return oci_key(self.reference)


@dataclass(frozen=True)
class FileRef:
    """A local module (config.yaml beside it), ``.mcpkit.tar``, or directory."""

    path: Path

    @property
    def key(self) -> str:
        return self.path.as_uri()

    def resolved(self) -> FileRef:
        """The same path with links resolved; InvalidReferenceError when nothing is there."""
        try:
            return FileRef(self.path.expanduser().resolve(strict=True))
        except (OSError, RuntimeError):
            raise InvalidReferenceError(
                f"{self.path}: no such file or directory",
                hint="give module.wasm (with config.yaml beside it), a .mcpkit.tar archive or a bundle directory",
            ) from None


@dataclass(frozen=True)
class HttpsRef:
    """An archive over HTTPS (or plain HTTP on loopback / with --insecure); ``sha256`` is the ``#sha256=`` pin."""

    url: str
    sha256: str | None = None

    @property
    def key(self) -> str:
        return self.url


@dataclass(frozen=True)
class NameRef:
    """A bare bundle name, looked up in the local cache."""

    name: str

    @property
    def key(self) -> str:
        return self.name


AnyRef = OciRef | FileRef | HttpsRef | NameRef


def _classify_http(text: str, insecure: bool) -> HttpsRef:
    parts = urlsplit(text)
    if not parts.hostname:
        raise InvalidReferenceError(f"missing host in URL {text!r}")
    if parts.scheme == "http" and not use_plain_http(parts.netloc.rsplit("@", 1)[-1], insecure=insecure):
        raise InvalidReferenceError(
            f"refusing plain HTTP for {text!r}: only loopback hosts may use http://",
            hint="use https://, or pass --insecure if you really trust this network",
        )
    pin: str | None = None
    if parts.fragment:
        key, sep, value = parts.fragment.partition("=")
        if key != "sha256" or not sep:
            raise InvalidReferenceError(f"unsupported fragment {parts.fragment!r} in {text!r}: use #sha256=<64 hex digits>")
        value = value.lower()
        if not _HEX64_RE.match(value):
            raise InvalidReferenceError(f"invalid #sha256= pin in {text!r}: expected 64 hex digits")
        pin = value
    url = text.split("#", 1)[0]
    return HttpsRef(url, pin)


def looks_local(text: str) -> bool:
    """The one rule: does ``text`` (no scheme) look like a local path? Never asks the file system."""
    lower = text.lower()
    return text.startswith(("/", ".", "~")) or lower.endswith(_LOCAL_SUFFIXES)


def classify(text: str, *, cwd: Path | None = None, insecure: bool = False) -> AnyRef:
    """Tell what kind of reference ``text`` is; raise InvalidReferenceError when it is none.

    Without a scheme: anything that looks like a path (``/``, ``./``, ``../``, ``~``, a
    ``.wasm``/``.tar``/``.yaml`` suffix) is a file, relative to ``cwd``; a plain name such as
    ``weather-tool`` is a cache name (even when a folder of that name exists here); anything
    else is parsed as an OCI reference. ``insecure`` also allows ``http://`` off loopback.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidReferenceError("empty reference")
    try:
        return _classify(text.strip(), cwd, insecure)
    except (ValueError, RuntimeError) as exc:  # a broken [IPv6] URL, a NUL byte, ~unknown-user
        raise InvalidReferenceError(f"invalid reference {text!r}: {exc}") from None


def _classify(text: str, cwd: Path | None, insecure: bool) -> AnyRef:
    lower = text.lower()
    if lower.startswith("oci://"):
        return OciRef(parse_reference(text))
    if lower.startswith("file://"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise InvalidReferenceError(f"file:// reference {text!r} names host {parts.netloc!r}; only local files work")
        if not parts.path:
            raise InvalidReferenceError(f"file:// reference {text!r} has no path")
        return FileRef(Path(unquote(parts.path)))
    if lower.startswith(("https://", "http://")):
        return _classify_http(text, insecure)
    if "://" in text:
        raise InvalidReferenceError(
            f"unsupported scheme {text.split('://', 1)[0]!r} in {text!r}: use oci://, file://, https:// or a path"
        )
    if "\0" in text:
        raise InvalidReferenceError(f"reference {text!r} contains a NUL byte")
    if looks_local(text):
        expanded = Path(text).expanduser()
        return FileRef(expanded if expanded.is_absolute() else (cwd or Path.cwd()) / expanded)
    if _NAME_RE.match(text):
        return NameRef(text)
    return OciRef(parse_reference(text))
