"""Stopping ``mcpkit server``: Ctrl-C / SIGINT and SIGTERM, idle and mid-call, on a terminal and on pipes.

The real server, started as a user or an MCP client starts it: under a pseudo-terminal (where
Ctrl-C is a keystroke the terminal turns into SIGINT) and with plain pipes. It must stop promptly,
cancel a call in flight, exit 130 after Ctrl-C / SIGINT and 0 after SIGTERM or the end of input
(the codes the HTTP server uses too), and print no traceback.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.cargo

SERVER = [sys.executable, "-m", "hatch_mcpkit", "server"]
PROMPT_S = 5.0  # "promptly": a stopped call ends at its next 10 ms tick; this bound only absorbs a loaded machine
HELLO = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "signals", "version": "0"}}


@pytest.fixture(scope="module")
def slow_bundle(hostile_wasm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hostile module's ``spin`` with a one-minute timeout: a call that runs until it is stopped."""
    from tests.test_schema_attacks import write_bundle

    return write_bundle(tmp_path_factory.mktemp("slow"), hostile_wasm,
                        [{"name": "spin", "description": "Loop until stopped", "input_schema": {"type": "object"}}],
                        timeout_ms=60_000)


def _as_terminal() -> None:  # in the child: the pty on fd 0 becomes its controlling terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Served:
    """``mcpkit server`` on a pseudo-terminal (stdin and stdout) or on pipes; stderr always on a pipe."""

    def __init__(self, bundle: Path, *, terminal: bool) -> None:
        self.terminal = terminal
        self.stderr = b""
        self._out = b""
        if terminal:
            self.master, slave = pty.openpty()
            attrs = termios.tcgetattr(slave)
            attrs[3] &= ~termios.ECHO  # a cooked terminal, minus the echo of what the test types
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            self.proc = subprocess.Popen([*SERVER, str(bundle), "-vv"], stdin=slave, stdout=slave,
                                         stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_as_terminal)
            os.close(slave)
        else:
            self.proc = subprocess.Popen([*SERVER, str(bundle), "-vv"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._started = threading.Event()
        self._err = threading.Thread(target=self._drain, daemon=True)
        self._err.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr += line
            if b"call spin started" in line:
                self._started.set()

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\n"
        if self.terminal:
            os.write(self.master, data)
        else:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def _read(self) -> bytes:
        if not self.terminal:
            assert self.proc.stdout is not None
            return self.proc.stdout.readline()
        if not select.select([self.master], [], [], 20)[0]:
            return b""
        try:
            return os.read(self.master, 65536)
        except OSError:  # the terminal's other side is gone
            return b""

    def answer(self, ident: int) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            while b"\n" in self._out:
                line, self._out = self._out.split(b"\n", 1)
                if line.strip():
                    message = json.loads(line)
                    if message.get("id") == ident:
                        return dict(message)
            chunk = self._read()
            if not chunk:
                break
            self._out += chunk.replace(b"\r\n", b"\n")
        raise AssertionError(f"no answer to {ident}; stderr: {self.stderr!r}")

    def start_session(self) -> None:
        self.send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": HELLO})
        assert self.answer(1)["result"]["serverInfo"]["name"] == "schema-attack"
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def start_spinning(self) -> None:
        self.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "spin", "arguments": {}}})
        assert self._started.wait(30), self.stderr

    def stop(self, how: str) -> tuple[int, float, str]:
        """Stop it by ``how`` ("ctrl-c", "ctrl-d", "SIGINT", "SIGTERM"): (exit code, seconds, stderr)."""
        t0 = time.monotonic()
        if how == "ctrl-c":
            os.write(self.master, b"\x03")  # the terminal sends SIGINT to its foreground process group
        elif how == "ctrl-d":
            os.write(self.master, b"\x04")  # end of input on a cooked terminal
        else:
            self.proc.send_signal(getattr(signal, how))
        try:
            code = self.proc.wait(timeout=PROMPT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = -999
        took = time.monotonic() - t0
        self._err.join(5)
        if self.terminal:
            os.close(self.master)
        else:
            for stream in (self.proc.stdin, self.proc.stdout):
                assert stream is not None
                stream.close()
        return code, took, self.stderr.decode(errors="replace")


@pytest.mark.parametrize(("terminal", "how"), [(True, "ctrl-c"), (True, "SIGINT"), (True, "SIGTERM"),
                                               (False, "SIGINT"), (False, "SIGTERM")],
                         ids=["pty-ctrl-c", "pty-SIGINT", "pty-SIGTERM", "pipes-SIGINT", "pipes-SIGTERM"])
@pytest.mark.parametrize("busy", [False, True], ids=["idle", "mid-call"])
def test_a_signal_stops_the_server_promptly(slow_bundle: Path, how: str, terminal: bool, busy: bool) -> None:
    served = Served(slow_bundle, terminal=terminal)
    served.start_session()
    if busy:
        served.start_spinning()
    code, took, stderr = served.stop(how)
    name = "SIGTERM" if how == "SIGTERM" else "SIGINT"
    assert code == (0 if name == "SIGTERM" else 130), (code, stderr)
    assert took < PROMPT_S
    assert f"mcpkit: stopped ({name})" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    if busy:
        assert "call spin cancelled" in stderr and "call spin failed (cancelled)" in stderr, stderr


def test_end_of_input_on_a_terminal_ends_the_server_with_0(slow_bundle: Path) -> None:
    served = Served(slow_bundle, terminal=True)
    served.start_session()
    code, took, stderr = served.stop("ctrl-d")
    assert took < PROMPT_S
    assert code == 0, stderr
    assert "stopped" not in stderr and "Traceback" not in stderr, stderr


def test_ctrl_c_with_the_answers_going_to_a_file(slow_bundle: Path, tmp_path: Path) -> None:
    """Typing requests on a terminal with stdout sent to a file (``mcpkit server ... > answers.jsonl``):
    the answers land in the file, and Ctrl-C still stops the server at once."""
    master, slave = pty.openpty()
    answers = tmp_path / "answers.jsonl"
    with open(answers, "wb") as out:
        proc = subprocess.Popen([*SERVER, str(slow_bundle)], stdin=slave, stdout=out, stderr=subprocess.PIPE,
                                start_new_session=True, preexec_fn=_as_terminal)
    os.close(slave)
    try:
        os.write(master, json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": HELLO}).encode()
                 + b"\n")
        deadline = time.monotonic() + 30
        while b'"id":1' not in answers.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for the server's answer to reach the file
        assert json.loads(answers.read_bytes().splitlines()[0])["result"]["serverInfo"]["name"] == "schema-attack"
        t0 = time.monotonic()
        os.write(master, b"\x03")
        code = proc.wait(timeout=PROMPT_S)
        assert time.monotonic() - t0 < PROMPT_S
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode(errors="replace")
    assert code == 130, stderr
    assert "mcpkit: stopped (SIGINT)" in stderr and "Traceback" not in stderr, stderr
