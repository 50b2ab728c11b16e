"""Settings of the annotation-sync service (environment prefix ``DEFECTLOOP_ANNOTATION_SYNC_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from defectloop.common.settings import ServiceSettings


class AnnotationSyncSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="DEFECTLOOP_ANNOTATION_SYNC_", extra="ignore", frozen=True
    )

    service_name: str = "annotation-sync"
    port: int = 8083
