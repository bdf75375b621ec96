"""Doc checks: what README and docs/ tell a user to type or write must actually work.

* every ``$ mcpkit …`` line parses with the real command-line parsers;
* every ``$ hatch …`` line names a hatch command, and its mcpkit parts (``-p mcpkit``,
  ``-t mcpkit``, ``mcpkit:<script>``) exist;
* every ``python benchmarks/…`` / ``bash .ci/…`` file named exists, and ``./tour`` is an executable file
  (tests/test_tour.py runs it in a fresh clone);
* the config.yaml examples load (the full reference example, the guest-ABI example);
* the guest-ABI minimal Rust tool compiles and answers through the runtime.

The commands themselves are run end to end by tests/test_e2e.py and tests/test_hatch_*.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from pathlib import Path

import pytest

from hatch_mcpkit import cli
from hatch_mcpkit.config import parse_config
from hatch_mcpkit.plugins.collector import COMMANDS

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "example-project" / "README.md"]
HATCH_COMMANDS = {"build", "publish", "run", "clean", "env", "shell", "version", "test", "new"}


def code_blocks(path: Path, lang: str | None = None) -> list[str]:
    text = path.read_text()
    blocks = re.findall(r"```([a-z]*)\n(.*?)```", text, flags=re.S)
    return [body for kind, body in blocks if lang is None or kind == lang]


def command_lines() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for block in code_blocks(doc):
            for line in block.splitlines():
                if line.startswith("$ "):
                    cmd = line[2:].split("  #")[0].strip()
                    out.append((f"{doc.relative_to(REPO)}: {cmd}", cmd))
    return out


COMMANDS_IN_DOCS = command_lines()


def test_docs_have_commands() -> None:
    assert len(COMMANDS_IN_DOCS) > 20
    assert any(cmd.startswith("mcpkit server --from-bundle") for _, cmd in COMMANDS_IN_DOCS)


def _parse(parser_args: list[str]) -> None:
    cli.build_parser().parse_args(parser_args)


@pytest.mark.parametrize(
    ("where", "cmd"),
    [c for c in COMMANDS_IN_DOCS if c[1].startswith("mcpkit ")],
    ids=lambda v: v if isinstance(v, str) and ": " in v else None,
)
def test_mcpkit_commands_parse(where: str, cmd: str) -> None:
    argv = shlex.split(cmd.replace("…", "x"))[1:]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            _parse(argv)
        except SystemExit as exc:  # argparse exits 2 on unknown commands/options
            pytest.fail(f"{where}: does not parse: {err.getvalue().strip()} (exit {exc.code})")


@pytest.mark.parametrize(
    ("where", "cmd"),
    [c for c in COMMANDS_IN_DOCS if c[1].startswith("hatch ")],
    ids=lambda v: v if isinstance(v, str) and ": " in v else None,
)
def test_hatch_commands_name_real_parts(where: str, cmd: str) -> None:
    argv = shlex.split(cmd.replace("…", "x"))
    assert argv[1] in HATCH_COMMANDS, where
    if argv[1] in ("build", "clean") and "-t" in argv:
        assert argv[argv.index("-t") + 1] in ("mcpkit", "wheel", "sdist"), where
    if argv[1] == "publish":
        assert argv[argv.index("-p") + 1] == "mcpkit", where
        for i, arg in enumerate(argv):
            if arg == "-o":
                from hatch_mcpkit.plugins._options import PUBLISH_OPTIONS

                assert argv[i + 1].split("=", 1)[0] in PUBLISH_OPTIONS, where
    if argv[1] == "run" and argv[2].startswith("mcpkit:"):
        assert argv[2].split(":", 1)[1] in COMMANDS, where
        _parse([argv[2].split(":", 1)[1], *argv[3:]])


def test_named_files_exist() -> None:
    for where, cmd in COMMANDS_IN_DOCS:
        argv = shlex.split(cmd.replace("…", "x"))
        for token in argv:
            if token.startswith((".ci/", "benchmarks/")):
                assert (REPO / token).is_file(), f"{where}: {token} does not exist"
        if argv[0].startswith("./") and "example-project" not in where:  # a script of the checkout, run as is
            script = REPO / argv[0]
            assert script.is_file() and os.access(script, os.X_OK), f"{where}: {argv[0]} is not an executable file"


def test_reference_example_loads() -> None:
    example = code_blocks(REPO / "docs" / "config.md", "yaml")[0]
    config = parse_config(example.encode(), "docs/config.md", {"WEATHER_UNITS": "metric"})
    assert [t.name for t in config.tools] == ["get_weather"]
    assert config.distribution is not None and config.distribution.tags == ("latest", "v1.0.0")


def test_every_documented_key_is_accepted() -> None:
    """Keys in the reference tables are the keys the validator knows (and nothing undocumented)."""
    text = (REPO / "docs" / "config.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_.]+)`", text, flags=re.M))
    source = (REPO / "hatch_mcpkit" / "config.py").read_text()
    for key in documented:
        leaf = key.split(".")[-1]
        assert f'"{leaf}"' in source, f"docs/config.md documents {key!r}, which config.py does not read"


def test_guest_abi_example_compiles_and_answers(tmp_path: Path) -> None:
    from .plugins.rust import build_fixture_crate

    blocks = {
        kind: body
        for kind, body in re.findall(
            r"```([a-z]+)\n(.*?)```", (REPO / "docs" / "guest-abi.md").read_text(), flags=re.S
        )
        if kind in ("toml", "rust", "yaml")
    }
    (tmp_path / "src").mkdir()
    (tmp_path / "Cargo.toml").write_text(blocks["toml"])
    (tmp_path / "src" / "main.rs").write_text(blocks["rust"])
    (tmp_path / "config.yaml").write_text(blocks["yaml"])
    wasm = build_fixture_crate(tmp_path, target_dir=tmp_path / "target")
    (tmp_path / "module.wasm").write_bytes(wasm.read_bytes())

    from hatch_mcpkit.runtime import Runtime

    with Runtime.from_dir(tmp_path) as runtime:
        ok = runtime.call("greet", {"name": "Ada"})
        assert not ok.is_error and ok.content == [{"type": "text", "text": "Hello, Ada!"}]
        bad = runtime.call("greet", {"name": 3})
        assert bad.is_error and "name must be a string" in bad.text
