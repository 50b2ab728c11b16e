"""Settings of the trainer service (environment prefix ``DEFECTLOOP_TRAINER_``)."""

from __future__ import annotations

from typing import Literal

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
    # Promotion governance (brief §8): JSON env, e.g. DEFECTLOOP_TRAINER_PROMOTION_POLICY='{"B":"auto"}'.
    promotion_policy: dict[str, Literal["auto", "approval"]] = Field(
        default_factory=dict, description="Per-site promotion policy: auto or approval."
    )
    default_promotion_policy: Literal["auto", "approval"] = Field(
        "approval", description="Policy of the sites not in promotion_policy."
    )
    require_gates: bool = Field(
        True, description="Deploy a candidate only with a passed gate report against the champion."
    )
