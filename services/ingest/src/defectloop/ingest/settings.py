"""Settings of the ingest service (environment prefix ``DEFECTLOOP_INGEST_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from defectloop.common.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEFECTLOOP_INGEST_", extra="ignore", frozen=True)

    service_name: str = "ingest"
    port: int = 8081
