"""Hostile input: fuzzed tool-call arguments, raw protocol garbage, references and YAML bombs.

Whatever comes in, the answer is a clear error of the project's own kind, never a traceback,
and the server keeps serving. (config.yaml fuzzing and the billion-laughs bomb live in
tests/test_config.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hatch_mcpkit.errors import ConfigError, InvalidReferenceError
from hatch_mcpkit.reference import classify, parse_reference, parse_repository

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                              max_size=4),
                           max_leaves=25)
weather_args = st.dictionaries(
    st.sampled_from(["location", "units", "days", "", "__proto__", "location\u0000"]) | st.text(max_size=6),
    json_values | st.sampled_from(["Berlin", "Paris", "x" * 5000, "\ud7ff\ue000", "../../etc/passwd"]),
    max_size=4,
)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------- tool-call arguments


@pytest.mark.cargo
def test_fuzzed_arguments_through_the_runtime(example_runtime: Any) -> None:
    @FUZZ
    @given(tool=st.sampled_from(["get_weather", "convert_temperature"]), args=weather_args)
    def check(tool: str, args: dict[str, Any]) -> None:
        problems = example_runtime.validate_arguments(tool, args)
        assert isinstance(problems, list)
        for problem in problems:
            assert isinstance(problem, str) and problem.startswith("arguments"), problem
        if not problems:
            result = example_runtime.call(tool, args)
            assert result.reason in (None, "tool"), result.text  # the module answers; nothing crashes
            assert result.content and all(c["type"] == "text" for c in result.content)

    check()


@pytest.fixture
def mcp_session(example_bundle_dir: Path, tmp_path: Path) -> Iterator[tuple[Any, Any, Path]]:
    """(portal, session, stderr log): one server for a whole property test, driven from sync code."""
    from anyio.from_thread import start_blocking_portal
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    errlog = tmp_path / "server-stderr.log"
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "hatch_mcpkit", "server", str(example_bundle_dir), "-q"])
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def opened() -> Any:
        with open(errlog, "w") as err:
            async with stdio_client(params, errlog=err) as (read, write), ClientSession(read, write) as s:
                await s.initialize()
                yield s

    with start_blocking_portal() as portal, portal.wrap_async_context_manager(opened()) as session:
        yield portal, session, errlog


@pytest.mark.cargo
def test_fuzzed_arguments_through_the_mcp_server(mcp_session: tuple[Any, Any, Path]) -> None:
    from mcp.shared.exceptions import MCPError

    portal, session, errlog = mcp_session
    seen = {"invalid": 0, "unknown": 0, "answered": 0}

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(tool=st.sampled_from(["get_weather", "convert_temperature", "no_such_tool", ""]), args=weather_args)
    def check(tool: str, args: dict[str, Any]) -> None:
        try:
            res = portal.call(session.call_tool, tool, args)
        except MCPError as exc:  # an unknown tool (bad arguments are tool errors, SEP-1303)
            assert exc.code == -32602, exc
            assert "Unknown tool" in exc.message, exc.message
            assert tool not in ("get_weather", "convert_temperature")
            seen["unknown"] += 1
            return
        assert res.content and res.content[0].type == "text"
        if res.is_error and res.content[0].text.startswith(f"Invalid arguments for tool {tool}: arguments"):
            seen["invalid"] += 1
        seen["answered"] += 1

    check()
    assert seen["invalid"] > 0 and seen["unknown"] > 0
    res = portal.call(session.call_tool, "get_weather", {"location": "Berlin"})
    assert res.is_error is False
    assert "Traceback" not in errlog.read_text()


class RawServer:
    """The server over a raw pipe, to send what no well-behaved client would."""

    def __init__(self, bundle_dir: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "hatch_mcpkit", "server", str(bundle_dir), "-q"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stderr = b""
        self._err = threading.Thread(target=self._drain, daemon=True)
        self._err.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def send(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.rstrip(b"\n") + b"\n")
        self.proc.stdin.flush()

    def request(self, ident: int, method: str, params: Any = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": ident, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(json.dumps(msg).encode())

    def initialize(self, version: str = "2025-11-25", client: str = "raw") -> dict[str, Any]:
        """The handshake (request 1, then ``notifications/initialized``); the initialize result."""
        self.request(1, "initialize", {"protocolVersion": version, "capabilities": {},
                                       "clientInfo": {"name": client, "version": "0"}})
        result: dict[str, Any] = self.read_until(1)[-1]["result"]
        self.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        return result

    def read_until(self, ident: int, timeout: float = 20) -> list[dict[str, Any]]:
        """Every message up to and including the answer with ``id == ident``."""
        assert self.proc.stdout is not None
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"the server closed stdout; stderr: {self.stderr!r}")
            msg = json.loads(line)  # stdout carries only JSON-RPC
            out.append(msg)
            if msg.get("id") == ident:
                return out
        raise AssertionError(f"no answer to request {ident}")

    def close(self) -> bytes:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.join(5)
        return self.stderr


def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.cargo
def test_raw_protocol_garbage_never_kills_the_server(example_bundle_dir: Path) -> None:
    from mcp.types import LATEST_PROTOCOL_VERSION

    server = RawServer(example_bundle_dir)
    try:
        assert server.initialize(LATEST_PROTOCOL_VERSION)["serverInfo"]["name"] == "weather-tool"
        garbage: list[tuple[bytes, bool]] = [  # (line, answered with an error)
            (b'{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"get_weather","arguments":"Berlin"}}',
             True),
            (b'{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"get_weather","arguments":[1,2]}}',
             True),
            (b'{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":12345}}', True),
            (b'{"jsonrpc":"2.0","id":13,"method":"tools/call","params":{"name":"get_weather","arguments":'
             b'{"location":' + _nested(3000).encode() + b"}}}", False),  # the SDK drops it unread
            (b'{"jsonrpc":"2.0","id":14,"method":"tools/call","params":{"name":"get_weather","arguments":'
             b'{"location":1e999}}}', True),
            (b'{"jsonrpc":"2.0","id":15,"method":"no/such/method"}', True),
            (b'{"jsonrpc":"2.0","id":16,"method":"tools/call","params":{"name":"get_weather","arguments":'
             b'{"location":"' + b"A" * 2_000_000 + b'"}}}', False),
            (b"{not json at all", False),
            (b"\xff\xfe\x00 invalid utf-8", False),
            (b"[]", False),
            (b'{"jsonrpc":"2.0","id":{"evil":1},"method":"ping"}', False),
            (_nested(100_000).encode(), False),
        ]
        ident = 100
        for line, errors in garbage:
            server.send(line)
            ident += 1
            server.request(ident, "ping")
            messages = server.read_until(ident)
            assert messages[-1].get("result") == {}, messages[-1]
            if errors:
                asked = json.loads(line)["id"]
                if not any(m.get("id") == asked for m in messages):  # checked in a worker: may come after the ping
                    messages = messages[:-1] + server.read_until(asked)
                answers = [m for m in messages if m.get("id") == asked]
                assert answers, f"no answer to {line[:80]!r}"
                answer = answers[0]
                assert "error" in answer or answer.get("result", {}).get("isError") is True, answer
        # and real work still gets done
        server.request(999, "tools/call", {"name": "get_weather", "arguments": {"location": "Paris"}})
        final = server.read_until(999)[-1]
        assert final["result"]["isError"] is False
    finally:
        stderr = server.close()
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")[-3000:]


@pytest.mark.cargo
def test_numbers_json_cannot_carry_are_argument_errors(example_bundle_dir: Path) -> None:
    """1e400 (past the float range), NaN and Infinity are accepted by JSON parsers as floats that JSON
    itself cannot write back: a SEP-1303 tool error naming the field, never passed on to the module."""
    server = RawServer(example_bundle_dir)
    try:
        server.initialize()
        for n, (number, needle) in enumerate([(b"1e400", b"beyond the range of a 64-bit float"),
                                              (b"-1e400", b"beyond the range of a 64-bit float"),
                                              (b"NaN", b"NaN"), (b"Infinity", b"beyond the range")]):
            server.send(b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"convert_temperature",'
                        b'"arguments":{"value":%s,"from":"celsius","to":"kelvin"}}}' % (10 + n, number))
            answer = server.read_until(10 + n)[-1]
            assert answer["result"]["isError"] is True, answer
            text = answer["result"]["content"][0]["text"]
            assert text.startswith("Invalid arguments for tool convert_temperature: arguments.value: "), text
            assert needle.decode() in text, text
        server.request(20, "tools/call", {"name": "convert_temperature",
                                          "arguments": {"value": 1e308, "from": "celsius", "to": "fahrenheit"}})
        answer = server.read_until(20)[-1]["result"]
        assert answer["isError"] is True and "too large to convert" in answer["content"][0]["text"], answer
        assert "inf" not in answer["content"][0]["text"]
    finally:
        stderr = server.close()
    assert b"Traceback" not in stderr


# --------------------------------------------------------------------------- references


reference_text = (
    st.sampled_from(["", "oci://", "docker.io/", "localhost:5000/", "[::1]:5000/", "127.0.0.1:5000/",
                     "https://", "file://", "ghcr.io/org/"])
    .flatmap(lambda prefix: st.text(alphabet="abz09.:/@_-[]%~ \\\x00\u00e9#=A", max_size=40)
             .map(lambda rest: prefix + rest))
) | st.text(max_size=60)


@settings(max_examples=600, deadline=None)
@given(reference_text)
def test_reference_parsing_only_ever_raises_reference_error(text: str) -> None:
    for parse in (parse_reference, parse_repository):
        try:
            parsed = parse(text)
        except InvalidReferenceError as exc:
            assert str(exc), "the message says what is wrong"
            continue
        registry = parsed.registry
        assert registry and not any(c in registry for c in "/@ \\\x00"), registry
        if parse is parse_reference:
            ref = parsed
            parts = ref.cache_parts()  # type: ignore[union-attr]
            for part in parts:  # each becomes one directory under bundles/
                assert part and part not in (".", "..") and "/" not in part and "\x00" not in part, parts
                assert not PurePosixPath(part).is_absolute()
            assert parse_reference(str(ref)) == ref, "a parsed reference reads back the same"


@settings(max_examples=300, deadline=None)
@given(reference_text)
def test_classify_only_ever_raises_reference_error(text: str) -> None:
    try:
        classify(text, cwd=Path("/nonexistent-mcpkit-cwd"))
    except InvalidReferenceError as exc:
        assert str(exc)


@pytest.mark.parametrize(
    "text",
    [
        "evil.com@attacker.com/x/y:1", "host:0/x/y", "host:65536/x/y", "host:99999999999/x", "[::1/x/y",
        "[not-ipv6]:5000/x/y", "a_b.example.com/x/y", "-bad.example.com/x/y", "bad-.example.com/x/y",
        "a..b.com/x/y", "exämple.com/x/y", "host:5000:6000/x/y", "host:/x/y", "ho st.com/x/y",
        "localhost:5000/../x:1", "localhost:5000/x/../../y", "localhost:5000/X/Y",
        "localhost:5000/x//y", "localhost:5000/x/y:..", "localhost:5000/x/y:-tag", "localhost:5000/x/y@sha256:abc",
        "localhost:5000/x/y@md5:" + "0" * 32, "oci://", "oci:///x/y", "ftp://host/x", "host%2fevil.com/x/y",
        "a" * 300 + ".com/x/y", "localhost:5000/" + "a" * 300,
    ],
)
def test_hostile_registry_hosts_and_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_reference(text)
    assert "reference" in str(info.value) or "registry" in str(info.value)


@pytest.mark.parametrize("host", ["evil.com@attacker.com", "a_b.example.com", "-bad.com", "[::1", "host:0"])
def test_hostile_distribution_registry_is_a_config_error(tmp_path: Path, host: str) -> None:
    from hatch_mcpkit.config import load_config

    (tmp_path / "config.yaml").write_text(
        'version: "1.0"\nserver: {name: t, version: 1.0.0}\nmcp:\n  tools:\n    - {name: a, input_schema: '
        f'{{type: object}}}}\ndistribution:\n  registry: "{host}/org/t"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "config.yaml", {})
    assert "distribution.registry" in str(info.value)


# --------------------------------------------------------------------------- YAML bombs beyond billion laughs


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 20_000 + "]" * 20_000, ""),
        ("a: " + "{b: " * 20_000 + "1" + "}" * 20_000, ""),
        ("a: &x\n" + "".join(f"  k{i}: v\n" for i in range(60_000)), ""),
        ("x: " + "y" * (2 * 1024 * 1024) + "\n", "larger than"),
        ("- " + "\n- ".join(["[1, 2, 3]"] * 40_000), ""),
    ],
    ids=["deep-flow-lists", "deep-flow-maps", "very-many-keys", "huge-file", "many-nodes"],
)
def test_pathological_yaml_is_bounded(tmp_path: Path, text: str, message: str) -> None:
    from hatch_mcpkit.config import load_config

    path = tmp_path / "config.yaml"
    path.write_text(text)
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert time.monotonic() - start < 10
    assert str(path) in str(info.value)
    assert message in str(info.value)


# --------------------------------------------------------------------------- hostile modules, many times over


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.mark.cargo
@pytest.mark.parametrize(
    ("tool", "args", "reason"),
    [
        ("spawn_work", {}, "trap"),  # tries threads and processes, then recurses without bound
        ("no_stdin", {"blob": "z" * 200_000}, None),  # never reads a payload bigger than the pipe buffer
        ("membomb", {}, "memory"),
    ],
)
def test_two_hundred_hostile_calls_leak_no_threads_or_memory(hostile_bundle_dir: Path, tool: str,
                                                              args: dict[str, Any], reason: str | None) -> None:
    import gc
    import threading as th

    from hatch_mcpkit.runtime import Runtime
    from tests.plugins.runtime import HOSTILE_ENV

    with Runtime.from_dir(hostile_bundle_dir, environ=HOSTILE_ENV) as rt:
        for _ in range(20):  # warm up: engine, ticker, allocator arenas
            rt.call(tool, args)
        gc.collect()  # a trap's traceback holds its store (and stdin fd) until the cycle collector runs
        threads, fds = th.active_count(), len(list(Path("/proc/self/fd").iterdir()))
        rss = _rss_kib()
        start = time.monotonic()
        for _ in range(200):
            result = rt.call(tool, args)
            assert result.reason == reason, result.text
        elapsed = time.monotonic() - start
        gc.collect()
        grown = _rss_kib() - rss
        assert th.active_count() <= threads, [t.name for t in th.enumerate()]
        assert len(list(Path("/proc/self/fd").iterdir())) <= fds + 2, "file descriptors leak per call"
        assert grown < 64 * 1024, f"RSS grew by {grown} KiB over 200 calls"
        assert elapsed < 60
        assert rt.call("echo", {"still": "ok"}).reason is None
