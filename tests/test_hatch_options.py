"""One options checker for the four Hatch plugins: unknown or mistyped options, all at once, with key paths.

The build hook and builder are driven through ``hatch build`` in test_hatch_build.py; here the
publisher and the collector go through the real ``hatch`` command, and every plugin's options class
is checked directly with the same table of cases.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hatch_mcpkit.errors import ConfigError
from hatch_mcpkit.plugins._options import (
    BUILD_OPTIONS,
    COLLECTOR_OPTIONS,
    PUBLISH_OPTIONS,
    PluginOptions,
    Source,
)
from hatch_mcpkit.plugins.collector import CollectorOptions
from hatch_mcpkit.plugins.pipeline import BuildTableOptions
from hatch_mcpkit.plugins.publisher import PublishOptions

from .plugins.hatch import HatchRunner, assert_reported

REPO = Path(__file__).resolve().parents[1]


def _crate(tmp_path: Path) -> Path:
    (tmp_path / "Cargo.toml").write_text('[package]\nname = "t"\n')
    (tmp_path / "config.yaml").write_text("version: '1.0'\n")
    return tmp_path


# plugin -> (build its options from one table of raw values, that table's key path)
PLUGINS: dict[str, tuple[Callable[[Path, dict[str, Any]], PluginOptions], str]] = {
    "build hook": (lambda root, raw: BuildTableOptions.for_hook(root, raw), "tool.hatch.build.hooks.mcpkit"),
    "builder": (lambda root, raw: BuildTableOptions.for_target(root, {}, raw), "tool.hatch.build.targets.mcpkit"),
    "publisher": (lambda root, raw: PublishOptions(Source.project(raw, root, "publish.mcpkit"), root=root),
                  "tool.hatch.publish.mcpkit"),
    "collector": (lambda root, raw: CollectorOptions(Source.project(raw, root, "env.collectors.mcpkit"), root=root),
                  "tool.hatch.env.collectors.mcpkit"),
}
# plugin -> (a typo of one of its options, the option meant, an option given a wrong type)
TYPOS = {
    "build hook": ("crat", "crate", {"features": "serde"}),
    "builder": ("crat", "crate", {"cargo-args": [1]}),
    "publisher": ("regstry", "registry", {"insecure": "ture"}),
    "collector": ("enviroment", "environment", {"command": 3}),
}


@pytest.mark.parametrize("plugin", list(PLUGINS))
def test_every_plugin_reports_unknown_and_mistyped_options_at_once(plugin: str, tmp_path: Path) -> None:
    make, table = PLUGINS[plugin]
    typo, meant, wrong = TYPOS[plugin]
    with pytest.raises(ConfigError) as info:
        make(_crate(tmp_path), {typo: "x", "colour": "blue", **wrong}).check()
    text = str(info.value)
    (key,) = wrong
    assert text.startswith("3 problems in configuration:"), text
    assert f"pyproject.toml: {table}.{typo}: unknown option (did you mean '{meant}'?)" in text
    assert f"pyproject.toml: {table}.colour: unknown option (expected one of: " in text
    assert f"pyproject.toml: {table}.{key}: must be " in text
    assert info.value.exit_code == 2


@pytest.mark.parametrize("plugin", list(PLUGINS))
def test_every_plugin_accepts_its_documented_defaults(plugin: str, tmp_path: Path) -> None:
    make, _ = PLUGINS[plugin]
    make(_crate(tmp_path), {}).check()


def test_builder_accepts_hatchling_target_keys_and_hook_keys_in_their_own_tables(tmp_path: Path) -> None:
    root = _crate(tmp_path)
    opts = BuildTableOptions.for_target(root, {"dependencies": ["x"], "profile": "dev"},
                                        {"versions": ["standard"], "directory": "out", "features": ["a"]}).check()
    assert (opts.profile, opts.features) == ("dev", ("a",))  # the target's table wins key by key
    with pytest.raises(ConfigError, match=r"tool\.hatch\.build\.hooks\.mcpkit\.versions: unknown option"):
        BuildTableOptions.for_hook(root, {"versions": ["standard"]}).check()


def test_options_from_hatch_toml_are_named_there(tmp_path: Path) -> None:
    root = _crate(tmp_path)
    (root / "hatch.toml").write_text('[build.targets.mcpkit]\ncrat = "x"\n')
    with pytest.raises(ConfigError) as info:
        BuildTableOptions.for_target(root, {}, {"crat": "x"}).check()
    assert "hatch.toml: build.targets.mcpkit.crat: unknown option (did you mean 'crate'?)" in str(info.value)
    with pytest.raises(ConfigError, match=r"pyproject\.toml: tool\.hatch\.publish\.mcpkit\.tag: unknown option"):
        PublishOptions(Source.project({"tag": "v1"}, root, "publish.mcpkit")).check()  # hatch.toml has no [publish]


def test_build_options_name_a_missing_crate_and_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        BuildTableOptions.for_hook(tmp_path, {"crate": "nowhere", "profile": ""}).build_options()
    text = str(info.value)
    assert "tool.hatch.build.hooks.mcpkit.crate: no Cargo.toml in" in text
    assert "tool.hatch.build.hooks.mcpkit.profile: must be a non-empty string, not an empty string" in text
    (tmp_path / "Cargo.toml").write_text("")
    with pytest.raises(ConfigError, match=r"mcpkit\.config: .*no\.yaml does not exist"):
        BuildTableOptions.for_hook(tmp_path, {"config": "no.yaml"}).build_options()


def test_publisher_options_merge_key_by_key_from_every_source(tmp_path: Path) -> None:
    opts = PublishOptions(
        Source({"registry": "oci://a/b", "insecure": True}, "publish.mcpkit", "hatch config.toml"),
        Source({"tags": ["x", "y"], "ca-file": "ca.pem"}, "tool.hatch.publish.mcpkit"),
        Source({"tags": "v1, latest", "ca_file": "other.pem", "insecure": "false"}, "-o", "command line"),
    ).check()
    assert (opts.registry, opts.tags, opts.ca_file, opts.insecure) == ("oci://a/b", ("v1", "latest"), "other.pem",
                                                                      False)
    with pytest.raises(ConfigError) as info:
        PublishOptions(Source({"tag": "v1"}, "tool.hatch.publish.mcpkit"),
                       Source({"insecure": "ture"}, "-o", "command line")).check()
    text = str(info.value)
    assert "command line: -o insecure: must be true or false, not a string ('ture')" in text
    assert "pyproject.toml: tool.hatch.publish.mcpkit.tag: unknown option (did you mean 'tags'?)" in text


def test_a_mistyped_or_misspelt_password_is_named_but_never_shown() -> None:
    with pytest.raises(ConfigError) as info:
        PublishOptions(Source({"password": 9182736455}, "tool.hatch.publish.mcpkit")).check()
    assert "tool.hatch.publish.mcpkit.password: must be a non-empty string, not a number" in str(info.value)
    assert "9182736455" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        PublishOptions(Source({"pasword": "s3cr3t-in-a-typo"}, "-o", "command line")).check()
    assert "command line: -o pasword: unknown option (did you mean 'password'?)" in str(info.value)
    assert "s3cr3t" not in str(info.value)  # an unknown option is named, its value never shown


@pytest.mark.hatch
def test_publisher_reports_bad_options_before_anything_is_pushed(run_hatch: HatchRunner,
                                                                 example_copy: Path) -> None:
    pyproject = example_copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("[tool.hatch.publish.mcpkit]\n",
                                                       '[tool.hatch.publish.mcpkit]\ntag = "v1"\n'))
    res = run_hatch(["publish", "-p", "mcpkit", "-o", "regstry=oci://127.0.0.1:9/x", "-o", "insecure=ture"],
                    example_copy)
    assert res.returncode == 2, res.stdout
    assert_reported(
        res.stdout,
        "command line: -o insecure: must be true or false, not a string ('ture')",
        "command line: -o regstry: unknown option (did you mean 'registry'?)",
        "pyproject.toml: tool.hatch.publish.mcpkit.tag: unknown option (did you mean 'tags'?)",
    )


@pytest.mark.hatch
def test_collector_reports_mistyped_options_without_a_traceback(run_hatch: HatchRunner,
                                                                example_copy: Path) -> None:
    pyproject = example_copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("[tool.hatch.env.collectors.mcpkit]\n",
                                                       '[tool.hatch.env.collectors.mcpkit]\nenviroment = "tools"\n'
                                                       "command = 3\n"))
    res = run_hatch(["env", "show", "--json"], example_copy)
    assert res.returncode == 2, res.stdout
    assert_reported(
        res.stdout,
        "pyproject.toml: tool.hatch.env.collectors.mcpkit.enviroment: unknown option (did you mean 'environment'?)",
        "pyproject.toml: tool.hatch.env.collectors.mcpkit.command: must be a non-empty string, not a number (3)",
    )


def test_docs_describe_every_option_of_every_plugin() -> None:
    text = (REPO / "docs" / "hatch.md").read_text()
    sections = {"## Build hook": BUILD_OPTIONS, "## Builder": BUILD_OPTIONS, "## Publisher": PUBLISH_OPTIONS,
                "## Scripts": COLLECTOR_OPTIONS}
    for heading, options in sections.items():
        start = text.index(heading)
        section = text[start:text.find("\n## ", start + 1)]
        missing = [key for key in options if not re.search(rf"(`|^){re.escape(key)}( =|`)", section, re.M)]
        assert missing == [], f"{heading} does not describe {missing}"


# every module the Hatch plugins load, and what each may import beside the standard library
PLUGIN_MODULES = {
    "hatch_mcpkit.hooks": "build",
    "hatch_mcpkit.plugins._options": "build",
    "hatch_mcpkit.plugins.pipeline": "build",
    "hatch_mcpkit.plugins.build_hook": "build",
    "hatch_mcpkit.plugins.builder": "build",
    "hatch_mcpkit.config": "build",
    "hatch_mcpkit.bundle": "build",
    "hatch_mcpkit.wasm": "build",
    "hatch_mcpkit.cargo": "build",
    "hatch_mcpkit.plugins.publisher": "hatch",
    "hatch_mcpkit.plugins.collector": "hatch",
}

# Allows only the standard library, hatch_mcpkit and the distributions named (with everything they
# require); any other import of a module from site-packages fails, so a new heavy import shows up here.
BLOCKER = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, importlib.metadata as md, re, sys

    def closure(names):
        seen, todo = set(), list(names)
        while todo:
            name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
            if name in seen:
                continue
            seen.add(name)
            try:
                reqs = md.requires(name) or []
            except md.PackageNotFoundError:
                continue
            todo += [re.split(r"[ ;<>=!~\\[(]", r, maxsplit=1)[0] for r in reqs if "extra ==" not in r]
        return seen

    allowed = closure(sys.argv[1].split(","))
    modules = {m for m, dists in md.packages_distributions().items()
               if any(re.sub(r"[-_.]+", "-", d).lower() in allowed for d in dists)}
    stdlib = set(sys.stdlib_module_names)

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            top = fullname.partition(".")[0]
            if top in stdlib or top in modules or top in ("hatch_mcpkit", "_distutils_hack"):
                return None
            spec = importlib.machinery.PathFinder.find_spec(top)
            if spec is not None and spec.origin and "-packages" in spec.origin:
                raise ModuleNotFoundError(f"{fullname} is not allowed here (not installed)", name=fullname)
            return None

    sys.meta_path.insert(0, Blocker())
    import importlib
    importlib.import_module(sys.argv[2])
    heavy = sorted({"oras", "wasmtime", "mcp", "requests", "urllib3", "anyio"} & set(sys.modules))
    assert not heavy, heavy
    print("ok")
    """
)


@pytest.mark.parametrize("module", list(PLUGIN_MODULES))
def test_plugin_modules_import_with_only_their_build_dependencies(module: str) -> None:
    allowed = "hatchling,pyyaml,jsonschema" + (",hatch" if PLUGIN_MODULES[module] == "hatch" else "")
    res = subprocess.run([sys.executable, "-c", BLOCKER, allowed, module], capture_output=True, text=True,
                         check=False, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
