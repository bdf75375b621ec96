"""The wasmtime engine and its compiled code.

Compiled code is native code, so it comes from one place only: the store's
:class:`~hatch_mcpkit.store.CodeCache`, keyed by this engine's fingerprint and the SHA-256 of
the module bytes read here. A ``module.cwasm`` or a precompile record beside a bundle's
module.wasm (in a folder, an archive or an old cache entry) is never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatch_mcpkit.errors import ModuleError

if TYPE_CHECKING:
    import wasmtime

    from hatch_mcpkit.store import CodeCache

__all__ = ["engine_fingerprint", "engine_settings", "load_module", "make_engine", "precompile"]

log = logging.getLogger("hatch_mcpkit.runtime")

CRANELIFT_OPT_LEVEL = "speed"


@lru_cache(maxsize=1)
def _wasmtime_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wasmtime")
    except PackageNotFoundError:  # pragma: no cover - vendored installs
        import wasmtime

        return str(getattr(wasmtime, "__version__", "unknown"))


def engine_settings(consume_fuel: bool) -> dict[str, Any]:
    """Everything that must match for compiled code to be loadable by our engine."""
    return {
        "wasmtime": _wasmtime_version(),
        "arch": platform.machine(),
        "system": platform.system(),
        "epoch_interruption": True,
        "consume_fuel": consume_fuel,
        "cranelift_opt_level": CRANELIFT_OPT_LEVEL,
    }


def engine_fingerprint(consume_fuel: bool) -> str:
    """The code cache key part for an engine with these settings."""
    return hashlib.sha256(json.dumps(engine_settings(consume_fuel), sort_keys=True).encode()).hexdigest()


def make_engine(consume_fuel: bool) -> wasmtime.Engine:
    import wasmtime

    cfg = wasmtime.Config()
    cfg.epoch_interruption = True
    cfg.consume_fuel = consume_fuel
    cfg.cranelift_opt_level = CRANELIFT_OPT_LEVEL
    return wasmtime.Engine(cfg)


def read_module(path: Path) -> bytes:
    """module.wasm's bytes: a regular file of at most ``MAX_MODULE_BYTES`` (a FIFO or ``/dev/zero`` in its
    place is refused at once, as :func:`hatch_mcpkit.wasm.check_guest_module` refuses it)."""
    from hatch_mcpkit._files import read_regular
    from hatch_mcpkit.wasm import MAX_MODULE_BYTES

    try:
        return read_regular(path, limit=MAX_MODULE_BYTES, where=str(path), error=ModuleError)
    except OSError as exc:
        raise ModuleError(f"cannot read the module {path}: {exc.strerror}",
                          hint="is this a bundle directory (module.wasm + config.yaml)?") from None


def load_module(engine: wasmtime.Engine, consume_fuel: bool, wasm_path: Path,
                code_cache: CodeCache | None) -> tuple[wasmtime.Module, str]:
    """The module, from the code cache when it has it, else compiled (and saved there).

    Returns ``(module, source)`` with source ``"cache"`` or ``"compiled"``.
    """
    import wasmtime

    wasm = read_module(wasm_path)
    key = (engine_fingerprint(consume_fuel), hashlib.sha256(wasm).hexdigest())
    if code_cache is not None:
        code = code_cache.load(*key)
        if code is not None:
            try:
                return wasmtime.Module.deserialize(engine, code), "cache"
            except wasmtime.WasmtimeError as exc:
                log.info("compiled code for %s is not loadable (%s); recompiling", wasm_path, exc)
                code_cache.discard(*key)
    try:
        module = wasmtime.Module(engine, wasm)
    except wasmtime.WasmtimeError as exc:
        raise ModuleError(f"{wasm_path} is not a valid WebAssembly module: {exc}") from None
    if code_cache is not None:
        code_cache.save(*key, bytes(module.serialize()))
    return module, "compiled"


def precompile(bundle_dir: Path | str, *, code_cache: CodeCache | None = None) -> str:
    """Compile a bundle's module.wasm into the code cache (the CLI calls this after a pull).

    Cheap when the code is already there. ``code_cache`` defaults to the one in the default
    MCPKIT_HOME. Returns ``"cache"`` when the code was there, ``"compiled"`` otherwise.
    """
    from hatch_mcpkit.config import load_config
    from hatch_mcpkit.runtime._policy import HostLimits
    from hatch_mcpkit.store import CodeCache

    bundle_dir = Path(bundle_dir)
    cache = code_cache if code_cache is not None else CodeCache()
    config = load_config(bundle_dir / "config.yaml")  # data: never expanded
    host = HostLimits.from_env()
    fuel = any(host.cap(config.limits_for(tool)).fuel is not None for tool in config.tools)
    _module, source = load_module(make_engine(fuel), fuel, bundle_dir / "module.wasm", cache)
    return source
