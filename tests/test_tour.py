"""The README's first command, ``./tour``, run as a new user runs it: in a clean clone of this repository.

The clone is of HEAD (``git clone``), so nothing uncommitted or ignored helps: no built target/, no
.ci/cache, no wheel. What the machine's set-up already made is reused as a cache only: the
wasm32-wasip1 sysroot (``WASI_SYSROOT``), pip's and uv's caches. MCPKIT_HOME is a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests._support import need

from .plugins.registry import registry_binary
from .plugins.rust import toolchain_env

pytestmark = [pytest.mark.hatch, pytest.mark.cargo, pytest.mark.registry, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
FIRST_COMMAND = "./tour"


def test_the_readme_starts_with_the_tour() -> None:
    readme = (REPO / "README.md").read_text()
    first = re.search(r"^\$ (.+?)(?:\s+#.*)?$", readme, flags=re.M)
    assert first is not None and first.group(1).strip() == FIRST_COMMAND


def test_the_tour_says_how_it_is_used() -> None:
    helped = subprocess.run([str(REPO / "tour"), "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert helped.returncode == 0 and "./tour --no-setup" in helped.stdout and "MCPKIT_HOME" in helped.stdout
    wrong = subprocess.run([str(REPO / "tour"), "--bogus"], capture_output=True, text=True, timeout=30, check=False)
    assert wrong.returncode == 2 and wrong.stderr == "tour: usage: ./tour [--no-setup]\n" and wrong.stdout == ""


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    git = shutil.which("git")
    need(git, "git")
    assert git is not None
    dest = tmp_path_factory.mktemp("fresh") / "hatch-mcpkit"
    head = subprocess.run([git, "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    subprocess.run([git, "clone", "-q", "--no-hardlinks", str(REPO), str(dest)], check=True, capture_output=True)
    subprocess.run([git, "-C", str(dest), "checkout", "-q", "--detach", head], check=True, capture_output=True)
    assert not (dest / ".ci" / "cache").exists() and not (dest / "example-project" / "target").exists()
    return dest


def tour_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    need(registry_binary(), "docker-registry binary (apt-get install docker-registry; see .ci/setup-registry.sh)")
    toolchain = toolchain_env()  # what .ci/setup made; only its sysroot is passed on, as a cache
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "CARGO_TARGET_DIR") and not k.startswith(("MCPKIT_", "HATCH_"))}
    env["MCPKIT_HOME"] = str(tmp_path / "home")
    if toolchain.get("WASI_SYSROOT"):
        env["WASI_SYSROOT"] = toolchain["WASI_SYSROOT"]
    env.update(extra)
    return env


def run_tour(clone: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FIRST_COMMAND], cwd=clone, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def registry_host(stdout: str) -> str:
    m = re.search(r"^registry: \S+ serving http://(127\.0\.0\.1:\d+) ", stdout, flags=re.M)
    assert m, stdout
    return m.group(1)


def assert_closed(host: str) -> None:
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", int(host.rsplit(":", 1)[1])))


def test_the_first_command_ends_with_a_tool_result(clone: Path, tmp_path: Path) -> None:
    proc = run_tour(clone, tour_env(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    commands = [line for line in lines if line.startswith("$ ")]
    host = registry_host(proc.stdout)
    target = f"oci://{host}/examples/weather-tool"
    assert [c.split("  ")[0] for c in commands[1:]] == [
        "$ cd example-project", "$ hatch build", f"$ hatch publish -p mcpkit -o registry={target}",
        f"$ hatch run mcpkit:pull {target}:latest", "$ mcpkit server --from-bundle weather-tool"]
    assert lines[-2] == "tools: get_weather, convert_temperature"
    call, _, result = lines[-1].partition(" -> ")
    assert call == 'get_weather {"location": "London"}'
    weather = json.loads(result)
    assert weather["location"] == "London" and isinstance(weather["temperature_c"], (int, float))

    assert "mcpkit: built dist/weather-tool-1.0.0.mcpkit.tar" in proc.stderr + proc.stdout
    entry = tmp_path / "home" / "bundles" / host.replace(":", "_") / "examples" / "weather-tool" / "latest"
    assert (entry / "module.wasm").is_file() and (entry / "data" / "weather.json").is_file()
    assert_closed(host)  # the tour's registry is stopped
    assert f"tour: the registry on {host} is stopped" in proc.stderr
    status = subprocess.run(["git", "-C", str(clone), "status", "--porcelain"], capture_output=True, text=True,
                            check=True)
    assert status.stdout == "", "the tour changed or left files that git sees:\n" + status.stdout


def test_a_failing_step_still_stops_the_registry(clone: Path, tmp_path: Path) -> None:
    proc = run_tour(clone, tour_env(tmp_path, CARGO_TARGET_DIR="/proc/mcpkit-tour-cannot-write-here"))
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "tour: failed: `hatch build` failed with exit code" in proc.stderr
    host = registry_host(proc.stdout)
    assert_closed(host)
    assert f"tour: the registry on {host} is stopped" in proc.stderr
    assert "Traceback" not in proc.stderr.split("$ hatch build")[0]
