from __future__ import annotations

from pathlib import Path

import pytest

from defectloop.trainer.registry import database_url
from defectloop.trainer.settings import TrainerSettings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DEFECTLOOP_TRAINER_DATABASE_URL", raising=False)
    monkeypatch.delenv("DEFECTLOOP_TRAINER_DB_URL", raising=False)
    monkeypatch.setenv("DEFECTLOOP_HOME", str(tmp_path))


def test_registry_reads_the_compose_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # compose.yaml: DEFECTLOOP_TRAINER_DATABASE_URL, like every other service
    monkeypatch.setenv("DEFECTLOOP_TRAINER_DATABASE_URL", "postgresql+psycopg://db/trainer")
    assert database_url() == "postgresql+psycopg://db/trainer"


def test_registry_still_reads_the_older_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFECTLOOP_TRAINER_DB_URL", "sqlite:///older.db")
    assert database_url() == "sqlite:///older.db"


def test_the_compose_variable_wins_over_the_older_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFECTLOOP_TRAINER_DB_URL", "sqlite:///older.db")
    monkeypatch.setenv("DEFECTLOOP_TRAINER_DATABASE_URL", "sqlite:///compose.db")
    assert TrainerSettings().database_url == "sqlite:///compose.db"


def test_without_either_variable_the_registry_is_the_state_home_sqlite_file(
    tmp_path: Path,
) -> None:
    assert database_url() == f"sqlite:///{tmp_path}/trainer.db"
