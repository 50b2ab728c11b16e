"""Settings of the monitor service (environment prefix ``DEFECTLOOP_MONITOR_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from defectloop.common.settings import ServiceSettings


class MonitorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEFECTLOOP_MONITOR_", extra="ignore", frozen=True)

    service_name: str = "monitor"
    port: int = 8084
