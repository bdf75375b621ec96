"""The weather-tool example module, run directly under wasmtime following the guest ABI.

argv = [server name, tool name], arguments as one JSON object on stdin, the bundle's data folder
preopened read-only at /data, the result as JSON on stdout. No mcpkit runtime or server involved.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hatch_mcpkit.config import load_config
from tests._support import need
from tests.plugins.rust import EXAMPLE_DIR

pytestmark = pytest.mark.cargo

CONFIG = load_config(EXAMPLE_DIR / "config.yaml")
UNITS = ["celsius", "fahrenheit", "kelvin"]


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        lines = self.stdout.splitlines()
        assert len(lines) == 1, f"expected one JSON line, got {self.stdout!r}"
        return json.loads(lines[0])


Runner = Callable[..., Outcome]


@pytest.fixture(scope="module")
def run_tool(example_wasm: Path) -> Iterator[Runner]:
    try:
        import wasmtime
    except ImportError:
        need(False, "the wasmtime Python package")
        raise
    engine = wasmtime.Engine()
    module = wasmtime.Module.from_file(engine, str(example_wasm))
    data_dir = EXAMPLE_DIR / "data"

    def run(tool: str | None, stdin: str | dict[str, Any], *, data: bool | Path = True,
            env: dict[str, str] | None = None) -> Outcome:
        text = stdin if isinstance(stdin, str) else json.dumps(stdin)
        with tempfile.TemporaryDirectory() as tmp:
            stdin_path = os.path.join(tmp, "stdin.json")
            with open(stdin_path, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
            out: list[bytes] = []
            err: list[bytes] = []
            wasi = wasmtime.WasiConfig()
            wasi.argv = ["weather-tool", tool] if tool is not None else ["weather-tool"]
            if env:
                wasi.env = list(env.items())
            wasi.stdin_file = stdin_path
            wasi.stdout_custom = lambda chunk: out.append(bytes(chunk))
            wasi.stderr_custom = lambda chunk: err.append(bytes(chunk))
            if data:
                wasi.preopen_dir(str(data if isinstance(data, Path) else data_dir), "/data", fs_mutable=False)
            store = wasmtime.Store(engine)
            store.set_wasi(wasi)
            linker = wasmtime.Linker(engine)
            linker.define_wasi()
            instance = linker.instantiate(store, module)
            start = instance.exports(store)["_start"]
            assert isinstance(start, wasmtime.Func)
            code = 0
            try:
                start(store)
            except wasmtime.ExitTrap as exc:
                code = exc.code
            del store, instance, start
        return Outcome(code, b"".join(out).decode("utf-8"), b"".join(err).decode("utf-8", "replace"))

    yield run


def _tool_schema(name: str, key: str) -> dict[str, Any]:
    tool = CONFIG.tool(name)
    assert tool is not None
    schema: dict[str, Any] | None = getattr(tool, key)
    assert schema is not None
    return schema


def _ok(outcome: Outcome) -> Any:
    assert outcome.exit_code == 0, outcome
    result = outcome.json
    assert "error" not in result, result
    return result


def _error(outcome: Outcome) -> str:
    assert outcome.exit_code == 0, outcome  # errors are answers, not crashes
    result = outcome.json
    assert set(result) == {"error"}, result
    message = result["error"]
    assert isinstance(message, str) and message
    return message


# --------------------------------------------------------------------------- get_weather


def test_get_weather_answers_structured_json(run_tool: Runner) -> None:
    args = {"location": "London"}
    jsonschema.validate(args, _tool_schema("get_weather", "input_schema"))
    result = _ok(run_tool("get_weather", args))
    jsonschema.validate(result, _tool_schema("get_weather", "output_schema"))
    assert result == {
        "location": "London",
        "country": "GB",
        "temperature_c": 11.5,
        "temperature_f": 52.7,
        "conditions": "light rain",
        "humidity_pct": 81,
        "wind_kph": 19,
        "observed_at": "2026-01-15T12:00:00Z",
    }


@pytest.mark.parametrize("spelling", ["london", "  LONDON ", "London, GB", "london,gb"])
def test_get_weather_matches_loosely(run_tool: Runner, spelling: str) -> None:
    assert _ok(run_tool("get_weather", {"location": spelling}))["location"] == "London"


def test_get_weather_every_shipped_location(run_tool: Runner) -> None:
    data = json.loads((EXAMPLE_DIR / "data" / "weather.json").read_text(encoding="utf-8"))
    schema = _tool_schema("get_weather", "output_schema")
    for entry in data["locations"].values():
        result = _ok(run_tool("get_weather", {"location": entry["name"]}))
        jsonschema.validate(result, schema)
        assert result["location"] == entry["name"]
        assert result["temperature_c"] == entry["temperature_c"]
        assert result["temperature_f"] == pytest.approx(entry["temperature_c"] * 9 / 5 + 32, abs=0.01)


def test_get_weather_unknown_location(run_tool: Runner) -> None:
    message = _error(run_tool("get_weather", {"location": "Atlantis"}))
    assert 'unknown location "Atlantis"' in message
    assert "London" in message and "Tokyo" in message


def test_get_weather_without_the_data_grant(run_tool: Runner) -> None:
    message = _error(run_tool("get_weather", {"location": "London"}, data=False))
    assert "/data/weather.json" in message
    assert "bundle:data" in message


def test_get_weather_refuses_a_temperature_out_of_range(run_tool: Runner, tmp_path: Path) -> None:
    """Data whose Fahrenheit value overflows a 64-bit float is an error, never "inf" or a null temperature."""
    data = {"locations": {"venus": {"name": "Venus", "temperature_c": 1e308, "conditions": "hot"}}}
    (tmp_path / "weather.json").write_text(json.dumps(data), encoding="utf-8")
    message = _error(run_tool("get_weather", {"location": "Venus"}, data=tmp_path))
    assert message == "the weather data for Venus has a temperature out of range: 1e308"


@pytest.mark.parametrize(
    ("stdin", "expected"),
    [
        ({}, 'missing required argument "location"'),
        ({"location": 42}, "location must be a string, not a number"),
        ({"location": "   "}, "location must not be empty"),
        ("", 'missing required argument "location"'),
    ],
)
def test_get_weather_bad_arguments(run_tool: Runner, stdin: Any, expected: str) -> None:
    assert expected in _error(run_tool("get_weather", stdin))


# --------------------------------------------------------------------------- convert_temperature


@pytest.mark.parametrize(
    ("value", "unit_from", "unit_to", "text"),
    [
        (100, "celsius", "fahrenheit", "100 °C = 212 °F"),
        (32, "fahrenheit", "celsius", "32 °F = 0 °C"),
        (0, "kelvin", "celsius", "0 K = -273.15 °C"),
        (37.5, "celsius", "kelvin", "37.5 °C = 310.65 K"),
        (-40, "celsius", "fahrenheit", "-40 °C = -40 °F"),
        (98.6, "fahrenheit", "celsius", "98.6 °F = 37 °C"),
        (300, "kelvin", "fahrenheit", "300 K = 80.33 °F"),
        (21, "celsius", "celsius", "21 °C = 21 °C"),
        # far beyond any real temperature, still finite: scientific notation, 15 significant digits
        (1.7e308, "celsius", "kelvin", "1.7e308 °C = 1.7e308 K"),
        (1e16, "celsius", "fahrenheit", "1e16 °C = 1.8e16 °F"),
        (1e307, "fahrenheit", "celsius", "1e307 °F = 5.55555555555556e306 °C"),
    ],
)
def test_convert_temperature(run_tool: Runner, value: float, unit_from: str, unit_to: str, text: str) -> None:
    args = {"value": value, "from": unit_from, "to": unit_to}
    jsonschema.validate(args, _tool_schema("convert_temperature", "input_schema"))
    result = _ok(run_tool("convert_temperature", args))
    assert result == {"content": [{"type": "text", "text": text}]}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"value": -500, "from": "celsius", "to": "kelvin"}, "-500 °C is below absolute zero"),
        ({"value": -1, "from": "kelvin", "to": "celsius"}, "-1 K is below absolute zero"),
        ({"value": -1e308, "from": "celsius", "to": "fahrenheit"}, "-1e308 °C is below absolute zero"),
        ({"value": 1e308, "from": "celsius", "to": "fahrenheit"},
         "1e308 °C is too large to convert to fahrenheit: the result is beyond the range of a 64-bit float"),
        ({"value": 1e308, "from": "fahrenheit", "to": "celsius"}, "1e308 °F is too large to convert to celsius"),
        ({"value": 1, "from": "rankine", "to": "celsius"},
         'unknown unit "rankine" for from; use celsius, fahrenheit or kelvin'),
        ({"value": 1, "from": "celsius", "to": 7}, "to must be a string, not a number"),
        ({"value": "hot", "from": "celsius", "to": "kelvin"}, "value must be a number, not a string"),
        ({"from": "celsius", "to": "kelvin"}, 'missing required argument "value"'),
    ],
)
def test_convert_temperature_errors(run_tool: Runner, args: dict[str, Any], expected: str) -> None:
    assert expected in _error(run_tool("convert_temperature", args))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.floats(allow_nan=False, allow_infinity=False),
       unit_from=st.sampled_from(UNITS), unit_to=st.sampled_from(UNITS))
def test_convert_temperature_never_answers_a_non_number(run_tool: Runner, value: float, unit_from: str,
                                                        unit_to: str) -> None:
    """Any finite input: a conversion whose numbers read back as finite floats, or an error -- never inf/NaN."""
    result = run_tool("convert_temperature", {"value": value, "from": unit_from, "to": unit_to}).json
    if "error" in result:
        assert "below absolute zero" in result["error"] or "too large to convert" in result["error"], result
        return
    text = result["content"][0]["text"]
    left, right = text.split(" = ")
    for side in (left, right):
        number = float(side.split(" ")[0])
        assert math.isfinite(number), text
    assert float(left.split(" ")[0]) == pytest.approx(value, rel=1e-14, abs=0.005), text


# --------------------------------------------------------------------------- the ABI itself


@pytest.mark.parametrize(
    ("stdin", "expected"),
    [
        ("{not json", "arguments are not valid JSON"),
        ("[1, 2]", "arguments must be a JSON object, not an array"),
        ('"London"', "arguments must be a JSON object, not a string"),
    ],
)
def test_bad_json_on_stdin(run_tool: Runner, stdin: str, expected: str) -> None:
    assert expected in _error(run_tool("get_weather", stdin))


def test_unknown_tool(run_tool: Runner) -> None:
    message = _error(run_tool("get_forecast", {}))
    assert 'unknown tool "get_forecast"' in message
    assert "get_weather" in message and "convert_temperature" in message


def test_tool_name_from_environment(run_tool: Runner) -> None:
    outcome = run_tool(None, {"value": 0, "from": "celsius", "to": "fahrenheit"},
                       env={"MCPKIT_TOOL": "convert_temperature"})
    assert _ok(outcome) == {"content": [{"type": "text", "text": "0 °C = 32 °F"}]}


def test_no_tool_name_at_all(run_tool: Runner) -> None:
    assert "no tool name" in _error(run_tool(None, {}))


def test_config_tools_match_the_module(run_tool: Runner) -> None:
    # Every tool config.yaml declares is one the module serves.
    for tool in CONFIG.tools:
        outcome = run_tool(tool.name, {})
        assert "unknown tool" not in outcome.stdout
