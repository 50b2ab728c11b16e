"""Settings shared by every service (pydantic-settings; one env prefix per service).

A service subclasses :class:`ServiceSettings` and sets its own prefix, e.g. ``DEFECTLOOP_INGEST_``.
Stack-wide values (Kafka bootstrap and credentials, blob URL, log format, Zipkin/OTLP endpoint,
trace file) are also read from un-prefixed ``DEFECTLOOP_*`` variables, so one export configures the
whole local stack; the service's own prefixed variable wins. Both names are ``AliasChoices`` of
the field, set for each subclass's prefix when the subclass is created; keyword arguments use the
field names.
"""

from __future__ import annotations

from copy import copy
from typing import Any, ClassVar, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from defectloop.common.kafka_auth import ScramCredentials, credentials_from
from defectloop.common.paths import state_home


def _default_blob_url() -> str:
    return (state_home() / "blobs").as_uri()


class ServiceSettings(BaseSettings):
    """What every service needs to connect, store, log and trace."""

    model_config = SettingsConfigDict(
        env_prefix="DEFECTLOOP_SERVICE_", extra="ignore", frozen=True, validate_by_name=True
    )

    STACK_WIDE: ClassVar[tuple[str, ...]] = (
        "kafka_bootstrap",
        "kafka_username",
        "kafka_password",
        "blob_url",
        "log_format",
        "otlp_endpoint",
        "zipkin_endpoint",
        "trace_file",
    )

    service_name: str = "service"
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_request_timeout_ms: int = Field(10_000, ge=1000)
    kafka_username: str | None = Field(
        None,
        description="SASL/SCRAM user on a secured broker (the production profile: the "
        "service's principal, e.g. inference); unset = an anonymous PLAINTEXT client.",
    )
    kafka_password: SecretStr | None = Field(
        None, description="The SCRAM password of kafka_username (never logged)."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file <state>/<service>.db"
    )
    blob_url: str = Field(default_factory=_default_blob_url)
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP traces endpoint; unset = traces to a local file."
    )
    zipkin_endpoint: str | None = Field(
        None,
        description="Zipkin's span intake (http://127.0.0.1:9411/api/v2/spans, as `defectloop "
        "up` sets it); wins over the OTLP endpoint and the trace file.",
    )
    trace_file: str | None = Field(
        None, description="Write spans as JSON lines here when no Zipkin or OTLP endpoint is set."
    )

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._alias_stack_wide()

    @classmethod
    def _alias_stack_wide(cls) -> None:
        prefix = cls.model_config.get("env_prefix", "")
        for name in cls.STACK_WIDE:
            # A copy: the parent's FieldInfo must keep the parent's prefix.
            field = copy(cls.__pydantic_fields__[name])
            if field.validation_alias is None or isinstance(field.validation_alias, AliasChoices):
                # Upper case: errors name the variable a user sets (matching ignores case).
                field.validation_alias = AliasChoices(
                    f"{prefix}{name}".upper(), f"DEFECTLOOP_{name}".upper()
                )
            cls.__pydantic_fields__[name] = field
        cls.model_rebuild(force=True)

    def kafka_credentials(self) -> ScramCredentials | None:
        """The service's principal on the bus, or None (raises ``ConfigError`` for half a pair)."""
        password = self.kafka_password.get_secret_value() if self.kafka_password else None
        return credentials_from(self.kafka_username, password)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{state_home() / (self.service_name + '.db')}"


ServiceSettings._alias_stack_wide()
