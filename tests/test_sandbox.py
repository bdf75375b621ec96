"""Each misbehaviour of the hostile guest is contained, and the next call still works."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from hatch_mcpkit.errors import SandboxError
from hatch_mcpkit.runtime import CallHandle, Runtime, parse_allow_dir

pytestmark = pytest.mark.cargo


def _still_works(rt: Runtime) -> None:
    result = rt.call("echo", {"after": "incident"})
    assert not result.is_error, result.text
    assert json.loads(result.text) == {"after": "incident"}


@pytest.mark.parametrize(
    ("tool", "reason", "message", "stderr"),
    [
        ("spin", "timeout", "timed out after 1000 ms", "spinning forever"),
        ("sleep", "timeout", "timed out after 1000 ms", "sleeping for an hour"),
        ("burn", "fuel", "ran out of fuel (20000000 units)", "spinning forever"),
        ("membomb", "memory", "exceeded memory limit of 32 MiB", "memory allocation of"),
        ("flood", "output", "output exceeded the limit of 64 KiB", ""),
        ("trap", "trap", "panicked", "deliberate panic in the trap tool"),
        ("exit_code", "exit", "exited with status 3", "exiting with status 3"),
        ("spawn_work", "trap", "trapped:", "processes refused"),
    ],
)
def test_misbehaviour_is_an_error_with_a_reason(hostile_runtime: Runtime, tool: str, reason: str, message: str,
                                                 stderr: str) -> None:
    started = time.monotonic()
    result = hostile_runtime.call(tool, {})
    elapsed = time.monotonic() - started
    assert result.is_error
    assert result.reason == reason, result.text
    assert message in result.text
    assert stderr in result.stderr_tail
    if stderr:
        assert "--- end of stderr ---" in result.text
    assert elapsed < 5, f"{tool} was not stopped in time ({elapsed:.1f}s)"
    _still_works(hostile_runtime)


def test_timeout_is_close_to_the_limit(hostile_runtime: Runtime) -> None:
    result = hostile_runtime.call("spin", {})
    assert result.reason == "timeout"
    assert 950 <= result.duration_ms < 1500


def test_flood_output_is_cut_at_the_cap(hostile_runtime: Runtime) -> None:
    result = hostile_runtime.call("flood", {})
    assert result.reason == "output"
    assert len(result.text) < 10_000  # the 100 MB never reach the client


def test_no_stdin_tool_answers(hostile_runtime: Runtime) -> None:
    big = {"blob": "z" * 300_000}  # larger than a pipe buffer, never read by the module
    result = hostile_runtime.call("no_stdin", big)
    assert not result.is_error
    assert result.text == "answered without reading stdin"


def test_environment_has_only_granted_keys(hostile_runtime: Runtime) -> None:
    env = json.loads(hostile_runtime.call("env_dump", {}).text)
    assert env == {"MCPKIT_TOOL": "env_dump", "HOSTILE_ALLOWED": "visible-value"}
    assert "must-not-leak" not in json.dumps(env)


def test_environment_grant_absent_on_host_is_not_invented(hostile_bundle_dir: Path) -> None:
    with Runtime.from_dir(hostile_bundle_dir, environ={"OTHER": "1"}) as rt:
        assert json.loads(rt.call("env_dump", {}).text) == {"MCPKIT_TOOL": "env_dump"}


def test_environment_can_be_extended_and_narrowed(hostile_bundle_dir: Path) -> None:
    environ = {"HOSTILE_ALLOWED": "a", "EXTRA_KEY": "b", "HOSTILE_SECRET": "c"}
    with Runtime.from_dir(hostile_bundle_dir, environ=environ, extra_env_keys=["EXTRA_KEY"],
                          deny_env_keys=["HOSTILE_ALLOWED"]) as rt:
        assert json.loads(rt.call("env_dump", {}).text) == {"MCPKIT_TOOL": "env_dump", "EXTRA_KEY": "b"}


def test_host_files_are_out_of_reach(hostile_runtime: Runtime) -> None:
    for path in ("/etc/passwd", "/data/../../etc/passwd", "/proc/self/environ", "/"):
        result = hostile_runtime.call("read_file", {"path": path})
        assert result.is_error, f"{path} was readable: {result.text[:100]}"
        assert "root:" not in result.text
    _still_works(hostile_runtime)


def test_bundle_data_is_readable_but_not_writable(hostile_runtime: Runtime, hostile_bundle_dir: Path) -> None:
    result = hostile_runtime.call("read_file", {"path": "/data/hello.txt"})
    assert not result.is_error and result.text == "hello from the bundle\n"
    result = hostile_runtime.call("write_file", {"path": "/data/pwned.txt", "text": "x"})
    assert result.is_error and "cannot write /data/pwned.txt" in result.text
    result = hostile_runtime.call("write_file", {"path": "/data/hello.txt", "text": "x"})
    assert result.is_error
    assert not (hostile_bundle_dir / "data" / "pwned.txt").exists()
    assert (hostile_bundle_dir / "data" / "hello.txt").read_text() == "hello from the bundle\n"


def test_read_only_and_read_write_grants(hostile_bundle_dir: Path, tmp_path: Path) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "note.txt").write_text("keep me")
    grants = [parse_allow_dir(f"{ro}:/ro"), parse_allow_dir(f"{rw}:/rw:rw")]
    with Runtime.from_dir(hostile_bundle_dir, extra_grants=grants, environ={}) as rt:
        assert rt.call("read_file", {"path": "/ro/note.txt"}).text == "keep me"
        denied = rt.call("write_file", {"path": "/ro/note.txt", "text": "overwritten"})
        assert denied.is_error
        assert (ro / "note.txt").read_text() == "keep me"
        assert rt.call("write_file", {"path": "/ro/new.txt", "text": "x"}).is_error
        assert not (ro / "new.txt").exists()
        ok = rt.call("write_file", {"path": "/rw/out.txt", "text": "written"})
        assert not ok.is_error, ok.text
        assert (rw / "out.txt").read_text() == "written"
        # an escape out of the rw grant fails
        assert rt.call("write_file", {"path": "/rw/../escape.txt", "text": "x"}).is_error
        assert not (tmp_path / "escape.txt").exists()
        assert any("may read and write" in w and str(rw) in w for w in rt.warnings())


def test_deny_dir_removes_a_config_grant(hostile_bundle_dir: Path) -> None:
    with Runtime.from_dir(hostile_bundle_dir, deny_guests=["/data"], environ={}) as rt:
        assert rt.call("read_file", {"path": "/data/hello.txt"}).is_error
        assert rt.warnings() == []


def test_missing_grant_directory_is_a_clear_error(hostile_bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SandboxError) as info:
        Runtime.from_dir(hostile_bundle_dir, extra_grants=[parse_allow_dir(f"{tmp_path}/nope:/x")])
    assert "nope" in str(info.value) and "not a directory" in str(info.value)


def test_cancellation_stops_a_running_call(hostile_runtime: Runtime) -> None:
    handle = CallHandle()
    timer = threading.Timer(0.2, handle.cancel)
    timer.start()
    started = time.monotonic()
    result = hostile_runtime.call("spin", {}, handle=handle)
    assert result.is_error and result.reason == "cancelled"
    assert time.monotonic() - started < 0.8
    _still_works(hostile_runtime)


def test_concurrent_calls_are_isolated(hostile_runtime: Runtime) -> None:
    results: dict[int, object] = {}

    def work(i: int) -> None:
        results[i] = hostile_runtime.call("spin" if i == 0 else "echo", {"i": i})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(1, 4):
        r = results[i]
        assert not r.is_error and json.loads(r.text) == {"i": i}  # type: ignore[attr-defined]
    assert results[0].reason == "timeout"  # type: ignore[attr-defined]


@pytest.mark.parametrize("spec", ["", ":/x", "/a:/b:/c", "/a:relative", "/a:/"])
def test_allow_dir_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(SandboxError):
        parse_allow_dir(spec)


def test_allow_dir_forms(tmp_path: Path) -> None:
    g = parse_allow_dir(str(tmp_path))
    assert (g.uri, g.guest, g.access) == (f"fs://{tmp_path}", str(tmp_path), ("read",))
    g = parse_allow_dir(f"{tmp_path}:/w:rw")
    assert (g.guest, g.writable) == ("/w", True)
    g = parse_allow_dir(f"{tmp_path}:ro")
    assert (g.guest, g.writable) == (str(tmp_path), False)
