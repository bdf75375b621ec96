"""WebAssembly module inspection without instantiating (or even importing wasmtime).

A small parser of the binary format that reads only what mcpkit checks before shipping or
running a module: the header, the import section and the export section. It is bounded by the
input (every read is checked against the end of its section) and turns any malformed input into
:class:`~hatch_mcpkit.errors.ModuleError`, never another exception.

``inspect_module(data)`` returns a :class:`ModuleInfo`; ``check_guest_module(path)`` also
checks that the module is an mcpkit guest: a WASI preview-1 *command* that imports only from
``wasi_snapshot_preview1`` and exports ``_start``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from hatch_mcpkit._files import read_regular
from hatch_mcpkit.errors import ModuleError

__all__ = [
    "WASI_MODULE",
    "Export",
    "Import",
    "ModuleInfo",
    "check_guest_module",
    "inspect_module",
]

WASI_MODULE = "wasi_snapshot_preview1"
MAGIC = b"\x00asm"
CORE_VERSION = b"\x01\x00\x00\x00"
#: Refuse to read modules larger than this (a guest is usually well under 10 MB).
MAX_MODULE_BYTES = 1 << 30

_KINDS = {0x00: "func", 0x01: "table", 0x02: "memory", 0x03: "global", 0x04: "tag"}
_SECTION_NAMES = {
    0: "custom", 1: "type", 2: "import", 3: "function", 4: "table", 5: "memory", 6: "global",
    7: "export", 8: "start", 9: "element", 10: "code", 11: "data", 12: "data count", 13: "tag",
}
_TARGET_HINT = "build a WASI command: a Rust bin crate (src/main.rs with fn main) with `cargo build --target wasm32-wasip1`"


class Import(NamedTuple):
    module: str
    name: str
    kind: str  # func, table, memory, global, tag


class Export(NamedTuple):
    name: str
    kind: str


@dataclass(frozen=True)
class ModuleInfo:
    imports: list[Import]
    exports: list[Export]
    size: int = 0

    @property
    def import_modules(self) -> list[str]:
        """Distinct module names the imports come from, in first-seen order."""
        return list(dict.fromkeys(imp.module for imp in self.imports))

    def exports_function(self, name: str) -> bool:
        return any(exp.name == name and exp.kind == "func" for exp in self.exports)


class _Truncated(Exception):
    """Internal: a read ran past the end of the current section."""


class _Reader:
    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise _Truncated
        b = self.data[self.pos]
        self.pos += 1
        return b

    def bytes_(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise _Truncated
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uleb(self, bits: int = 32) -> int:
        result = 0
        shift = 0
        max_bytes = (bits + 6) // 7
        for _ in range(max_bytes):
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                if result >> bits:
                    raise ValueError(f"integer too large for u{bits}")
                return result
            shift += 7
        raise ValueError(f"integer representation too long for u{bits}")

    def sleb(self, bits: int = 33) -> int:
        result = 0
        shift = 0
        max_bytes = (bits + 6) // 7
        for _ in range(max_bytes):
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if b & 0x40:
                    result -= 1 << shift
                return result
        raise ValueError(f"integer representation too long for s{bits}")

    def name(self) -> str:
        n = self.uleb()
        raw = self.bytes_(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("a name is not valid UTF-8") from None

    # -- types that can appear in import descriptions
    def reftype(self) -> None:
        b = self.byte()
        if b in (0x63, 0x64):  # (ref null? heaptype), function-references / GC proposals
            self.sleb(33)
        elif b not in (0x70, 0x6F, 0x69, 0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x71, 0x72, 0x73, 0x74):
            raise ValueError(f"unknown reference type 0x{b:02x}")

    def valtype(self) -> None:
        b = self.byte()
        if b in (0x7F, 0x7E, 0x7D, 0x7C, 0x7B):  # i32 i64 f32 f64 v128
            return
        self.pos -= 1
        self.reftype()

    def limits(self) -> None:
        flags = self.byte()
        if flags & ~0x0F:
            raise ValueError(f"unknown limits flags 0x{flags:02x}")
        bits = 64 if flags & 0x04 else 32
        self.uleb(bits)
        if flags & 0x01:
            self.uleb(bits)
        if flags & 0x08:  # custom page size
            self.uleb(32)


def _describe(data: bytes) -> str:
    """A guess at what a non-wasm file is, for the error message."""
    head = data[:64]
    if head.startswith(b"\x7fELF"):
        return "a native ELF executable"
    if head.startswith(b"MZ"):
        return "a Windows executable"
    if head[:4] in (b"\xcf\xfa\xed\xfe", b"\xfe\xed\xfa\xcf", b"\xca\xfe\xba\xbe"):
        return "a macOS (Mach-O) binary"
    if head.startswith(b"!<arch>"):
        return "a static library archive (.a/.rlib)"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file"
    text = head.lstrip()
    if text.startswith((b"(module", b"(component", b";;")):
        return "WebAssembly text (WAT); compile it to binary first (e.g. wasm-tools parse)"
    if not data:
        return "an empty file"
    return "not a WebAssembly binary"


def inspect_module(data: bytes) -> ModuleInfo:
    """Read the imports and exports of a core WebAssembly module.

    Raises :class:`ModuleError` for anything that is not a well-formed core module header,
    import section or export section (other sections are skipped by size, not validated).
    """
    try:
        return _inspect(data, "the module")
    except ModuleError:
        raise
    except Exception as exc:  # pragma: no cover - defensive: the parser should not raise others
        raise ModuleError(f"the module is not valid WebAssembly: {exc}") from None


def _inspect(data: bytes, where: str) -> ModuleInfo:
    data = bytes(data)
    if len(data) < 8 or data[:4] != MAGIC:
        if data[:4] == MAGIC:
            raise ModuleError(f"{where} is truncated: {len(data)} bytes, shorter than the 8-byte WebAssembly header")
        raise ModuleError(
            f"{where} is not a WebAssembly module (bad magic bytes: {_describe(data)})",
            hint=_TARGET_HINT,
        )
    version = data[4:8]
    if version != CORE_VERSION:
        layer = int.from_bytes(version[2:4], "little")
        if layer == 1:
            raise ModuleError(
                f"{where} is a WebAssembly component, not a core module; mcpkit runs WASI preview-1 modules",
                hint="build for wasm32-wasip1 (not wasm32-wasip2) and ship the core module",
            )
        raise ModuleError(
            f"{where} has unsupported WebAssembly version {int.from_bytes(version, 'little')} (expected 1)"
        )

    imports: list[Import] = []
    exports: list[Export] = []
    pos = 8
    total = len(data)
    section_id = -1
    try:
        while pos < total:
            header = _Reader(data, pos, total)
            section_id = header.byte()
            size = header.uleb()
            start = header.pos
            end = start + size
            if end > total:
                raise ModuleError(
                    f"{where} is truncated: the {_SECTION_NAMES.get(section_id, 'unknown')} section at offset {pos} "
                    f"claims {size} bytes but only {total - start} remain"
                )
            if section_id not in _SECTION_NAMES:
                raise ModuleError(f"{where} is not valid WebAssembly: unknown section id {section_id} at offset {pos}")
            r = _Reader(data, start, end)
            if section_id == 2:
                imports.extend(_imports(r))
            elif section_id == 7:
                exports.extend(_exports(r))
            if section_id in (2, 7) and r.pos != end:
                raise ModuleError(
                    f"{where} is not valid WebAssembly: the {_SECTION_NAMES[section_id]} section at offset {pos} "
                    f"has {end - r.pos} unexpected trailing bytes"
                )
            pos = end
    except _Truncated:
        raise ModuleError(
            f"{where} is not valid WebAssembly: the {_SECTION_NAMES.get(section_id, 'section')} section "
            f"at offset {pos} ends early (truncated or corrupt)"
        ) from None
    except ValueError as exc:
        raise ModuleError(
            f"{where} is not valid WebAssembly: {exc} in the {_SECTION_NAMES.get(section_id, 'section')} "
            f"section at offset {pos}"
        ) from None
    return ModuleInfo(imports=imports, exports=exports, size=total)


def _imports(r: _Reader) -> list[Import]:
    out: list[Import] = []
    for _ in range(r.uleb()):
        module = r.name()
        name = r.name()
        kind_byte = r.byte()
        kind = _KINDS.get(kind_byte)
        if kind == "func":
            r.uleb()
        elif kind == "table":
            r.reftype()
            r.limits()
        elif kind == "memory":
            r.limits()
        elif kind == "global":
            r.valtype()
            if r.byte() not in (0, 1):
                raise ValueError("bad global mutability")
        elif kind == "tag":
            r.byte()  # attribute (0 = exception)
            r.uleb()
        else:
            raise ValueError(f"unknown import kind 0x{kind_byte:02x}")
        out.append(Import(module, name, kind))
    return out


def _exports(r: _Reader) -> list[Export]:
    out: list[Export] = []
    for _ in range(r.uleb()):
        name = r.name()
        kind_byte = r.byte()
        kind = _KINDS.get(kind_byte)
        if kind is None:
            raise ValueError(f"unknown export kind 0x{kind_byte:02x}")
        r.uleb()
        out.append(Export(name, kind))
    return out


def check_guest_module(path: str | os.PathLike[str]) -> ModuleInfo:
    """Check that ``path`` is a module mcpkit can run: a WASI preview-1 command.

    That means a core module (not a component) whose imports all come from
    ``wasi_snapshot_preview1`` and which exports a ``_start`` function. Raises
    :class:`ModuleError` saying what is wrong and how to build a module that works.
    """
    p = Path(path)
    where = str(p)
    try:
        size = p.stat().st_size
        if size > MAX_MODULE_BYTES:
            raise ModuleError(f"{where} is {size} bytes; mcpkit modules may be at most {MAX_MODULE_BYTES} bytes")
        if p.is_dir():
            raise IsADirectoryError
        # a regular file only (a symlink to /dev/zero or a FIFO in a folder someone else made is refused
        # without blocking), read up to the cap whatever stat said
        data = read_regular(p, limit=MAX_MODULE_BYTES, where=where, error=ModuleError)
    except FileNotFoundError:
        raise ModuleError(f"{where}: no such module file", hint=_TARGET_HINT) from None
    except IsADirectoryError:
        raise ModuleError(f"{where} is a directory, not a .wasm module") from None
    except OSError as exc:
        raise ModuleError(f"{where}: cannot read the module: {exc.strerror or exc}") from None

    info = _inspect(data, where)

    foreign = [imp for imp in info.imports if imp.module != WASI_MODULE]
    if foreign:
        shown = ", ".join(f"{imp.module}.{imp.name} ({imp.kind})" for imp in foreign[:10])
        more = f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""
        modules = ", ".join(dict.fromkeys(imp.module for imp in foreign))
        hint = _TARGET_HINT
        if any(m.startswith("__wbindgen") or m == "wbg" for m in modules.split(", ")):
            hint = "this looks like a wasm-bindgen (browser) build; " + _TARGET_HINT
        elif any(m in ("wasi_unstable", "wasi") for m in modules.split(", ")):
            hint = "this module uses an older WASI snapshot; rebuild it for wasm32-wasip1"
        raise ModuleError(
            f"{where} imports from {modules}, but a sandboxed guest may only import from {WASI_MODULE}: "
            f"{shown}{more}",
            hint=hint,
        )
    if not info.exports_function("_start"):
        if any(exp.name == "_start" for exp in info.exports):
            problem = "exports _start, but not as a function"
        elif info.exports_function("_initialize"):
            problem = "is a WASI reactor (exports _initialize), not a command: it has no _start"
        else:
            problem = "exports no _start function: it is a library (cdylib), not a WASI command"
        raise ModuleError(f"{where} {problem}", hint="build a bin crate (src/main.rs with fn main), not a cdylib, "
                          "with `cargo build --target wasm32-wasip1`")
    return info
