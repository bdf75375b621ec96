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
