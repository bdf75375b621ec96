"""The MCP Inspector's command line (``inspector --cli``, npm, pinned in tests/fixtures/inspector and
installed by .ci/setup) drives the real ``mcpkit server`` over stdio.

The Inspector is built on the official TypeScript client, which checks every result against the
tool's ``outputSchema``: none of our answers may be rejected. Bad arguments come back as a tool
result with ``isError`` (SEP-1303), which the Inspector reports as such (exit 5), never as a protocol
error. Its ``--strict`` mode checks the listed schemas for portability across clients. It runs with no
network at all where the machine allows it (``unshare -n``), so nothing is fetched at test time.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests._support import need

pytestmark = pytest.mark.cargo

REPO = Path(__file__).resolve().parents[1]
INSPECTOR = REPO / "tests" / "fixtures" / "inspector" / "node_modules" / ".bin" / "inspector"
SCHEMA = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
TOOL_IS_ERROR = 5  # the Inspector's exit code for a result with isError: true


@functools.cache
def _offline_prefix() -> tuple[str, ...]:
    """``unshare -n`` (a network namespace with nothing in it) where this machine allows one."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True, check=False).returncode == 0:
        return (unshare, "-n")
    return ()


@pytest.fixture(scope="module")
def inspect(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``inspect(bundle, *options) -> (exit code, stdout JSON, stderr)``."""
    need(shutil.which("node") and INSPECTOR.exists(),
         "the MCP Inspector (.ci/setup: npm ci --prefix tests/fixtures/inspector)")
    home = tmp_path_factory.mktemp("inspector-home")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home), "MCP_CATALOG_PATH": str(home / "mcp.json"),
           "NO_UPDATE_NOTIFIER": "1", "npm_config_offline": "true"}

    def run(bundle: Path, *options: str) -> tuple[int, Any, str]:
        command = [*_offline_prefix(), str(INSPECTOR), "--cli", *options,
                   "--", sys.executable, "-m", "hatch_mcpkit", "server", str(bundle), "-q"]
        proc = subprocess.run(command, capture_output=True, timeout=120, check=False, env=env)
        stderr = proc.stderr.decode(errors="replace")
        try:
            out = json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"not JSON (exit {proc.returncode}): {proc.stdout[-2000:]!r}\n{stderr}") from None
        return proc.returncode, out, stderr

    return run


def test_inspector_lists_and_calls_the_example(inspect: Any, example_bundle_dir: Path) -> None:
    code, listed, stderr = inspect(example_bundle_dir, "--method", "tools/list", "--strict")
    assert code == 0, stderr  # --strict: no schema portability problem of error severity
    tools = {t["name"]: t for t in listed["tools"]}
    assert list(tools) == ["get_weather", "convert_temperature"]
    assert tools["get_weather"]["outputSchema"]["properties"]["temperature_c"]

    code, result, stderr = inspect(example_bundle_dir, "--method", "tools/call", "--tool-name", "get_weather",
                                   "--tool-arg", "location=Berlin")
    assert code == 0, stderr
    assert result["isError"] is False and result["structuredContent"]["conditions"] == "overcast"
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"]

    code, result, stderr = inspect(example_bundle_dir, "--method", "tools/call", "--tool-name", "convert_temperature",
                                   "--tool-arg", "value=0", "from=celsius", "to=kelvin")
    assert code == 0, stderr
    assert result["content"][0]["text"] == "0 °C = 273.15 K"


def test_inspector_gets_bad_arguments_as_a_tool_error(inspect: Any, example_bundle_dir: Path) -> None:
    """SEP-1303: the result is delivered (isError, naming the field), not a JSON-RPC error."""
    code, result, stderr = inspect(example_bundle_dir, "--method", "tools/call", "--tool-name", "get_weather",
                                   "--tool-arg", "loc=Berlin")
    assert code == TOOL_IS_ERROR, stderr
    assert result["isError"] is True
    text = result["content"][0]["text"]
    assert text.startswith("Invalid arguments for tool get_weather: ") and "'location' is a required property" in text
    assert "tool_is_error" in stderr  # the Inspector's own words: a tool result, not a protocol failure


def test_inspector_never_rejects_an_output_schema_result(inspect: Any, hostile_wasm: Path, tmp_path: Path) -> None:
    """A tool with outputSchema: structuredContent that validates, or isError saying why -- never a result
    the client's own outputSchema check throws away."""
    from tests.test_schema_attacks import write_bundle

    bundle = write_bundle(tmp_path / "b", hostile_wasm, [
        {"name": "echo", "description": "JSON object", "title": "Echo", "annotations": {"readOnlyHint": True},
         "input_schema": {"type": "object"}, "output_schema": SCHEMA},
        {"name": "argv_dump", "description": "a JSON array", "input_schema": {"type": "object"},
         "output_schema": SCHEMA},
        {"name": "nap", "description": "text content", "input_schema": {"type": "object"}, "output_schema": SCHEMA},
    ])
    code, listed, stderr = inspect(bundle, "--method", "tools/list", "--strict")
    assert code == 0, stderr
    assert listed["tools"][0]["title"] == "Echo" and listed["tools"][0]["annotations"] == {"readOnlyHint": True}

    code, result, stderr = inspect(bundle, "--method", "tools/call", "--tool-name", "echo", "--tool-arg", "x=3")
    assert code == 0, stderr
    assert result["structuredContent"] == {"x": 3}

    code, result, stderr = inspect(bundle, "--method", "tools/call", "--tool-name", "echo", "--tool-arg", "x=three")
    assert code == TOOL_IS_ERROR, stderr
    assert result["isError"] is True and "output.x" in result["content"][0]["text"]
    assert "structuredContent" not in result

    code, result, stderr = inspect(bundle, "--method", "tools/call", "--tool-name", "argv_dump")
    assert code == TOOL_IS_ERROR, stderr
    assert result["isError"] is True and "output_schema" in result["content"][0]["text"]

    code, result, stderr = inspect(bundle, "--method", "tools/call", "--tool-name", "nap")
    assert code == TOOL_IS_ERROR, stderr  # the module printed text where JSON was declared
    assert result["isError"] is True and "declares an output_schema" in result["content"][0]["text"]
