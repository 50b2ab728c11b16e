"""The stack hands annotation-sync its Label Studio through the service's settings (a door)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from defectloop.cli import labelstudio_local

pytestmark = pytest.mark.unit


def test_annotation_sync_gets_the_shared_instance_as_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEFECTLOOP_HOME", str(tmp_path))
    shared = labelstudio_local.default_layout(port=18080)
    env = labelstudio_local.annotation_sync_env(shared, ["A"])
    assert env == {
        "DEFECTLOOP_ANNOTATION_SYNC_LABEL_STUDIO_URL": "http://127.0.0.1:18080",
        "DEFECTLOOP_ANNOTATION_SYNC_LABEL_STUDIO_TOKEN": labelstudio_local.credentials(shared)[
            "token"
        ],
    }


def test_a_site_instance_that_is_not_running_is_not_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEFECTLOOP_HOME", str(tmp_path))
    site = labelstudio_local.default_layout("B", port=1)
    site.home.mkdir(parents=True)
    site.info_file.write_text(json.dumps({"url": "http://127.0.0.1:1", "token": "t" * 40}))
    env = labelstudio_local.annotation_sync_env(labelstudio_local.default_layout(), ["B"])
    assert "DEFECTLOOP_ANNOTATION_SYNC_LABEL_STUDIO_INSTANCES" not in env
