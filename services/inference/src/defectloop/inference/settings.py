"""Settings of the inference service (environment prefix ``DEFECTLOOP_INFERENCE_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from defectloop.common.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="DEFECTLOOP_INFERENCE_", extra="ignore", frozen=True
    )

    service_name: str = "inference"
    port: int = 8082
