"""`hatch build` with the mcpkit build hook and builder, on a real copy of example-project."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hatch_mcpkit.bundle import CONFIG_YAML_MEDIA_TYPE, WASM_MEDIA_TYPE, BundleLayout

from ._support import need
from .plugins.hatch import HatchRunner, assert_reported, counting_cargo

pytestmark = [pytest.mark.hatch, pytest.mark.cargo]
ARCHIVE = "weather-tool-1.0.0.mcpkit.tar"


def test_hatch_build_writes_the_bundle_and_runs_cargo_once(
    run_hatch: HatchRunner, example_copy: Path, rust_env: dict[str, str], tmp_path: Path
) -> None:
    wrapper, log = counting_cargo(tmp_path, rust_env["CARGO"])
    res = run_hatch(["build"], example_copy, env={"CARGO": wrapper})
    assert res.returncode == 0, res.stdout
    dist = example_copy / "dist"
    names = sorted(p.name for p in dist.iterdir())
    assert ARCHIVE in names
    assert any(n.endswith(".whl") for n in names) and any(n.endswith(".tar.gz") for n in names)
    builds = [line for line in log.read_text().splitlines() if line.startswith("build")]
    assert len(builds) == 1, builds  # sdist and wheel targets share one cargo run
    assert "--target wasm32-wasip1" in builds[0] and "--message-format" in builds[0]

    with BundleLayout.open(dist / ARCHIVE) as layout:
        digest = layout.manifest.digest
        assert [d.media_type for d in layout.manifest.layers[:2]] == [WASM_MEDIA_TYPE, CONFIG_YAML_MEDIA_TYPE]
        assert [d.title for d in layout.manifest.layers] == [
            "module.wasm",
            "config.yaml",
            "README.md",
            "data/weather.json",
        ]
        assert layout.bundle_config["tools"] == ["get_weather", "convert_temperature"]
        assert (
            layout.read_blob(layout.manifest.config_layer.digest)
            == (example_copy / "config.yaml").read_bytes()
        )
    assert f"digest {digest}" in res.stdout  # the digest hatch prints is the bundle's

    if shutil.which("skopeo"):
        raw = subprocess.run(
            ["skopeo", "inspect", "--raw", f"oci-archive:{dist / ARCHIVE}"], check=True, capture_output=True
        ).stdout
        layers = json.loads(raw)["layers"]
        assert layers[0]["mediaType"] == "application/wasm"
        assert layers[1]["mediaType"] == "application/vnd.mcpkit.config+yaml"
    else:
        need(False, "skopeo (apt-get install skopeo)")


def test_rebuild_from_scratch_is_byte_identical(run_hatch: HatchRunner, example_copy: Path) -> None:
    first = run_hatch(["build", "-t", "mcpkit"], example_copy)
    assert first.returncode == 0, first.stdout
    archive = example_copy / "dist" / ARCHIVE
    before = archive.read_bytes()
    assert sorted(p.name for p in (example_copy / "dist").iterdir()) == [ARCHIVE]  # only the bundle

    cleaned = run_hatch(["clean", "-t", "mcpkit"], example_copy)
    assert cleaned.returncode == 0, cleaned.stdout
    assert not archive.exists()
    shutil.rmtree(example_copy / "target")  # recompile everything

    second = run_hatch(["build", "-t", "mcpkit"], example_copy)
    assert second.returncode == 0, second.stdout
    assert archive.read_bytes() == before


def test_hatch_clean_removes_bundles(run_hatch: HatchRunner, example_copy: Path) -> None:
    dist = example_copy / "dist"
    dist.mkdir()
    (dist / "old-0.1.0.mcpkit.tar").write_bytes(b"stale")
    (dist / "keep.txt").write_text("not ours")
    res = run_hatch(["clean"], example_copy)
    assert res.returncode == 0, res.stdout
    assert not (dist / "old-0.1.0.mcpkit.tar").exists()
    assert (dist / "keep.txt").exists()


BAD_CONFIG = """\
version: "1.0"
server: {name: weather-tool, version: 1.0.0}
mcp:
  tools:
    - name: get_weather
      description: 42
      input_schema: {type: object, properties: {location: {type: strin}}}
    - name: get_weather
      input_schema: {type: object}
      limits: {timeout_ms: "soon"}
policy:
  environment: {allow: [{key: "${MCPKIT_TEST_SURELY_UNSET}"}]}
"""


def test_bad_config_fails_the_build_with_every_error(
    run_hatch: HatchRunner, example_copy: Path, rust_env: dict[str, str], tmp_path: Path
) -> None:
    (example_copy / "config.yaml").write_text(BAD_CONFIG)
    wrapper, log = counting_cargo(tmp_path, rust_env["CARGO"])
    res = run_hatch(["build"], example_copy, env={"CARGO": wrapper})
    assert res.returncode != 0
    out = res.stdout
    config = example_copy / "config.yaml"
    for line, fragment in [
        (6, "mcp.tools[0].description: must be a string"),
        (7, "mcp.tools[0].input_schema.properties.location.type: invalid JSON Schema"),
        (8, "mcp.tools[1].name: duplicate tool name 'get_weather'"),
        (10, "mcp.tools[1].limits.timeout_ms: must be a positive integer"),
        (12, "policy.environment.allow[0].key: environment variable MCPKIT_TEST_SURELY_UNSET is not set"),
    ]:
        assert f"{config}:{line}: {fragment}" in out, out
    assert "Traceback" not in out
    dist = example_copy / "dist"
    assert not dist.exists() or not any(dist.iterdir())
    assert not log.exists()  # config is checked before cargo runs


def test_bad_hook_options_name_their_key(run_hatch: HatchRunner, example_copy: Path) -> None:
    pyproject = example_copy / "pyproject.toml"
    text = pyproject.read_text().replace('crate = "."', 'crate = "no-such-crate"\ncolour = "blue"')
    pyproject.write_text(text)
    res = run_hatch(["build", "-t", "wheel"], example_copy)
    assert res.returncode != 0
    assert "tool.hatch.build.hooks.mcpkit.colour: unknown option" in res.stdout
    assert "tool.hatch.build.hooks.mcpkit.crate: no Cargo.toml" in res.stdout


def test_compile_error_is_one_actionable_line(run_hatch: HatchRunner, example_copy: Path) -> None:
    main = example_copy / "src" / "main.rs"
    main.write_text(main.read_text() + '\nfn broken() -> u32 { "not a number" }\n')
    res = run_hatch(["build", "-t", "mcpkit"], example_copy)
    assert res.returncode != 0
    assert "mismatched types" in res.stdout  # cargo's own diagnostics reach the user
    assert "cargo build failed" in res.stdout
    assert not (example_copy / "dist").exists() or not any((example_copy / "dist").iterdir())


def test_hooks_module_imports_nothing_heavy() -> None:
    code = textwrap.dedent(
        """
        import sys
        for name in ("hatch", "oras", "wasmtime", "mcp", "requests"):
            sys.modules[name] = None  # importing any of these now fails
        import hatch_mcpkit.hooks as hooks
        hook = hooks.hatch_register_build_hook()
        builder = hooks.hatch_register_builder()
        assert hook.PLUGIN_NAME == builder.PLUGIN_NAME == "mcpkit"
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_builder_refuses_a_typo_in_its_target_table(
    run_hatch: HatchRunner, example_copy: Path, rust_env: dict[str, str], tmp_path: Path
) -> None:
    pyproject = example_copy / "pyproject.toml"
    text = pyproject.read_text().replace(
        "[tool.hatch.build.targets.mcpkit]\n", '[tool.hatch.build.targets.mcpkit]\ncrat = "x"\nprofile = 3\n'
    )
    pyproject.write_text(text)
    wrapper, log = counting_cargo(tmp_path, rust_env["CARGO"])
    res = run_hatch(["build", "-t", "mcpkit"], example_copy, env={"CARGO": wrapper})
    assert res.returncode == 2, res.stdout
    assert_reported(
        res.stdout,
        "pyproject.toml: tool.hatch.build.targets.mcpkit.crat: unknown option (did you mean 'crate'?)",
        "pyproject.toml: tool.hatch.build.targets.mcpkit.profile: must be a non-empty string, not a number (3)",
    )
    assert not log.exists()  # nothing was compiled
    assert not (example_copy / "dist").exists() or not any((example_copy / "dist").iterdir())


def test_hook_options_report_every_problem_with_did_you_mean(run_hatch: HatchRunner, example_copy: Path) -> None:
    pyproject = example_copy / "pyproject.toml"
    text = pyproject.read_text().replace('profile = "release"', 'profle = "release"\nfeatures = "serde"')
    pyproject.write_text(text)
    res = run_hatch(["build", "-t", "wheel"], example_copy)
    assert res.returncode == 2, res.stdout
    assert_reported(
        res.stdout,
        "pyproject.toml: tool.hatch.build.hooks.mcpkit.profle: unknown option (did you mean 'profile'?)",
        "pyproject.toml: tool.hatch.build.hooks.mcpkit.features: must be an array of strings, not a string ('serde')",
    )
