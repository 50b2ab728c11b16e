"""Settings shared by every service (pydantic-settings; one env prefix per service).

A service subclasses :class:`ServiceSettings` and sets its own prefix, e.g. ``DEFECTLOOP_INGEST_``.
Stack-wide values (Kafka bootstrap, state directory, OTLP endpoint) fall back to un-prefixed
``DEFECTLOOP_*`` variables so one export configures the whole local stack.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from defectloop.common.paths import state_home


def _stack_env(name: str, default: str | None) -> str | None:
    return os.environ.get(f"DEFECTLOOP_{name}", default)


class ServiceSettings(BaseSettings):
    """What every service needs to connect, store, log and trace."""

    model_config = SettingsConfigDict(env_prefix="DEFECTLOOP_SERVICE_", extra="ignore", frozen=True)

    service_name: str = "service"
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    kafka_bootstrap: str = Field(
        default_factory=lambda: _stack_env("KAFKA_BOOTSTRAP", "127.0.0.1:9092") or "127.0.0.1:9092"
    )
    kafka_request_timeout_ms: int = Field(10_000, ge=1000)
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file <state>/<service>.db"
    )
    blob_url: str = Field(
        default_factory=lambda: _stack_env("BLOB_URL", None) or (state_home() / "blobs").as_uri()
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default_factory=lambda: _stack_env("LOG_FORMAT", "auto")  # type: ignore[arg-type]
    )
    log_level: str = "INFO"
    otlp_endpoint: str | None = Field(
        default_factory=lambda: _stack_env("OTLP_ENDPOINT", None),
        description="OTLP/HTTP traces endpoint; unset = traces to a local file.",
    )
    trace_file: str | None = Field(
        default_factory=lambda: _stack_env("TRACE_FILE", None),
        description="Write spans as JSON lines here when no OTLP endpoint is set.",
    )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{state_home() / (self.service_name + '.db')}"
