from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from hatch_mcpkit.bundle import (
    ARTIFACT_TYPE,
    BUNDLE_CONFIG_MEDIA_TYPE,
    CONFIG_YAML_MEDIA_TYPE,
    TITLE_ANNOTATION,
    WASM_MEDIA_TYPE,
    BuiltBundle,
    BundleLayout,
    Manifest,
)
from hatch_mcpkit.errors import BundleError, IntegrityError

from ._support import need
from .builders import DEMO_FILES, EPOCH, build_archive, config_yaml, make_project, tiny_module

MODULE = tiny_module(bytes(range(256)) * 8)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    config = config_yaml(
        "demo-tool", "2.1.0", description="A demo", tools=("echo", "add"),
        registry="localhost:5000/demo/demo-tool", include=("README.md", "data"),
        metadata={"authors": ["Alice <a@example.com>", "Bob"], "license": "MIT",
                  "repository": "https://example.com/demo", "keywords": ["demo", "test"]},
        auth=("${DEMO_USER}", "${DEMO_TOKEN}"))
    return make_project(tmp_path / "proj", config=config, module=MODULE, files={"README.md": "# demo\n", **DEMO_FILES})


def build(root: Path, out: Path, epoch: int | None = EPOCH) -> BuiltBundle:
    return build_archive(root, out, epoch=epoch)


def test_layout_matches_the_contract(project: Path, tmp_path: Path) -> None:
    built = build(project, tmp_path / "dist")
    assert built.path.name == "demo-tool-2.1.0.mcpkit.tar"
    with tarfile.open(built.path) as tar:
        members = tar.getmembers()
        assert {m.uid for m in members} == {0} and {m.mtime for m in members} == {1700000000}
        names = [m.name for m in members]
        assert names[:2] == ["oci-layout", "index.json"]
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest_raw = tar.extractfile(f"blobs/sha256/{built.digest.split(':')[1]}").read()  # type: ignore[union-attr]
    assert index["manifests"][0]["digest"] == built.digest
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "2.1.0"
    manifest = json.loads(manifest_raw)
    assert "sha256:" + hashlib.sha256(manifest_raw).hexdigest() == built.digest
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["artifactType"] == ARTIFACT_TYPE
    assert manifest["config"]["mediaType"] == BUNDLE_CONFIG_MEDIA_TYPE
    layers = manifest["layers"]
    assert [layer["mediaType"] for layer in layers[:2]] == [WASM_MEDIA_TYPE, CONFIG_YAML_MEDIA_TYPE]
    assert [layer["annotations"][TITLE_ANNOTATION] for layer in layers] == [
        "module.wasm",
        "config.yaml",
        "README.md",
        "data/a.json",
        "data/nested/b.txt",
    ]
    assert layers[0]["digest"] == "sha256:" + hashlib.sha256(MODULE).hexdigest()
    ann = manifest["annotations"]
    assert ann["org.opencontainers.image.title"] == "demo-tool"
    assert ann["org.opencontainers.image.version"] == "2.1.0"
    assert ann["org.opencontainers.image.description"] == "A demo"
    assert ann["org.opencontainers.image.authors"] == "Alice <a@example.com>, Bob"
    assert ann["org.opencontainers.image.licenses"] == "MIT"
    assert ann["org.opencontainers.image.source"] == "https://example.com/demo"
    assert ann["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    assert ann["io.mcpkit.keywords"] == "demo,test"
    with BundleLayout.open(built.path) as layout:
        cfg = layout.bundle_config
        assert cfg == {
            "name": "demo-tool",
            "version": "2.1.0",
            "description": "A demo",
            "architecture": "wasm",
            "os": "wasip1",
            "tools": ["echo", "add"],
            "layerDigests": [layer["digest"] for layer in layers],
        }
        # the config.yaml layer is the file as written: no expanded secrets
        assert layout.read_blob(layers[1]["digest"]) == (project / "config.yaml").read_bytes()
        assert b"${DEMO_TOKEN}" in layout.read_blob(layers[1]["digest"])
        out = tmp_path / "files"
        layout.extract_files(out)
        assert (out / "module.wasm").read_bytes() == MODULE
        assert (out / "data" / "nested" / "b.txt").read_text() == "b\n"


def test_builds_are_byte_identical(project: Path, tmp_path: Path) -> None:
    a = build(project, tmp_path / "a")
    b = build(project, tmp_path / "b")
    assert a.path.read_bytes() == b.path.read_bytes()
    c = build(project, tmp_path / "c", epoch=1700000001)
    assert c.digest != a.digest  # created annotation follows SOURCE_DATE_EPOCH


def test_source_date_epoch_from_environment(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1600000000")
    built = build(project, tmp_path / "d", epoch=None)
    assert built.manifest.annotations["org.opencontainers.image.created"] == "2020-09-13T12:26:40Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(BundleError, match="SOURCE_DATE_EPOCH"):
        build(project, tmp_path / "e", epoch=None)
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").iterdir())


def test_skopeo_reads_the_archive(project: Path, tmp_path: Path) -> None:
    need(shutil.which("skopeo"), "skopeo (apt-get install skopeo)")
    built = build(project, tmp_path / "dist")
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci-archive:{built.path}"], check=True, capture_output=True
    ).stdout
    assert raw == built.manifest.raw


def test_tampered_archive_is_refused(project: Path, tmp_path: Path) -> None:
    built = build(project, tmp_path / "dist")
    unpacked = tmp_path / "layout"
    with tarfile.open(built.path) as tar:
        tar.extractall(unpacked, filter="data")
    blob = unpacked / "blobs" / "sha256" / built.manifest.module_layer.hex
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as info:
        BundleLayout.open(unpacked)
    assert info.value.digest == built.manifest.module_layer.digest


def manifest_with(**changes: object) -> bytes:
    obj: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": BUNDLE_CONFIG_MEDIA_TYPE, "digest": "sha256:" + "a" * 64, "size": 2},
        "layers": [
            {
                "mediaType": WASM_MEDIA_TYPE,
                "digest": "sha256:" + "b" * 64,
                "size": 1,
                "annotations": {TITLE_ANNOTATION: "module.wasm"},
            },
            {
                "mediaType": CONFIG_YAML_MEDIA_TYPE,
                "digest": "sha256:" + "c" * 64,
                "size": 1,
                "annotations": {TITLE_ANNOTATION: "config.yaml"},
            },
        ],
    }
    extra = changes.pop("extra_title", None)
    if extra is not None:
        obj["layers"].append(
            {
                "mediaType": "application/octet-stream",  # type: ignore[attr-defined]
                "digest": "sha256:" + "d" * 64,
                "size": 1,
                "annotations": {TITLE_ANNOTATION: extra},
            }
        )
    obj.update(changes)
    return json.dumps(obj).encode()


def test_manifest_parse_accepts_a_bundle() -> None:
    m = Manifest.parse(manifest_with(extra_title="data/x.json"), "test")
    assert [d.title for d in m.layers] == ["module.wasm", "config.yaml", "data/x.json"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {
                "artifactType": "application/vnd.oci.image.config.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": "sha256:" + "a" * 64,
                    "size": 2,
                },
            },
            "not an mcpkit bundle",
        ),
        ({"layers": []}, "at least two layers"),
        ({"extra_title": "../../etc/passwd"}, "relative path"),
        ({"extra_title": "/etc/passwd"}, "relative path"),
        ({"extra_title": "a/../../b"}, "relative path"),
        ({"extra_title": "MODULE.wasm"}, "collides"),
        ({"extra_title": ""}, "no org.opencontainers.image.title"),
        ({"schemaVersion": 1}, "schemaVersion"),
    ],
)
def test_manifest_parse_refuses_bad_manifests(changes: dict[str, object], message: str) -> None:
    with pytest.raises(BundleError, match=message.replace(".", r"\.")):
        Manifest.parse(manifest_with(**changes), "test")


# --------------------------------------------------------------------------- other tools' manifests

EMPTY = {"mediaType": "application/vnd.oci.empty.v1+json",
         "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2,
         "data": "e30="}
UNKNOWN_CONFIG = {**EMPTY, "mediaType": "application/vnd.unknown.config.v1+json"}
del UNKNOWN_CONFIG["data"]


def layer(title: str | None, media_type: str = "application/vnd.oci.image.layer.v1.tar", fill: str = "e",
          size: int = 1, **annotations: str) -> dict[str, object]:
    ann = {TITLE_ANNOTATION: title} if title is not None else {}
    return {"mediaType": media_type, "digest": "sha256:" + fill * 64, "size": size,
            "annotations": {**ann, **annotations}}


def oras(*layers: dict[str, object], artifact_type: str | None = ARTIFACT_TYPE,
         config: dict[str, object] = EMPTY) -> bytes:
    obj: dict[str, object] = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "config": config, "layers": list(layers)}
    if artifact_type is not None:
        obj["artifactType"] = artifact_type
    return json.dumps(obj).encode()


WASM_LAYER = layer("module.wasm", WASM_MEDIA_TYPE, "b")
YAML_LAYER = layer("config.yaml", CONFIG_YAML_MEDIA_TYPE, "c")


@pytest.mark.parametrize(("artifact_type", "config"), [
    (ARTIFACT_TYPE, EMPTY), (None, EMPTY), ("application/vnd.unknown.artifact.v1", EMPTY), (None, UNKNOWN_CONFIG)])
def test_oras_shapes_are_bundles(artifact_type: str | None, config: dict[str, object]) -> None:
    m = Manifest.parse(oras(layer("README.md", size=5), YAML_LAYER, WASM_LAYER, artifact_type=artifact_type,
                            config=config), "t")
    assert m.derived
    assert (m.module_layer.digest, m.config_layer.digest) == ("sha256:" + "b" * 64, "sha256:" + "c" * 64)
    assert [name for name, _ in m.files] == ["README.md", "config.yaml", "module.wasm"]
    assert m.size == 7  # the layers only: not the config blob, not the manifest


def test_module_and_config_found_by_type_or_by_title() -> None:
    m = Manifest.parse(oras(layer("tool.wasm", WASM_MEDIA_TYPE, "b"), layer("config.yaml", fill="c"),
                            layer("notes.txt", "text/plain")), "t")
    assert [name for name, _ in m.files] == ["module.wasm", "config.yaml", "notes.txt"]
    m = Manifest.parse(oras(layer("module.wasm", "application/octet-stream", "b"), YAML_LAYER), "t")
    assert m.module_layer.digest == "sha256:" + "b" * 64


def test_our_config_blob_may_order_the_layers_otherwise() -> None:
    from hatch_mcpkit.bundle import parse_bundle_config

    m = Manifest.parse(manifest_with(layers=[YAML_LAYER, layer("x.json", fill="d"), WASM_LAYER]), "t")
    assert not m.derived and m.module_layer.title == "module.wasm"
    blob = {"name": "demo", "version": "1", "tools": [], "layerDigests": [
        "sha256:" + "b" * 64, "sha256:" + "c" * 64, "sha256:" + "d" * 64]}
    assert parse_bundle_config(json.dumps(blob).encode(), "t", m)["name"] == "demo"
    blob["layerDigests"] = ["sha256:" + "b" * 64, "sha256:" + "c" * 64, "sha256:" + "a" * 64]
    with pytest.raises(BundleError, match="layerDigests do not match"):
        parse_bundle_config(json.dumps(blob).encode(), "t", m)


IMAGE_CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "a" * 64, "size": 9}


@pytest.mark.parametrize(("raw", "message"), [
    (oras(layer("rootfs", "application/vnd.oci.image.layer.v1.tar+gzip"), WASM_LAYER, YAML_LAYER,
          artifact_type=None, config=IMAGE_CONFIG), "it is a container image"),
    (oras(layer(None, "application/vnd.cncf.helm.chart.content.v1.tar+gzip"), WASM_LAYER, YAML_LAYER,
          artifact_type=None, config={**IMAGE_CONFIG, "mediaType": "application/vnd.cncf.helm.config.v1+json"}),
     "it is a Helm chart"),
    (oras(layer(None, "application/vnd.dev.cosign.simplesigning.v1+json"), WASM_LAYER, YAML_LAYER,
          artifact_type=None, config=IMAGE_CONFIG), "it is a signature"),
    (oras(layer(None, "application/vnd.dev.sigstore.bundle.v0.3+json"),
          artifact_type="application/vnd.dev.sigstore.bundle.v0.3+json"), "it is a signature"),
    (oras(WASM_LAYER, YAML_LAYER, artifact_type="application/spdx+json"), "it is an SBOM"),
    (oras(WASM_LAYER, YAML_LAYER, artifact_type="application/x-anything"), "another kind of artifact"),
    (json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}).encode(),
     "it is an image index"),
    (oras(WASM_LAYER, YAML_LAYER, layer("b.wasm", WASM_MEDIA_TYPE, "d")), "exactly one module.wasm"),
    (oras(WASM_LAYER, layer("README.md")), "exactly one config.yaml"),
    (oras(layer("module.wasm", CONFIG_YAML_MEDIA_TYPE), layer("x")), "cannot be both"),
    (oras(WASM_LAYER, YAML_LAYER, layer("data", **{"io.deis.oras.content.unpack": "true"})), "packed folder"),
    (oras(WASM_LAYER, YAML_LAYER, layer(".mcpkit/x")), "reserved for the mcpkit cache"),
    (oras(WASM_LAYER, YAML_LAYER, layer("/etc/passwd")), "relative path"),
    (oras(WASM_LAYER, YAML_LAYER, layer("a.txt"), layer("A.TXT", fill="f")), "collides"),
    (oras(layer("tool.wasm", WASM_MEDIA_TYPE), YAML_LAYER, layer("tool.wasm", fill="f")), "collides"),
    (oras(WASM_LAYER, YAML_LAYER, config={**EMPTY, "size": 2 * 1024 * 1024}), "config blob declares"),
], ids=["image", "helm", "cosign", "sigstore", "sbom", "other-artifact", "index", "two-wasm", "no-config",
        "both", "packed-folder", "reserved", "absolute", "case-collision", "same-title", "big-config"])
def test_what_is_not_a_bundle_says_so_and_how_to_push_one(raw: bytes, message: str) -> None:
    from hatch_mcpkit.bundle import ORAS_PUSH

    with pytest.raises(BundleError, match=message) as info:
        Manifest.parse(raw, "t")
    assert info.value.hint is not None and ORAS_PUSH in info.value.hint
    assert ORAS_PUSH == ("oras push HOST/REPO:TAG --artifact-type application/vnd.mcpkit.bundle.v1 "
                         "module.wasm:application/wasm config.yaml:application/vnd.mcpkit.config+yaml")


def _oras_layout(folder: Path, files: dict[str, tuple[str, bytes]], index_extra: list[dict[str, object]]) -> str:
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    layers = [{"mediaType": t, **put(d), "annotations": {TITLE_ANNOTATION: n}} for n, (t, d) in files.items()]
    put(b"{}")
    raw = oras(*layers, artifact_type=None)
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **put(raw)}
    (folder / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    manifests = [{**entry, "annotations": {"org.opencontainers.image.ref.name": tag}} for tag in ("1", "latest")]
    (folder / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests + index_extra}))
    return str(entry["digest"])


def test_an_oras_layout_is_read_from_config_yaml(tmp_path: Path) -> None:
    """No mcpkit config blob: name, version and tools come from config.yaml; the module titled tool.wasm is
    written as module.wasm; a second tag and a signature beside the bundle in index.json are left alone."""
    signature = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "9" * 64,
                 "size": 10, "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json"}
    yaml_text = config_yaml("oras-tool", "4.0.0", tools=("one", "two"))
    digest = _oras_layout(tmp_path / "layout", {"tool.wasm": (WASM_MEDIA_TYPE, MODULE),
                                                "config.yaml": (CONFIG_YAML_MEDIA_TYPE, yaml_text.encode()),
                                                "data/x.json": ("application/json", b"{}")}, [signature])
    with BundleLayout.open(tmp_path / "layout") as layout:
        assert layout.manifest.digest == digest and layout.manifest.derived
        assert (layout.name, layout.version, layout.bundle_config["tools"]) == ("oras-tool", "4.0.0", ["one", "two"])
        written = layout.extract_files(tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == [
        "config.yaml", "data/x.json", "module.wasm"]
    assert (tmp_path / "out" / "module.wasm").read_bytes() == MODULE


def test_an_oras_layout_with_a_bad_config_yaml_is_refused(tmp_path: Path) -> None:
    from hatch_mcpkit.errors import ConfigError

    _oras_layout(tmp_path / "layout", {"module.wasm": (WASM_MEDIA_TYPE, MODULE),
                                       "config.yaml": (CONFIG_YAML_MEDIA_TYPE, b"server: [not, a, map]\n")}, [])
    with pytest.raises(ConfigError, match=r"config\.yaml"):
        BundleLayout.open(tmp_path / "layout")


def test_archive_with_traversal_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.mcpkit.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        import io

        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(BundleError, match="unsafe path"):
        BundleLayout.open(evil)
    assert not (tmp_path / "escape").exists()
