"""publish.push_archive: the one push path (hatch publisher and `mcpkit bundle push`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hatch_mcpkit.errors import BundleError, ConfigError
from hatch_mcpkit.publish import find_archives, push_archive

from .builders import build_archive, config_yaml, make_project, tiny_module
from .plugins.registry import RunningRegistry

pytestmark = pytest.mark.registry

def make_archive(tmp_path: Path, registry: str) -> Path:
    config = config_yaml("notes-tool", "0.3.0", description=None, tools=("note",),
                         storage=['{uri: "fs://${NOTES_DIR}", guest: /notes, access: [read, write]}'],
                         registry=registry, tags=("latest", "0.3"), auth=("${PUSH_USER}", "${PUSH_TOKEN}"))
    make_project(tmp_path, config=config, module=tiny_module())
    return build_archive(tmp_path, tmp_path / "dist", {"NOTES_DIR": "/srv/notes"}, epoch=None).path


def test_push_uses_distribution_and_expands_auth_only_now(
    tmp_path: Path, auth_registry: RunningRegistry, repo_name: str
) -> None:
    archive = make_archive(tmp_path, f"{auth_registry.host}/{repo_name}")
    env = {
        "PUSH_USER": "testuser",
        "PUSH_TOKEN": "testpass",
    }  # NOTES_DIR is a consumer's variable: unset here
    result = push_archive(archive, environ=env, ca_file=None)
    assert result.tags == ("latest", "0.3")
    assert result.references[0] == f"{auth_registry.host}/{repo_name}:latest"
    with auth_registry.client() as client:
        assert sorted(client.list_tags(repo_name)) == ["0.3", "latest"]
    again = push_archive(archive, environ=env)
    assert again.digest == result.digest


def test_push_names_the_missing_secret_variable(
    tmp_path: Path, auth_registry: RunningRegistry, repo_name: str
) -> None:
    archive = make_archive(tmp_path, f"{auth_registry.host}/{repo_name}")
    with pytest.raises(ConfigError) as info:
        push_archive(archive, environ={"PUSH_USER": "testuser"})
    assert "PUSH_TOKEN is not set" in str(info.value)


def test_explicit_target_and_tags_win(tmp_path: Path, registry: RunningRegistry, repo_name: str) -> None:
    archive = make_archive(tmp_path, "ghcr.io/nobody/elsewhere")
    result = push_archive(archive, target=f"oci://{registry.host}/{repo_name}:edge", environ={})
    assert result.tags == ("edge",)
    with pytest.raises(BundleError, match="push to a tag, not a digest"):
        push_archive(archive, target=f"{registry.host}/{repo_name}@{result.digest}", environ={})


def test_find_archives(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="run `hatch build"):
        find_archives([], tmp_path)
    archive = make_archive(tmp_path, "ghcr.io/a/b")
    assert find_archives([], tmp_path) == [archive]
    assert find_archives([str(archive)], tmp_path) == [archive]
