"""Small builders for tiny projects and bundles, shared by every suite.

- modules: :data:`TINY_WASM` (the smallest valid WASI command), :func:`tiny_module` (plus a custom
  section, so it stays valid at any size), :func:`sized_module` (about N bytes, distinct per seed),
  and a tiny assembler for hand-made modules (:func:`section`, :func:`vec`, :func:`export`, ...);
- config.yaml text: :func:`config_yaml`;
- projects: :func:`make_project` (module.wasm + config.yaml + README.md), :func:`make_demo_project`
  (two tools, a storage grant with an unset variable, ``data/`` files, an auth secret variable),
  :func:`bundle_dir` (a bundle folder from a built module and a crate's files);
- bundles: :func:`build_archive` (a ``.mcpkit.tar``), :func:`build_layout` (opened), :func:`push_project`;
- looking at results: :func:`snapshot`, :func:`listing`, :func:`bundle_files`, :func:`check_cache_consistent`.

The heavy parts of hatch_mcpkit are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from hatch_mcpkit.bundle import BuiltBundle, BundleLayout

__all__ = [
    "DEMO_FILES",
    "DEMO_SECRET",
    "EPOCH",
    "HEADER",
    "TINY_WASM",
    "build_archive",
    "build_layout",
    "bundle_dir",
    "bundle_files",
    "check_cache_consistent",
    "config_yaml",
    "demo_environ",
    "export",
    "func_import",
    "listing",
    "make_demo_project",
    "make_project",
    "name",
    "push_project",
    "section",
    "sized_module",
    "snapshot",
    "tiny_module",
    "uleb",
    "vec",
]

EPOCH = 1_700_000_000  # SOURCE_DATE_EPOCH for every test build: reproducible archives

# --------------------------------------------------------------------------- modules

HEADER = b"\x00asm\x01\x00\x00\x00"  # wasm magic, version 1


def uleb(n: int) -> bytes:
    """``n`` as an unsigned LEB128 integer."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def name(text: str) -> bytes:
    raw = text.encode()
    return uleb(len(raw)) + raw


def section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + uleb(len(payload)) + payload


def vec(items: list[bytes]) -> bytes:
    return uleb(len(items)) + b"".join(items)


def func_import(module: str, field: str, type_index: int = 0) -> bytes:
    return name(module) + name(field) + b"\x00" + uleb(type_index)


def export(field: str, kind: int = 0, index: int = 0) -> bytes:
    return name(field) + bytes([kind]) + uleb(index)


# A minimal WASI-style command module: no imports, exports `_start` with an empty body.
TINY_WASM = (
    HEADER
    + section(1, vec([b"\x60\x00\x00"]))  # one type: () -> ()
    + section(3, vec([uleb(0)]))  # one function of that type
    + section(7, vec([export("_start")]))
    + section(10, vec([uleb(2) + b"\x00\x0b"]))  # its code: no locals, end
)


def tiny_module(payload: bytes = b"") -> bytes:
    """:data:`TINY_WASM` plus a custom section carrying ``payload`` (a valid module of any size)."""
    return TINY_WASM + section(0, name("p") + payload) if payload else TINY_WASM


def sized_module(size: int, seed: bytes = b"") -> bytes:
    """A valid module of about ``size`` bytes whose bytes differ for each ``seed``."""
    block = hashlib.sha256(seed).digest()
    return tiny_module((block * (size // len(block) + 1))[:size])


# --------------------------------------------------------------------------- config.yaml


def _scalar(value: str) -> str:
    """``value`` as a YAML flow scalar that reads back as the same string."""
    try:
        plain = yaml.safe_load(f"[{value}]") == [value]
    except yaml.YAMLError:
        plain = False
    return value if plain else json.dumps(value)


def _flow_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_scalar(v) for v in values) + "]"


def config_yaml(name: str = "demo-tool", version: str = "1.0.0", *, description: str | None = "A demo tool",
                tools: Sequence[str] = ("echo",), storage: Sequence[str] = (), registry: str | None = None,
                tags: Sequence[str] = (), metadata: Mapping[str, Any] | None = None,
                include: Sequence[str] = (), auth: tuple[str, str] | None = None) -> str:
    """The text of a config.yaml, one key per line (so a test can still edit a line of it).

    ``tools`` are names (each takes ``{type: object}``); ``storage`` entries are YAML flow mappings
    for ``policy.storage.allow``; ``distribution`` is written only when ``registry`` is given;
    ``auth`` is ``(username, password)``, written as is (``${VAR}`` stays for the publisher).
    """
    server = f"name: {name}, version: {version}" + (f", description: {description}" if description else "")
    lines = ['version: "1.0"', f"server: {{{server}}}", "mcp:", "  tools:"]
    lines += [f"    - {{name: {tool}, input_schema: {{type: object}}}}" for tool in tools]
    if storage:
        lines += ["policy:", "  storage:", "    allow:"] + [f"      - {grant}" for grant in storage]
    if registry is not None:
        lines += ["distribution:", f"  registry: {registry}"]
        if tags:
            lines.append(f"  tags: {_flow_list(tags)}")
        if metadata:
            lines.append(f"  metadata: {json.dumps(metadata)}")
        if include:
            lines.append(f"  include: {_flow_list(include)}")
        if auth is not None:
            lines.append(f"  auth: {{username: {json.dumps(auth[0])}, password: {json.dumps(auth[1])}}}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- projects


def make_project(root: Path | str, *, name: str = "fault-tool", version: str = "1.0.0", size: int = 4096,
                 seed: bytes = b"", registry: str = "127.0.0.1:5000/test/fault-tool",
                 tags: Sequence[str] = ("v1",), auth: tuple[str, str] | None = None, config: str | None = None,
                 module: bytes | None = None, files: Mapping[str, str | bytes] | None = None) -> Path:
    """module.wasm + config.yaml + README.md (+ ``files``) under ``root``; returns ``root``.

    By default: one tool, ``distribution`` with ``registry``/``tags``/``include: [README.md]``, and a
    module of about ``size`` bytes, distinct per ``seed`` and ``version``. ``config``/``module``
    replace the generated ones.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if config is None:
        config = config_yaml(name, version, description="Fault test tool", registry=registry, tags=tags,
                             include=["README.md"], auth=auth)
    (root / "config.yaml").write_text(config)
    (root / "module.wasm").write_bytes(module if module is not None else sized_module(size, seed + version.encode()))
    for rel, content in {"README.md": f"# {name} {version}\n", **(files or {})}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


DEMO_SECRET = "s3cr3t-token-never-stored"  # the demo project's ${MCPKIT_TEST_TOKEN}
DEMO_FILES = {"data/a.json": '{"a": 1}\n', "data/nested/b.txt": "b\n"}


def demo_environ() -> dict[str, str]:
    """The publisher's environment the demo project's config.yaml names."""
    return {"MCPKIT_TEST_UNSET_DIR": "/tmp", "MCPKIT_TEST_TOKEN": DEMO_SECRET}


def make_demo_project(root: Path | str, *, name: str = "demo-tool", version: str = "1.0.0",
                      marker: bytes = b"") -> Path:
    """Two tools, a ``fs:///tmp`` grant, ``data/`` files and an auth secret variable.

    ``marker`` changes the module bytes (the module stays valid).
    """
    config = config_yaml(
        name, version, tools=("echo", "add"),
        storage=['{uri: "fs:///tmp", guest: /notes, access: [read]}',
                 '{uri: "bundle:data", guest: /data}'],
        registry=f"127.0.0.1:5000/demo/{name}", include=["README.md", "data"],
        auth=("demo", "${MCPKIT_TEST_TOKEN}"))
    return make_project(root, name=name, version=version, config=config, module=tiny_module(marker),
                        files={"README.md": f"# {name}\n", **DEMO_FILES})


def bundle_dir(out: Path, module: Path, source: Path, files: Sequence[str] = ("config.yaml",)) -> Path:
    """A bundle folder in ``out``: ``module`` as module.wasm, plus ``files`` (files or folders) from ``source``."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(module, out / "module.wasm")
    for rel in files:
        if (source / rel).is_dir():
            shutil.copytree(source / rel, out / rel)
        else:
            shutil.copyfile(source / rel, out / rel)
    return out


def bundle_files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file the demo project's bundle ships."""
    names = ["module.wasm", "config.yaml", "README.md", *DEMO_FILES]
    return {n: (root / n).read_bytes() for n in names}


# --------------------------------------------------------------------------- bundles


def build_archive(root: Path | str, out: Path | str, environ: Mapping[str, str] | None = None,
                  epoch: int | None = EPOCH) -> BuiltBundle:
    """Build ``root`` (config.yaml + module.wasm) into a ``.mcpkit.tar`` under ``out``.

    ``environ`` is the publisher's environment for ``${VAR}`` (empty when not given).
    """
    from hatch_mcpkit.bundle import build_bundle
    from hatch_mcpkit.config import load_config

    root = Path(root)
    config = load_config(root / "config.yaml", dict(environ or {}))
    return build_bundle(config, root / "module.wasm", Path(out), source_date_epoch=epoch)


def build_layout(root: Path | str, out: Path | str, environ: Mapping[str, str] | None = None) -> BundleLayout:
    """Build ``root`` into ``out`` and open it (a BundleLayout; close it or use ``with``)."""
    from hatch_mcpkit.bundle import BundleLayout

    return BundleLayout.open(build_archive(root, out, environ).path)


def push_project(registry: Any, root: Path | str, out: Path | str, repository: str, *tags: str) -> Any:
    """Build and push; return the layout's manifest (digest, layers)."""
    with build_layout(root, out) as layout, registry.client() as client:
        client.push_layout(layout, repository, list(tags))
        return layout.manifest


# --------------------------------------------------------------------------- looking at results


def pushed_project(registry: Any, work: Path, repository: str, *, name: str = "fault-tool",
                   version: str = "1.0.0", tag: str = "1") -> Any:
    """A tiny project of ``name`` and ``version`` built under ``work`` and pushed as ``repository:tag``."""
    slug = f"{repository.replace('/', '-')}-{version}"
    root = make_project(work / f"src-{slug}", name=name, version=version)
    return push_project(registry, root, work / f"out-{slug}", repository, tag)


def snapshot(path: Path | str) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``path`` (empty when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return {}
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def listing(path: Path | str) -> list[str]:
    """Every relative path under ``path``, sorted (empty when it does not exist)."""
    path = Path(path)
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) if path.exists() else []


def check_cache_consistent(home: Path | str) -> dict[str, Any]:
    """Every registry.json row points at a complete entry whose files match the manifest digests.

    Returns the parsed index. Raises AssertionError naming what is wrong.
    """
    home = Path(home)
    bundles = home / "bundles"
    index = json.loads((bundles / "registry.json").read_text())
    rows = [(name, row) for name, items in index.items() for row in items]
    paths = set()
    for name, row in rows:
        entry = bundles / row["path"]
        assert entry.resolve().is_relative_to(bundles.resolve()), row
        meta = json.loads((entry / "metadata.json").read_text())
        assert meta["name"] == name and meta["digest"] == row["digest"], (row, meta)
        for layer in meta["layers"]:
            data = (entry / layer["title"]).read_bytes()
            assert len(data) == layer["size"], (entry, layer)
            assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"], (entry, layer)
        assert meta["module_digest"] == meta["layers"][0]["digest"]
        paths.add(entry)
    # no entry directory that the index does not know (a partial or orphaned entry)
    for meta_file in bundles.rglob("metadata.json"):
        assert meta_file.parent in paths, f"{meta_file.parent} is not in registry.json"
    assert listing(home / "cache" / "downloads") == [], listing(home / "cache" / "downloads")
    assert [p.name for p in bundles.glob(".registry.*")] == []
    return dict(index)
