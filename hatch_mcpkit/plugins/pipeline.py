"""The one build pipeline behind the build hook and the ``mcpkit`` builder.

config.yaml is validated first (so a bad config fails in milliseconds, before
cargo), then cargo builds the crate, the module is checked, and the bundle is
written atomically into the output directory.

``hatch build`` runs each target in its own hatchling process; to run cargo
once per ``hatch build`` rather than once per target, the pipeline records a
fingerprint of everything that goes into the bundle (crate sources, config,
included files, options, SOURCE_DATE_EPOCH) next to cargo's output. When the
fingerprint and the archive on disk still match, the archive is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from hatch_mcpkit.__about__ import __version__
from hatch_mcpkit.bundle import (
    ARCHIVE_SUFFIX,
    BuiltBundle,
    BundleLayout,
    archive_name,
    build_bundle,
    file_digest,
)
from hatch_mcpkit.plugins._options import (
    BUILD_OPTIONS,
    HATCH_BUILD_HOOK_KEYS,
    HATCH_TARGET_KEYS,
    PluginOptions,
    Source,
)

__all__ = ["HOOK_TABLE", "TARGET_TABLE", "BuildOptions", "BuildTableOptions", "announce", "clean_bundles",
           "run_pipeline"]

HOOK_TABLE = "build.hooks.mcpkit"  # under tool.hatch in pyproject.toml, or in hatch.toml
TARGET_TABLE = "build.targets.mcpkit"
SKIP_DIRS = {
    "target",
    "dist",
    ".git",
    ".hg",
    ".venv",
    "venv",
    "node_modules",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".tox",
    ".nox",
    "build",
}


@dataclass(frozen=True)
class BuildOptions:
    crate: Path
    config: Path
    profile: str = "release"
    features: tuple[str, ...] = ()
    cargo_args: tuple[str, ...] = ()
    bin: str | None = None


class BuildTableOptions(PluginOptions):
    """What cargo builds and which config.yaml: ``[tool.hatch.build.hooks.mcpkit]`` for the build hook;
    for the builder, ``[tool.hatch.build.targets.mcpkit]`` over the hook's table (key by key)."""

    OPTIONS = BUILD_OPTIONS

    @classmethod
    def for_hook(cls, root: Path | str, hook: Mapping[str, Any]) -> BuildTableOptions:
        return cls(Source.project(hook, root, HOOK_TABLE, HATCH_BUILD_HOOK_KEYS), root=root)

    @classmethod
    def for_target(cls, root: Path | str, hook: Mapping[str, Any], target: Mapping[str, Any]) -> BuildTableOptions:
        return cls(
            Source.project(hook, root, HOOK_TABLE, HATCH_BUILD_HOOK_KEYS),
            Source.project(target, root, TARGET_TABLE, HATCH_TARGET_KEYS),
            root=root,
        )

    @cached_property
    def crate(self) -> Path:
        return Path(self.root, self.value("crate"))

    @cached_property
    def config(self) -> Path:
        given = self.value("config")
        return Path(self.root, given) if given else self.crate / "config.yaml"

    @cached_property
    def profile(self) -> str:
        return str(self.value("profile"))

    @cached_property
    def features(self) -> tuple[str, ...]:
        return tuple(self.value("features"))

    @cached_property
    def cargo_args(self) -> tuple[str, ...]:
        return tuple(self.value("cargo-args"))

    @cached_property
    def bin(self) -> str | None:
        return self.text("bin")

    def validate(self) -> None:
        if not (self.crate / "Cargo.toml").is_file():
            self.problem("crate", f"no Cargo.toml in {self.crate} (set crate to the folder of your Rust crate)")
        elif not self.config.is_file():
            self.problem("config", f"{self.config} does not exist (set config to your config.yaml)")

    def build_options(self) -> BuildOptions:
        """Every problem at once as a ConfigError, else what the pipeline needs."""
        self.check()
        return BuildOptions(self.crate.resolve(), self.config.resolve(), self.profile, self.features,
                            self.cargo_args, self.bin)


def _iter_inputs(crate: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(crate):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            yield Path(dirpath, name)


def _fingerprint(options: BuildOptions, config_path: Path, include: Sequence[Path]) -> str:
    h = hashlib.sha256()
    opts = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}
    h.update(
        json.dumps(
            {
                "mcpkit": __version__,
                "options": opts,
                "epoch": os.environ.get("SOURCE_DATE_EPOCH"),
                "cargo_env": {
                    k: v for k, v in sorted(os.environ.items()) if k.startswith(("CARGO", "RUSTC"))
                },
            },
            sort_keys=True,
        ).encode()
    )
    for path in [*_iter_inputs(options.crate), config_path, *include]:
        try:
            h.update(str(path).encode() + b"\0" + file_digest(path)[0].encode() + b"\n")
        except OSError:
            continue
    return h.hexdigest()


def _stamp_path(options: BuildOptions) -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", options.crate / "target"))
    if not target.is_absolute():
        target = options.crate / target
    return target / "mcpkit" / "build-stamp.json"


@dataclass(frozen=True)
class PipelineResult:
    bundle: BuiltBundle
    reused: bool = False  # the archive on disk already matched the inputs; cargo did not run


def run_pipeline(
    options: BuildOptions,
    out_dir: Path,
    *,
    echo: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Validate, compile, check and pack. Raises McpkitError subclasses; writes nothing on failure."""
    from hatch_mcpkit.cargo import build_crate
    from hatch_mcpkit.config import load_config
    from hatch_mcpkit.wasm import check_guest_module

    config = load_config(options.config, os.environ)  # every problem at once, before cargo runs
    include = [path for _, path in config.include_files]
    fingerprint = _fingerprint(options, options.config, include)
    stamp = _stamp_path(options)
    target = out_dir / archive_name(config.name, config.bundle_version)
    reused = _reuse(stamp, fingerprint, target)
    if reused is not None:
        return PipelineResult(reused, reused=True)

    module = build_crate(
        options.crate,
        profile=options.profile,
        features=options.features,
        cargo_args=options.cargo_args,
        bin_name=options.bin,
        echo=echo,
    )
    check_guest_module(module)
    built = build_bundle(config, module, out_dir)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    digest, _ = file_digest(built.path)
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "archive": str(built.path), "sha256": digest}))
    tmp.replace(stamp)
    return PipelineResult(built)


def _reuse(stamp: Path, fingerprint: str, target: Path) -> BuiltBundle | None:
    try:
        record = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    if (
        record.get("fingerprint") != fingerprint
        or record.get("archive") != str(target)
        or not target.is_file()
    ):
        return None
    if file_digest(target)[0] != record.get("sha256"):
        return None
    with BundleLayout.open(target) as layout:
        return BuiltBundle(target, layout.manifest, layout.name, layout.version)


def clean_bundles(directory: Path) -> list[Path]:
    """Remove ``*.mcpkit.tar`` archives from a build output directory."""
    removed = []
    if directory.is_dir():
        for path in sorted(directory.glob(f"*{ARCHIVE_SUFFIX}")):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def announce(display: Callable[[str], Any], result: PipelineResult, root: Path) -> None:
    """Tell the user which bundle the build produced (or found up to date) and its digest."""
    bundle = result.bundle
    try:
        shown = bundle.path.relative_to(root)
    except ValueError:
        shown = bundle.path
    state = "up to date" if result.reused else "built"
    display(f"mcpkit: {state} {shown}")
    display(f"mcpkit: digest {bundle.digest}")
