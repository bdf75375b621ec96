"""The guest ABI against the real example module, compiled code from the store, wasmtime's private names."""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from hatch_mcpkit.errors import ToolCallError
from hatch_mcpkit.runtime import Runtime, ToolResult, engine_fingerprint, precompile
from hatch_mcpkit.store import CodeCache

pytestmark = pytest.mark.cargo


# ----------------------------------------------------------------- guest ABI (example module)


def test_get_weather_answers_with_structured_content(example_runtime: Runtime) -> None:
    result = example_runtime.call("get_weather", {"location": "London"})
    assert not result.is_error, result.text
    assert result.reason is None
    assert result.structured_content is not None
    assert result.structured_content["location"] == "London"
    assert result.structured_content["temperature_c"] == 11.5
    assert result.structured_content["conditions"] == "light rain"
    # the same JSON is also given as text content
    assert json.loads(result.text) == result.structured_content
    assert result.duration_ms > 0 and result.run_ms > 0


def test_get_weather_unknown_location_is_a_tool_error(example_runtime: Runtime) -> None:
    result = example_runtime.call("get_weather", {"location": "Atlantis"})
    assert result.is_error and result.reason == "tool"
    assert "unknown location" in result.text and "London" in result.text
    assert result.structured_content is None
    assert result.to_mcp()["isError"] is True


def test_convert_temperature_text_content(example_runtime: Runtime) -> None:
    result = example_runtime.call("convert_temperature", {"value": 100, "from": "celsius", "to": "fahrenheit"})
    assert not result.is_error, result.text
    assert result.content == [{"type": "text", "text": "100 °C = 212 °F"}]
    assert result.structured_content is None  # no output_schema declared
    mcp = result.to_mcp()
    assert "structuredContent" not in mcp and mcp["isError"] is False


def test_convert_temperature_below_absolute_zero(example_runtime: Runtime) -> None:
    result = example_runtime.call("convert_temperature", {"value": -500, "from": "celsius", "to": "kelvin"})
    assert result.is_error and "below absolute zero" in result.text
    with pytest.raises(ToolCallError) as info:
        result.raise_for_error()
    assert info.value.reason == "tool"


def test_validate_arguments_names_the_field(example_runtime: Runtime) -> None:
    assert example_runtime.validate_arguments("get_weather", {"location": "Paris"}) == []
    assert example_runtime.validate_arguments("get_weather", {}) == [
        "arguments.location: 'location' is a required property"
    ]
    problems = example_runtime.validate_arguments("convert_temperature", {"value": "hot", "from": "celsius",
                                                                          "to": "rankine"})
    assert any(p.startswith("arguments.value: 'hot' is not of type 'number'") for p in problems)
    assert any(p.startswith("arguments.to: 'rankine' is not one of") for p in problems)


def test_unknown_tool_is_refused(example_runtime: Runtime) -> None:
    with pytest.raises(ToolCallError) as info:
        example_runtime.call("launch_missiles", {})
    assert info.value.reason == "unknown_tool"
    assert "get_weather" in str(info.value)


def test_output_mapping_rules(hostile_runtime: Runtime) -> None:
    # "other JSON" (the echo tool prints its arguments) -> text content of that JSON
    result = hostile_runtime.call("echo", {"a": [1, 2], "b": "x"})
    assert not result.is_error
    assert json.loads(result.text) == {"a": [1, 2], "b": "x"}
    # {"content": "text"} -> one text item
    result = hostile_runtime.call("no_stdin", {})
    assert result.content == [{"type": "text", "text": "answered without reading stdin"}]
    # proc_exit(0) after answering is a success
    result = hostile_runtime.call("exit_zero", {})
    assert not result.is_error and result.exit_code == 0
    assert result.text == "exited early with 0"


def test_large_arguments_reach_the_module(hostile_runtime: Runtime) -> None:
    big = "y" * 50_000  # within max_output_kb (64) once echoed, but above one pipe buffer with the rest
    result = hostile_runtime.call("echo", {"big": big})
    assert not result.is_error, result.text
    assert json.loads(result.text)["big"] == big


def test_argv_is_server_name_and_tool(hostile_runtime: Runtime) -> None:
    result = hostile_runtime.call("argv_dump", {})
    assert json.loads(result.text) == ["hostile-tool", "argv_dump"]


# ----------------------------------------------------------------- compiled code (the store's CodeCache)


def _cached(cache: CodeCache) -> list[Path]:
    return sorted(cache.root.rglob("*.cwasm"))


def test_first_load_compiles_into_the_code_cache_then_loads_from_it(
        example_bundle_dir: Path, bundle_copy: Callable[[Path], Path], tmp_path: Path) -> None:
    bundle = bundle_copy(example_bundle_dir)
    cache = CodeCache(tmp_path / "home")
    with Runtime.from_dir(bundle, code_cache=cache) as rt:
        assert rt.module_source == "compiled"
    sha = hashlib.sha256((bundle / "module.wasm").read_bytes()).hexdigest()
    assert _cached(cache) == [cache.root / engine_fingerprint(False) / f"{sha}.cwasm"]
    assert sorted(p.name for p in bundle.iterdir()) == ["README.md", "config.yaml", "data", "module.wasm"]
    with Runtime.from_dir(bundle, code_cache=cache) as rt:
        assert rt.module_source == "cache"
        assert not rt.call("get_weather", {"location": "Tokyo"}).is_error
    with Runtime.from_dir(bundle) as rt:  # no code cache: compiled in memory, nothing written
        assert rt.module_source == "compiled"


def test_precompile_fills_the_code_cache_once(example_bundle_dir: Path, bundle_copy: Callable[[Path], Path],
                                              tmp_path: Path) -> None:
    bundle = bundle_copy(example_bundle_dir)
    cache = CodeCache(tmp_path / "home")
    assert precompile(bundle, code_cache=cache) == "compiled"
    [code] = _cached(cache)
    before = code.stat().st_mtime_ns
    assert precompile(bundle, code_cache=cache) == "cache"
    assert code.stat().st_mtime_ns == before
    assert not (bundle / "module.cwasm").exists() and not (bundle / "metadata.json").exists()


def test_unloadable_cached_code_is_discarded_and_recompiled(example_bundle_dir: Path, tmp_path: Path) -> None:
    cache = CodeCache(tmp_path / "home")
    precompile(example_bundle_dir, code_cache=cache)
    [code] = _cached(cache)
    code.write_bytes(b"\x7fELF but not code compiled by this engine")
    with Runtime.from_dir(example_bundle_dir, code_cache=cache) as rt:
        assert rt.module_source == "compiled"
        assert not rt.call("get_weather", {"location": "Paris"}).is_error
    with Runtime.from_dir(example_bundle_dir, code_cache=cache) as rt:
        assert rt.module_source == "cache"


def test_code_is_keyed_by_module_bytes_and_engine(example_bundle_dir: Path, hostile_wasm: Path,
                                                   bundle_copy: Callable[[Path], Path], tmp_path: Path) -> None:
    bundle = bundle_copy(example_bundle_dir)
    cache = CodeCache(tmp_path / "home")
    precompile(bundle, code_cache=cache)
    shutil.copyfile(hostile_wasm, bundle / "module.wasm")  # a different module under the same name
    with Runtime.from_dir(bundle, code_cache=cache) as rt:
        assert rt.module_source == "compiled"
    assert len(_cached(cache)) == 2
    assert engine_fingerprint(True) != engine_fingerprint(False)


def test_cwasm_and_record_beside_the_module_are_never_read(example_bundle_dir: Path,
                                                           bundle_copy: Callable[[Path], Path],
                                                           tmp_path: Path) -> None:
    bundle = bundle_copy(example_bundle_dir)
    (bundle / "module.cwasm").write_bytes(b"planted")
    (bundle / "metadata.json").write_text(json.dumps({"precompiled": {"module_sha256": "f" * 64}}))
    with Runtime.from_dir(bundle, code_cache=CodeCache(tmp_path / "home")) as rt:
        assert rt.module_source == "compiled"
        assert not rt.call("get_weather", {"location": "Paris"}).is_error
    assert (bundle / "module.cwasm").read_bytes() == b"planted"


def test_read_only_bundle_dir_and_code_cache_still_run(example_bundle_dir: Path,
                                                       bundle_copy: Callable[[Path], Path], tmp_path: Path) -> None:
    bundle = bundle_copy(example_bundle_dir)
    home = tmp_path / "home"
    home.mkdir()
    mode = bundle.stat().st_mode
    bundle.chmod(0o555)
    home.chmod(0o555)
    try:
        with Runtime.from_dir(bundle, code_cache=CodeCache(home)) as rt:
            result: ToolResult = rt.call("get_weather", {"location": "Sydney"})
            assert not result.is_error
    finally:
        bundle.chmod(mode)
        home.chmod(0o755)


# ----------------------------------------------------------------- wasmtime-py's private names


def test_every_private_wasmtime_name_we_use_exists() -> None:
    """Fails loudly when a wasmtime-py release removes a private name the runtime relies on."""
    from hatch_mcpkit.runtime import _wasmtime

    assert _wasmtime.missing_names() == []
    _wasmtime.check_supported()
    for name in _wasmtime.PRIVATE_NAMES:
        module, attr = name.rsplit(".", 1)
        assert getattr(importlib.import_module(module), attr) is not None, name


def test_no_other_module_touches_private_wasmtime_names() -> None:
    import re

    package = Path(__file__).resolve().parents[1] / "hatch_mcpkit"
    offenders = [
        str(path.relative_to(package)) for path in package.rglob("*.py")
        if path.name != "_wasmtime.py" and re.search(r"wasmtime\._|from wasmtime import _", path.read_text())
    ]
    assert offenders == []
