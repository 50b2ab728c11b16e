from __future__ import annotations

import pytest
from pydantic_settings import SettingsConfigDict

from defectloop.common.settings import ServiceSettings

pytestmark = pytest.mark.unit


class AlphaSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEFECTLOOP_ALPHA_")


class BetaSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEFECTLOOP_BETA_")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ServiceSettings.STACK_WIDE:
        for prefix in ("DEFECTLOOP_", "DEFECTLOOP_ALPHA_", "DEFECTLOOP_BETA_", "DEFECTLOOP_SERVICE_"):
            monkeypatch.delenv(f"{prefix}{name}".upper(), raising=False)


def test_stack_wide_variable_configures_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFECTLOOP_KAFKA_BOOTSTRAP", "stack:9092")
    assert (AlphaSettings().kafka_bootstrap, BetaSettings().kafka_bootstrap) == (
        "stack:9092",
        "stack:9092",
    )


def test_service_prefixed_variable_wins_for_that_service_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEFECTLOOP_KAFKA_BOOTSTRAP", "stack:9092")
    monkeypatch.setenv("DEFECTLOOP_ALPHA_KAFKA_BOOTSTRAP", "alpha:9092")
    assert (AlphaSettings().kafka_bootstrap, BetaSettings().kafka_bootstrap) == (
        "alpha:9092",
        "stack:9092",
    )


def test_keyword_arguments_use_field_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFECTLOOP_ALPHA_LOG_FORMAT", "console")
    settings = AlphaSettings(log_format="json", otlp_endpoint="http://collector:4318")
    assert (settings.log_format, settings.otlp_endpoint) == ("json", "http://collector:4318")


def test_unprefixed_generic_names_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "bare:9092")
    assert AlphaSettings().kafka_bootstrap == "127.0.0.1:9092"


def test_base_settings_read_the_stack_wide_name_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFECTLOOP_TRACE_FILE", "/tmp/spans.jsonl")
    assert ServiceSettings().trace_file == "/tmp/spans.jsonl"


def test_invalid_stack_wide_value_is_refused_naming_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEFECTLOOP_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="DEFECTLOOP_ALPHA_LOG_FORMAT"):
        AlphaSettings()
