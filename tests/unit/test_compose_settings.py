"""Every environment name compose.yaml gives a defectloop service is one that service reads.

A misspelt or stale name (the trainer's registry once read a name compose did not set) is
silently ignored by pydantic-settings (``extra="ignore"``): the service then runs on its default,
e.g. a SQLite file instead of PostgreSQL. So each name is checked against the service's settings
class (its own prefix, a stack-wide field, or a field's alias), and the few names read outside
the settings (the state home, the S3 endpoint, boto3's and MLflow's own variables) against the
code that reads them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from defectloop.annotation_sync.settings import AnnotationSyncSettings
from defectloop.inference.settings import InferenceSettings
from defectloop.ingest.settings import IngestSettings
from defectloop.monitor.settings import MonitorSettings
from defectloop.trainer.settings import TrainerSettings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SETTINGS: dict[str, type[BaseSettings]] = {
    "ingest": IngestSettings,
    "inference": InferenceSettings,
    "annotation-sync": AnnotationSyncSettings,
    "monitor": MonitorSettings,
    "trainer": TrainerSettings,
}
# Read by the libraries themselves, not by our code: boto3's credential chain, MLflow's client.
LIBRARY_NAMES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
LIBRARY_NAMES |= {"MLFLOW_TRACKING_URI"}


def _environment(service: str) -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())  # resolves the << merges
    env: dict[str, Any] = compose["services"][service]["environment"]
    return env


def _names_read_by(settings: type[BaseSettings]) -> set[str]:
    """The environment names ``settings`` reads: prefix + field, and every alias."""
    prefix = str(settings.model_config.get("env_prefix", "")).upper()
    names = set()
    for field_name, field in settings.model_fields.items():
        names.add(f"{prefix}{field_name}".upper())
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {str(choice).upper() for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias.upper())
    return names


def _read_in_source(name: str) -> bool:
    """Whether our code names ``name`` as a string (an ``os.environ`` read, a constant)."""
    for root in ("libs", "services"):
        for path in (ROOT / root).rglob("src/**/*.py"):
            if f'"{name}"' in path.read_text():
                return True
    return False


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_name_compose_sets_is_read_by_the_service(service: str) -> None:
    read = _names_read_by(SETTINGS[service])
    env = _environment(service)
    outside = sorted(set(env) - read - LIBRARY_NAMES)
    unread = [name for name in outside if not _read_in_source(name)]
    assert unread == [], f"{service}: compose sets names nothing reads"


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_the_production_values_parse_in_the_settings_class(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's settings accept compose's values as they are (types, ranges)."""
    for name in list(os.environ):
        if name.startswith("DEFECTLOOP_"):
            monkeypatch.delenv(name)
    for name, value in _environment(service).items():
        monkeypatch.setenv(name, str(value))
    settings: Any = SETTINGS[service]()
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.blob_url.startswith("s3://")
    assert settings.kafka_bootstrap == "kafka:19092"
