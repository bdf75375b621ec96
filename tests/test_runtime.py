"""The guest ABI against the real example module, and the precompiled-code record."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from hatch_mcpkit.errors import ToolCallError
from hatch_mcpkit.runtime import Runtime, ToolResult, engine_settings, precompile

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


# ----------------------------------------------------------------- precompiled code


def _record(bundle: Path) -> dict[str, object]:
    record = json.loads((bundle / "metadata.json").read_text())["precompiled"]
    assert isinstance(record, dict)
    return record


def test_first_load_compiles_and_records_then_loads_cwasm(example_bundle_dir: Path,
                                                           bundle_copy: Callable[[Path], Path]) -> None:
    bundle = bundle_copy(example_bundle_dir)
    with Runtime.from_dir(bundle) as rt:
        assert rt.module_source == "compiled"
    assert (bundle / "module.cwasm").is_file()
    record = _record(bundle)
    assert record["engine"] == engine_settings(False)
    leftovers = [p.name for p in bundle.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    with Runtime.from_dir(bundle) as rt:
        assert rt.module_source == "cwasm"
        assert not rt.call("get_weather", {"location": "Tokyo"}).is_error


def test_precompile_keeps_other_metadata(example_bundle_dir: Path, bundle_copy: Callable[[Path], Path]) -> None:
    bundle = bundle_copy(example_bundle_dir)
    (bundle / "metadata.json").write_text(json.dumps({"reference": "oci://example/x:1", "digest": "sha256:ab"}))
    cwasm = precompile(bundle)
    assert cwasm == bundle / "module.cwasm" and cwasm.is_file()
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["reference"] == "oci://example/x:1" and "precompiled" in meta
    before = cwasm.stat().st_mtime_ns
    precompile(bundle)  # already recorded: not rewritten
    assert cwasm.stat().st_mtime_ns == before


def test_tampered_cwasm_is_never_loaded(example_bundle_dir: Path, bundle_copy: Callable[[Path], Path]) -> None:
    bundle = bundle_copy(example_bundle_dir)
    precompile(bundle)
    blob = bytearray((bundle / "module.cwasm").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (bundle / "module.cwasm").write_bytes(bytes(blob))
    with Runtime.from_dir(bundle) as rt:
        assert rt.module_source == "compiled"
        assert not rt.call("get_weather", {"location": "Paris"}).is_error
    # and the cwasm was rewritten to match its record again
    with Runtime.from_dir(bundle) as rt:
        assert rt.module_source == "cwasm"


@pytest.mark.parametrize("field", ["module_sha256", "engine_fingerprint", "cwasm_sha256"])
def test_record_mismatch_means_recompile(example_bundle_dir: Path, bundle_copy: Callable[[Path], Path],
                                         field: str) -> None:
    bundle = bundle_copy(example_bundle_dir)
    precompile(bundle)
    meta = json.loads((bundle / "metadata.json").read_text())
    meta["precompiled"][field] = "0" * 64
    (bundle / "metadata.json").write_text(json.dumps(meta))
    with Runtime.from_dir(bundle) as rt:
        assert rt.module_source == "compiled"
    assert _record(bundle)[field] != "0" * 64


def test_changed_module_means_recompile(example_bundle_dir: Path, hostile_wasm: Path,
                                        bundle_copy: Callable[[Path], Path]) -> None:
    bundle = bundle_copy(example_bundle_dir)
    precompile(bundle)
    shutil.copyfile(hostile_wasm, bundle / "module.wasm")  # a different module, stale cwasm beside it
    with Runtime.from_dir(bundle, write_cwasm=False) as rt:
        assert rt.module_source == "compiled"


def test_cwasm_without_record_is_ignored(example_bundle_dir: Path, bundle_copy: Callable[[Path], Path]) -> None:
    bundle = bundle_copy(example_bundle_dir)
    precompile(bundle)
    (bundle / "metadata.json").unlink()
    with Runtime.from_dir(bundle, write_cwasm=False) as rt:
        assert rt.module_source == "compiled"
    # a cwasm dropped in from elsewhere with a self-made record for another module is ignored as well
    (bundle / "metadata.json").write_text(json.dumps({"precompiled": {"module_sha256": "f" * 64}}))
    with Runtime.from_dir(bundle) as rt:
        assert rt.module_source == "compiled"


def test_read_only_bundle_dir_still_runs(example_bundle_dir: Path, bundle_copy: Callable[[Path], Path]) -> None:
    bundle = bundle_copy(example_bundle_dir)
    mode = bundle.stat().st_mode
    bundle.chmod(0o555)
    try:
        with Runtime.from_dir(bundle) as rt:
            result: ToolResult = rt.call("get_weather", {"location": "Sydney"})
            assert not result.is_error
    finally:
        bundle.chmod(mode)
