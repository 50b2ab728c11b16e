"""What the monitor store's queries return (frozen values), and the conversions between the
consumed events, the table rows and those values.

Datetimes are timezone-aware UTC in and out (SQLModel's UTC type; SQLite keeps no offset).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import TypeAdapter
from sqlmodel import SQLModel

from defectloop.common.events import (
    AnnotationCompleted,
    AnnotationStatus,
    Box,
    DegradationKind,
    Event,
    ImageCaptured,
    ImageRejected,
    MetricDegraded,
    MetricRecovered,
    ModelDeployed,
    ModelRole,
    PredictionMade,
    ScoredBox,
)
from defectloop.monitor.signals import Signal, SignalKey
from defectloop.monitor.tables import (
    AnnotationRow,
    CapturedRow,
    DeploymentRow,
    IncidentRow,
    PredictionRow,
    RejectionRow,
    SignalRow,
)

T = TypeVar("T")
_BOXES = TypeAdapter(tuple[Box, ...])
_SCORED_BOXES = TypeAdapter(tuple[ScoredBox, ...])


def _aware(dt: datetime) -> datetime:
    """Timezone-aware UTC (a naive value is taken to be UTC already)."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


@dataclass(frozen=True)
class CapturedImage:
    """Input features of one accepted image (``image.captured``)."""

    image_id: str
    site_id: str
    camera_id: str
    captured_at: datetime
    width: int
    height: int
    sharpness: float
    brightness: float
    contrast: float
    uniform: bool
    obstructed_fraction: float
    near_duplicate: bool


@dataclass(frozen=True)
class Rejection:
    site_id: str
    camera_id: str
    reason: str
    occurred_at: datetime


@dataclass(frozen=True)
class StoredPrediction:
    """One model's prediction on one image, labelled or not (prediction drift)."""

    prediction_id: str
    site_id: str
    camera_id: str
    image_id: str
    model_version: str
    role: ModelRole
    defective: bool
    decision_score: float
    decision_threshold: float
    boxes: tuple[ScoredBox, ...]
    outlier_score: float
    outlier: bool
    captured_at: datetime


@dataclass(frozen=True)
class StoredAnnotation:
    annotation_id: str
    site_id: str
    camera_id: str
    image_id: str
    annotator: str
    status: AnnotationStatus
    boxes: tuple[Box, ...]
    sampling_reason: str | None
    labelled_at: datetime
    skip_reason: str | None


@dataclass(frozen=True)
class Deployment:
    site_id: str
    role: ModelRole
    model_name: str
    model_version: str
    baseline_metrics: dict[str, float]
    active: bool
    approved_by: str | None
    occurred_at: datetime


@dataclass(frozen=True)
class Baseline:
    site_id: str
    model_version: str
    metric: str
    value: float
    source: str
    sample_size: int
    n_positive: int


@dataclass(frozen=True)
class Incident:
    incident_id: str
    site_id: str
    model_version: str | None
    kind: DegradationKind
    metric: str
    camera_id: str | None
    opened_at: datetime
    closed_at: datetime | None
    close_reason: str | None
    degraded: MetricDegraded
    recovered: MetricRecovered | None

    @property
    def is_open(self) -> bool:
        return self.closed_at is None


@dataclass(frozen=True)
class StoredSignal:
    signal: Signal
    evaluated_at: datetime


def key_text(key: SignalKey) -> str:
    """The stable text form of a signal key (primary key of its track)."""
    return json.dumps(
        [key.site_id, key.model_version, key.kind.value, key.metric, key.camera_id],
        separators=(",", ":"),
    )


def key_from_text(text: str) -> SignalKey:
    site, version, kind, metric, camera = json.loads(text)
    return SignalKey(site, version, DegradationKind(kind), metric, camera)


# --- row <-> value conversions ------------------------------------------------------------------


def _pick(target: type[T], source: object, **given: Any) -> T:
    """``target`` (a dataclass or SQLModel) from ``source``'s attributes of the same names;
    ``given`` values win (conversions, fields ``source`` lacks)."""
    if dataclasses.is_dataclass(target):
        names = [f.name for f in dataclasses.fields(target)]
    else:
        names = list(target.model_fields)  # type: ignore[attr-defined]
    return target(**{n: given[n] if n in given else getattr(source, n) for n in names})


def _captured_row(e: ImageCaptured) -> CapturedRow:
    return _pick(CapturedRow, e, **e.quality.model_dump())


def _captured(r: CapturedRow) -> CapturedImage:
    return _pick(CapturedImage, r)


def _prediction_row(e: PredictionMade) -> PredictionRow:
    boxes = _SCORED_BOXES.dump_json(e.boxes).decode()
    return _pick(PredictionRow, e, role=e.role.value, boxes_json=boxes)


def _stored_prediction(r: PredictionRow) -> StoredPrediction:
    return _pick(StoredPrediction, r, role=ModelRole(r.role), boxes=_predicted_boxes(r.boxes_json))


@functools.lru_cache(maxsize=4096)
def _truth_boxes(text: str) -> tuple[Box, ...]:
    """Parsed boxes (frozen models, so sharing a cached tuple is safe): "[]" is most images."""
    return _BOXES.validate_json(text)


@functools.lru_cache(maxsize=4096)
def _predicted_boxes(text: str) -> tuple[ScoredBox, ...]:
    return _SCORED_BOXES.validate_json(text)


def _annotation(r: AnnotationRow) -> StoredAnnotation:
    status, boxes = AnnotationStatus(r.status), _truth_boxes(r.boxes_json)
    return _pick(StoredAnnotation, r, status=status, boxes=boxes)


def _deployment(r: DeploymentRow) -> Deployment:
    baseline = {str(k): float(v) for k, v in json.loads(r.baseline_json).items()}
    return _pick(Deployment, r, role=ModelRole(r.role), baseline_metrics=baseline)


def _incident(r: IncidentRow) -> Incident:
    recovered = MetricRecovered.model_validate_json(r.recovered_json) if r.recovered_json else None
    return _pick(
        Incident,
        r,
        kind=DegradationKind(r.kind),
        degraded=MetricDegraded.model_validate_json(r.degraded_json),
        recovered=recovered,
    )


def _signal_row(sig: Signal, at: datetime) -> SignalRow:
    evidence = json.dumps(sig.evidence, sort_keys=True)
    key = {**dataclasses.asdict(sig.key), "kind": sig.key.kind.value}
    return _pick(SignalRow, sig, id=None, evidence_json=evidence, evaluated_at=at, **key)


def _signal(r: SignalRow) -> Signal:
    key = SignalKey(r.site_id, r.model_version, DegradationKind(r.kind), r.metric, r.camera_id)
    evidence = {str(k): float(v) for k, v in json.loads(r.evidence_json or "{}").items()}
    return _pick(Signal, r, key=key, evidence=evidence)


# --- event -> row -------------------------------------------------------------------------------


def _row(event: Event) -> SQLModel:
    """The table row of a non-annotation event."""
    if isinstance(event, ImageCaptured):
        return _captured_row(event)
    if isinstance(event, PredictionMade):
        return _prediction_row(event)
    if isinstance(event, ImageRejected):
        return RejectionRow(
            event_id=event.event_id,
            site_id=event.site_id,
            camera_id=event.camera_id,
            reason=event.reason.value,
            occurred_at=_aware(event.occurred_at),
        )
    if isinstance(event, ModelDeployed):
        return DeploymentRow(
            event_id=event.event_id,
            site_id=event.site_id,
            role=event.role.value,
            model_name=event.model_name,
            model_version=event.model_version,
            baseline_json=json.dumps(event.baseline_metrics, sort_keys=True),
            active=event.active,
            approved_by=event.approved_by,
            occurred_at=_aware(event.occurred_at),
        )
    raise TypeError(f"the monitor does not consume {type(event).__name__}")


def _annotation_row(event: AnnotationCompleted, *, superseded: bool) -> AnnotationRow:
    return AnnotationRow(
        annotation_id=event.annotation_id,
        site_id=event.site_id,
        camera_id=event.camera_id,
        image_id=event.image_id,
        annotator=event.annotator,
        status=event.status.value,
        boxes_json=_BOXES.dump_json(event.boxes).decode(),
        skip_reason=event.skip_reason,
        sampling_reason=event.sampling_reason,
        labelled_at=_aware(event.occurred_at),
        supersedes=event.supersedes,
        superseded=superseded,
    )


__all__ = [
    "Baseline",
    "CapturedImage",
    "Deployment",
    "Incident",
    "Rejection",
    "StoredAnnotation",
    "StoredPrediction",
    "StoredSignal",
    "key_from_text",
    "key_text",
]
