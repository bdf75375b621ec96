"""Module inspection: hand-made binaries, WAT, real Rust builds, and garbage."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hatch_mcpkit.errors import ModuleError
from hatch_mcpkit.wasm import Export, Import, ModuleInfo, check_guest_module, inspect_module
from tests._support import need
from tests.builders import HEADER, export, func_import, name, section, vec
from tests.plugins.rust import build_fixture_crate

WASI = "wasi_snapshot_preview1"


# --------------------------------------------------------------------------- modules from the tiny assembler

TYPE_SECTION = section(1, vec([b"\x60\x00\x00"]))  # one type: () -> ()


def module(imports: list[bytes], exports: list[bytes], *, extra: bytes = b"") -> bytes:
    return (
        HEADER
        + TYPE_SECTION
        + section(0, name("producers") + b"whatever")  # custom sections are skipped
        + (section(2, vec(imports)) if imports else b"")
        + (section(7, vec(exports)) if exports else b"")
        + extra
    )


GOOD = module([func_import(WASI, "fd_write"), func_import(WASI, "proc_exit")],
              [export("memory", 2), export("_start", 0, 2)])

ALL_KINDS = module(
    [
        func_import(WASI, "fd_write"),
        name("env") + name("table") + b"\x01\x70\x01\x01\x10",          # table funcref min 1 max 16
        name("env") + name("memory") + b"\x02\x00\x01",                 # memory min 1
        name("env") + name("mem64") + b"\x02\x05\x01\x80\x01",          # memory64 min 1 max 128
        name("env") + name("g") + b"\x03\x7f\x01",                      # global mut i32
        name("env") + name("gref") + b"\x03\x64\x70\x00",               # global (ref func)
        name("env") + name("exn") + b"\x04\x00\x00",                    # tag
    ],
    [export("_start"), export("t", 1), export("m", 2), export("g", 3), export("e", 4)],
)


def write(tmp_path: Path, data: bytes, filename: str = "module.wasm") -> Path:
    path = tmp_path / filename
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- hand-made modules


def test_good_module(tmp_path: Path) -> None:
    info = check_guest_module(write(tmp_path, GOOD))
    assert info.imports == [Import(WASI, "fd_write", "func"), Import(WASI, "proc_exit", "func")]
    assert info.exports == [Export("memory", "memory"), Export("_start", "func")]
    assert info.import_modules == [WASI]
    assert info.size == len(GOOD)
    assert inspect_module(GOOD) == info


def test_every_import_kind_is_parsed() -> None:
    info = inspect_module(ALL_KINDS)
    assert [(i.name, i.kind) for i in info.imports] == [
        ("fd_write", "func"), ("table", "table"), ("memory", "memory"), ("mem64", "memory"),
        ("g", "global"), ("gref", "global"), ("exn", "tag"),
    ]
    assert [e.kind for e in info.exports] == ["func", "table", "memory", "global", "tag"]


def test_empty_module_has_nothing() -> None:
    assert inspect_module(HEADER) == ModuleInfo(imports=[], exports=[], size=8)


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"", "an empty file"),
        (b"\x7fELF\x02\x01\x01" + b"\x00" * 40, "native ELF executable"),
        (b"(module (func (export \"_start\")))", "WebAssembly text"),
        (b"!<arch>\n", "static library"),
        (b"PK\x03\x04rest", "zip archive"),
        (b"hello world", "not a WebAssembly binary"),
        (b"\x00as", "not a WebAssembly binary"),
    ],
)
def test_bad_magic(tmp_path: Path, data: bytes, what: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ModuleError) as info:
        check_guest_module(path)
    message = str(info.value)
    assert f"{path} is not a WebAssembly module (bad magic bytes" in message
    assert what in message
    assert "wasm32-wasip1" in message  # says how to build a proper one


def test_truncated_header() -> None:
    with pytest.raises(ModuleError, match="truncated"):
        inspect_module(b"\x00asm\x01\x00")


def test_component_is_not_a_core_module(tmp_path: Path) -> None:
    component = b"\x00asm\x0d\x00\x01\x00" + section(0, name("x"))
    with pytest.raises(ModuleError) as info:
        check_guest_module(write(tmp_path, component, "c.wasm"))
    assert "is a WebAssembly component, not a core module" in str(info.value)
    assert "wasm32-wasip1 (not wasm32-wasip2)" in str(info.value)


def test_wrong_version() -> None:
    with pytest.raises(ModuleError, match="unsupported WebAssembly version 2"):
        inspect_module(b"\x00asm\x02\x00\x00\x00")


def test_foreign_imports_are_listed(tmp_path: Path) -> None:
    data = module(
        [func_import(WASI, "fd_write"), func_import("env", "host_secret"),
         name("env") + name("memory") + b"\x02\x00\x01", func_import("other", "thing")],
        [export("_start")],
    )
    with pytest.raises(ModuleError) as info:
        check_guest_module(write(tmp_path, data))
    message = str(info.value)
    assert "imports from env, other, but a sandboxed guest may only import from wasi_snapshot_preview1" in message
    assert "env.host_secret (func)" in message
    assert "env.memory (memory)" in message
    assert "other.thing (func)" in message
    assert "fd_write" not in message


def test_many_foreign_imports_are_summarised(tmp_path: Path) -> None:
    data = module([func_import("env", f"f{i}") for i in range(25)], [export("_start")])
    with pytest.raises(ModuleError, match="and 15 more"):
        check_guest_module(write(tmp_path, data))


@pytest.mark.parametrize(
    ("modname", "hint"),
    [("__wbindgen_placeholder__", "wasm-bindgen"), ("wasi_unstable", "older WASI snapshot")],
)
def test_foreign_import_hints(tmp_path: Path, modname: str, hint: str) -> None:
    data = module([func_import(modname, "x")], [export("_start")])
    with pytest.raises(ModuleError, match=hint):
        check_guest_module(write(tmp_path, data))


def test_missing_start(tmp_path: Path) -> None:
    data = module([func_import(WASI, "fd_write")], [export("memory", 2), export("add")])
    with pytest.raises(ModuleError) as info:
        check_guest_module(write(tmp_path, data))
    message = str(info.value)
    assert "exports no _start function" in message
    assert "cdylib" in message
    assert "bin crate" in message


def test_reactor_and_non_function_start(tmp_path: Path) -> None:
    with pytest.raises(ModuleError, match="WASI reactor"):
        check_guest_module(write(tmp_path, module([], [export("_initialize")])))
    with pytest.raises(ModuleError, match="exports _start, but not as a function"):
        check_guest_module(write(tmp_path, module([], [export("_start", 3)])))


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModuleError, match="no such module file"):
        check_guest_module(tmp_path / "absent.wasm")
    with pytest.raises(ModuleError, match="is a directory"):
        check_guest_module(tmp_path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (HEADER + b"\x02\x05\x01", "claims 5 bytes but only 1 remain"),
        (HEADER + b"\x0e\x00", "unknown section id 14"),
        (HEADER + section(2, b"\x01" + name(WASI)), "import section at offset 8 ends early"),
        (HEADER + section(2, vec([name(WASI) + name("f") + b"\x09"])), "unknown import kind 0x09"),
        (HEADER + section(7, vec([name("f") + b"\x07\x00"])), "unknown export kind 0x07"),
        (HEADER + section(7, vec([export("_start")]) + b"\x00"), "unexpected trailing bytes"),
        (HEADER + section(7, b"\x01\x02\xff\xfe\x00\x00"), "not valid UTF-8"),
        (HEADER + section(7, b"\xff\xff\xff\xff\xff\xff"), "too long"),
        (HEADER + section(7, b"\xff\xff\xff\xff\x7f"), "too large"),
        (HEADER + b"\x07\xff\xff\xff\xff\xff\x00", "too long"),
    ],
)
def test_malformed_sections(data: bytes, message: str) -> None:
    with pytest.raises(ModuleError, match=message):
        inspect_module(data)


# --------------------------------------------------------------------------- WAT through wasmtime


def _wat2wasm(text: str) -> bytes:
    try:
        import wasmtime
    except ImportError:
        need(False, "the wasmtime Python package (to compile WAT)")
        raise
    return bytes(wasmtime.wat2wasm(text))


def test_wat_command_module_passes(tmp_path: Path) -> None:
    wasm = _wat2wasm(
        """(module
             (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
             (memory (export "memory") 1)
             (func (export "_start")))"""
    )
    info = check_guest_module(write(tmp_path, wasm))
    assert info.imports == [Import(WASI, "proc_exit", "func")]
    assert Export("_start", "func") in info.exports


def test_wat_module_with_wrong_imports(tmp_path: Path) -> None:
    wasm = _wat2wasm(
        """(module
             (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
             (import "env" "get_secret" (func (result i32)))
             (import "js" "mem" (memory 1))
             (global (import "env" "g") (mut i32))
             (table (import "env" "tbl") 2 funcref)
             (func (export "_start")))"""
    )
    with pytest.raises(ModuleError) as info:
        check_guest_module(write(tmp_path, wasm))
    message = str(info.value)
    for shown in ("env.get_secret (func)", "js.mem (memory)", "env.g (global)", "env.tbl (table)"):
        assert shown in message


def test_wat_module_without_start(tmp_path: Path) -> None:
    wasm = _wat2wasm('(module (func (export "run")))')
    with pytest.raises(ModuleError, match="no _start"):
        check_guest_module(write(tmp_path, wasm))


# --------------------------------------------------------------------------- real Rust builds


@pytest.mark.cargo
def test_real_example_module(example_wasm: Path) -> None:
    info = check_guest_module(example_wasm)
    assert info.import_modules == [WASI]
    assert {"fd_write", "fd_read", "proc_exit"} <= {i.name for i in info.imports}
    assert info.exports_function("_start")


@pytest.mark.cargo
def test_real_module_with_foreign_import(fixture_crate: Callable[[str], Path]) -> None:
    wasm = build_fixture_crate(fixture_crate("foreign-import"), echo=lambda _line: None)
    with pytest.raises(ModuleError, match=r"imports from env, .*env\.host_secret \(func\)"):
        check_guest_module(wasm)


@pytest.mark.cargo
def test_real_cdylib_has_no_start(fixture_crate: Callable[[str], Path], rust_env: dict[str, str]) -> None:
    crate = fixture_crate("cdylib")
    env = {**rust_env, "CARGO_TARGET_DIR": str(crate / "target")}
    # build_crate refuses a library; build it with cargo directly to inspect the module
    subprocess.run([env["CARGO"], "build", "--quiet", "--release", "--target", "wasm32-wasip1"], cwd=crate,
                   env=env, check=True)
    wasm = crate / "target" / "wasm32-wasip1" / "release" / "cdylib_only.wasm"
    info = inspect_module(wasm.read_bytes())
    assert info.exports_function("add")
    with pytest.raises(ModuleError, match="exports no _start function"):
        check_guest_module(wasm)


@pytest.mark.cargo
def test_real_module_truncated_anywhere(example_wasm: Path) -> None:
    data = example_wasm.read_bytes()
    for cut in [*range(0, 64), *range(64, len(data), 97)]:
        try:
            inspect_module(data[:cut])
        except ModuleError:
            pass


def test_import_needs_no_wasmtime() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('wasmtime', 'oras', 'mcp', 'requests'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import hatch_mcpkit.wasm, hatch_mcpkit.cargo\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


# --------------------------------------------------------------------------- garbage never crashes


def _inspect_or_refuse(data: bytes) -> None:
    try:
        info = inspect_module(data)
    except ModuleError as exc:
        assert str(exc)
        return
    assert info.size == len(data)
    assert all(isinstance(i, Import) for i in info.imports)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(data: bytes) -> None:
    _inspect_or_refuse(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_sections_never_crash(body: bytes) -> None:
    _inspect_or_refuse(HEADER + body)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_modules_never_crash(data: st.DataObject) -> None:
    original = bytearray(data.draw(st.sampled_from([GOOD, ALL_KINDS])))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(original) - 1))
        original[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(original)))
    _inspect_or_refuse(bytes(original[:cut]))
