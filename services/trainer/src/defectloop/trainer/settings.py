"""Settings of the trainer service (environment prefix ``DEFECTLOOP_TRAINER_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import SettingsConfigDict

from defectloop.common.paths import state_home
from defectloop.common.settings import ServiceSettings
from defectloop.trainer.gates import GateConfig
from defectloop.trainer.jobs import RetrainPolicy


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEFECTLOOP_TRAINER_", extra="ignore", frozen=True)

    service_name: str = "trainer"
    port: int = 8085
    tokens_required: bool = Field(
        False,
        description=(
            "Every /v1 request needs an API token (defectloop api-token: a role per site). Off "
            "(the local profile): a request without one may do anything; a token presented is "
            "checked and scopes either way. ON in production."
        ),
    )

    # compose.yaml sets DATABASE_URL like every service; DB_URL is the registry's older name.
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "DEFECTLOOP_TRAINER_DATABASE_URL", "DEFECTLOOP_TRAINER_DB_URL"
        ),
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
    # Retraining (closed-loop R8-R9): JSON env, e.g.
    # DEFECTLOOP_TRAINER_SITE_RETRAIN_POLICY='{"B":{"min_fresh_labels":40,"retrain_on_drift":true}}'.
    retrain_policy: RetrainPolicy = Field(
        default_factory=RetrainPolicy, description="Retraining policy of every site."
    )
    site_retrain_policy: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-site overrides of retrain_policy fields."
    )
    train_preset: str = Field("quick", description="Training preset of retraining runs.")
    train_seed: int = Field(0, description="Seed of retraining runs.")
    # JSON env, e.g. DEFECTLOOP_TRAINER_TRAIN_OVERRIDES='{"train":{"epochs":16}}': merged over the
    # preset like `defectloop train --config`, validated when a run resolves it, and recorded in
    # the run's lineage with the rest of its config.
    train_overrides: dict[str, Any] = Field(
        default_factory=dict, description="Config overrides of retraining runs, over the preset."
    )
    work_dir: Path | None = Field(
        None, description="Snapshots and runs of retraining jobs; default <state>/trainer-jobs."
    )
    consumer_group: str = Field("trainer", description="Kafka consumer group of the service.")
    only_sites: list[str] = Field(
        default_factory=list, description="Sites this trainer handles; empty = every site."
    )
    job_tick_s: float = Field(
        2.0, gt=0, description="Longest pause between two looks at the open jobs."
    )
    gate: GateConfig = Field(
        default_factory=GateConfig, description="Margins and levels of the promotion gates (R10)."
    )
    monitor_url: str = Field(
        "http://127.0.0.1:8084", description="The monitor's HTTP API (shadow scorecards)."
    )
    scorecard_poll_s: float = Field(
        10.0, gt=0, description="Shortest pause between two scorecard requests for one shadow."
    )
    actor: str = Field("trainer", description="Who the trainer's governed transitions name.")

    @model_validator(mode="after")
    def _training_config_resolves(self) -> TrainerSettings:
        """A bad preset or override fails the trainer at start, not the first job hours later."""
        from defectloop.common.errors import DefectloopError
        from defectloop.trainer.config import resolve_config

        try:
            resolve_config(self.train_preset, overrides=self.train_overrides or None)
        except DefectloopError as exc:
            raise ValueError(f"train_preset/train_overrides: {exc}") from exc
        return self

    def retrain_policy_for(self, site_id: str) -> RetrainPolicy:
        overrides = self.site_retrain_policy.get(site_id)
        if not overrides:
            return self.retrain_policy
        return RetrainPolicy.model_validate({**self.retrain_policy.model_dump(), **overrides})

    def handles(self, site_id: str) -> bool:
        return not self.only_sites or site_id in self.only_sites

    def resolved_work_dir(self) -> Path:
        return self.work_dir if self.work_dir is not None else state_home() / "trainer-jobs"
