"""Build a Rust crate for ``wasm32-wasip1`` with cargo and find the module it produced.

``build_crate(crate_dir)`` runs ``cargo build --target wasm32-wasip1 --message-format=json``,
streams the compiler's human-readable diagnostics to the user as they arrive, reads cargo's JSON
messages to find the ``.wasm`` of the crate's binary (renamed bins and workspaces work, because
the path comes from cargo itself), and turns every failure into one
:class:`~hatch_mcpkit.errors.BuildError` that says what to do.

The cargo binary is ``$CARGO`` when set, else ``cargo`` on ``PATH``. Everything else about the
toolchain comes from the environment (``RUSTC``, ``CARGO_HOME``,
``CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS``, ``CARGO_TARGET_DIR`` ...), so the offline Debian set-up
(``.ci/setup-rust-wasip1.sh``) and a rustup install work the same way.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hatch_mcpkit.errors import BuildError

__all__ = ["TARGET", "Artifact", "build_crate", "cargo_command"]

TARGET = "wasm32-wasip1"
_INSTALL_HINT = (
    "install Rust with rustup (https://rustup.rs) and run `rustup target add wasm32-wasip1`, "
    "or set CARGO to the cargo binary"
)
_MISSING_STD = re.compile(r"can't find crate for `(?:std|core)`|target may not be installed")


@dataclass(frozen=True)
class Artifact:
    """A binary cargo built for the target (from a ``compiler-artifact`` message)."""

    package: str
    name: str  # the bin target's name
    executable: Path
    manifest_path: Path | None


@dataclass
class _Run:
    """What we learn from one cargo run's messages."""

    artifacts: list[Artifact] = field(default_factory=list)
    errors: int = 0
    error_crates: list[str] = field(default_factory=list)
    missing_std: bool = False
    non_wasm_libs: list[str] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)
    success: bool | None = None
    returncode: int = 0


def cargo_command(env: Mapping[str, str] | None = None) -> str:
    """The cargo binary to run: ``$CARGO`` if set, else ``cargo`` on ``PATH``; BuildError if none."""
    environ = os.environ if env is None else env
    chosen = environ.get("CARGO")
    if chosen:
        resolved = shutil.which(chosen, path=environ.get("PATH")) if os.sep not in chosen else chosen
        if not resolved or not os.path.isfile(resolved) or not os.access(resolved, os.X_OK):
            raise BuildError(f"cargo not found: CARGO={chosen} is not an executable file; {_INSTALL_HINT}")
        return resolved
    found = shutil.which("cargo", path=environ.get("PATH"))
    if not found:
        raise BuildError(f"cargo not found on PATH; {_INSTALL_HINT}")
    return found


def build_crate(
    crate_dir: str | os.PathLike[str],
    *,
    profile: str = "release",
    features: Sequence[str] = (),
    cargo_args: Sequence[str] = (),
    bin_name: str | None = None,
    package: str | None = None,
    env: Mapping[str, str | None] | None = None,
    echo: Callable[[str], None] | None = None,
) -> Path:
    """Build ``crate_dir`` (a folder with Cargo.toml, or the Cargo.toml itself) for wasm32-wasip1.

    ``profile`` is ``release`` (``--release``), ``dev``/``debug`` or any custom profile
    (``--profile NAME``). ``env`` entries override the process environment for cargo (``None``
    removes a variable). ``echo`` receives the human-readable diagnostics and cargo's progress
    line by line (default: written to stderr). Returns the path of the built ``.wasm``.
    """
    manifest = _manifest_path(Path(crate_dir))
    environ = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    cargo = cargo_command(environ)
    colour = echo is None and _stderr_is_tty()
    out = echo or _echo_stderr

    cmd = [
        cargo,
        "build",
        "--manifest-path",
        str(manifest),
        "--target",
        TARGET,
        "--message-format=json-diagnostic-rendered-ansi" if colour else "--message-format=json",
    ]
    if colour:
        cmd.append("--color=always")
    if profile == "release":
        cmd.append("--release")
    elif profile in ("dev", "debug"):
        pass  # cargo's default profile
    elif profile:
        cmd += ["--profile", profile]
    feature_list = _split_features([features] if isinstance(features, str) else features)
    if feature_list:
        cmd += ["--features", ",".join(feature_list)]
    if package:
        cmd += ["--package", package]
    if bin_name:
        cmd += ["--bin", bin_name]
    cmd += shlex.split(cargo_args) if isinstance(cargo_args, str) else list(cargo_args)

    run = _run_cargo(cmd, manifest.parent, environ, out)
    crate = _crate_label(manifest)
    if run.success is False or run.errors or run.missing_std or run.returncode != 0:
        raise _failure(run, crate, environ)
    return _select(run.artifacts, manifest, crate, bin_name=bin_name, package=package, run=run).executable


# --------------------------------------------------------------------------- running cargo


def _run_cargo(cmd: list[str], cwd: Path, environ: Mapping[str, str], echo: Callable[[str], None]) -> _Run:
    run = _Run()
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            echo(line)

    try:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=dict(environ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        )
    except FileNotFoundError:
        raise BuildError(f"cargo not found: {cmd[0]} does not exist; {_INSTALL_HINT}") from None
    except PermissionError:
        raise BuildError(f"cargo cannot be run: {cmd[0]} is not executable; {_INSTALL_HINT}") from None
    except OSError as exc:
        raise BuildError(f"cannot run {cmd[0]}: {exc.strerror or exc}; {_INSTALL_HINT}") from None

    assert proc.stdout is not None and proc.stderr is not None
    stderr = proc.stderr

    def pump_stderr() -> None:
        for raw in stderr:
            line = raw.rstrip("\n")
            run.stderr_lines.append(line)
            if len(run.stderr_lines) > 400:
                del run.stderr_lines[:200]
            if _MISSING_STD.search(line):
                run.missing_std = True
            say(line)

    reader = threading.Thread(target=pump_stderr, name="cargo-stderr", daemon=True)
    reader.start()
    try:
        for raw in proc.stdout:
            _handle_stdout(raw.rstrip("\n"), run, say)
        proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        reader.join(timeout=10)
    run.returncode = proc.returncode
    return run


def _handle_stdout(line: str, run: _Run, say: Callable[[str], None]) -> None:
    if not line.startswith("{"):
        if line.strip():
            say(line)  # something not from cargo (a wrapper, a build script writing to stdout)
        return
    try:
        msg: Any = json.loads(line)
    except ValueError:
        say(line)
        return
    if not isinstance(msg, dict):
        return
    reason = msg.get("reason")
    if reason == "compiler-message":
        message = msg.get("message") or {}
        rendered = message.get("rendered")
        if isinstance(rendered, str) and rendered:
            say(rendered.rstrip("\n"))
        level = str(message.get("level", ""))
        if level.startswith("error"):
            text = f"{message.get('message', '')}\n{rendered or ''}"
            if _MISSING_STD.search(text):
                run.missing_std = True
            if not str(message.get("message", "")).startswith("aborting due to"):
                run.errors += 1
                crate = _package_name(msg.get("package_id", "")) or (msg.get("target") or {}).get("name", "")
                if crate and crate not in run.error_crates:
                    run.error_crates.append(crate)
    elif reason == "compiler-artifact":
        target = msg.get("target") or {}
        kinds = target.get("kind") or []
        executable = msg.get("executable")
        name = str(target.get("name", ""))
        package = _package_name(msg.get("package_id", "")) or name
        manifest = msg.get("manifest_path")
        if "bin" in kinds and isinstance(executable, str) and executable.endswith(".wasm"):
            run.artifacts.append(
                Artifact(package, name, Path(executable), Path(manifest) if isinstance(manifest, str) else None)
            )
        elif "cdylib" in kinds:
            wasm = [f for f in msg.get("filenames") or [] if isinstance(f, str) and f.endswith(".wasm")]
            run.non_wasm_libs.extend(wasm)
    elif reason == "build-finished":
        run.success = bool(msg.get("success"))
    elif reason == "build-script-executed":
        pass


# --------------------------------------------------------------------------- results


def _failure(run: _Run, crate: str, environ: Mapping[str, str]) -> BuildError:
    if run.missing_std:
        hint = None
        if environ.get("RUSTFLAGS") or environ.get("CARGO_ENCODED_RUSTFLAGS"):
            hint = ("RUSTFLAGS is set, and it replaces CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS and target "
                    "rustflags; unset RUSTFLAGS if you pass --sysroot that way")
        return BuildError(
            f"cargo build failed for {crate}: the Rust standard library for {TARGET} is not installed; "
            f"run `rustup target add {TARGET}` (offline on Debian: .ci/setup-rust-wasip1.sh)",
            hint=hint,
        )
    if run.errors:
        where = ", ".join(run.error_crates) or crate
        n = run.errors
        return BuildError(
            f"cargo build failed: {n} error{'s' if n != 1 else ''} in {where}; see the diagnostics above"
        )
    reason = next(
        (ln.strip() for ln in run.stderr_lines if ln.lstrip().startswith("error")),
        run.stderr_lines[-1].strip() if run.stderr_lines else "",
    )
    reason = _strip_ansi(reason)
    if reason.startswith("error: "):
        reason = reason[len("error: ") :]
    detail = f": {reason}" if reason else ""
    return BuildError(f"cargo build failed for {crate} (exit code {run.returncode}){detail}; see cargo's output above")


def _select(
    artifacts: list[Artifact],
    manifest: Path,
    crate: str,
    *,
    bin_name: str | None,
    package: str | None,
    run: _Run,
) -> Artifact:
    # Fresh and rebuilt units can both be reported; keep the last message per executable.
    unique = list({a.executable: a for a in artifacts}.values())
    if not unique:
        hint = None
        if run.non_wasm_libs:
            hint = (f"cargo built a library ({', '.join(Path(p).name for p in run.non_wasm_libs)}), "
                    "but mcpkit needs a WASI command: a [[bin]] target with fn main")
        return _raise(BuildError(
            f"cargo build succeeded but produced no {TARGET} binary for {crate}; "
            "add a bin target (src/main.rs with fn main)",
            hint=hint,
        ))
    chosen = unique
    if package:
        chosen = [a for a in chosen if a.package == package]
    if bin_name:
        chosen = [a for a in chosen if a.name == bin_name]
    if not chosen:
        names = ", ".join(sorted(f"{a.package}/{a.name}" for a in unique))
        wanted = "/".join(x for x in (package, bin_name) if x)
        return _raise(BuildError(f"cargo built no binary named {wanted} in {crate}; it built: {names}"))
    if len(chosen) > 1:
        own = [a for a in chosen if a.manifest_path is not None and _same(a.manifest_path, manifest)]
        if len(own) == 1:
            return own[0]
        names = ", ".join(sorted(f"{a.package}/{a.name}" for a in chosen))
        return _raise(BuildError(
            f"cargo built several binaries in {crate} ({names}); choose one with the bin option "
            "(or package for a workspace)"
        ))
    return chosen[0]


def _raise(error: BuildError) -> Artifact:
    raise error


# --------------------------------------------------------------------------- helpers


def _manifest_path(crate: Path) -> Path:
    manifest = crate if crate.name == "Cargo.toml" else crate / "Cargo.toml"
    if not manifest.is_file():
        if not crate.exists():
            raise BuildError(f"crate folder {crate} does not exist; set the crate option to the folder with Cargo.toml")
        raise BuildError(f"no Cargo.toml in {manifest.parent}; set the crate option to the folder with Cargo.toml")
    return manifest.resolve()


def _crate_label(manifest: Path) -> str:
    """The package name from Cargo.toml (best effort), else the folder name."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        return manifest.parent.name
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return manifest.parent.name
    name = (data.get("package") or {}).get("name")
    return name if isinstance(name, str) and name else manifest.parent.name


def _package_name(package_id: object) -> str:
    """``path+file:///x/y#name@1.0.0`` / ``path+file:///x/y#1.0.0`` / ``name 1.0.0 (path+...)`` -> name."""
    if not isinstance(package_id, str) or not package_id:
        return ""
    if " " in package_id and not package_id.startswith(("path+", "registry+", "git+", "sparse+")):
        return package_id.split(" ", 1)[0]
    frag = package_id.rsplit("#", 1)[-1] if "#" in package_id else ""
    if "@" in frag:
        return frag.split("@", 1)[0]
    if frag and not frag[0].isdigit():
        return frag
    # path+file:///work/crates/foo#0.1.0 -> the folder name
    url = package_id.split("#", 1)[0]
    return url.rstrip("/").rsplit("/", 1)[-1]


def _split_features(features: Iterable[str]) -> list[str]:
    out: list[str] = []
    for item in features:
        out.extend(f for f in re.split(r"[\s,]+", item) if f)
    return out


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _echo_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
