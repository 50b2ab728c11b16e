"""The trainer's public door (``defectloop.trainer.api``): what tools may call, errors ours only."""

from __future__ import annotations

from pathlib import Path

import pytest

from defectloop.common.errors import ConfigError, InvalidInputError, NotFoundError, TransientError
from defectloop.common.events import ModelRole
from defectloop.trainer import api

pytestmark = pytest.mark.unit


@pytest.fixture
def registry_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'trainer.db'}"
    monkeypatch.setenv("DEFECTLOOP_TRAINER_DATABASE_URL", url)
    return url


def test_an_empty_registry_lists_no_model_and_no_champion(registry_url: str) -> None:
    assert api.list_models() == []
    assert api.active_champion("A") is None


def test_an_unknown_version_is_not_found(registry_url: str) -> None:
    with pytest.raises(NotFoundError):
        api.get_model("nope")


def test_deploying_a_directory_without_a_bundle_is_invalid_input(
    registry_url: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInputError):
        api.deploy(tmp_path, site="A", role=ModelRole.CHAMPION, bootstrap="127.0.0.1:1")


def test_a_registry_url_without_its_driver_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEFECTLOOP_TRAINER_DATABASE_URL", "nosuchdialect://host/registry")
    with pytest.raises(ConfigError):
        api.list_models()


def test_an_unopenable_registry_is_transient(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DEFECTLOOP_TRAINER_DATABASE_URL", f"sqlite:///{tmp_path}")  # a directory
    with pytest.raises(TransientError):
        api.list_models()


def test_the_config_files_are_the_presets_in_a_stable_order() -> None:
    files = api.config_files()
    names = [name for name, _ in files]
    assert names == sorted(names)
    assert {f"presets/{preset}.yaml" for preset in api.available_presets()} <= set(names)
