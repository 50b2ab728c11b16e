"""Settings of the trainer service (environment prefix ``DEFECTLOOP_TRAINER_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from defectloop.common.settings import ServiceSettings


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEFECTLOOP_TRAINER_", extra="ignore", frozen=True)

    service_name: str = "trainer"
    port: int = 8085
