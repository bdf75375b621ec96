"""cargo integration: real builds of real crates for wasm32-wasip1."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from hatch_mcpkit.cargo import build_crate, cargo_command
from hatch_mcpkit.errors import BuildError
from hatch_mcpkit.wasm import check_guest_module
from tests.plugins.rust import EXAMPLE_DIR, build_fixture_crate

pytestmark = pytest.mark.cargo


def test_example_crate_builds_a_guest_module(example_wasm: Path) -> None:
    assert example_wasm.name == "weather-tool.wasm"
    info = check_guest_module(example_wasm)
    assert info.import_modules == ["wasi_snapshot_preview1"]
    assert info.exports_function("_start")


def test_rebuild_reports_the_same_artifact_and_streams_progress(rust_env: dict[str, str]) -> None:
    lines: list[str] = []
    first = build_crate(EXAMPLE_DIR, env=rust_env, echo=lines.append)
    second = build_crate(EXAMPLE_DIR / "Cargo.toml", env=rust_env, echo=lines.append)
    assert first == second
    assert first == EXAMPLE_DIR / "target" / "wasm32-wasip1" / "release" / "weather-tool.wasm"
    assert first.is_file()
    assert any("Finished" in line for line in lines), lines


def test_compile_error_names_the_crate_and_streams_diagnostics(
    fixture_crate: Callable[[str], Path], tmp_path: Path
) -> None:
    crate = fixture_crate("compile-error")
    lines: list[str] = []
    with pytest.raises(BuildError) as info:
        build_fixture_crate(crate, target_dir=tmp_path / "target", echo=lines.append)
    message = str(info.value)
    assert "cargo build failed: 2 errors in compile-error" in message
    assert "see the diagnostics above" in message
    assert "\n" not in message  # one line
    shown = "\n".join(lines)
    assert "mismatched types" in shown  # the compiler's rendered diagnostics reached the user
    assert "src/main.rs" in shown
    assert not any(line.startswith('{"reason"') for line in lines)  # cargo's JSON stays internal


def test_missing_cargo_binary_is_reported(rust_env: dict[str, str]) -> None:
    with pytest.raises(BuildError) as info:
        build_crate(EXAMPLE_DIR, env={**rust_env, "CARGO": "/nonexistent/cargo"})
    message = str(info.value)
    assert "cargo not found" in message
    assert "/nonexistent/cargo" in message
    assert "rustup" in message


def test_cargo_missing_from_path(tmp_path: Path) -> None:
    env: dict[str, str | None] = {"CARGO": None, "PATH": str(tmp_path)}
    with pytest.raises(BuildError, match="cargo not found on PATH"):
        build_crate(EXAMPLE_DIR, env=env)


def test_cargo_that_is_not_executable(tmp_path: Path) -> None:
    fake = tmp_path / "cargo"
    fake.write_text("not a program")
    fake.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with pytest.raises(BuildError, match="cargo not found"):
        cargo_command({"CARGO": str(fake)})


def test_missing_target_says_rustup_target_add(fixture_crate: Callable[[str], Path], tmp_path: Path) -> None:
    # An empty sysroot is what a toolchain without the wasm32-wasip1 standard library looks like,
    # with rustup and with the Debian set-up alike.
    empty_sysroot = tmp_path / "empty-sysroot"
    empty_sysroot.mkdir()
    crate = fixture_crate("hello")
    with pytest.raises(BuildError) as info:
        build_fixture_crate(
            crate,
            target_dir=tmp_path / "target",
            env={"CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS": f"--sysroot {empty_sysroot}"},
            echo=lambda _line: None,
        )
    message = str(info.value)
    assert "rustup target add wasm32-wasip1" in message
    assert "hello" in message
    assert "hint" not in message


def test_missing_target_without_sysroot_flags(
    rust_env: dict[str, str], fixture_crate: Callable[[str], Path], tmp_path: Path
) -> None:
    if "WASI_SYSROOT" not in rust_env:
        # rustup provides the target itself: there are no sysroot flags to leave out.
        assert "CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS" not in rust_env
        return
    crate = fixture_crate("hello")
    with pytest.raises(BuildError, match=r"rustup target add wasm32-wasip1"):
        build_fixture_crate(
            crate,
            target_dir=tmp_path / "target",
            env={"CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS": None},
            echo=lambda _line: None,
        )


def test_rustflags_overriding_the_sysroot_gets_a_hint(
    rust_env: dict[str, str], fixture_crate: Callable[[str], Path], tmp_path: Path
) -> None:
    if "WASI_SYSROOT" not in rust_env:
        return  # with rustup, RUSTFLAGS does not hide the standard library
    crate = fixture_crate("hello")
    with pytest.raises(BuildError) as info:
        build_fixture_crate(crate, target_dir=tmp_path / "target", env={"RUSTFLAGS": "-C debuginfo=0"},
                            echo=lambda _line: None)
    assert "RUSTFLAGS" in str(info.value)
    assert "rustup target add wasm32-wasip1" in str(info.value)


def test_features_and_profiles(fixture_crate: Callable[[str], Path]) -> None:
    crate = fixture_crate("hello")
    release = build_fixture_crate(crate, echo=lambda _line: None)
    assert release.name == "hello.wasm"
    assert release.parent.name == "release"
    dev = build_fixture_crate(crate, profile="dev", features=["shout"], echo=lambda _line: None)
    assert dev.parent.name == "debug"
    assert b"HELLO" in dev.read_bytes()
    assert b"HELLO" not in release.read_bytes()
    check_guest_module(dev)


def test_features_and_cargo_args_given_as_strings(fixture_crate: Callable[[str], Path]) -> None:
    crate = fixture_crate("hello")
    lines: list[str] = []
    wasm = build_fixture_crate(crate, features="shout", cargo_args="--quiet --offline", echo=lines.append)
    assert b"HELLO" in wasm.read_bytes()
    assert not any("Compiling" in line or "Finished" in line for line in lines)  # --quiet reached cargo


def test_unknown_feature_is_one_actionable_line(fixture_crate: Callable[[str], Path]) -> None:
    crate = fixture_crate("hello")
    with pytest.raises(BuildError) as info:
        build_fixture_crate(crate, features=["no-such-feature"], echo=lambda _line: None)
    message = str(info.value)
    assert message.startswith("cargo build failed for hello (exit code 101): ")
    assert "no-such-feature" in message


def test_workspace_with_renamed_bin(fixture_crate: Callable[[str], Path]) -> None:
    ws = fixture_crate("workspace")

    def quiet(_line: str) -> None:
        pass

    # The whole workspace builds two binaries: mcpkit cannot guess which one is meant.
    with pytest.raises(BuildError) as info:
        build_fixture_crate(ws, echo=quiet)
    assert "alpha/alpha-server" in str(info.value)
    assert "beta/beta" in str(info.value)

    renamed = build_fixture_crate(ws, bin_name="alpha-server", echo=quiet)
    assert renamed.name == "alpha-server.wasm"
    check_guest_module(renamed)
    assert build_fixture_crate(ws, package="beta", echo=quiet).name == "beta.wasm"
    # A member's own folder picks that member.
    assert build_fixture_crate(ws / "alpha", echo=quiet).name == "alpha-server.wasm"

    with pytest.raises(BuildError, match=r"no bin target named `gamma`"):
        build_fixture_crate(ws, bin_name="gamma", echo=quiet)


def test_library_crate_has_no_binary(fixture_crate: Callable[[str], Path]) -> None:
    crate = fixture_crate("cdylib")
    with pytest.raises(BuildError) as info:
        build_fixture_crate(crate, echo=lambda _line: None)
    message = str(info.value)
    assert "produced no wasm32-wasip1 binary for cdylib-only" in message
    assert "cdylib_only.wasm" in message  # the hint names the library it did build


def test_missing_crate_folder(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="does not exist"):
        build_crate(tmp_path / "nowhere")
    with pytest.raises(BuildError, match=r"no Cargo\.toml"):
        build_crate(tmp_path)


def test_environment_override_removes_variables(
    rust_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # RUSTFLAGS in the calling process must not leak when env= removes it.
    if "WASI_SYSROOT" not in rust_env:
        return
    for key, value in rust_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RUSTFLAGS", "-C debuginfo=0")
    path = build_crate(EXAMPLE_DIR, env={"RUSTFLAGS": None}, echo=lambda _line: None)
    assert path.is_file()
    assert os.environ["RUSTFLAGS"] == "-C debuginfo=0"
