"""The one resolver: from what a user typed to a bundle folder the runtime can serve.

Used by ``mcpkit run``, ``mcpkit server`` (``--from-bundle``, ``--config``, a path) and
``mcpkit bundle inspect``; the store's ``pull`` reads references with the same parser
(:func:`hatch_mcpkit.reference.classify`), so there is one rule for what is a local path:

* a bare name (``weather-tool``, ``weather-tool:1``, ``weather-tool@sha256:…``) means the cache,
  always -- a folder of that name in the working directory is never looked at;
* a local path looks like one (``./x``, ``/abs``, ``~/x``, ``x.tar``, ``x/config.yaml``,
  ``x.wasm``, ``file://``): a bundle folder, a config.yaml or module.wasm (the folder around it),
  an OCI layout folder, or an OCI layout archive -- a tar of any name (``x.mcpkit.tar``,
  ``./x.oci``), unpacked to a temporary folder with caps;
* ``oci://`` / registry references and ``https://`` archives are served from the cache, pulled
  into it first when missing.

A local bundle that ships a name reserved for the cache (``module.cwasm``, ``metadata.json``,
``.mcpkit/``) is refused, whichever way it is given.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hatch_mcpkit.bundle import CONFIG_TITLE, MODULE_TITLE, BundleLayout, local_bundle
from hatch_mcpkit.errors import BundleNotFoundError
from hatch_mcpkit.reference import FileRef, NameRef, classify, parse_cache_name
from hatch_mcpkit.store import BundleCache, CacheEntry, PullOptions, PullResult

__all__ = ["BundleDir", "find_cached", "open_bundle", "open_local"]


@dataclass(frozen=True)
class BundleDir:
    """A folder holding module.wasm + config.yaml (+ shipped files), and where it came from."""

    path: Path
    label: str
    cached: bool  # a cache entry (its files were verified when installed)
    config_path: Path | None = None  # default: path/config.yaml
    module_path: Path | None = None  # default: path/module.wasm

    @property
    def config(self) -> Path:
        return self.config_path or self.path / CONFIG_TITLE

    @property
    def module(self) -> Path:
        return self.module_path or self.path / MODULE_TITLE


@contextlib.contextmanager
def open_bundle(
    text: str,
    store: BundleCache,
    options: PullOptions,
    *,
    pull: bool = True,
    on_pull: Callable[[PullResult], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> Iterator[BundleDir]:
    """The bundle ``text`` names, pulled into ``store`` first when it is remote and missing (unless
    ``pull`` is false or ``options.offline``)."""
    if parse_cache_name(text) is not None:
        cached = store.cached_by_name(text)
        if cached is not None:
            yield BundleDir(cached.path, text, cached=True)
            return
    ref = classify(text, insecure=options.insecure)
    if isinstance(ref, FileRef):
        with open_local(ref) as local:
            yield local
        return
    if isinstance(ref, NameRef):
        yield BundleDir(find_cached(store, ref.name).path, text, cached=True)
        return
    try:
        path = store.find(ref.key)
    except BundleNotFoundError:
        if not pull or options.offline:
            raise
        if announce is not None:
            announce(f"pulling {text} ...")
        result = store.pull(ref, options)
        if on_pull is not None:
            on_pull(result)
        path = result.path
    yield BundleDir(path, text, cached=True)


def find_cached(store: BundleCache, name: str) -> CacheEntry:
    """The cached bundle a bare name means; when there is none but a file or folder of that name is here,
    the error says why it was not used (a bare name always means the cache)."""
    try:
        return store.find_entry(name)
    except BundleNotFoundError as exc:
        if Path(name).exists():
            what = "folder" if Path(name).is_dir() else "file"
            raise BundleNotFoundError(
                exc.message, hint=f"a bare name always means the cache; to use the {what} here write ./{name}"
            ) from None
        raise


@contextlib.contextmanager
def open_local(ref: FileRef, *, max_bytes: int | None = None) -> Iterator[BundleDir]:
    """A local bundle: a folder, its config.yaml or module.wasm, an OCI layout folder or a tar of one (any name)."""
    label = str(ref.path)
    found = local_bundle(ref.resolved().path, label)
    if found.layout is None:
        assert found.folder is not None
        yield BundleDir(found.folder, label, cached=False, config_path=found.config, module_path=found.module)
        return
    with tempfile.TemporaryDirectory(prefix="mcpkit-run-") as tmp, BundleLayout.open(found.layout,
                                                                                      max_bytes=max_bytes) as layout:
        layout.extract_files(Path(tmp))
        yield BundleDir(Path(tmp), label, cached=False)
