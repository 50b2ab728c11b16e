"""Settings of the monitor service (environment prefix ``DEFECTLOOP_MONITOR_``).

The detectors' rules are nested policies, overridable from the environment with ``__`` between
levels, e.g. ``DEFECTLOOP_MONITOR_PERFORMANCE__ENTRY_TOLERANCE=0.08``. The cadences below say how
much new data a detector needs before it evaluates again: the M-of-N rule of the incident state
machine counts evaluations, and an evaluation on unchanged data would count the same evidence
twice (notes R3: "an evaluation every >= 10 new random labels").
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from defectloop.common.settings import ServiceSettings
from defectloop.monitor.drift import DriftPolicy
from defectloop.monitor.estimate import EstimatePolicy
from defectloop.monitor.incidents import IncidentPolicy
from defectloop.monitor.performance import PerformancePolicy
from defectloop.monitor.quality import QualityPolicy


class MonitorSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="DEFECTLOOP_MONITOR_",
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
    )

    service_name: str = "monitor"
    port: int = 8084

    sites: tuple[str, ...] = Field(
        (), description="Sites to evaluate; empty = every site the monitor has heard of."
    )
    evaluation_interval_s: float = Field(
        30.0, gt=0, description="Period of the evaluation loop (it only looks, it never waits)."
    )
    viewer_tokens_required: bool = Field(
        False,
        description=(
            "Every /v1 request needs a viewer token (defectloop viewer-token). Off: a request "
            "without one sees every site (the monitor binds to 127.0.0.1); a token presented is "
            "checked and scopes either way."
        ),
    )
    max_batch: int = Field(500, ge=1, description="Most events recorded in one transaction.")
    batch_wait_ms: int = Field(200, ge=1, description="Longest wait for a first event to read.")

    performance: PerformancePolicy = PerformancePolicy()
    incidents: IncidentPolicy = IncidentPolicy()
    drift: DriftPolicy = DriftPolicy()
    quality: QualityPolicy = QualityPolicy()
    estimate: EstimatePolicy = EstimatePolicy()

    max_replayed_evaluations: int = Field(
        50,
        ge=1,
        description=(
            "Most evaluations one run replays when many observations arrived at once (a Kafka "
            "batch, a backlog): each detector evaluates at every cadence step, in arrival order."
        ),
    )
    performance_every_labels: int = Field(
        10, ge=1, description="New random-stratum labels between two performance evaluations."
    )
    baseline_window_labels: int = Field(
        100,
        ge=10,
        description=(
            "Random labels after a deployment that freeze the model's baseline when its "
            "model.deployed carries none (also the label-free estimate's calibration set)."
        ),
    )
    baseline_min_positive: int = Field(
        40, ge=1, description="Images in the metric's denominator the first window needs."
    )
    baseline_confidence: float = Field(
        0.8,
        gt=0,
        lt=1,
        description=(
            "A first-window baseline is the Wilson lower bound at this two-sided confidence "
            "(about 1.3 sigma below the point at 0.8): the first window is a sample too."
        ),
    )
    drift_every_images: int = Field(
        50, ge=1, description="New images between two drift / estimate evaluations."
    )
    drift_reference_images: int = Field(
        300, ge=10, description="First images after the deployment: the drift reference."
    )
    drift_window_images: int = Field(200, ge=10, description="Newest images compared with it.")
    quality_every_frames: int = Field(
        50, ge=1, description="New frames (accepted or rejected) between quality evaluations."
    )
    quality_reference_frames: int = Field(
        150, ge=10, description="A camera's first frames the monitor saw: its own baseline."
    )
    quality_window_frames: int = Field(100, ge=10, description="A camera's newest frames.")

    labels_random_share: float = Field(
        0.3, gt=0, le=1, description="Random share asked of annotation-sync during an incident."
    )
    labels_target: int = Field(
        200, ge=1, description="Random-stratum labels asked for per incident."
    )
    labels_valid_hours: float = Field(72.0, gt=0, description="How long a label request lasts.")
