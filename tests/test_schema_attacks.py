"""Hostile schemas in a bundle's config.yaml, against the real server over stdio.

A schema must never make the host fetch anything (a ``$ref`` to a local web server
or to ``file:///etc/hostname``), and no schema can stop the server: a catastrophic
``pattern`` or a schema built to explode is checked off the event loop, on a regex
engine that cannot backtrack, within a time budget, so ``ping`` is answered and the
end of input still ends the process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from tests.test_server import SERVER, session

pytestmark = pytest.mark.cargo

EVIL = "a" * 40 + "!"  # ^(a+)+$ takes 2**40 steps on a backtracking engine


def write_bundle(dest: Path, wasm: Path, tools: list[dict[str, Any]], timeout_ms: int = 1000) -> Path:
    """A bundle of the hostile-tool module whose config.yaml declares ``tools`` (all served by ``echo``)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(wasm, dest / "module.wasm")
    config = {"version": "1.0", "server": {"name": "schema-attack", "version": "0.1.0"},
              "mcp": {"tools": tools}, "policy": {"limits": {"timeout_ms": timeout_ms}}}
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


async def call(s: Any, tool: str, arguments: dict[str, Any]) -> tuple[bool, str]:
    """(is an error, text) of a tools/call, whether bad arguments come back as a result or a JSON-RPC error."""
    from mcp.shared.exceptions import MCPError

    try:
        res = await s.call_tool(tool, arguments)
    except MCPError as exc:
        return True, exc.message
    return bool(res.is_error), "".join(getattr(item, "text", "") for item in res.content)


def _hostname() -> str:
    return Path("/etc/hostname").read_text().strip()


# --------------------------------------------------------------------------- $ref


def test_remote_and_file_refs_refuse_the_bundle_and_fetch_nothing(
        hostile_wasm: Path, tmp_path: Path, schema_host: tuple[str, list[str]]) -> None:
    url, seen = schema_host
    bundle = write_bundle(tmp_path / "b", hostile_wasm, [
        {"name": "echo", "description": "remote", "input_schema": {
            "type": "object", "properties": {"a": {"$ref": f"{url}/x"}}}},
        {"name": "trap", "description": "file", "input_schema": {"type": "object"},
         "output_schema": {"type": "object", "properties": {"h": {"$ref": "file:///etc/hostname"}}}},
    ])
    t0 = time.monotonic()
    proc = subprocess.run([*SERVER, "server", str(bundle)], input=b"", capture_output=True, timeout=60,
                          check=False)
    assert time.monotonic() - t0 < 30
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == b""
    err = proc.stderr.decode()
    assert "$ref" in err and "mcp.tools[0].input_schema" in err and "mcp.tools[1].output_schema" in err, err
    assert seen == []
    assert "fetched-from-the-network" not in err
    hostname = _hostname()
    if len(hostname) >= 4:  # a name this short could appear by chance
        assert hostname not in err.replace("/etc/hostname", "")


def test_refs_through_an_id_base_resolve_inside_the_schema_only(
        hostile_wasm: Path, tmp_path: Path, schema_host: tuple[str, list[str]]) -> None:
    """``$id`` makes ``#...`` refs mean a URL or a file; they still never leave the schema."""
    url, seen = schema_host
    bundle = write_bundle(tmp_path / "b", hostile_wasm, [
        {"name": "echo", "description": "remote base", "input_schema": {
            "$id": f"{url}/schema", "type": "object", "properties": {"a": {"$ref": "#/$defs/nowhere"}}}},
        {"name": "exit_zero", "description": "file base", "input_schema": {
            "$id": "file:///etc/hostname", "type": "object", "properties": {"a": {"$ref": "#/x"}}}},
    ])

    async def go() -> None:
        async with session("server", str(bundle)) as s:
            for tool in ("echo", "exit_zero"):
                is_error, text = await call(s, tool, {"a": 1})
                with anyio.fail_after(1):
                    await s.send_ping()
                assert is_error and "nothing is ever fetched" in text, (tool, text)
                assert "fetched-from-the-network" not in text
                hostname = _hostname()
                if len(hostname) >= 4:
                    assert hostname not in text.replace("/etc/hostname", "")
            res = await s.call_tool("echo", {})  # no "a": nothing to resolve, the call runs
            assert res.is_error is False

    anyio.run(go)
    assert seen == []


# --------------------------------------------------------------------------- time


def _pinged_while_calling(bundle: Path, tool: str, arguments: dict[str, Any]) -> tuple[tuple[bool, str], float]:
    """Call ``tool``; 0.1 s in, ping. Returns ((is an error, text), seconds the ping took)."""
    out: dict[str, Any] = {}

    async def go() -> None:
        async with session("server", str(bundle)) as s:
            async def calling() -> None:
                out["res"] = await call(s, tool, arguments)

            async with anyio.create_task_group() as tg:
                tg.start_soon(calling)
                await anyio.sleep(0.1)
                t0 = time.monotonic()
                with anyio.fail_after(5):
                    await s.send_ping()
                out["ping"] = time.monotonic() - t0
            assert (await s.call_tool(tool, {})).is_error is False  # still serving

    anyio.run(go)
    return out["res"], out["ping"]


def _eof_ends_the_server(bundle: Path, tool: str, arguments: dict[str, Any]) -> float:
    """Start a call, close stdin while it is in flight; seconds until the process is gone."""
    proc = subprocess.Popen([*SERVER, "server", str(bundle), "-q"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    msgs = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": arguments}},
    ]
    proc.stdin.write(json.dumps(msgs[0]).encode() + b"\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["id"] == 1
    proc.stdin.write(b"".join(json.dumps(m).encode() + b"\n" for m in msgs[1:]))
    proc.stdin.flush()
    time.sleep(0.2)  # the call is being checked now
    t0 = time.monotonic()
    proc.stdin.close()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the server ignored the end of its input") from None
    finally:
        proc.stdout.close()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
    assert b"Traceback" not in err, err.decode(errors="replace")[-2000:]
    return time.monotonic() - t0


def test_catastrophic_pattern_does_not_block_the_server(hostile_wasm: Path, tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}},
              "patternProperties": {"^(x+x+)+y$": {"type": "string"}}}
    bundle = write_bundle(tmp_path / "b", hostile_wasm, [{"name": "echo", "description": "redos",
                                                          "input_schema": schema}])
    (is_error, text), ping = _pinged_while_calling(bundle, "echo", {"s": EVIL, "x" * 40: "v"})
    assert ping < 1.0
    assert is_error and "arguments.s" in text and "does not match" in text, text
    assert _eof_ends_the_server(bundle, "echo", {"s": EVIL, "x" * 40: "v"}) < 5


def test_catastrophic_pattern_in_an_output_schema_does_not_block_the_server(hostile_wasm: Path,
                                                                           tmp_path: Path) -> None:
    """The guest's result is checked against output_schema on the same engine: echo returns the evil string."""
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}}
    bundle = write_bundle(tmp_path / "b", hostile_wasm, [{"name": "echo", "description": "redos out",
                                                          "input_schema": {"type": "object"},
                                                          "output_schema": schema}])
    (is_error, text), ping = _pinged_while_calling(bundle, "echo", {"s": EVIL})
    assert ping < 1.0
    assert is_error and "output.s" in text and "does not match" in text, text


def test_an_exploding_schema_is_stopped_by_the_time_budget(hostile_wasm: Path, tmp_path: Path) -> None:
    """Nested anyOf through $ref: 2**40 subschema checks. The budget stops it; ping and EOF still work."""
    defs: dict[str, Any] = {f"n{i}": {"anyOf": [{"$ref": f"#/$defs/n{i + 1}"}, {"$ref": f"#/$defs/n{i + 1}"}]}
                            for i in range(40)}
    defs["n40"] = {"type": "string"}
    schema = {"type": "object", "$defs": defs, "properties": {"v": {"$ref": "#/$defs/n0"}}}
    bundle = write_bundle(tmp_path / "b", hostile_wasm, [{"name": "echo", "description": "bomb",
                                                          "input_schema": schema}])
    t0 = time.monotonic()
    (is_error, text), ping = _pinged_while_calling(bundle, "echo", {"v": 5})
    assert ping < 1.0
    assert is_error and "validation took longer than" in text, text
    assert time.monotonic() - t0 < 30
    assert _eof_ends_the_server(bundle, "echo", {"v": 5}) < 5


def test_unique_items_over_many_objects_is_linear(hostile_wasm: Path, tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"v": {"type": "array", "uniqueItems": True}}}
    bundle = write_bundle(tmp_path / "b", hostile_wasm, [{"name": "echo", "description": "uniq",
                                                          "input_schema": schema}])
    items = [{"k": i} for i in range(20_000)]  # 2*10**8 comparisons the quadratic way

    async def go() -> None:
        async with session("server", str(bundle)) as s:
            res = await s.call_tool("echo", {"v": items})
            assert res.is_error is False
            assert len(json.loads(res.content[0].text)["v"]) == 20_000

    anyio.run(go)


# --------------------------------------------------------------------------- the validation layer itself


def test_the_registry_never_retrieves_even_when_the_static_check_is_bypassed(
        schema_host: tuple[str, list[str]]) -> None:
    """The second wall: a validator whose schema skipped schema_problems still fetches nothing."""
    from jsonschema import validators
    from referencing import Registry

    from hatch_mcpkit import _validation

    url, seen = schema_host
    cls = _validation._safe_class(validators.Draft202012Validator)
    for ref in (f"{url}/x", "file:///etc/hostname"):
        validator = cls({"properties": {"a": {"$ref": ref}}}, registry=Registry(
            retrieve=_validation._refuse_retrieval))  # type: ignore[call-arg]
        problems = _validation._problems(validator, {"a": 1}, "arguments", 1.0, None)
        assert len(problems) == 1 and "nothing is ever fetched" in problems[0], problems
        assert ref in problems[0]
    assert seen == []


@pytest.mark.parametrize(("schema", "needle"), [
    ({"properties": {"a": {"$ref": "http://example.com/s"}}}, "properties.a.$ref"),
    ({"items": [{"$dynamicRef": "other.json#x"}]}, "items[0].$dynamicRef"),
    ({"$schema": "https://example.com/my-dialect"}, "unknown JSON Schema dialect"),
    ({"properties": {"a": {"pattern": "(?=x)"}}}, "properties.a.pattern"),
    ({"patternProperties": {"(a)\\1": {}}}, "back-references"),
    ({"patternProperties": {"^x": {}}, "unevaluatedProperties": False}, "unevaluatedProperties"),
])
def test_schema_problems_name_the_place(schema: dict[str, Any], needle: str) -> None:
    from hatch_mcpkit._validation import schema_problems

    found = schema_problems(schema)
    assert found and any(needle in where or needle in message for where, message in found), found


def test_ecma_patterns_on_re2() -> None:
    from hatch_mcpkit._validation import build_validator

    validator = build_validator({"type": "object", "properties": {
        "word": {"type": "string", "pattern": "^\\u00e9[a-z]+$"},
        "code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"}}, "additionalProperties": False,
        "patternProperties": {"^x-": {"type": "integer"}}})
    assert not list(validator.iter_errors({"word": "\u00e9te", "code": "AB-123", "x-n": 1}))
    assert list(validator.iter_errors({"word": "ete"}))
    assert list(validator.iter_errors({"code": "AB-12"}))
    assert list(validator.iter_errors({"x-n": "one"}))
    assert list(validator.iter_errors({"other": 1}))


def test_unevaluated_keywords_never_reach_pythons_re() -> None:
    """Pins the dependency: the unevaluatedProperties path would use ``re`` on patterns."""
    from hatch_mcpkit._validation import UnsafeSchemaError, build_validator

    with pytest.raises(UnsafeSchemaError, match="unevaluatedProperties"):
        build_validator({"patternProperties": {"^(a+)+$": {}}, "unevaluatedProperties": False})


def test_validation_is_fast_enough_for_every_call() -> None:
    from hatch_mcpkit._validation import build_validator

    validator = build_validator({"type": "object", "properties": {"s": {"pattern": "^(a+)+$"}}})
    t0 = time.perf_counter()
    assert list(validator.iter_errors({"s": "a" * 100_000 + "!"}))
    assert time.perf_counter() - t0 < 5  # linear: milliseconds; a backtracking engine: forever
