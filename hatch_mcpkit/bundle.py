"""Bundles as OCI artifacts: the manifest, the image layout, the reproducible tar.

A bundle is ``module.wasm`` + ``config.yaml`` (+ any ``distribution.include``
files), stored as an OCI image manifest with ``artifactType``
``application/vnd.mcpkit.bundle.v1``. ``build_bundle`` writes it as
``<name>-<version>.mcpkit.tar``: an OCI image layout (``oci-layout``,
``index.json``, ``blobs/sha256/...``) in a tar with fixed owners and mtimes,
so the same inputs and ``SOURCE_DATE_EPOCH`` give the same bytes.
``BundleLayout.open`` reads such a tar (any file name) or a layout directory
back and verifies every blob.

Readers also take bundles other tools made: :meth:`Manifest.parse` finds the
module and config.yaml layers by media type or title wherever they sit, accepts
oras' empty config (what mcpkit's config blob would say then comes from
config.yaml: :func:`derive_bundle_config`), and refuses what is something else
(an image, a chart, a signature) with the oras command line that makes a bundle.
The size of a bundle is :attr:`Manifest.size`, the sum of its layers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from hatch_mcpkit import _json
from hatch_mcpkit._archive import RESERVED_NAMES, extract, reserved_part
from hatch_mcpkit._files import DigestCheck, file_chunks, open_regular, read_regular, read_verified
from hatch_mcpkit._text import clean
from hatch_mcpkit._yaml import MAX_YAML_BYTES
from hatch_mcpkit.errors import BundleError, InvalidReferenceError

if TYPE_CHECKING:
    from hatch_mcpkit.config import Config

__all__ = [
    "ARTIFACT_TYPE",
    "BUNDLE_CONFIG_MEDIA_TYPE",
    "CONFIG_YAML_MEDIA_TYPE",
    "DEFAULT_MAX_BUNDLE_SIZE",
    "EMPTY_CONFIG_MEDIA_TYPE",
    "INDEX_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPE",
    "ORAS_HINT",
    "ORAS_PUSH",
    "RESERVED_NAMES",
    "TITLE_ANNOTATION",
    "UNKNOWN_ARTIFACT_TYPE",
    "UNKNOWN_CONFIG_MEDIA_TYPE",
    "WASM_MEDIA_TYPE",
    "BuiltBundle",
    "BundleLayout",
    "Descriptor",
    "LocalBundle",
    "Manifest",
    "archive_name",
    "build_bundle",
    "check_bundle_folder",
    "check_declared_sizes",
    "derive_bundle_config",
    "file_digest",
    "is_layout_folder",
    "known_bundle_config",
    "local_bundle",
    "max_bundle_size",
    "parse_bundle_config",
    "parse_size",
]

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
ARTIFACT_TYPE = "application/vnd.mcpkit.bundle.v1"
BUNDLE_CONFIG_MEDIA_TYPE = "application/vnd.mcpkit.bundle.config.v1+json"
WASM_MEDIA_TYPE = "application/wasm"
CONFIG_YAML_MEDIA_TYPE = "application/vnd.mcpkit.config+yaml"
TITLE_ANNOTATION = "org.opencontainers.image.title"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
KEYWORDS_ANNOTATION = "io.mcpkit.keywords"
MODULE_TITLE = "module.wasm"
CONFIG_TITLE = "config.yaml"

# hatchling's reproducible default (2020-02-02) when SOURCE_DATE_EPOCH is unset
DEFAULT_EPOCH = 1580601600
ARCHIVE_SUFFIX = ".mcpkit.tar"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BLOB_BYTES = 1024 * 1024
MAX_OCI_LAYOUT_BYTES = 64 * 1024
MAX_SMALL_BLOB = 16 * 1024 * 1024  # a blob read into memory (config.yaml, the config blob)
MAX_LAYERS = 1024
CHUNK = 1024 * 1024
MAX_BUNDLE_SIZE_ENV = "MCPKIT_MAX_BUNDLE_SIZE"
DEFAULT_MAX_BUNDLE_SIZE = 1024**3  # 1 GiB: every declared blob together, and an archive unpacked
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.I)
_SERVER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}\Z")
_TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
_MAX_TEXT = 4096

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")

# What other tools write. `oras push` (1.1+) gives an empty config and, without --artifact-type,
# the artifactType application/vnd.unknown.artifact.v1; `oras push --image-spec v1.0` and oras
# before 1.0 give the config type application/vnd.unknown.config.v1+json and no artifactType.
EMPTY_CONFIG_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
UNKNOWN_CONFIG_MEDIA_TYPE = "application/vnd.unknown.config.v1+json"
UNKNOWN_ARTIFACT_TYPE = "application/vnd.unknown.artifact.v1"
ORAS_UNPACK_ANNOTATION = "io.deis.oras.content.unpack"
ORAS_PUSH = (f"oras push HOST/REPO:TAG --artifact-type {ARTIFACT_TYPE} module.wasm:{WASM_MEDIA_TYPE} "
             f"config.yaml:{CONFIG_YAML_MEDIA_TYPE}")
ORAS_HINT = (f"a bundle is module.wasm + config.yaml (+ files); push one with `mcpkit bundle push`, or with oras: "
             f"{ORAS_PUSH} [more files]")
_ACCEPTED_ARTIFACT_TYPES = frozenset({ARTIFACT_TYPE, UNKNOWN_ARTIFACT_TYPE})
_ACCEPTED_CONFIG_TYPES = frozenset({BUNDLE_CONFIG_MEDIA_TYPE, EMPTY_CONFIG_MEDIA_TYPE, UNKNOWN_CONFIG_MEDIA_TYPE})
_KNOWN_KINDS = {
    INDEX_MEDIA_TYPE: "an image index (several manifests, e.g. a multi-platform image)",
    "application/vnd.docker.distribution.manifest.list.v2+json": "a Docker manifest list (a multi-platform image)",
    "application/vnd.docker.distribution.manifest.v2+json": "a Docker container image",
    "application/vnd.docker.distribution.manifest.v1+json": "a Docker container image (schema 1)",
    "application/vnd.oci.image.config.v1+json": "a container image",
    "application/vnd.docker.container.image.v1+json": "a Docker container image",
    "application/vnd.cncf.helm.config.v1+json": "a Helm chart",
    "application/vnd.dev.sigstore.bundle.v0.3+json": "a signature (a Sigstore bundle)",
    "application/vnd.dev.cosign.artifact.sig.v1+json": "a signature (cosign)",
    "application/vnd.cncf.notary.signature": "a signature (Notary)",
    "application/vnd.in-toto+json": "an attestation (in-toto)",
    "application/spdx+json": "an SBOM (SPDX)",
    "application/vnd.cyclonedx+json": "an SBOM (CycloneDX)",
    "application/vnd.wasm.config.v0+json": "a Wasm OCI artifact of another tool (wasm-to-oci / runwasi)",
}
_SIGNATURE_LAYERS = frozenset({"application/vnd.dev.cosign.simplesigning.v1+json",
                               "application/vnd.dev.sigstore.bundle.v0.3+json"})
_EXTRA_MEDIA_TYPES = {
    ".json": "application/json",
    ".md": "text/markdown",
    ".txt": "text/plain",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".csv": "text/csv",
}


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def file_digest(path: Path) -> tuple[str, int]:
    """``("sha256:<hex>", size)`` of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return f"sha256:{h.hexdigest()}", size


def bytes_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def parse_size(text: str, *, what: str = "size") -> int:
    """``1073741824``, ``512M``, ``1GiB``, ``2g``: a byte count (powers of 1024)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise BundleError(f"{what} {text!r} is not a size", hint="write bytes, or a number with K, M, G or T (e.g. 2G)")
    return int(m.group(1)) * int(1024 ** "_kmgt".index(m.group(2).lower() or "_"))


def max_bundle_size(value: str | int | None = None) -> int:
    """The largest bundle to fetch or unpack: ``value``, else ``$MCPKIT_MAX_BUNDLE_SIZE``, else 1 GiB."""
    if isinstance(value, int):
        return value
    if value is None:
        value = os.environ.get(MAX_BUNDLE_SIZE_ENV) or None
        if value is None:
            return DEFAULT_MAX_BUNDLE_SIZE
        return parse_size(value, what=MAX_BUNDLE_SIZE_ENV)
    return parse_size(value, what="--max-bundle-size")


@dataclass(frozen=True)
class LocalBundle:
    """What a local path holds: an OCI layout (``layout``: a ``.mcpkit.tar`` or a layout folder), or the
    loose files of a bundle folder (``folder`` with ``config`` and ``module``)."""

    layout: Path | None = None
    folder: Path | None = None
    config: Path | None = None
    module: Path | None = None


def is_layout_folder(path: Path) -> bool:
    """A folder holding an ``oci-layout`` entry of any kind: :class:`BundleLayout` then checks what it is."""
    return path.is_dir() and os.path.lexists(path / "oci-layout")


def local_bundle(path: Path, where: str) -> LocalBundle:
    """The one reading of a local path as a bundle: a folder (module.wasm + config.yaml), its config.yaml or
    module.wasm, an OCI layout folder or a ``.mcpkit.tar``. A folder is checked for reserved names."""
    if is_layout_folder(path):
        return LocalBundle(layout=path)
    if path.is_dir():
        if not (path / CONFIG_TITLE).is_file():
            raise InvalidReferenceError(f"{where} is not a bundle directory: it has no config.yaml",
                                        hint="a bundle directory holds module.wasm and config.yaml")
        folder, config, module = path, path / CONFIG_TITLE, path / MODULE_TITLE
    elif path.suffix in (".yaml", ".yml"):
        folder, config, module = path.parent, path, path.parent / MODULE_TITLE
    elif path.suffix == ".wasm":
        folder, config, module = path.parent, path.parent / CONFIG_TITLE, path
    elif path.is_file():
        return LocalBundle(layout=path)
    else:
        raise InvalidReferenceError(f"{where}: not a bundle (expected a directory, config.yaml, module.wasm or .mcpkit.tar)")
    check_bundle_folder(folder, where)
    return LocalBundle(folder=folder, config=config, module=module)


def check_bundle_folder(folder: Path, where: str | None = None) -> None:
    """Refuse a bundle folder that ships a name reserved for the cache (``module.cwasm``, ``metadata.json``,
    ``.mcpkit/``): whatever reads bundles never lets such a file near the runtime."""
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except OSError as exc:
        raise BundleError(f"{where or folder}: cannot read the bundle folder ({exc.strerror})") from None
    for name in names:
        if name.casefold() in RESERVED_NAMES:
            raise BundleError(
                f"{where or folder}: the bundle folder holds {name!r}, a name reserved for the mcpkit cache",
                hint="a bundle is module.wasm + config.yaml (+ shipped files); remove the file. "
                "Compiled code is only ever made and loaded by the cache itself",
            )


# --------------------------------------------------------------------------- manifest model


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str | None:
        return self.annotations.get(TITLE_ANNOTATION)

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise BundleError(f"{where}: descriptor must be a JSON object")
        media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise BundleError(f"{where}: missing mediaType")
        if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
            raise BundleError(f"{where}: digest {digest!r} is not a sha256 digest (sha256:<64 hex>)")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BundleError(f"{where}: size {size!r} is not a non-negative integer")
        annotations = obj.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise BundleError(f"{where}: annotations must map strings to strings")
        return cls(media_type, digest, size, annotations)


def check_title(title: str | None, where: str) -> str:
    """A layer title becomes a file name in the cache: it must be a safe relative path."""
    if not title:
        raise BundleError(f"{where}: layer has no {TITLE_ANNOTATION} annotation")
    if len(title) > 255 or any(ord(c) < 32 or c in '\\:*?"<>|' for c in title):
        raise BundleError(f"{where}: unsafe layer title {title!r}")
    p = PurePosixPath(title)
    if p.is_absolute() or any(part in ("", ".", "..") for part in title.split("/")):
        raise BundleError(
            f"{where}: layer title {title!r} must be a relative path inside the bundle (no '..', no '/')"
        )
    return title


@dataclass(frozen=True)
class Manifest:
    """A bundle manifest: ours, or any other tool's whose layers carry our media types or titles.

    The module and config.yaml layers are found by role (``application/wasm`` or title module.wasm,
    ``application/vnd.mcpkit.config+yaml`` or title config.yaml), wherever they sit; every other
    layer is a shipped file named by its title. ``derived`` is true when the config blob is not
    mcpkit's (oras' empty ``{}``): what it would say then comes from config.yaml.
    """

    raw: bytes = field(repr=False)
    digest: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)
    module_index: int = 0
    config_index: int = 1
    artifact_type: str | None = None

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        return (self.config, *self.layers)

    @property
    def module_layer(self) -> Descriptor:
        return self.layers[self.module_index]

    @property
    def config_layer(self) -> Descriptor:
        return self.layers[self.config_index]

    @property
    def derived(self) -> bool:
        """The config blob is not mcpkit's: name, version and tools come from config.yaml."""
        return self.config.media_type != BUNDLE_CONFIG_MEDIA_TYPE

    @property
    def files(self) -> tuple[tuple[str, Descriptor], ...]:
        """``(file name in the bundle folder, layer)`` in manifest order: module.wasm, config.yaml and
        the shipped files under their titles."""
        roles = {self.module_index: MODULE_TITLE, self.config_index: CONFIG_TITLE}
        return tuple((roles.get(i) or layer.title or "", layer) for i, layer in enumerate(self.layers))

    @property
    def size(self) -> int:
        """The size of the bundle, as `list` and `inspect` print it: the sum of its layers (the files
        it installs). The config blob and the manifest are left out, so a bundle has one size whichever
        tool pushed it."""
        return sum(d.size for d in self.layers)

    @classmethod
    def parse(cls, raw: bytes, where: str) -> Manifest:
        """Validate a bundle manifest; ``where`` names it in errors."""
        if len(raw) > MAX_MANIFEST_BYTES:
            raise BundleError(f"{where}: manifest is larger than {MAX_MANIFEST_BYTES // 1024 // 1024} MiB")
        obj = _json.load(raw, where=f"{where}: manifest", error=BundleError, max_bytes=MAX_MANIFEST_BYTES)
        if not isinstance(obj, dict):
            raise BundleError(f"{where}: manifest must be a JSON object")
        if obj.get("schemaVersion") != 2:
            raise BundleError(f"{where}: unsupported manifest schemaVersion {obj.get('schemaVersion')!r}",
                              hint=ORAS_HINT)
        _check_media_type(obj, where)
        config = Descriptor.from_json(obj.get("config"), f"{where}: config")
        raw_layers = obj.get("layers")
        if not isinstance(raw_layers, list):
            raw_layers = []
        if len(raw_layers) > MAX_LAYERS:
            raise BundleError(f"{where}: too many layers ({len(raw_layers)} > {MAX_LAYERS})")
        layers = tuple(
            Descriptor.from_json(layer, f"{where}: layers[{i}]") for i, layer in enumerate(raw_layers)
        )
        _check_kind(obj, config, layers, where)
        module_index, config_index = _layer_roles(layers, where)
        annotations = obj.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise BundleError(f"{where}: manifest annotations must be an object")
        artifact_type = obj.get("artifactType")
        return cls(raw, bytes_digest(raw), config, layers, {str(k): str(v) for k, v in annotations.items()},
                   module_index, config_index, artifact_type if isinstance(artifact_type, str) else None)


def check_declared_sizes(manifest: Manifest, limit: int, where: str, *, done: str = "nothing was downloaded") -> None:
    """Refuse a manifest whose blobs (each, or all together) declare more than ``limit`` bytes, before any
    of them is fetched or read; ``done`` ends each message (what was spared)."""
    hint = "raise the limit with --max-bundle-size or MCPKIT_MAX_BUNDLE_SIZE if you trust this bundle"
    for what, desc in [("config blob", manifest.config), *((f"layer {n!r}", d) for n, d in manifest.files)]:
        if desc.size > limit:
            raise BundleError(f"{where}: {what} ({desc.digest}) declares {desc.size} bytes, more than the "
                              f"maximum bundle size of {limit} bytes; {done}", hint=hint)
    total = sum(d.size for d in manifest.blobs)
    if total > limit:
        raise BundleError(f"{where}: the bundle's layers declare {total} bytes together, more than the maximum "
                          f"bundle size of {limit} bytes; {done}", hint=hint)
    if manifest.config_layer.size > MAX_YAML_BYTES:  # read into memory whole; the YAML reader refuses more
        raise BundleError(f"{where}: config.yaml ({manifest.config_layer.digest}) declares {manifest.config_layer.size} "
                          f"bytes, more than the {MAX_YAML_BYTES} a config.yaml may have; {done}",
                          hint=ORAS_HINT)


def _not_a_bundle(where: str, what: str) -> BundleError:
    return BundleError(f"{where}: not an mcpkit bundle: {what}", hint=ORAS_HINT)


def _check_media_type(obj: dict[str, Any], where: str) -> None:
    media_type = obj.get("mediaType", MANIFEST_MEDIA_TYPE)
    if media_type != MANIFEST_MEDIA_TYPE:
        kind = _KNOWN_KINDS.get(str(media_type), "a manifest of another kind")
        raise _not_a_bundle(where, f"it is {kind} (manifest mediaType {clean(str(media_type), limit=200)!r}, "
                            f"expected {MANIFEST_MEDIA_TYPE})")


def _check_kind(obj: dict[str, Any], config: Descriptor, layers: tuple[Descriptor, ...], where: str) -> None:
    """Refuse what is plainly something else: a container image, a Helm chart, a signature."""
    artifact_type = obj.get("artifactType")
    if artifact_type is not None and artifact_type not in _ACCEPTED_ARTIFACT_TYPES:
        kind = _KNOWN_KINDS.get(str(artifact_type), "another kind of artifact")
        raise _not_a_bundle(where, f"it is {kind} (artifactType {clean(str(artifact_type), limit=200)!r}, "
                            f"expected {ARTIFACT_TYPE} or none)")
    if config.media_type not in _ACCEPTED_CONFIG_TYPES:
        kind = _KNOWN_KINDS.get(config.media_type, "another kind of artifact")
        if any(layer.media_type in _SIGNATURE_LAYERS for layer in layers):
            kind = "a signature"
        raise _not_a_bundle(where, f"it is {kind} (config mediaType {clean(config.media_type, limit=200)!r}; "
                            f"a bundle has {BUNDLE_CONFIG_MEDIA_TYPE} or oras' {EMPTY_CONFIG_MEDIA_TYPE})")
    if config.size > MAX_CONFIG_BLOB_BYTES:
        raise BundleError(f"{where}: the config blob declares {config.size} bytes, more than the "
                          f"{MAX_CONFIG_BLOB_BYTES} a bundle's config blob may have", hint=ORAS_HINT)
    if len(layers) < 2:
        raise _not_a_bundle(where, f"a bundle has at least two layers (module.wasm, config.yaml); this has {len(layers)}")


def _layer_roles(layers: tuple[Descriptor, ...], where: str) -> tuple[int, int]:
    """The indexes of the module and config.yaml layers; every title checked (safe, unreserved, unique)."""
    modules = [i for i, d in enumerate(layers) if d.media_type == WASM_MEDIA_TYPE or d.title == MODULE_TITLE]
    configs = [i for i, d in enumerate(layers) if d.media_type == CONFIG_YAML_MEDIA_TYPE or d.title == CONFIG_TITLE]
    for found, what in ((modules, f"module.wasm ({WASM_MEDIA_TYPE})"), (configs, f"config.yaml ({CONFIG_YAML_MEDIA_TYPE})")):
        if len(found) != 1:
            listed = ", ".join(f"layers[{i}]" for i in found)
            raise _not_a_bundle(where, f"a bundle has exactly one {what} layer; this has {len(found)}"
                                + (f" ({listed})" if listed else ""))
    module, config = modules[0], configs[0]
    if module == config:
        raise _not_a_bundle(where, f"layers[{module}] cannot be both module.wasm and config.yaml "
                            f"(mediaType {clean(layers[module].media_type, limit=200)!r}, title {clean(str(layers[module].title))!r})")
    seen = {MODULE_TITLE, CONFIG_TITLE}
    for i, layer in enumerate(layers):
        if i in (module, config) and layer.title in (None, MODULE_TITLE if i == module else CONFIG_TITLE):
            continue
        try:
            title = check_title(layer.title, f"{where}: layers[{i}]")
        except BundleError as exc:
            raise BundleError(exc.message, hint=ORAS_HINT + "; every file is named by its path relative to "
                              "config.yaml (no leading '/', no '..')") from None
        reserved = reserved_part(title)
        if reserved is not None:
            raise BundleError(
                f"{where}: layers[{i}] title {title!r} uses {reserved!r}, a name reserved for the mcpkit cache",
                hint="a bundle may not ship module.cwasm, metadata.json or .mcpkit/; " + ORAS_HINT,
            )
        if layer.annotations.get(ORAS_UNPACK_ANNOTATION, "").lower() == "true":
            raise BundleError(f"{where}: layers[{i}] ({title!r}) is a packed folder (oras pushes a folder as one "
                              "tar layer); a bundle ships files", hint=ORAS_HINT + "; list every file of the folder")
        folded = title.casefold()
        if folded in seen or any(s.startswith(folded + "/") or folded.startswith(s + "/") for s in seen):
            raise BundleError(f"{where}: layers[{i}] title {title!r} collides with another layer",
                              hint="every file of a bundle has its own title; " + ORAS_HINT)
        seen.add(folded)
    return module, config


def parse_bundle_config(raw: bytes, where: str, manifest: Manifest | None = None) -> dict[str, Any]:
    """Read the small config blob; validate its fields like config.yaml's; check it agrees with the manifest."""
    obj = _json.load(raw, where=f"{where}: bundle config blob", error=BundleError, max_bytes=MAX_CONFIG_BLOB_BYTES)
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise BundleError(f"{where}: bundle config blob has no name")
    problems = _bundle_config_problems(obj)
    if problems:
        raise BundleError(f"{where}: invalid bundle config blob: " + "; ".join(problems))
    digests = obj.get("layerDigests")
    if manifest is not None and (not isinstance(digests, list) or not all(isinstance(d, str) for d in digests)
                                 or sorted(digests) != sorted(d.digest for d in manifest.layers)):
        raise BundleError(f"{where}: bundle config layerDigests do not match the manifest's layers",
                          hint="the config blob lists other layers than the manifest (their order does not matter)")
    return obj


def derive_bundle_config(manifest: Manifest, config: Config) -> dict[str, Any]:
    """What mcpkit's config blob would say for a bundle pushed without one (oras' empty config),
    from its config.yaml -- downloaded, verified and checked as data first."""
    return {
        "name": config.name,
        "version": config.bundle_version,
        "description": config.description,
        "architecture": "wasm",
        "os": "wasip1",
        "tools": [t.name for t in config.tools],
        "layerDigests": [d.digest for d in manifest.layers],
    }


def known_bundle_config(manifest: Manifest) -> dict[str, Any]:
    """What can be said of a bundle without mcpkit's config blob before its layers are downloaded: the
    manifest's annotations (name, version, description when they are valid), tools unknown (``None``)."""
    ann = manifest.annotations
    known: dict[str, Any] = {"name": None, "version": None, "description": None, "tools": None,
                             "layerDigests": [d.digest for d in manifest.layers]}
    for key, annotation in (("name", "org.opencontainers.image.title"), ("version", "org.opencontainers.image.version"),
                            ("description", "org.opencontainers.image.description")):
        value = ann.get(annotation)
        if value is not None and not _bundle_config_problems({"name": "x", key: value}):
            known[key] = value
    return known


def _bundle_config_problems(obj: dict[str, Any]) -> list[str]:
    problems = []
    if not _SERVER_NAME_RE.match(obj["name"]):
        problems.append("name must match [a-z0-9][a-z0-9._-]* (at most 128 characters)")
    for key in ("version", "description", "architecture", "os"):
        value = obj.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > _MAX_TEXT):
            problems.append(f"{key} must be a string of at most {_MAX_TEXT} characters")
    version = obj.get("version")
    if isinstance(version, str) and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}", version):
        problems.append("version must be up to 128 letters, digits, '.', '_', '+' or '-'")
    tools = obj.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, str) and _TOOL_NAME_RE.match(t) for t in tools):
        problems.append("tools must be a list of tool names matching ^[A-Za-z0-9_.-]{1,64}$")
    return problems


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class BuiltBundle:
    path: Path
    manifest: Manifest
    name: str
    version: str

    @property
    def digest(self) -> str:
        return self.manifest.digest


def archive_name(name: str, version: str) -> str:
    return f"{name}-{version}{ARCHIVE_SUFFIX}"


def _source_date_epoch(explicit: int | None) -> int | None:
    if explicit is not None:
        return explicit
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise BundleError(f"SOURCE_DATE_EPOCH={value!r} is not an integer number of seconds") from None


def _extra_media_type(name: str) -> str:
    return _EXTRA_MEDIA_TYPES.get(PurePosixPath(name).suffix.lower(), "application/octet-stream")


def _manifest_annotations(config: Config, epoch: int | None) -> dict[str, str]:
    version = config.bundle_version
    ann = {"org.opencontainers.image.title": config.name, "org.opencontainers.image.version": version}
    if config.description:
        ann["org.opencontainers.image.description"] = config.description
    meta = config.distribution.metadata if config.distribution else None
    if meta is not None:
        if meta.authors:
            ann["org.opencontainers.image.authors"] = ", ".join(meta.authors)
        if meta.license:
            ann["org.opencontainers.image.licenses"] = meta.license
        if meta.repository:
            ann["org.opencontainers.image.source"] = meta.repository
        if meta.homepage:
            ann["org.opencontainers.image.url"] = meta.homepage
        if meta.documentation:
            ann["org.opencontainers.image.documentation"] = meta.documentation
        if meta.keywords:
            ann[KEYWORDS_ANNOTATION] = ",".join(meta.keywords)
    if epoch is not None:
        created = datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        ann["org.opencontainers.image.created"] = created
    return dict(sorted(ann.items()))


class _Source:
    """A blob to write: bytes in memory or a file streamed from disk."""

    def __init__(self, descriptor: Descriptor, data: bytes | None = None, path: Path | None = None) -> None:
        self.descriptor = descriptor
        self.data = data
        self.path = path

    def open(self) -> IO[bytes]:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return open(self.path, "rb")


def build_bundle(
    config: Config, module: Path, out_dir: Path, *, source_date_epoch: int | None = None
) -> BuiltBundle:
    """Write ``out_dir/<name>-<version>.mcpkit.tar`` for a validated config and a checked module.

    The archive appears atomically: on any error nothing is left in ``out_dir``.
    """
    epoch = _source_date_epoch(source_date_epoch)
    version = config.bundle_version
    sources: list[_Source] = []

    module_digest, module_size = file_digest(module)
    layers = [Descriptor(WASM_MEDIA_TYPE, module_digest, module_size, {TITLE_ANNOTATION: MODULE_TITLE})]
    sources.append(_Source(layers[0], path=module))
    config_bytes = config.shipped  # the publisher's ${VAR}s expanded, distribution.auth kept as ${...}
    layers.append(
        Descriptor(
            CONFIG_YAML_MEDIA_TYPE,
            bytes_digest(config_bytes),
            len(config_bytes),
            {TITLE_ANNOTATION: CONFIG_TITLE},
        )
    )
    sources.append(_Source(layers[1], data=config_bytes))
    for rel, path in config.include_files:
        check_title(rel, f"{config.path}: distribution.include")
        digest, size = file_digest(path)
        desc = Descriptor(_extra_media_type(rel), digest, size, {TITLE_ANNOTATION: rel})
        layers.append(desc)
        sources.append(_Source(desc, path=path))

    bundle_config = {
        "name": config.name,
        "version": version,
        "description": config.description,
        "architecture": "wasm",
        "os": "wasip1",
        "tools": [t.name for t in config.tools],
        "layerDigests": [d.digest for d in layers],
    }
    config_blob = _canonical_json(bundle_config)
    config_desc = Descriptor(BUNDLE_CONFIG_MEDIA_TYPE, bytes_digest(config_blob), len(config_blob))
    sources.insert(0, _Source(config_desc, data=config_blob))

    manifest_obj = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": config_desc.to_json(),
        "layers": [d.to_json() for d in layers],
        "annotations": _manifest_annotations(config, epoch),
    }
    manifest_raw = _canonical_json(manifest_obj)
    manifest = Manifest.parse(manifest_raw, "built manifest")
    sources.insert(
        0, _Source(Descriptor(MANIFEST_MEDIA_TYPE, manifest.digest, len(manifest_raw)), data=manifest_raw)
    )

    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {
                "mediaType": MANIFEST_MEDIA_TYPE,
                "artifactType": ARTIFACT_TYPE,
                "digest": manifest.digest,
                "size": len(manifest_raw),
                "annotations": {REF_NAME_ANNOTATION: version},
            }
        ],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / archive_name(config.name, version)
    _write_tar(target, _canonical_json(index), sources, DEFAULT_EPOCH if epoch is None else epoch)
    return BuiltBundle(target, manifest, config.name, version)


def _tar_info(name: str, size: int, mtime: int, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.mtime = mtime
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_tar(target: Path, index: bytes, sources: list[_Source], mtime: int) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            layout = _canonical_json({"imageLayoutVersion": "1.0.0"})
            tar.addfile(_tar_info("oci-layout", len(layout), mtime), io.BytesIO(layout))
            tar.addfile(_tar_info("index.json", len(index), mtime), io.BytesIO(index))
            tar.addfile(_tar_info("blobs", 0, mtime, directory=True))
            tar.addfile(_tar_info("blobs/sha256", 0, mtime, directory=True))
            written: set[str] = set()
            for src in sorted(sources, key=lambda s: s.descriptor.digest):
                if src.descriptor.digest in written:  # identical content is stored once
                    continue
                written.add(src.descriptor.digest)
                with src.open() as fh:
                    tar.addfile(
                        _tar_info(f"blobs/sha256/{src.descriptor.hex}", src.descriptor.size, mtime), fh
                    )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- reading


class BundleLayout:
    """A verified, read-only view of one bundle in an OCI image layout (tar or directory)."""

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        bundle_config: dict[str, Any],
        ref_name: str | None,
        source: Path,
        tempdir: tempfile.TemporaryDirectory[str] | None = None,
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.bundle_config = bundle_config
        self.ref_name = ref_name
        self.source = source
        self._tempdir = tempdir

    # context manager
    def __enter__(self) -> BundleLayout:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    @property
    def name(self) -> str:
        return str(self.bundle_config["name"])

    @property
    def version(self) -> str:
        return str(self.bundle_config.get("version", ""))

    def blob_path(self, digest: str) -> Path:
        return _blob_path(self.root, digest, self.source)

    def open_blob(self, digest: str) -> IO[bytes]:
        return open_regular(self.blob_path(digest), where=str(self.source), error=BundleError)

    def read_blob(self, digest: str, *, max_size: int = MAX_SMALL_BLOB) -> bytes:
        return read_regular(self.blob_path(digest), limit=max_size, where=str(self.source), error=BundleError)

    def extract_files(self, dest: Path) -> list[Path]:
        """Write module.wasm, config.yaml and the extra files under ``dest`` (titles were checked by parse)."""
        written = []
        for name, layer in self.manifest.files:
            target = dest / check_title(name, str(self.source))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.blob_path(layer.digest), target)
            written.append(target)
        return written

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, max_bytes: int | None = None) -> BundleLayout:
        """Read a ``.mcpkit.tar`` (unpacked with member and byte caps) or a layout folder, verifying every blob.

        ``max_bytes`` (default :func:`max_bundle_size`) caps what an archive unpacks to.
        """
        source = Path(path)
        if source.is_dir():
            check_bundle_folder(source)
            return cls._from_dir(source, source, None, max_bundle_size(max_bytes))
        if not source.is_file():
            raise BundleError(f"{source}: no such bundle archive or layout directory")
        tempdir = tempfile.TemporaryDirectory(prefix="mcpkit-layout-")
        try:
            extract(source, Path(tempdir.name), where=str(source), max_bytes=max_bundle_size(max_bytes),
                    keep=_layout_member)
            return cls._from_dir(Path(tempdir.name), source, tempdir, max_bundle_size(max_bytes))
        except BaseException:
            tempdir.cleanup()
            raise

    @classmethod
    def _from_dir(
        cls, root: Path, source: Path, tempdir: tempfile.TemporaryDirectory[str] | None, limit: int
    ) -> BundleLayout:
        try:
            layout_raw = read_regular(root / "oci-layout", limit=MAX_OCI_LAYOUT_BYTES, where=str(source),
                                      error=BundleError)
            index_raw = read_regular(root / "index.json", limit=MAX_MANIFEST_BYTES, where=str(source),
                                     error=BundleError)
        except FileNotFoundError as exc:
            raise BundleError(
                f"{source}: not an OCI image layout ({Path(exc.filename).name} is missing)"
            ) from None
        layout = _json.load(layout_raw, where=f"{source}: oci-layout", error=BundleError,
                            max_bytes=MAX_OCI_LAYOUT_BYTES)
        index = _json.load(index_raw, where=f"{source}: index.json", error=BundleError, max_bytes=MAX_MANIFEST_BYTES)
        if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != "1.0.0":
            raise BundleError(f"{source}: unsupported oci-layout (imageLayoutVersion must be 1.0.0)")
        manifests = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(manifests, list) or not manifests:
            raise BundleError(f"{source}: index.json lists no manifest")
        bundles = [m for m in manifests if isinstance(m, dict) and m.get("mediaType") == MANIFEST_MEDIA_TYPE
                   and m.get("artifactType", ARTIFACT_TYPE) in _ACCEPTED_ARTIFACT_TYPES]
        bundles = list({str(m.get("digest")): m for m in reversed(bundles)}.values())  # one manifest, several tags
        if len(bundles) != 1:
            raise BundleError(
                f"{source}: expected exactly one bundle manifest in index.json, found {len(bundles)}",
                hint="an OCI layout given as a bundle holds one image manifest (signatures and other "
                "artifacts beside it are left alone)",
            )
        entry = Descriptor.from_json(bundles[0], f"{source}: index.json manifests[0]")
        ref_name = entry.annotations.get(REF_NAME_ANNOTATION)
        raw = _read_verified(_blob_path(root, entry.digest, source), entry, source, MAX_MANIFEST_BYTES)
        manifest = Manifest.parse(raw, str(source))
        check_declared_sizes(manifest, limit, str(source), done="nothing was read")  # a folder's are not unpacked
        for desc in manifest.blobs:
            _verify_file(_blob_path(root, desc.digest, source), desc, source)
        if manifest.derived:  # oras' empty config: what it would say comes from config.yaml
            from hatch_mcpkit.config import MAX_CONFIG_BYTES, parse_config

            yaml_raw = _read_verified(_blob_path(root, manifest.config_layer.digest, source), manifest.config_layer,
                                      source, MAX_CONFIG_BYTES)
            bundle_config = derive_bundle_config(manifest, parse_config(yaml_raw, f"{source}!{CONFIG_TITLE}"))
        else:
            config_raw = _read_verified(_blob_path(root, manifest.config.digest, source), manifest.config, source,
                                        MAX_CONFIG_BLOB_BYTES)
            bundle_config = parse_bundle_config(config_raw, str(source), manifest)
        return cls(root, manifest, bundle_config, ref_name, source, tempdir)


def _blob_path(root: Path, digest: str, source: Path) -> Path:
    if not _DIGEST_RE.match(digest):
        raise BundleError(f"{source}: not a sha256 digest: {digest!r}")
    path = root / "blobs" / "sha256" / digest.split(":", 1)[1]
    if not path.is_file():
        raise BundleError(f"{source}: blob {digest} is missing")
    return path


def _read_verified(path: Path, desc: Descriptor, source: Path, limit: int) -> bytes:
    if desc.size > limit:
        raise BundleError(f"{source}: blob {desc.digest} declares {desc.size} bytes, more than the {limit} "
                          "a manifest or config blob may have")
    with open_regular(path, where=str(source), error=BundleError) as fh:
        return read_verified(file_chunks(fh), digest=desc.digest, size=desc.size, where=str(source))


def _verify_file(path: Path, desc: Descriptor, source: Path) -> None:
    check = DigestCheck(desc.digest, desc.size, where=str(source))
    with open_regular(path, where=str(source), error=BundleError) as fh:
        for chunk in file_chunks(fh):
            check.update(chunk)
    check.finish()


def _layout_member(parts: tuple[str, ...]) -> bool:
    """The members of an OCI layout a reader needs (others are checked, counted and skipped)."""
    if parts in (("oci-layout",), ("index.json",)):
        return True
    return len(parts) == 3 and parts[:2] == ("blobs", "sha256") and re.fullmatch(r"[0-9a-f]{64}", parts[2]) is not None
