"""Settings of the trainer service (environment prefix ``DEFECTLOOP_TRAINER_``)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from defectloop.common.settings import ServiceSettings


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEFECTLOOP_TRAINER_", extra="ignore", frozen=True)

    service_name: str = "trainer"
    port: int = 8085
    # compose.yaml sets DATABASE_URL like every service; DB_URL is the registry's older name.
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("DEFECTLOOP_TRAINER_DATABASE_URL", "DEFECTLOOP_TRAINER_DB_URL"),
        description="SQLAlchemy URL of the registry; default: SQLite file <state>/trainer.db",
    )
