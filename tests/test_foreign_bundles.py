"""Bundles pushed by other OCI tools: pulled, served and sized like our own; non-bundles refused.

The pushes here go through :class:`RawOci`, a bare OCI distribution client written with ``requests``
(POST/PUT a blob, PUT a manifest) that sends what ``oras push`` sends -- no mcpkit code on that side.
Everything after it is the real command line (``python -m hatch_mcpkit``) against a real registry, and
serving is checked with the official Python MCP client calling a tool.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import anyio
import pytest

from tests.builders import TINY_WASM, build_archive, config_yaml

from .plugins.registry import RunningRegistry

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
BUNDLE = "application/vnd.mcpkit.bundle.v1"
BUNDLE_CONFIG = "application/vnd.mcpkit.bundle.config.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
UNKNOWN_CONFIG = "application/vnd.unknown.config.v1+json"
UNKNOWN_ARTIFACT = "application/vnd.unknown.artifact.v1"
WASM = "application/wasm"
CONFIG_YAML = "application/vnd.mcpkit.config+yaml"
PLAIN_LAYER = "application/vnd.oci.image.layer.v1.tar"  # what oras gives a file pushed without :type
TITLE = "org.opencontainers.image.title"
ORAS_PUSH = ("oras push HOST/REPO:TAG --artifact-type application/vnd.mcpkit.bundle.v1 "
             "module.wasm:application/wasm config.yaml:application/vnd.mcpkit.config+yaml")

File = tuple[str, str | None, bytes]  # (title, media type or None for oras' default, content)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RawOci:
    """A bare OCI client: monolithic blob uploads and manifest PUTs, as ``oras push`` does them."""

    def __init__(self, registry: RunningRegistry) -> None:
        import requests

        self.base = registry.url
        self.http = requests.Session()

    def blob(self, repo: str, data: bytes) -> dict[str, Any]:
        digest = sha256(data)
        started = self.http.post(f"{self.base}/v2/{repo}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = urljoin(self.base + "/", started.headers["Location"])
        done = self.http.put(location + ("&" if "?" in location else "?") + f"digest={digest}", data=data,
                             headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, done.text
        return {"digest": digest, "size": len(data)}

    def manifest(self, repo: str, tag: str, doc: dict[str, Any], media_type: str = MANIFEST) -> str:
        raw = json.dumps(doc).encode()
        put = self.http.put(f"{self.base}/v2/{repo}/manifests/{tag}", data=raw, headers={"Content-Type": media_type})
        assert put.status_code == 201, put.text
        return sha256(raw)

    def get_manifest(self, repo: str, ref: str) -> bytes:
        got = self.http.get(f"{self.base}/v2/{repo}/manifests/{ref}", headers={"Accept": f"{MANIFEST}, {INDEX}"})
        assert got.status_code == 200, got.text
        return bytes(got.content)


def oras_manifest(layers: list[dict[str, Any]], config: dict[str, Any], *, artifact_type: str | None = BUNDLE,
                  config_type: str = EMPTY) -> dict[str, Any]:
    """The manifest ``oras push`` writes: optional artifactType, the config, the layers in argument order."""
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": MANIFEST}
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    doc["config"] = {"mediaType": config_type, **config}
    if config_type == EMPTY:
        doc["config"]["data"] = "e30="  # oras 1.1+ inlines the empty config
    doc["layers"] = layers
    doc["annotations"] = {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}
    return doc


def oras_push(raw: RawOci, repo: str, tag: str, files: Sequence[File], *, artifact_type: str | None = BUNDLE,
              config_type: str = EMPTY, config: bytes = b"{}") -> str:
    """``oras push HOST/REPO:TAG [--artifact-type T] file[:type] ...`` (``--image-spec v1.0`` with
    ``config_type=UNKNOWN_CONFIG`` and no artifact type)."""
    layers = [{"mediaType": media_type or PLAIN_LAYER, **raw.blob(repo, data), "annotations": {TITLE: title}}
              for title, media_type, data in files]
    doc = oras_manifest(layers, raw.blob(repo, config), artifact_type=artifact_type, config_type=config_type)
    return raw.manifest(repo, tag, doc)


def example_files(bundle: Path) -> list[File]:
    """The example bundle's files, typed the way the oras command line in docs/bundle-format.md does."""
    return [("module.wasm", WASM, (bundle / "module.wasm").read_bytes()),
            ("config.yaml", CONFIG_YAML, (bundle / "config.yaml").read_bytes()),
            ("README.md", None, (bundle / "README.md").read_bytes()),
            ("data/weather.json", "application/json", (bundle / "data" / "weather.json").read_bytes())]


def mcpkit(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MCPKIT_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "hatch_mcpkit", *args], env=env, cwd=cwd, text=True,
                          capture_output=True, timeout=300, check=False)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def serve_and_call(home: Path, *args: str, cwd: Path | None = None) -> tuple[str, list[str], Any]:
    """Start ``mcpkit ARGS`` as an MCP stdio server, list its tools and call get_weather."""
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-m", "hatch_mcpkit", *args],
                                   env={**os.environ, "MCPKIT_HOME": str(home)}, cwd=cwd)
    out: list[Any] = []

    async def go() -> None:
        with anyio.fail_after(120), tempfile.TemporaryFile("w+") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as s:
                init = await s.initialize()
                tools = sorted(t.name for t in (await s.list_tools()).tools)
                out.extend([init.server_info.name, tools, await s.call_tool("get_weather", {"location": "London"})])

    anyio.run(go)
    return out[0], out[1], out[2]


def check_served(answer: tuple[str, list[str], Any]) -> None:
    name, tools, weather = answer
    assert name == "weather-tool"
    assert tools == ["convert_temperature", "get_weather"]
    assert weather.is_error is False, weather.content
    # the module read data/weather.json through its bundle:data grant: the extra layer landed under its title
    assert weather.structured_content["location"].lower().startswith("london")
    assert isinstance(weather.structured_content["temperature_c"], (int, float))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "mcpkit-home"


@pytest.fixture
def raw(registry: RunningRegistry) -> RawOci:
    return RawOci(registry)


# --------------------------------------------------------------------------- accepted and served


ORAS_SHAPES = {
    # oras push ... --artifact-type application/vnd.mcpkit.bundle.v1 (the documented command)
    "artifact-type": {"artifact_type": BUNDLE},
    # oras push without --artifact-type (oras 1.1+ writes its own placeholder)
    "unknown-artifact-type": {"artifact_type": UNKNOWN_ARTIFACT},
    # a manifest with no artifactType at all, empty config
    "no-artifact-type": {"artifact_type": None},
    # oras push --image-spec v1.0 (and oras before 1.0): the older config type, no artifactType
    "unknown-config": {"artifact_type": None, "config_type": UNKNOWN_CONFIG},
}


@pytest.mark.registry
@pytest.mark.cargo
@pytest.mark.parametrize("shape", sorted(ORAS_SHAPES))
def test_an_oras_pushed_bundle_is_pulled_and_served(shape: str, registry: RunningRegistry, raw: RawOci,
                                                     repo_name: str, example_bundle_dir: Path, home: Path) -> None:
    """The issue's "done when": pushed in oras' default shape by a raw client, pulled by `mcpkit bundle pull`,
    served by `mcpkit server` to the Python MCP client, a tool called."""
    files = example_files(example_bundle_dir)
    digest = oras_push(raw, repo_name, "v1", [files[2], files[0], files[3], files[1]], **ORAS_SHAPES[shape])
    ref = registry.ref(repo_name, "v1")
    pulled = ok(mcpkit(home, "bundle", "pull", ref))
    assert digest in pulled and "weather-tool" in pulled
    listed = json.loads(mcpkit(home, "bundle", "list", "--json").stdout)
    assert [(r["name"], r["version"], r["digest"]) for r in listed] == [("weather-tool", "1.0.0", digest)]
    assert sorted(listed[0]["tools"]) == ["convert_temperature", "get_weather"]  # derived from config.yaml
    entry = Path(listed[0]["path"])
    assert (entry / "module.wasm").read_bytes() == files[0][2]
    assert (entry / "data" / "weather.json").read_bytes() == files[3][2]
    check_served(serve_and_call(home, "server", ref))


@pytest.mark.registry
@pytest.mark.cargo
def test_our_config_blob_with_the_layers_in_another_order(registry: RunningRegistry, raw: RawOci, repo_name: str,
                                                          example_bundle_dir: Path, home: Path,
                                                          tmp_path: Path) -> None:
    """mcpkit's own config blob (layerDigests in build order) with the manifest's layers reordered:
    config.yaml and the shipped files first, the module last."""
    built = build_archive(example_bundle_dir, tmp_path / "dist")
    unpacked = tmp_path / "layout"
    with tarfile.open(built.path) as tar:
        tar.extractall(unpacked, filter="data")
    doc = json.loads(built.manifest.raw)
    layers = doc["layers"]
    doc["layers"] = [layers[1], *layers[2:][::-1], layers[0]]
    assert [d["annotations"][TITLE] for d in doc["layers"]][::3] == ["config.yaml", "module.wasm"]
    for desc in [doc["config"], *layers]:
        raw.blob(repo_name, (unpacked / "blobs" / "sha256" / desc["digest"].split(":")[1]).read_bytes())
    digest = raw.manifest(repo_name, "v1", doc)
    ref = registry.ref(repo_name, "v1")
    ok(mcpkit(home, "bundle", "pull", ref))
    (row,) = json.loads(mcpkit(home, "bundle", "list", "--json").stdout)
    assert row["digest"] == digest and row["name"] == "weather-tool"
    shown = json.loads(mcpkit(home, "bundle", "inspect", ref, "--json").stdout)
    assert [layer["title"] for layer in shown["layers"]] == [d["annotations"][TITLE] for d in doc["layers"]]
    check_served(serve_and_call(home, "run", ref))


@pytest.mark.registry
def test_a_module_found_by_type_or_by_title(raw: RawOci, registry: RunningRegistry, repo_name: str,
                                            home: Path) -> None:
    """module.wasm typed application/wasm under another title, config.yaml known only by its title: both
    land under their bundle names, and inspect says what it knows before anything is downloaded."""
    config = config_yaml("oras-tool", "2.0.0", tools=("echo", "ping")).encode()
    digest = oras_push(raw, repo_name, "v2", [("tool.wasm", WASM, TINY_WASM), ("config.yaml", None, config),
                                              ("notes.txt", "text/plain", b"hi\n")])
    ref = registry.ref(repo_name, "v2")
    remote = json.loads(ok(mcpkit(home, "bundle", "inspect", ref, "--json")))
    assert remote["digest"] == digest and remote["tools"] is None  # unknown until config.yaml is read
    assert [layer["title"] for layer in remote["layers"]] == ["module.wasm", "config.yaml", "notes.txt"]
    text = ok(mcpkit(home, "bundle", "inspect", ref))
    assert "unknown until pulled" in text
    ok(mcpkit(home, "bundle", "pull", ref))
    (row,) = json.loads(mcpkit(home, "bundle", "list", "--json").stdout)
    assert (row["name"], row["version"], row["tools"]) == ("oras-tool", "2.0.0", ["echo", "ping"])
    entry = Path(row["path"])
    assert sorted(p.name for p in entry.iterdir()) == ["config.yaml", "metadata.json", "module.wasm", "notes.txt"]
    assert (entry / "module.wasm").read_bytes() == TINY_WASM
    cached = json.loads(ok(mcpkit(home, "bundle", "inspect", "oras-tool", "--json")))
    assert cached["tools"] == ["echo", "ping"]


@pytest.mark.registry
def test_a_bundle_pushed_by_oras_py_is_pulled(registry: RunningRegistry, repo_name: str, tmp_path: Path,
                                              home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The oras Python SDK (a real OCI tool, not ours) pushes with its own defaults: the older unknown config
    type, no artifactType, titles that are base names. mcpkit pulls what it pushed."""
    import oras.client

    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "module.wasm").write_bytes(TINY_WASM)
    (folder / "config.yaml").write_text(config_yaml("oraspy-tool", "0.3.0", tools=("hello",)))
    (folder / "NOTES.txt").write_text("notes\n")
    monkeypatch.chdir(folder)  # oras-py pushes paths relative to the working directory
    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    client.push(target=f"{registry.host}/{repo_name}:v1",
                files=[f"module.wasm:{WASM}", f"config.yaml:{CONFIG_YAML}", "NOTES.txt"])
    pushed = json.loads(RawOci(registry).get_manifest(repo_name, "v1"))
    assert pushed["config"]["mediaType"] == UNKNOWN_CONFIG and "artifactType" not in pushed
    ok(mcpkit(home, "bundle", "pull", registry.ref(repo_name, "v1")))
    (row,) = json.loads(mcpkit(home, "bundle", "list", "--json").stdout)
    assert (row["name"], row["version"], row["tools"]) == ("oraspy-tool", "0.3.0", ["hello"])
    assert (Path(row["path"]) / "NOTES.txt").read_text() == "notes\n"


# --------------------------------------------------------------------------- refused


def _tiny() -> list[File]:
    return [("module.wasm", WASM, TINY_WASM), ("config.yaml", CONFIG_YAML, config_yaml("tiny-tool").encode())]


def _image(raw: RawOci, repo: str) -> dict[str, Any]:
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    return {"schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **raw.blob(repo, config.encode())},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **raw.blob(repo, b"rootfs")}]}


def _refusals(raw: RawOci, repo: str, case: str) -> tuple[dict[str, Any], str]:
    """(manifest, media type) of one thing that is not a bundle, its blobs pushed to ``repo``."""
    tiny = _tiny()
    if case == "container image":
        return _image(raw, repo), MANIFEST
    if case == "docker image":
        doc = _image(raw, repo)
        doc["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json"
        doc["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json"
        doc["layers"][0]["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip"
        return doc, doc["mediaType"]
    if case == "image index":
        child = raw.manifest(repo, "child", _image(raw, repo))
        size = len(raw.get_manifest(repo, child))
        return {"schemaVersion": 2, "mediaType": INDEX, "manifests": [
            {"mediaType": MANIFEST, "digest": child, "size": size, "platform": {"architecture": "amd64", "os": "linux"}}]}, INDEX
    if case == "helm chart":
        return {"schemaVersion": 2, "mediaType": MANIFEST,
                "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json",
                           **raw.blob(repo, b'{"name":"chart","version":"1.0.0","apiVersion":"v2"}')},
                "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                            **raw.blob(repo, b"chart")}]}, MANIFEST
    if case == "sigstore signature":
        layer = {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", **raw.blob(repo, b'{"x":1}')}
        return oras_manifest([layer], raw.blob(repo, b"{}"),
                             artifact_type="application/vnd.dev.sigstore.bundle.v0.3+json"), MANIFEST
    if case == "cosign signature":
        doc = _image(raw, repo)
        doc["layers"] = [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", **raw.blob(repo, b"{}")}]
        return doc, MANIFEST
    layers = {
        "two wasm layers": [*tiny, ("other.wasm", WASM, TINY_WASM + b"\0")],
        "no config.yaml": [tiny[0], ("README.md", None, b"# hi\n")],
        "no module": [tiny[1], ("README.md", None, b"# hi\n")],
        "absolute title": [*tiny, ("/etc/passwd", None, b"x")],
        "traversal title": [*tiny, ("data/../../escape", None, b"x")],
        "reserved title": [*tiny, ("module.cwasm", None, b"native code")],
        "reserved folder": [*tiny, (".mcpkit/precompiled", None, b"x")],
        "duplicate titles": [*tiny, ("README.md", None, b"a"), ("readme.MD", None, b"b")],
        "untitled file": [*tiny, ("", None, b"x")],
        "packed folder": [*tiny, ("data", "application/vnd.oci.image.layer.v1.tar+gzip", b"folder tar")],
        "config typed, titled module.wasm": [("module.wasm", CONFIG_YAML, tiny[1][2]), ("README.md", None, b"x")],
    }[case]
    descs = []
    for title, media_type, data in layers:
        desc: dict[str, Any] = {"mediaType": media_type or PLAIN_LAYER, **raw.blob(repo, data)}
        if title:
            desc["annotations"] = {TITLE: title}
        if case == "packed folder":
            desc.setdefault("annotations", {})["io.deis.oras.content.unpack"] = "true"
        descs.append(desc)
    return oras_manifest(descs, raw.blob(repo, b"{}")), MANIFEST


REFUSED = {
    "container image": "it is a container image",
    "docker image": "it is a Docker container image",
    "image index": "it is an image index",
    "helm chart": "it is a Helm chart",
    "sigstore signature": "it is a signature",
    "cosign signature": "it is a signature",
    "two wasm layers": "exactly one module.wasm (application/wasm) layer; this has 2",
    "no config.yaml": "exactly one config.yaml",
    "no module": "exactly one module.wasm",
    "absolute title": "must be a relative path",
    "traversal title": "must be a relative path",
    "reserved title": "reserved for the mcpkit cache",
    "reserved folder": "reserved for the mcpkit cache",
    "duplicate titles": "collides with another layer",
    "untitled file": "has no org.opencontainers.image.title",
    "packed folder": "packed folder",
    "config typed, titled module.wasm": "cannot be both module.wasm and config.yaml",
}


@pytest.mark.registry
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_is_not_a_bundle_is_refused_with_the_oras_command(case: str, raw: RawOci, registry: RunningRegistry,
                                                               repo_name: str, home: Path) -> None:
    """Pull and inspect refuse it, say what it is and print the oras command line that makes a bundle;
    nothing is installed; `list --registry` leaves it out."""
    doc, media_type = _refusals(raw, repo_name, case)
    raw.manifest(repo_name, "thing", doc, media_type)
    ref = registry.ref(repo_name, "thing")
    for command in (["bundle", "pull", ref], ["bundle", "inspect", ref], ["run", ref]):
        done = mcpkit(home, *command)
        assert done.returncode == 1, (command, done.stderr)
        assert REFUSED[case] in done.stderr, done.stderr
        assert ORAS_PUSH in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert json.loads(mcpkit(home, "bundle", "list", "--json").stdout) == []
    assert not (home / "bundles").exists() or not any((home / "bundles").rglob("module.wasm"))
    listed = json.loads(ok(mcpkit(home, "bundle", "list", "--registry", f"{registry.host}/{repo_name}", "--json")))
    assert listed == [{"repository": f"{registry.host}/{repo_name}", "tags": []}]


# --------------------------------------------------------------------------- hostile input, same bounds


@pytest.mark.registry
@pytest.mark.parametrize("shape", sorted(ORAS_SHAPES))
def test_declared_sizes_are_checked_before_download_in_every_shape(shape: str, raw: RawOci, registry: RunningRegistry,
                                                                   repo_name: str, home: Path) -> None:
    """A layer that declares more than --max-bundle-size is refused before a byte of it is fetched: the
    registry holds only 7 bytes under that digest, so a download would fail differently."""
    tiny = _tiny()
    layers = [{"mediaType": media_type or PLAIN_LAYER, **raw.blob(repo_name, data), "annotations": {TITLE: title}}
              for title, media_type, data in [*tiny, ("big.bin", None, b"7 bytes")]]
    layers[2]["size"] = 50 * 1024 * 1024
    raw.manifest(repo_name, "big", oras_manifest(layers, raw.blob(repo_name, b"{}"), **ORAS_SHAPES[shape]))
    done = mcpkit(home, "bundle", "pull", registry.ref(repo_name, "big"), "--max-bundle-size", "10M")
    assert done.returncode == 1
    assert "layer 'big.bin'" in done.stderr and "declares 52428800 bytes" in done.stderr, done.stderr
    assert "nothing was downloaded" in done.stderr
    # all layers together, each under the limit
    layers[0]["size"] = layers[2]["size"] = 6 * 1024 * 1024
    raw.manifest(repo_name, "sum", oras_manifest(layers, raw.blob(repo_name, b"{}"), **ORAS_SHAPES[shape]))
    done = mcpkit(home, "bundle", "pull", registry.ref(repo_name, "sum"), "--max-bundle-size", "10M")
    assert done.returncode == 1 and "declare" in done.stderr and "together" in done.stderr, done.stderr
    assert json.loads(mcpkit(home, "bundle", "list", "--json").stdout) == []


@pytest.mark.registry
def test_an_oversized_config_blob_is_refused(raw: RawOci, registry: RunningRegistry, repo_name: str,
                                             home: Path) -> None:
    """oras' config types are not read, but a manifest declaring a 2 MiB config is still refused as it is; so
    is one whose config.yaml declares more than a config.yaml may have."""
    layers = [{"mediaType": t, **raw.blob(repo_name, d), "annotations": {TITLE: n}} for n, t, d in _tiny()]
    config = raw.blob(repo_name, b"{}")
    config["size"] = 2 * 1024 * 1024
    raw.manifest(repo_name, "cfg", oras_manifest(layers, config, artifact_type=None, config_type=UNKNOWN_CONFIG))
    done = mcpkit(home, "bundle", "pull", registry.ref(repo_name, "cfg"))
    assert done.returncode == 1 and "config blob declares 2097152 bytes" in done.stderr, done.stderr
    # config.yaml is read into memory whole: one declaring more than the YAML reader takes is refused unread
    layers[1]["size"] = 2 * 1024 * 1024
    raw.manifest(repo_name, "yaml", oras_manifest(layers, raw.blob(repo_name, b"{}")))
    done = mcpkit(home, "bundle", "pull", registry.ref(repo_name, "yaml"))
    assert done.returncode == 1 and "config.yaml (sha256:" in done.stderr, done.stderr
    assert "declares 2097152 bytes" in done.stderr and ORAS_PUSH in done.stderr
    assert "nothing was downloaded" in done.stderr


@pytest.mark.registry
def test_a_hostile_config_yaml_in_an_oras_bundle_is_refused(raw: RawOci, registry: RunningRegistry,
                                                            repo_name: str, home: Path) -> None:
    """With no config blob, config.yaml alone names the bundle: it is checked as data like any other."""
    bad = config_yaml("Bad Name!").encode()
    oras_push(raw, repo_name, "v1", [("module.wasm", WASM, TINY_WASM), ("config.yaml", CONFIG_YAML, bad)])
    done = mcpkit(home, "bundle", "pull", registry.ref(repo_name, "v1"))
    assert done.returncode != 0 and "config.yaml" in done.stderr and "name" in done.stderr, done.stderr
    assert json.loads(mcpkit(home, "bundle", "list", "--json").stdout) == []


# --------------------------------------------------------------------------- local forms


def _layout_forms(archive: Path, work: Path) -> dict[str, tuple[str, Path]]:
    """The same OCI layout three ways: (what to type, cwd): a folder, ``foo.tar``, ``./bar.oci``."""
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "layout"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    shutil.copyfile(archive, work / "foo.tar")
    shutil.copyfile(archive, work / "bar.oci")
    return {"folder": ("./layout", work), "foo.tar": ("foo.tar", work), "bar.oci": ("./bar.oci", work)}


def oras_layout(folder: Path, files: Sequence[File]) -> str:
    """An OCI layout folder in oras' default shape (what `oras push --oci-layout` writes)."""
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, Any]:
        (blobs / sha256(data).split(":")[1]).write_bytes(data)
        return {"digest": sha256(data), "size": len(data)}

    layers = [{"mediaType": t or PLAIN_LAYER, **put(d), "annotations": {TITLE: n}} for n, t, d in files]
    raw = json.dumps(oras_manifest(layers, put(b"{}"))).encode()
    put(raw)
    (folder / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {"schemaVersion": 2, "manifests": [{"mediaType": MANIFEST, "artifactType": BUNDLE, "digest": sha256(raw),
                                                "size": len(raw), "annotations": {
                                                    "org.opencontainers.image.ref.name": "v1"}}]}
    (folder / "index.json").write_text(json.dumps(index))
    return sha256(raw)


def _tar(folder: Path, target: Path) -> None:
    with tarfile.open(target, "w") as tar:
        for child in sorted(folder.iterdir()):
            tar.add(child, arcname=child.name)


@pytest.fixture(scope="module")
def example_archive(example_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_archive(example_bundle_dir, tmp_path_factory.mktemp("dist")).path


@pytest.mark.cargo
@pytest.mark.parametrize("form", ["folder", "foo.tar", "bar.oci"])
@pytest.mark.parametrize("command", ["run", "server"])
def test_run_and_server_take_every_local_form(command: str, form: str, example_archive: Path, tmp_path: Path,
                                              home: Path) -> None:
    typed, cwd = _layout_forms(example_archive, tmp_path / "forms")[form]
    check_served(serve_and_call(home, command, typed, cwd=cwd))


@pytest.mark.cargo
def test_an_oras_layout_is_served_from_a_folder_and_a_tar(example_bundle_dir: Path, tmp_path: Path,
                                                          home: Path) -> None:
    oras_layout(tmp_path / "oras", example_files(example_bundle_dir))
    _tar(tmp_path / "oras", tmp_path / "oras.tar")
    check_served(serve_and_call(home, "server", "./oras", cwd=tmp_path))
    check_served(serve_and_call(home, "run", "./oras.tar", cwd=tmp_path))


@pytest.mark.parametrize("form", ["folder", "foo.tar", "bar.oci"])
def test_inspect_takes_every_local_form(form: str, tmp_path: Path, home: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "config.yaml").write_text(config_yaml("form-tool", "3.1.0", tools=("a", "b")))
    (project / "module.wasm").write_bytes(TINY_WASM)
    built = build_archive(project, tmp_path / "dist")
    typed, cwd = _layout_forms(built.path, tmp_path / "forms")[form]
    view = json.loads(ok(mcpkit(home, "bundle", "inspect", typed, "--json", cwd=cwd)))
    assert (view["name"], view["version"], view["tools"], view["digest"]) == (
        "form-tool", "3.1.0", ["a", "b"], built.digest)
    # oras' shape in the same three forms: what the config blob would say comes from config.yaml
    oras = tmp_path / "oras" / "layout"
    digest = oras_layout(oras, [("module.wasm", WASM, TINY_WASM),
                                ("config.yaml", CONFIG_YAML, (project / "config.yaml").read_bytes())])
    _tar(oras, tmp_path / "oras" / "foo.tar")
    shutil.copyfile(tmp_path / "oras" / "foo.tar", tmp_path / "oras" / "bar.oci")
    typed = {"folder": "./layout", "foo.tar": "foo.tar", "bar.oci": "./bar.oci"}[form]
    view = json.loads(ok(mcpkit(home, "bundle", "inspect", typed, "--json", cwd=tmp_path / "oras")))
    assert (view["name"], view["version"], view["tools"], view["digest"]) == ("form-tool", "3.1.0", ["a", "b"], digest)


@pytest.mark.parametrize("command", ["inspect", "run", "push", "pull"])
def test_a_local_archive_of_any_name_is_unpacked_within_the_cap(command: str, tmp_path: Path, home: Path) -> None:
    """An oras-shaped layout in `./big.oci` (64 KiB of data) against --max-bundle-size 16K: refused while it is
    unpacked, by every command that reads it, before anything is pushed, served or installed."""
    oras_layout(tmp_path / "layout", [*_tiny(), ("data.bin", None, os.urandom(64 * 1024))])
    _tar(tmp_path / "layout", tmp_path / "big.oci")
    args = {"inspect": ["bundle", "inspect", "./big.oci"], "run": ["run", "./big.oci"],
            "push": ["bundle", "push", "./big.oci", "oci://127.0.0.1:9/x/y:1"], "pull": ["bundle", "pull", "./big.oci"]}
    env_cap = command == "push"  # push reads the archive with the environment's limit
    done = subprocess.run([sys.executable, "-m", "hatch_mcpkit", *args[command],
                           *([] if env_cap else ["--max-bundle-size", "16K"])],
                          env={**os.environ, "MCPKIT_HOME": str(home), "MCPKIT_MAX_BUNDLE_SIZE": "16K"},
                          cwd=tmp_path, text=True, capture_output=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert "16384" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (home / "bundles").exists() or not any((home / "bundles").rglob("module.wasm"))


def test_a_bare_name_is_the_cache_not_a_file_here(tmp_path: Path, home: Path) -> None:
    """`bar.oci` without ./ names a cached bundle, even with a file of that name here (the one rule)."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "config.yaml").write_text(config_yaml("form-tool"))
    (project / "module.wasm").write_bytes(TINY_WASM)
    shutil.copyfile(build_archive(project, tmp_path / "dist").path, tmp_path / "bar.oci")
    done = mcpkit(home, "bundle", "inspect", "bar.oci", cwd=tmp_path)
    assert done.returncode != 0 and "no cached bundle" in done.stderr and "./bar.oci" in done.stderr, done.stderr


@pytest.mark.registry
@pytest.mark.parametrize("form", ["folder", "foo.tar", "bar.oci", "oras-folder", "oras.tar"])
def test_push_takes_every_local_form(form: str, registry: RunningRegistry, raw: RawOci, repo_name: str,
                                     tmp_path: Path, home: Path) -> None:
    """What is pushed is the layout's own manifest, byte for byte, whatever the file is called."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "config.yaml").write_text(config_yaml("push-form", "1.2.3", include=["README.md"],
                                                     registry="127.0.0.1:1/unused"))
    (project / "README.md").write_text("# push form\n")
    (project / "module.wasm").write_bytes(TINY_WASM)
    if form.startswith("oras"):
        work = tmp_path / "forms"
        digest = oras_layout(work / "layout", [("config.yaml", CONFIG_YAML, (project / "config.yaml").read_bytes()),
                                               ("README.md", None, b"# push form\n"),
                                               ("module.wasm", WASM, TINY_WASM)])
        _tar(work / "layout", work / "oras.tar")
        typed = "./layout" if form == "oras-folder" else "oras.tar"
    else:
        built = build_archive(project, tmp_path / "dist")
        digest = built.digest
        typed, work = _layout_forms(built.path, tmp_path / "forms")[form]
    target = f"oci://{registry.host}/{repo_name}:pushed"
    out = ok(mcpkit(home, "bundle", "push", typed, target, cwd=work))
    assert f"digest: {digest}" in out
    assert sha256(raw.get_manifest(repo_name, "pushed")) == digest
    ok(mcpkit(home, "bundle", "pull", registry.ref(repo_name, "pushed")))
    (row,) = json.loads(mcpkit(home, "bundle", "list", "--json").stdout)
    assert (row["name"], row["version"], row["digest"]) == ("push-form", "1.2.3", digest)


# --------------------------------------------------------------------------- one size


@pytest.mark.registry
@pytest.mark.parametrize("shape", ["mcpkit", "oras"])
def test_list_and_inspect_report_one_size(shape: str, registry: RunningRegistry, raw: RawOci, repo_name: str,
                                          tmp_path: Path, home: Path) -> None:
    """The size of a bundle is the sum of its layers, wherever it is shown: `list`, `inspect` of the cache,
    of the registry and of a local archive -- for our shape and oras'."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "config.yaml").write_text(config_yaml("sized-tool", include=["README.md"],
                                                     registry="127.0.0.1:1/unused"))
    (project / "README.md").write_text("# sized\n" * 100)
    (project / "module.wasm").write_bytes(TINY_WASM)
    built = build_archive(project, tmp_path / "dist")
    files = [(n, t, (project / n).read_bytes()) for n, t in
             (("module.wasm", WASM), ("config.yaml", CONFIG_YAML), ("README.md", "text/markdown"))]
    if shape == "mcpkit":
        with registry.client() as client:
            from hatch_mcpkit.bundle import BundleLayout

            with BundleLayout.open(built.path) as layout:
                client.push_layout(layout, repo_name, ["v1"])
        local = built.path
    else:
        oras_push(raw, repo_name, "v1", files)
        oras_layout(tmp_path / "oras", files)
        local = tmp_path / "oras"
    ref = registry.ref(repo_name, "v1")
    layers = sum(len((project / n).read_bytes()) for n in ("module.wasm", "config.yaml")) + len(files[2][2])
    ok(mcpkit(home, "bundle", "pull", ref))
    (row,) = json.loads(mcpkit(home, "bundle", "list", "--json").stdout)
    sizes = {
        "list": row["size"],
        "inspect cached": json.loads(ok(mcpkit(home, "bundle", "inspect", "sized-tool", "--json")))["size"],
        "inspect registry": json.loads(ok(mcpkit(home, "bundle", "inspect", ref, "--json")))["size"],
        "inspect local": json.loads(ok(mcpkit(home, "bundle", "inspect", str(local), "--json")))["size"],
    }
    assert sizes == dict.fromkeys(sizes, layers)
    table = ok(mcpkit(home, "bundle", "list"))
    text = ok(mcpkit(home, "bundle", "inspect", "sized-tool"))
    human = f"{layers / 1024:.1f} KiB"
    assert human in table and f"Size:        {human}" in text, (table, text)
