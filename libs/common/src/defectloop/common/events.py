"""Event contracts: one frozen, versioned pydantic model per topic (brief §3).

These models are the public contract the MES and every service depend on. Their JSON Schemas are
generated into ``docs/events/`` (``python -m defectloop.common.schemas``) and a test fails when the
committed schemas drift from the models. A breaking change needs a new ``schema_version``.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from defectloop.common import topics

# The one definition of a valid id; HTTP path/query parameters reuse the patterns.
ID_MAX_LENGTH = 64
SITE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
CAMERA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

SiteId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=ID_MAX_LENGTH,
        pattern=SITE_ID_PATTERN,
        description="Site (factory) identifier.",
        examples=["A"],
    ),
]
CameraId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=ID_MAX_LENGTH,
        pattern=CAMERA_ID_PATTERN,
        description="Camera identifier, unique within a site.",
        examples=["cam-1"],
    ),
]
Sha256 = Annotated[
    str,
    Field(pattern=r"^[0-9a-f]{64}$", description="Lower-case hex SHA-256 of the bytes."),
]

# Namespace for deterministic ids derived from content (uuid5).
_ID_NAMESPACE = uuid.UUID("6f7c2b5e-3d0a-4b8e-9a57-2f1d4c9e8a10")


def utc_now() -> datetime:
    return datetime.now(UTC)


def deterministic_id(*parts: str) -> str:
    """A stable id from its parts: the same inputs always give the same id (idempotence)."""
    return str(uuid.uuid5(_ID_NAMESPACE, "\x1f".join(parts)))


def image_id_for(site_id: str, camera_id: str, sha256: str) -> str:
    """Same bytes from the same camera give the same image id."""
    return deterministic_id("image", site_id, camera_id, sha256)


def prediction_id_for(image_id: str, model_version: str, role: str) -> str:
    """One prediction per (image, model version, role): redeliveries dedupe on this id."""
    return deterministic_id("prediction", image_id, model_version, role)


def decision_id_for(image_id: str, role: str) -> str:
    """One decision per (image, role), whichever model version made it: the MES dedupes on this
    id, so a batch redelivered after a crash and predicted again by a newly switched model is
    still the same decision."""
    return deterministic_id("decision", image_id, role)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Event(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    topic: ClassVar[str]

    schema_version: int = Field(1, ge=1, description="Version of this event's schema.")
    event_id: str = Field(
        default_factory=lambda: str(uuid.uuid4()),
        min_length=1,
        max_length=128,
        description="Unique id of this event; consumers use it to drop redeliveries.",
    )
    occurred_at: AwareDatetime = Field(
        default_factory=utc_now, description="When the event happened (UTC, ISO 8601)."
    )
    site_id: SiteId

    @field_validator("occurred_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        # A version newer than this model's may mean anything: refused (the record goes to the
        # DLQ as a schema violation) rather than read as if it were the one we know.
        known = cls.model_fields["schema_version"].default
        if value > known:
            raise ValueError(f"unknown schema_version {value}: this reader knows up to {known}")
        return value

    def key(self) -> bytes:
        """The Kafka message key: per site, so order per site holds."""
        return self.site_id.encode()


class CameraEvent(Event):
    """An event about one camera's frame: keyed by site/camera so per-camera order holds."""

    camera_id: CameraId
    line_id: str | None = Field(None, max_length=64, description="Production line, if known.")

    def key(self) -> bytes:
        return f"{self.site_id}/{self.camera_id}".encode()


class QualityMetrics(BaseModel):
    """Image quality measured at ingest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sharpness: float = Field(..., ge=0, description="Variance of the Laplacian (higher = sharper).")
    brightness: float = Field(..., ge=0, le=255, description="Mean pixel value, 0-255.")
    contrast: float = Field(..., ge=0, description="Standard deviation of pixel values.")
    uniform: bool = Field(..., description="Frame is (nearly) uniform: lens covered or obstructed.")
    obstructed_fraction: float = Field(
        0.0, ge=0, le=1, description="Share of the frame covered by a flat, featureless region."
    )
    near_duplicate: bool = Field(
        False, description="Nearly identical to the previous frame of the same camera."
    )


class ImageCaptured(CameraEvent):
    """A camera frame was accepted and stored; the bytes are in the blob store (claim check)."""

    topic: ClassVar[str] = topics.IMAGE_CAPTURED

    image_id: str = Field(..., description="Deterministic id: same camera + same bytes = same id.")
    sha256: Sha256
    blob_uri: str = Field(
        ...,
        description="Where the PNG bytes are stored.",
        examples=["file:///data/blobs/ab/cd.png"],
    )
    captured_at: AwareDatetime = Field(..., description="When the camera took the frame (UTC).")
    width: int = Field(..., gt=0, description="Width in pixels.")
    height: int = Field(..., gt=0, description="Height in pixels.")
    bit_depth: int = Field(8, description="Bits per sample.")
    quality: QualityMetrics = Field(..., description="Quality measured at ingest.")
    source_mode: str | None = Field(
        None,
        description="Pixel format the camera sent (gray8, gray16, rgb8, rgba8, rgb16, rgba16): "
        "the stored bytes are the original; every reader decodes them to 8-bit gray by one rule "
        "(docs/ingest.md). None from producers older than this field.",
        examples=["gray16"],
    )


class RejectReason(StrEnum):
    """Why ingest refused an image: one machine-readable code per rejection."""

    TOO_LARGE = "too_large"
    NOT_PNG = "not_png"
    WRONG_CONTENT_TYPE = "wrong_content_type"
    EMPTY = "empty"
    TRUNCATED = "truncated"
    UNDECODABLE = "undecodable"
    PIXEL_BOMB = "pixel_bomb"
    UNSUPPORTED_FORMAT = "unsupported_format"
    UNIFORM_FRAME = "uniform_frame"
    TOO_BLURRY = "too_blurry"
    TOO_DARK = "too_dark"
    TOO_BRIGHT = "too_bright"


class ImageRejected(CameraEvent):
    """Ingest refused a frame for a validation or quality reason (never for an auth failure)."""

    topic: ClassVar[str] = topics.IMAGE_REJECTED

    reason: RejectReason = Field(..., description="Machine-readable rejection code.")
    detail: str = Field(..., max_length=2000, description="Human-readable explanation.")
    sha256: Sha256 | None = Field(None, description="Digest of the body, when one was received.")
    size_bytes: int | None = Field(None, ge=0, description="Body size in bytes, when known.")


class Box(BaseModel):
    """An axis-aligned box in pixels of the original image."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str = Field(..., min_length=1, description="Class name.", examples=["scratch"])
    x: float = Field(..., ge=0, description="Left edge, pixels.")
    y: float = Field(..., ge=0, description="Top edge, pixels.")
    w: float = Field(..., ge=0, description="Width, pixels.")
    h: float = Field(..., ge=0, description="Height, pixels.")


class ScoredBox(Box):
    score: float = Field(..., ge=0, le=1, description="Detector confidence.")


class ModelRole(StrEnum):
    CHAMPION = "champion"
    CHALLENGER = "challenger"
    SHADOW = "shadow"


class PredictionMade(CameraEvent):
    """The decision of one model for one image. The MES acts on role=champion only."""

    topic: ClassVar[str] = topics.PREDICTION_MADE

    schema_version: int = Field(2, ge=1, description="Version of this event's schema.")
    prediction_id: str = Field(
        ...,
        description="Deterministic from image_id, model version and role: one per model's "
        "prediction (evaluation dedupes on it).",
    )
    image_id: str = Field(..., description="The image this prediction is for.")
    sha256: Sha256
    blob_uri: str = Field(..., description="Where the image bytes are stored.")
    width: int = Field(..., gt=0, description="Image width in pixels.")
    height: int = Field(..., gt=0, description="Image height in pixels.")
    boxes: tuple[ScoredBox, ...] = Field(..., description="Detected defects, pixels.")
    defective: bool = Field(..., description="Image-level decision: divert the part if true.")
    decision_score: float = Field(..., ge=0, le=1, description="Highest box score (0 if none).")
    decision_threshold: float = Field(
        ..., ge=0, le=1, description="Defective when decision_score >= this threshold."
    )
    model_name: str = Field(..., description="Name of the model that decided.")
    model_version: str = Field(..., description="Version of the model that decided.")
    role: ModelRole = Field(
        ModelRole.CHAMPION, description="champion decides; shadow only observes."
    )
    decision_id: str = Field(
        default_factory=lambda data: decision_id_for(
            str(data.get("image_id", "")), str(data.get("role", ModelRole.CHAMPION))
        ),
        description="Deterministic from image_id and role only (schema v2): the same for a "
        "redelivered image predicted again by another model version. The MES dedupes on it.",
    )
    outlier_score: float = Field(..., ge=0, description="Distance from the training distribution.")
    outlier: bool = Field(..., description="Input is far from the training distribution.")
    captured_at: AwareDatetime = Field(..., description="When the camera took the frame (UTC).")
    queue_latency_ms: float = Field(..., ge=0, description="Capture/publish to inference start.")
    inference_latency_ms: float = Field(..., ge=0, description="Decode + model time for the batch.")


class AnnotationStatus(StrEnum):
    COMPLETED = "completed"
    SKIPPED = "skipped"


class AnnotationCompleted(CameraEvent):
    """A human annotation of one image (or a skip), from the annotation tool."""

    topic: ClassVar[str] = topics.ANNOTATION_COMPLETED

    image_id: str = Field(..., description="The annotated image.")
    annotation_id: str = Field(
        ..., description="Stable id of this annotation (tool ref + version)."
    )
    annotator: str = Field(..., min_length=1, description="Annotator's user name.")
    status: AnnotationStatus = Field(..., description="completed, or skipped (could not annotate).")
    boxes: tuple[Box, ...] = Field((), description="Ground-truth boxes, pixels (empty if none).")
    skip_reason: str | None = Field(None, description="Why the annotator could not annotate.")
    sampling_reason: str | None = Field(
        None, description="Why the image was sent for annotation (random, uncertain, outlier)."
    )
    lead_time_s: float = Field(..., ge=0, description="From task creation to annotation.")
    supersedes: str | None = Field(None, description="annotation_id this one replaces, if any.")
    tool: str = Field("label-studio", description="Annotation tool.")
    tool_project_id: int | None = Field(None, description="Project id in the annotation tool.")
    tool_task_id: int | None = Field(None, description="Task id in the annotation tool.")


class DegradationKind(StrEnum):
    PERFORMANCE = "performance"
    DATA_DRIFT = "data_drift"
    PREDICTION_DRIFT = "prediction_drift"
    DATA_QUALITY = "data_quality"


class _Degradation(Event):
    """What an incident is about: the fields its opening and its closing share."""

    model_version: str | None = Field(None, description="Model deployed when it degraded.")
    kind: DegradationKind = Field(..., description="What degraded.")
    metric: str = Field(..., description="Metric name.", examples=["f1"])
    value: float = Field(..., description="Current value over the window.")
    baseline: float = Field(..., description="Reference value (at deployment).")
    threshold: float = Field(..., description="Value that triggers the alert.")
    window_start: AwareDatetime = Field(..., description="Start of the measurement window.")
    window_end: AwareDatetime = Field(..., description="End of the measurement window.")
    sample_size: int = Field(..., ge=0, description="Samples in the window.")
    camera_id: str | None = Field(None, description="Set for per-camera data-quality incidents.")


class MetricDegraded(_Degradation):
    """An incident opened: a site's model, data or data quality crossed its threshold.

    Published once per incident (hysteresis: OK -> PENDING -> DEGRADED); its end is a
    :class:`MetricRecovered` with the same ``incident_id``.
    """

    topic: ClassVar[str] = topics.METRIC_DEGRADED

    schema_version: int = Field(2, ge=1, description="Version of this event's schema.")
    incident_id: str = Field(
        ..., min_length=1, max_length=128, description="Stable id of the incident; one event each."
    )
    ci_low: float | None = Field(None, description="Lower bound of the 95 % interval of value.")
    ci_high: float | None = Field(None, description="Upper bound of the 95 % interval of value.")
    n_positive: int | None = Field(
        None, ge=0, description="Defective images in the window (performance incidents)."
    )
    change_point_at: AwareDatetime | None = Field(
        None, description="Estimated start of the degradation; fresh labels count from here."
    )
    evidence: dict[str, float] = Field(
        default_factory=dict, description="Other numbers behind the decision (statistic, p-value)."
    )


class MetricRecovered(_Degradation):
    """An incident closed: the metric is back within tolerance (or its model was retired)."""

    topic: ClassVar[str] = topics.METRIC_RECOVERED

    incident_id: str = Field(
        ..., min_length=1, max_length=128, description="The incident this closes."
    )
    reason: str = Field(
        "recovered",
        description="recovered (metric back within tolerance) or model_retired.",
        examples=["recovered"],
    )


class LabelsRequested(Event):
    """The monitor asks annotation-sync for more random-stratum labels of a site (campaign)."""

    topic: ClassVar[str] = topics.LABELS_REQUESTED

    request_id: str = Field(..., min_length=1, max_length=128, description="Stable request id.")
    reason: str = Field(
        ..., description="incident or early_warning.", examples=["incident", "early_warning"]
    )
    incident_id: str | None = Field(None, description="Incident that caused the request.")
    random_share: float = Field(
        ..., gt=0, le=1, description="Share of the site's images to sample at random meanwhile."
    )
    target_labels: int = Field(
        ..., ge=1, description="Random-stratum labels wanted for this campaign."
    )
    expires_at: AwareDatetime = Field(..., description="After this, the normal budget applies.")
    requested_by: str = Field("monitor", description="Service or person asking.")


class ModelDeployed(Event):
    """Which model serves a site in a role. Compacted topic keyed by site/role."""

    topic: ClassVar[str] = topics.MODEL_DEPLOYED

    role: ModelRole = Field(..., description="champion decides; challenger/shadow observe.")
    model_name: str = Field(..., description="Model name.")
    model_version: str = Field(..., description="Model version (registry id).")
    artifact_uri: str = Field(..., description="Bundle location (directory with model.onnx).")
    sha256: Sha256 = Field(..., description="SHA-256 of model.onnx: verified before loading.")
    baseline_metrics: dict[str, float] = Field(
        default_factory=dict, description="Validation metrics at registration."
    )
    approved_by: str | None = Field(None, description="Who approved the promotion.")
    active: bool = Field(True, description="False retires the model from this role.")

    def key(self) -> bytes:
        return f"{self.site_id}/{self.role.value}".encode()


class ModelRefused(Event):
    """A deployed bundle an inference instance refused to load (tampered, unsigned, missing...):
    the previous model keeps serving. The trainer appends it to its audit chain (bundle_refused);
    only inference sees a bundle edited after registration, so only it can report one."""

    topic: ClassVar[str] = topics.MODEL_REFUSED

    instance: str = Field(..., description="The inference instance that refused (who).")
    role: ModelRole = Field(..., description="The role it was deployed to.")
    model_name: str = Field(..., description="Model name of the refused deployment.")
    model_version: str = Field(..., description="Model version of the refused deployment.")
    artifact_uri: str = Field(..., description="Bundle location it was loaded from.")
    sha256: Sha256 = Field(..., description="SHA-256 of model.onnx named by model.deployed.")
    reason: str = Field(
        ..., description="Why (reason code).", examples=["integrity_mismatch", "bundle_unsigned"]
    )
    error: str = Field(..., max_length=2000, description="What the check found (evidence).")
    still_serving: str | None = Field(None, description="The version that keeps serving.")


class DeadLetter(BaseModel):
    """What a consumer could not process, published to ``<topic>.dlq`` with exactly one reason."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = Field(1, description="Version of the envelope schema.")
    source_topic: str = Field(..., description="Topic the message was read from.")
    partition: int | None = Field(None, description="Its partition.")
    offset: int | None = Field(None, description="Its offset.")
    key: str | None = Field(None, description="Original key (UTF-8, replacement on bad bytes).")
    reason: str = Field(..., description="Machine-readable reason code.", examples=["no_model"])
    error: str = Field(..., max_length=8192, description="Exception text.")
    service: str = Field(..., description="Service that gave up on the message.")
    first_seen_at: AwareDatetime = Field(
        default_factory=utc_now, description="When the failure was first seen (UTC)."
    )
    original_headers: dict[str, str] = Field(
        default_factory=dict, description="The original Kafka headers."
    )
    original_value_b64: str = Field(
        ...,
        description="The original message bytes, base64; only their first "
        "original_value_kept bytes when the message was too large to copy whole.",
    )
    site_id: str | None = Field(None, description="Site from the message key, when known.")
    original_size: int | None = Field(None, ge=0, description="Size of the original value.")
    original_sha256: str | None = Field(
        None, description="sha256 (hex) of the whole original value."
    )
    original_value_kept: int | None = Field(
        None, ge=0, description="Bytes of the value in original_value_b64 (< size: truncated)."
    )


EVENT_MODELS: tuple[type[Event], ...] = (
    ImageCaptured,
    ImageRejected,
    PredictionMade,
    AnnotationCompleted,
    MetricDegraded,
    MetricRecovered,
    LabelsRequested,
    ModelDeployed,
    ModelRefused,
)


def model_for_topic(topic: str) -> type[Event]:
    for model in EVENT_MODELS:
        if model.topic == topic:
            return model
    raise KeyError(topic)
