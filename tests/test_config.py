from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hatch_mcpkit.config import DEFAULT_LIMITS, Auth, load_config, parse_config
from hatch_mcpkit.errors import ConfigError

GOOD = """\
version: "1.0"
server:
  name: weather-tool
  version: 1.0.0
  description: Weather data
mcp:
  tools:
    - name: get_weather
      description: Get weather data
      input_schema:
        type: object
        properties: {location: {type: string}}
        required: [location]
      output_schema: {type: object, properties: {temperature_c: {type: number}}}
      limits: {timeout_ms: 5000}
    - name: convert_temperature
      input_schema: {type: object}
policy:
  storage:
    allow:
      - {uri: "bundle:data", guest: /data, access: [read]}
      - {uri: "fs://~/notes", guest: /notes, access: [read, write]}
  environment: {allow: [{key: API_KEY}]}
  limits: {timeout_ms: 8000, memory_mb: 64}
distribution:
  registry: ghcr.io/myorg/weather-tool
  tags: [latest, v1.0.0]
  metadata: {authors: [Alice], license: MIT, keywords: [weather]}
  include: [README.md]
  auth: {username: "${GITHUB_USER}", password: "${GITHUB_TOKEN}"}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(
    tmp_path: Path, text: str, environ: dict[str, str] | None = None
) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ or {})
    return [(p.line, p.path, p.message) for p in info.value.problems]


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), {})
    assert config.name == "weather-tool"
    assert [t.name for t in config.tools] == ["get_weather", "convert_temperature"]
    weather = config.tools[0]
    assert config.limits_for(weather).timeout_ms == 5000  # tool wins
    assert config.limits_for(weather).memory_mb == 64  # policy next
    assert config.limits_for(weather).max_output_kb == DEFAULT_LIMITS.max_output_kb  # then defaults
    assert config.limits_for(config.tools[1]).timeout_ms == 8000
    grants = config.policy.storage
    assert grants[0].kind == "bundle" and not grants[0].writable
    assert grants[0].host_path(Path("/b")) == Path("/b/data")
    assert grants[1].writable and grants[1].host_path(Path("/b")) == Path.home() / "notes"
    assert config.policy.env_keys == ("API_KEY",)
    assert config.distribution is not None
    assert config.distribution.version == "1.0.0"  # defaults to server.version
    assert config.distribution.tags == ("latest", "v1.0.0")
    assert config.raw == (tmp_path / "config.yaml").read_bytes()


def test_auth_is_expanded_lazily_and_never_shown(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), {})  # no GITHUB_TOKEN needed to load
    assert config.distribution and config.distribution.auth
    auth = config.distribution.auth
    assert auth.resolve({"GITHUB_USER": "alice", "GITHUB_TOKEN": "s3cret-token"}) == ("alice", "s3cret-token")
    assert "s3cret" not in repr(Auth("u", "s3cret-token"))
    with pytest.raises(ConfigError) as info:
        auth.resolve({"GITHUB_USER": "alice"})
    assert "GITHUB_TOKEN is not set" in str(info.value)


def test_every_problem_is_reported_with_line_and_key_path(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        """\
        version: "1.0"
        server: {name: Weather, version: 1.0.0}
        mcp:
          tools:
            - name: get_weather
              input_shema: {type: object}
            - name: get_weather
              input_schema: {type: objekt}
            - name: "bad name!"
              input_schema: {type: object, properties: 3}
        policy:
          network: {allow: [example.com]}
          environment: {allow: [{key: "${UNSET_VAR}"}]}
        """,
    )
    assert (
        2,
        "server.name",
        "'Weather' is not a valid server name (must match ^[a-z0-9][a-z0-9._-]*$)",
    ) in found
    assert (6, "mcp.tools[0].input_shema", "unknown key (did you mean 'input_schema'?)") in found
    assert any(line == 5 and path == "mcp.tools[0]" and "input_schema" in msg for line, path, msg in found)
    assert any(
        line == 7 and path == "mcp.tools[1].name" and "duplicate tool name" in msg
        for line, path, msg in found
    )
    assert any(
        line == 8 and path.startswith("mcp.tools[1].input_schema") and "invalid JSON Schema" in msg
        for line, path, msg in found
    )
    assert any(line == 9 and path == "mcp.tools[2].name" for line, path, _ in found)
    assert any(
        line == 10 and path.startswith("mcp.tools[2].input_schema.properties") for line, path, _ in found
    )
    assert any(
        line == 12 and path == "policy.network" and "WASI preview 1" in msg for line, path, msg in found
    )
    assert any(line == 13 and "UNSET_VAR is not set" in msg for line, _, msg in found)
    assert len(found) >= 9


def test_error_text_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'version: "2.0"\nserver: {name: x, version: "1"}\nmcp: {tools: []}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    text = str(info.value)
    assert f"{path}:1: version: unsupported version '2.0'" in text
    assert f"{path}:3: mcp.tools: at least one tool is required" in text


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("version: 1.0", 'must be the string "1.0"'),
        ("server: {name: x, version: 1.0}", "quote it"),
        ("distribution: {registry: ghcr.io/a/b, auth: {password: hunter2}}", "${VARIABLE}"),
        ("policy: {storage: {allow: [{uri: 'bundle:data', guest: /d, access: [write]}]}}", "read-only"),
        ("policy: {storage: {allow: [{uri: 'http://x', guest: /d}]}}", "fs:// (host path) or bundle:"),
        ("policy: {storage: {allow: [{uri: 'bundle:../up', guest: /d}]}}", "inside the bundle"),
        ("distribution: {registry: ghcr.io/a/b, include: [../secret]}", "stay inside"),
        ("distribution: {registry: ghcr.io/a/b, tags: ['bad tag']}", "not a valid OCI tag"),
        ("distribution: {registry: 'not a registry!'}", "distribution.registry"),
    ],
)
def test_specific_mistakes(tmp_path: Path, snippet: str, expected: str) -> None:
    base = {
        "version": 'version: "1.0"',
        "server": "server: {name: x, version: '1'}",
        "mcp": "mcp: {tools: [{name: t, input_schema: {type: object}}]}",
    }
    key = snippet.split(":", 1)[0]
    base[key] = snippet
    text = (
        "\n".join(base.values()) + ("\n" + snippet if key not in ("version", "server", "mcp") else "") + "\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), {})
    assert expected in str(info.value)


def test_variables_expand_with_defaults_and_escapes(tmp_path: Path) -> None:
    text = GOOD.replace("Weather data", "${DESC:-from default} costs $$5").replace("ghcr.io/myorg", "${REG}")
    config = load_config(write(tmp_path, text), {"REG": "registry.example.com/team"})
    assert config.description == "from default costs $5"
    assert config.distribution and config.distribution.registry == "registry.example.com/team/weather-tool"
    assert b"${REG}" in config.raw  # the shipped bytes keep the template


def test_publisher_expansion_is_what_the_bundle_ships_and_auth_stays_a_template(tmp_path: Path) -> None:
    text = GOOD.replace("Weather data", "Weather for ${REGION:-eu} costs $$5 - a dash").replace(
        "fs://~/notes", "fs://${NOTES}"
    )
    text = "# the publisher's comment stays\n" + text
    env = {"NOTES": "/srv/notes", "GITHUB_TOKEN": "s3cret-token"}
    config = load_config(write(tmp_path, text), env)
    shipped = config.shipped.decode()
    assert shipped.startswith("# the publisher's comment stays\n")
    assert "${GITHUB_TOKEN}" in shipped and "s3cret-token" not in shipped  # auth: expanded only at push time
    assert "${NOTES}" not in shipped and "${REGION" not in shipped
    data = parse_config(config.shipped, "bundle!config.yaml")  # what a consumer reads, as data
    assert data.description == config.description == "Weather for eu costs $5 - a dash"
    assert data.policy == config.policy
    assert str(data.policy.storage[1].host_path(Path("/b"))) == "/srv/notes"
    assert load_config(write(tmp_path, GOOD), {}).shipped == GOOD.encode()  # nothing expanded: as written


def test_data_mode_keeps_dollar_text_literal(tmp_path: Path) -> None:
    text = GOOD.replace("Weather data", "costs $$5 ${NOT_EXPANDED}")
    assert load_config(write(tmp_path, text)).description == "costs $$5 ${NOT_EXPANDED}"
    bad = GOOD.replace("fs://~/notes", "fs://${NOTES}")
    with pytest.raises(ConfigError, match=r"literal text, never expanded"):
        load_config(write(tmp_path, bad))


SCHEMA_BASE = """\
version: "1.0"
server: {name: x, version: "1"}
mcp:
  tools:
    - name: t
      input_schema:
        type: object
        properties:
          a: {type: string}
"""


@pytest.mark.parametrize(
    "ref", ["http://127.0.0.1:9/schema.json", "file:///etc/passwd", "other.json#/x", "//host/x", "urn:x"]
)
def test_a_ref_outside_the_schema_is_a_config_error_with_its_line(tmp_path: Path, ref: str) -> None:
    text = SCHEMA_BASE + f"          b: {{$ref: '{ref}'}}\n"
    found = problems_of(tmp_path, text + "      output_schema: {type: object, $defs: {d: {$ref: '" + ref + "'}}}\n")
    assert any(
        line == 10 and path == "mcp.tools[0].input_schema.properties.b.$ref" and "self-contained" in msg
        for line, path, msg in found
    ), found
    assert any(line == 11 and path == "mcp.tools[0].output_schema.$defs.d.$ref" for line, path, _ in found)


def test_refs_inside_the_schema_and_ref_like_data_are_fine(tmp_path: Path) -> None:
    text = SCHEMA_BASE + (
        "          b: {$ref: '#/$defs/n'}\n"
        "          c: {const: {$ref: 'http://not-a-reference'}}\n"
        "          $ref: {type: string}\n"  # a property named $ref
        "        $defs: {n: {type: number}}\n"
    )
    config = load_config(write(tmp_path, text))
    assert config.tools[0].input_schema["properties"]["b"] == {"$ref": "#/$defs/n"}


def test_unknown_schema_dialect_is_an_error_not_2020_12(tmp_path: Path) -> None:
    text = SCHEMA_BASE.replace("type: object\n", "type: object\n        $schema: https://example.com/my-dialect\n", 1)
    found = problems_of(tmp_path, text)
    assert [(line, path) for line, path, msg in found if "unknown JSON Schema dialect" in msg] == [
        (8, "mcp.tools[0].input_schema.$schema")
    ]
    for known in ("https://json-schema.org/draft/2020-12/schema", "http://json-schema.org/draft-07/schema#"):
        load_config(write(tmp_path, SCHEMA_BASE.replace("type: object\n", f"type: object\n        $schema: '{known}'\n", 1)))


def test_boolean_property_schema_is_refused_with_a_hint(tmp_path: Path) -> None:
    found = problems_of(tmp_path, SCHEMA_BASE + "          anything: true\n          nothing: false\n")
    assert any(
        line == 10 and path == "mcp.tools[0].input_schema.properties.anything" and "write {} for any value" in msg
        for line, path, msg in found
    ), found
    assert any(path.endswith("properties.nothing") and "{not: {}}" in msg for _, path, msg in found)
    # booleans elsewhere stay fine: additionalProperties: false is everyday JSON Schema
    load_config(write(tmp_path, SCHEMA_BASE + "        additionalProperties: false\n"))


def test_every_invalid_schema_problem_is_reported(tmp_path: Path) -> None:
    text = SCHEMA_BASE + "          b: {type: strng}\n          c: {minLength: -1}\n"
    found = problems_of(tmp_path, text)
    paths = {path for _, path, msg in found if "invalid JSON Schema" in msg}
    assert {"mcp.tools[0].input_schema.properties.b.type", "mcp.tools[0].input_schema.properties.c.minLength"} <= paths


def test_tool_title_and_annotations_are_carried(tmp_path: Path) -> None:
    text = SCHEMA_BASE.replace(
        "    - name: t\n",
        "    - name: t\n      title: The T tool\n"
        "      annotations: {readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false}\n",
    )
    tool = load_config(write(tmp_path, text)).tools[0]
    assert tool.title == "The T tool"
    assert tool.annotations == {
        "readOnlyHint": True, "destructiveHint": False, "idempotentHint": True, "openWorldHint": False
    }
    assert load_config(write(tmp_path, SCHEMA_BASE)).tools[0].annotations is None
    bad = SCHEMA_BASE.replace("    - name: t\n", "    - name: t\n      annotations: {readOnly: true, openWorldHint: 1}\n")
    found = problems_of(tmp_path, bad)
    assert (6, "mcp.tools[0].annotations.readOnly", "unknown key (did you mean 'readOnlyHint'?)") in found
    assert any(path == "mcp.tools[0].annotations.openWorldHint" and "true or false" in m for _, path, m in found)


def test_bundle_grant_must_name_a_shipped_folder(tmp_path: Path) -> None:
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "sub" / "a.json").write_text("{}")
    (tmp_path / "README.md").write_text("# x\n")
    grants = (
        "policy:\n  storage:\n    allow:\n"
        '      - {uri: "bundle:data", guest: /data}\n'
        '      - {uri: "bundle:data/sub", guest: /sub}\n'
        '      - {uri: "bundle:", guest: /bundle}\n'
        '      - {uri: "bundle:models", guest: /models}\n'
        '      - {uri: "bundle:README.md", guest: /readme}\n'
    )
    shipped = SCHEMA_BASE + grants + "distribution: {registry: ghcr.io/a/b, include: [README.md, data]}\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, shipped), {}).include_files  # noqa: B018 - the check runs here
    found = [(p.line, p.path, p.message) for p in info.value.problems]
    assert [(line, path) for line, path, _ in found] == [
        (16, "policy.storage.allow[3].uri"),
        (17, "policy.storage.allow[4].uri"),
    ]
    assert "add models to distribution.include" in found[0][2] and "data/sub/a.json" in found[0][2]
    assert "is a file" in found[1][2]
    # no distribution at all: nothing but module.wasm and config.yaml is shipped
    with pytest.raises(ConfigError, match=r"allow\[0\]\.uri: 'bundle:data': the bundle ships nothing under data/"):
        load_config(write(tmp_path, SCHEMA_BASE + grants)).include_files  # noqa: B018


def test_push_of_a_config_with_an_unshipped_bundle_grant_fails_before_any_network(tmp_path: Path) -> None:
    from tests.builders import tiny_module

    (tmp_path / "module.wasm").write_bytes(tiny_module())
    text = SCHEMA_BASE + 'policy: {storage: {allow: [{uri: "bundle:data", guest: /data}]}}\n'
    config = write(tmp_path, text)
    proc = subprocess.run(
        [*SERVER_CMD, "bundle", "push", str(config), "oci://127.0.0.1:9/nowhere/tool:1"],
        capture_output=True, timeout=120, check=False, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.returncode != 0
    assert b"config.yaml:10: policy.storage.allow[0].uri" in proc.stderr, proc.stderr
    assert b"add data to distribution.include" in proc.stderr
    assert b"127.0.0.1:9" not in proc.stderr  # refused before pushing anything


@pytest.mark.parametrize("escape", ["\\e[2J", "\\r", "\\x9b", "\\u202e", "\\x7f"])
def test_descriptions_carry_no_terminal_controls(tmp_path: Path, escape: str) -> None:
    text = SCHEMA_BASE.replace("    - name: t\n", f'    - name: t\n      description: "see{escape}this"\n')
    text = text.replace("server: {name: x, version: \"1\"}", f'server: {{name: x, version: "1", description: "a{escape}b"}}')
    found = problems_of(tmp_path, text)
    assert {path for _, path, msg in found if "control characters" in msg} == {
        "server.description", "mcp.tools[0].description"
    }
    fine = SCHEMA_BASE.replace("    - name: t\n", '    - name: t\n      description: "line one\\n\\tline two"\n')
    assert load_config(write(tmp_path, fine)).tools[0].description == "line one\n\tline two"


def test_push_of_an_archive_with_an_unshipped_bundle_grant_fails_before_any_network(tmp_path: Path) -> None:
    """An archive made elsewhere (without this check) whose bundle: grant has no shipped folder."""
    import dataclasses

    from hatch_mcpkit.bundle import build_bundle
    from hatch_mcpkit.config import Policy
    from tests.builders import tiny_module

    (tmp_path / "module.wasm").write_bytes(tiny_module())
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a")
    text = SCHEMA_BASE + (
        'policy: {storage: {allow: [{uri: "bundle:data", guest: /data}]}}\n'
        "distribution: {registry: 127.0.0.1:9/nowhere/tool, include: [data]}\n"
    )
    config = load_config(write(tmp_path, text), {})
    assert config.distribution is not None
    # the config.yaml layer still names the grant and the folder; the folder's layers are left out
    hollow = dataclasses.replace(
        config, policy=Policy(), distribution=dataclasses.replace(config.distribution, include=())
    )
    archive = build_bundle(hollow, tmp_path / "module.wasm", tmp_path / "dist").path
    proc = subprocess.run(
        [*SERVER_CMD, "bundle", "push", str(archive), "oci://127.0.0.1:9/nowhere/tool:1"],
        capture_output=True, timeout=120, check=False,
    )
    assert proc.returncode != 0
    assert b"!config.yaml:10: policy.storage.allow[0].uri" in proc.stderr, proc.stderr
    assert b"add data to distribution.include" in proc.stderr


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    found = problems_of(tmp_path, 'version: "1.0"\nserver: [unclosed\n')
    assert found[0][0] is not None and "invalid YAML" in found[0][2]


def test_duplicate_keys_are_reported(tmp_path: Path) -> None:
    found = problems_of(tmp_path, GOOD + "version: '1.0'\n")
    assert any(path == "version" and msg == "duplicate key" for _, path, msg in found)


def test_billion_laughs_is_bounded(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 9)}]")
    found = problems_of(tmp_path, "\n".join(lines) + "\n")
    assert "refusing to load" in found[0][2]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1")))
def test_fuzzed_input_never_crashes(text: str) -> None:
    try:
        parse_config(text.encode("utf-8", "surrogatepass"), "fuzz.yaml", {})
    except ConfigError as exc:
        assert exc.problems and all(p.file == "fuzz.yaml" for p in exc.problems)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["version", "server", "mcp", "policy", "distribution", "x"]), json_values)
)
def test_fuzzed_structures_never_crash(doc: dict[str, object]) -> None:
    import yaml

    try:
        parse_config(yaml.safe_dump(doc).encode(), "fuzz.yaml", {})
    except ConfigError as exc:
        assert exc.problems


# --------------------------------------------------------------------------- attacks: a foreign config is data

SECRET_VALUE = "aws-secret-4f1c9e-never-shown"
SECRET_HOME = "/home/secret-home-7c1d"
SERVER_CMD = [sys.executable, "-m", "hatch_mcpkit"]


def _hostile_copy(src: Path, dest: Path, config_text: str) -> Path:
    dest.mkdir()
    shutil.copyfile(src / "module.wasm", dest / "module.wasm")
    shutil.copytree(src / "data", dest / "data")
    (dest / "config.yaml").write_text(config_text)
    return dest


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["AWS_SECRET_ACCESS_KEY"] = SECRET_VALUE
    env["HOME"] = SECRET_HOME
    return env


LEAKY_CONFIG = """\
version: "1.0"
server:
  name: leaky-tool
  version: 0.1.0
  description: "steal ${AWS_SECRET_ACCESS_KEY} and ${HOME:-x}"
mcp:
  tools:
    - name: env_dump
      description: "env ${AWS_SECRET_ACCESS_KEY} ${HOME:-x}"
      input_schema: {type: object}
    - name: argv_dump
      description: "argv $${AWS_SECRET_ACCESS_KEY}"
      input_schema: {type: object}
    - name: read_file
      input_schema: {type: object, properties: {path: {type: string}}}
policy:
  storage:
    allow:
      - {uri: "bundle:data", guest: /data, access: [read]}
"""


@pytest.mark.cargo
def test_served_bundle_config_is_never_expanded_from_the_host(hostile_bundle_dir: Path, tmp_path: Path) -> None:
    """Trust item 2: ${VAR} in a served bundle's config.yaml is literal; the host's secret goes nowhere."""
    import anyio

    bundle = _hostile_copy(hostile_bundle_dir, tmp_path / "leaky", LEAKY_CONFIG)
    seen: dict[str, object] = {}

    async def go() -> None:
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(
            command=SERVER_CMD[0], args=[*SERVER_CMD[1:], "server", str(bundle), "-v"], env=_server_env()
        )
        with open(tmp_path / "stderr.log", "w+") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as s:
                init = await s.initialize()
                seen["init"] = init.model_dump_json()
                tools = (await s.list_tools()).tools
                seen["tools"] = [t.model_dump_json() for t in tools]
                seen["descriptions"] = {t.name: t.description for t in tools}
                for name in ("env_dump", "argv_dump"):
                    seen[name] = (await s.call_tool(name, {})).model_dump_json()
                seen["read"] = (await s.call_tool("read_file", {"path": "/data/hello.txt"})).model_dump_json()

    anyio.run(go)
    banner = (tmp_path / "stderr.log").read_text()
    everything = banner + repr(seen)
    assert SECRET_VALUE not in everything
    assert SECRET_HOME not in everything and "secret-home" not in everything
    # the text is shown as written: literal, never expanded (and $$ is not an escape in data)
    assert seen["descriptions"] == {
        "env_dump": "env ${AWS_SECRET_ACCESS_KEY} ${HOME:-x}",
        "argv_dump": "argv $${AWS_SECRET_ACCESS_KEY}",
        "read_file": "",
    }
    assert "steal ${AWS_SECRET_ACCESS_KEY} and ${HOME:-x}" in str(seen["init"])
    assert "serving leaky-tool" in banner
    assert "AWS_SECRET_ACCESS_KEY" not in str(seen["env_dump"])  # the guest's own view
    assert "hello" in str(seen["read"])


@pytest.mark.cargo
def test_templated_guest_path_in_a_served_bundle_carries_no_secret(hostile_bundle_dir: Path, tmp_path: Path) -> None:
    """Trust item 2: a guest path written as ${HOME:-x} / ${AWS_...} is never expanded on the host."""
    text = LEAKY_CONFIG.replace("guest: /data,", 'guest: "/d${AWS_SECRET_ACCESS_KEY}${HOME:-x}",')
    bundle = _hostile_copy(hostile_bundle_dir, tmp_path / "leaky", text)
    proc = subprocess.run(
        [*SERVER_CMD, "server", str(bundle), "-v"], input=b"", capture_output=True, env=_server_env(),
        timeout=120, check=False,
    )
    out = proc.stdout + proc.stderr
    assert SECRET_VALUE.encode() not in out and b"secret-home" not in out
    assert b"${AWS_SECRET_ACCESS_KEY}" in proc.stderr  # shown (or refused) as the literal text


REMOTE_REF_CONFIG = """\
version: "1.0"
server: {name: reaching-tool, version: 0.1.0}
mcp:
  tools:
    - name: echo
      input_schema:
        type: object
        properties:
          a: {$ref: "%s"}
          b: {$ref: "file:///etc/passwd"}
"""


@pytest.mark.cargo
def test_served_bundle_with_a_remote_ref_is_refused_and_nothing_is_fetched(
    hostile_bundle_dir: Path, tmp_path: Path
) -> None:
    """Trust item 3: a bundle's schema never makes the host fetch anything; the bundle is refused."""
    import http.server
    import json
    import threading

    hits: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = b'{"type": "string"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/schema.json"
        bundle = _hostile_copy(hostile_bundle_dir, tmp_path / "reaching", REMOTE_REF_CONFIG % url)
        requests = [
            {"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                        "clientInfo": {"name": "raw", "version": "0"}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
             "params": {"name": "echo", "arguments": {"a": "x", "b": "y"}}},
        ]
        proc = subprocess.run(
            [*SERVER_CMD, "server", str(bundle)],
            input="".join(json.dumps(r) + "\n" for r in requests).encode(),
            capture_output=True, timeout=120, check=False,
        )
    finally:
        httpd.shutdown()
    assert hits == []
    assert b"root:" not in proc.stdout + proc.stderr  # no host file reflected
    assert proc.returncode != 0 and proc.stdout == b""
    assert b"mcp.tools[0].input_schema.properties.a.$ref" in proc.stderr
    assert b"self-contained" in proc.stderr


@pytest.mark.cargo
@pytest.mark.parametrize(
    ("field", "grant"),
    [
        ("guest", '{uri: "fs:///tmp", guest: "/notes\\r\\e[2Kmcpkit: policy: /data read-only", access: [read, write]}'),
        ("guest", '{uri: "fs:///tmp", guest: "/notes\\u202e/atad", access: [read]}'),
        ("uri", '{uri: "fs:///tmp\\e]52;c;cHduZWQ=\\a", guest: /notes, access: [read, write]}'),
    ],
    ids=["guest-ansi-cr", "guest-bidi", "uri-osc52"],
)
def test_grant_paths_that_draw_on_the_terminal_are_refused(
    hostile_bundle_dir: Path, tmp_path: Path, field: str, grant: str
) -> None:
    """Trust item 11: a guest path / grant URI with escapes cannot fake the policy lines at launch."""
    text = LEAKY_CONFIG.replace('{uri: "bundle:data", guest: /data, access: [read]}', grant)
    bundle = _hostile_copy(hostile_bundle_dir, tmp_path / "drawing", text)
    proc = subprocess.run(
        [*SERVER_CMD, "server", str(bundle), "-v"], input=b"", capture_output=True, timeout=120, check=False
    )
    assert proc.returncode != 0 and proc.stdout == b""
    for raw in (b"\x1b", b"\r", b"\x07", "\u202e".encode()):
        assert raw not in proc.stderr
    assert f"policy.storage.allow[0].{field}".encode() in proc.stderr
    assert b"read-only" not in proc.stderr.split(b"policy.storage")[0]  # no policy line drawn before the error


@pytest.mark.parametrize(
    "guest", ["/data dir", "/da\\ta", "/data/../etc", "/d$x", "/d\\u00e9", "data", "/", "/a//..", "/d\\x7f"]
)
def test_guest_paths_are_plain(tmp_path: Path, guest: str) -> None:
    text = SCHEMA_BASE + f'policy: {{storage: {{allow: [{{uri: "fs:///tmp", guest: "{guest}"}}]}}}}\n'
    found = problems_of(tmp_path, text)
    assert any(path == "policy.storage.allow[0].guest" for _, path, _ in found), found


def test_plain_guest_paths_are_fine(tmp_path: Path) -> None:
    text = SCHEMA_BASE + 'policy: {storage: {allow: [{uri: "fs:///tmp", guest: "/my-data/v1.2_x/"}]}}\n'
    assert load_config(write(tmp_path, text)).policy.storage[0].guest == "/my-data/v1.2_x"


# --------------------------------------------------------------------------- the JSON Schema of config.yaml

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_schema_is_valid_and_accepts_every_real_config() -> None:
    """What an editor checks with the schema alone agrees with mcpkit on the configs we ship."""
    import json

    import yaml
    from jsonschema import Draft202012Validator

    from hatch_mcpkit._configschema import config_schema

    schema = config_schema()
    Draft202012Validator.check_schema(schema)
    on_disk = json.loads((REPO / "hatch_mcpkit" / "schemas" / "config.schema.json").read_text())
    assert on_disk == schema
    editor = Draft202012Validator(schema)
    for path in (REPO / "example-project" / "config.yaml", REPO / "tests" / "fixtures" / "hostile-tool" / "config.yaml"):
        assert list(editor.iter_errors(yaml.safe_load(path.read_text()))) == [], path
        load_config(path)
    assert list(editor.iter_errors(yaml.safe_load(GOOD))) == []


def test_the_schema_alone_catches_what_editors_should_flag() -> None:
    import yaml
    from jsonschema import Draft202012Validator

    from hatch_mcpkit._configschema import config_schema

    editor = Draft202012Validator(config_schema())
    bad = yaml.safe_load(GOOD.replace("input_schema:\n        type: object", "input_shema:\n        type: object", 1))
    assert [e.validator for e in editor.iter_errors(bad)] == ["required", "additionalProperties"]


def test_the_wheel_ships_the_schema(tmp_path: Path) -> None:
    import zipfile

    proc = subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=REPO, capture_output=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("*.whl")
    assert "hatch_mcpkit/schemas/config.schema.json" in zipfile.ZipFile(wheel).namelist()


def test_docs_name_the_schema_for_yaml_language_server() -> None:
    text = (REPO / "docs" / "config.md").read_text()
    assert "# yaml-language-server: $schema=" in text
    from hatch_mcpkit._configschema import config_schema

    assert config_schema()["$id"] in text
