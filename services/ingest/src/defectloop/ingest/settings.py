"""Settings of the ingest service (environment prefix ``DEFECTLOOP_INGEST_``).

Complex values are JSON in the environment, e.g.
``DEFECTLOOP_INGEST_ACCEPTED_MODES='["gray8","gray16"]'`` or
``DEFECTLOOP_INGEST_SITE_QUALITY_FLOORS='{"A": {"min_sharpness": 40}}'``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict

from defectloop.common.errors import ConfigError
from defectloop.common.settings import ServiceSettings
from defectloop.ingest.png import DEFAULT_MODES
from defectloop.ingest.ratelimit import parse_limits

#: Pixel formats a PNG can declare, named ``<kind><bits per sample>``.
KNOWN_MODES = frozenset(
    {
        "gray1",
        "gray2",
        "gray4",
        "gray8",
        "gray16",
        "rgb8",
        "rgb16",
        "palette1",
        "palette2",
        "palette4",
        "palette8",
        "graya8",
        "graya16",
        "rgba8",
        "rgba16",
    }
)


class QualityFloor(BaseModel):
    """The minimum quality a site accepts. ``None`` = measured and recorded, never rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reject_uniform: bool = Field(True, description="Reject frames with no content at all.")
    min_sharpness: float | None = Field(None, ge=0, description="Variance of the Laplacian.")
    min_brightness: float | None = Field(None, ge=0, le=255, description="Mean pixel value.")
    max_brightness: float | None = Field(None, ge=0, le=255, description="Mean pixel value.")


class SiteRateLimit(BaseModel):
    """A site's own upload limits (``None``: the default of that kind)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_token: str | None = Field(None, description='Per gateway token, e.g. "20/second".')
    per_site: str | None = Field(None, description='For the whole site, e.g. "100/second".')


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEFECTLOOP_INGEST_", extra="ignore", frozen=True)

    service_name: str = "ingest"
    port: int = 8081

    # Input limits.
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest accepted body.")
    # 5 MiP: the 5 MP sensors of the field (2592x1944, 2448x2048) are a little over 5,000,000.
    max_pixels: int = Field(5_242_880, ge=1, description="Largest width x height (IHDR).")
    max_side: int = Field(8192, ge=1, description="Largest width or height (IHDR).")
    accepted_modes: tuple[str, ...] = Field(
        DEFAULT_MODES,
        description=f"Accepted PNG pixel formats, among {sorted(KNOWN_MODES)}; every one is "
        "decoded to 8-bit gray by one rule (docs/ingest.md).",
    )
    max_text_chunk_bytes: int = Field(
        1024 * 1024, ge=1, description="Largest decompressed zTXt/iTXt/iCCP chunk."
    )
    max_chunks: int = Field(100_000, ge=3, description="Most chunks one PNG may hold.")

    # Kafka.
    publish_timeout_s: float = Field(5.0, gt=0, description="Wait for Kafka's ack at most this.")
    republish_interval_s: float = Field(
        1.0, gt=0, description="Outbox: retry publishing unacknowledged events this often."
    )
    kafka_connect_retry_s: float = Field(2.0, gt=0, description="Pause between connect tries.")
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with a 503.")

    # Upload limits (ratelimit.py, docs/ingest.md). The defaults are ceilings far above what a
    # camera, the simulator or the demo send (1-10 frames/s per camera) and bound a runaway
    # gateway; a site with many or less trusted gateways sets its own (rate_limit_sites).
    rate_limit_per_token: str | None = Field(
        "200/second",
        description='Uploads per gateway token, in the notation of the limits library ("N/'
        'second;M/minute": all hold); empty = unlimited.',
    )
    rate_limit_per_site: str | None = Field(
        "1000/second", description="Uploads per site (all its tokens); empty = unlimited."
    )
    rate_limit_sites: dict[str, SiteRateLimit] = Field(
        default_factory=dict,
        description='Per-site limits, JSON: {"B": {"per_token": "20/second"}}.',
    )
    rate_limit_storage: str = Field(
        "memory://",
        description="Where counts are kept (limits storage URI; redis://... for replicas).",
    )

    # Quality.
    quality_floor: QualityFloor = Field(
        default_factory=QualityFloor, description="Floor of sites without their own."
    )
    site_quality_floors: dict[str, QualityFloor] = Field(
        default_factory=dict, description="Per-site floors (override quality_floor)."
    )
    quality_floors_file: Path | None = Field(
        None, description="YAML/JSON mapping site -> floor, merged over site_quality_floors."
    )
    uniform_max_contrast: float = Field(
        2.0, ge=0, description="A frame whose pixel std is below this is uniform."
    )
    flat_tile_max_std: float = Field(
        2.0, ge=0, description="A tile whose std is below this counts as obstructed."
    )
    near_duplicate_threshold: float = Field(
        1.0,
        ge=0,
        description="Mean abs diff (0-255) of 32x32 fingerprints below which two "
        "consecutive frames of a camera are near-duplicates.",
    )
    cpu_workers: int = Field(4, ge=1, description="Threads decoding and measuring images.")

    @field_validator("rate_limit_per_token", "rate_limit_per_site")
    @classmethod
    def _valid_limit(cls, text: str | None) -> str | None:
        _check_limit(text)
        return text

    @field_validator("rate_limit_sites")
    @classmethod
    def _valid_site_limits(cls, sites: dict[str, SiteRateLimit]) -> dict[str, SiteRateLimit]:
        for limits in sites.values():
            _check_limit(limits.per_token)
            _check_limit(limits.per_site)
        return sites

    @field_validator("accepted_modes")
    @classmethod
    def _known_modes(cls, modes: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(modes) - KNOWN_MODES
        if unknown:
            raise ValueError(f"unknown modes {sorted(unknown)}; known: {sorted(KNOWN_MODES)}")
        return modes

    def load_quality_floors(self) -> dict[str, QualityFloor]:
        """Per-site floors: ``site_quality_floors`` overlaid with ``quality_floors_file``."""
        floors = dict(self.site_quality_floors)
        if self.quality_floors_file is None:
            return floors
        path = self.quality_floors_file
        try:
            text = path.read_text()
            raw: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise ConfigError(
                f"cannot read quality floors {path}: {exc}",
                hint="a YAML/JSON mapping of site id -> {min_sharpness, min_brightness, ...}",
            ) from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"quality floors {path} is not a mapping of site -> floor")
        try:
            floors.update({str(k): QualityFloor.model_validate(v) for k, v in raw.items()})
        except ValidationError as exc:
            raise ConfigError(f"invalid quality floor in {path}: {exc}") from exc
        return floors


def _check_limit(text: str | None) -> None:
    try:
        parse_limits(text)
    except ConfigError as exc:  # a validation error names the setting
        raise ValueError(f"{exc} ({exc.hint})") from exc
