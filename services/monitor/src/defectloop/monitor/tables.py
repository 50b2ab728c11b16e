"""The monitor's SQLModel tables (SQLite locally, PostgreSQL in production).

One table per consumed event kind, keyed by an id that is stable across redeliveries, plus the
evaluator's own state: incident tracks, detector cursors, the incident log, frozen baselines,
evaluated signals and the outbox. ``store.py`` queries them; ``records.py`` converts their rows.

Datetimes are timezone-aware UTC in and out (SQLModel's UTC type; SQLite keeps no offset).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel


def _now() -> datetime:
    return datetime.now(UTC)


def _text() -> Any:
    return Field(default="", sa_column=Column(Text, nullable=False))


class CapturedRow(SQLModel, table=True):
    __tablename__ = "monitor_image"

    image_id: str = Field(primary_key=True)
    site_id: str = Field(index=True)
    camera_id: str = Field(index=True)
    captured_at: datetime = Field(index=True)
    width: int
    height: int
    sharpness: float
    brightness: float
    contrast: float
    uniform: bool
    obstructed_fraction: float
    near_duplicate: bool


class RejectionRow(SQLModel, table=True):
    __tablename__ = "monitor_rejection"

    event_id: str = Field(primary_key=True)
    site_id: str = Field(index=True)
    camera_id: str = Field(index=True)
    reason: str
    occurred_at: datetime = Field(index=True)


class PredictionRow(SQLModel, table=True):
    __tablename__ = "monitor_prediction"

    prediction_id: str = Field(primary_key=True)
    site_id: str = Field(index=True)
    camera_id: str
    image_id: str = Field(index=True)
    model_name: str
    model_version: str = Field(index=True)
    role: str
    defective: bool
    decision_score: float
    decision_threshold: float
    boxes_json: str = _text()
    outlier_score: float
    outlier: bool
    captured_at: datetime = Field(index=True)


class AnnotationRow(SQLModel, table=True):
    __tablename__ = "monitor_annotation"

    annotation_id: str = Field(primary_key=True)
    site_id: str = Field(index=True)
    camera_id: str
    image_id: str = Field(index=True)
    annotator: str
    status: str
    boxes_json: str = _text()
    skip_reason: str | None = None
    sampling_reason: str | None = None
    labelled_at: datetime = Field(index=True)
    supersedes: str | None = Field(default=None, index=True)
    superseded: bool = False


class DeploymentRow(SQLModel, table=True):
    __tablename__ = "monitor_deployment"

    event_id: str = Field(primary_key=True)
    site_id: str = Field(index=True)
    role: str
    model_name: str
    model_version: str
    baseline_json: str = _text()
    active: bool
    approved_by: str | None = None
    occurred_at: datetime = Field(index=True)


class BaselineRow(SQLModel, table=True):
    __tablename__ = "monitor_baseline"

    site_id: str = Field(primary_key=True)
    model_version: str = Field(primary_key=True)
    metric: str = Field(primary_key=True)
    value: float
    source: str = Field(description="deployment (held-out evaluation) or first_window")
    sample_size: int = 0
    n_positive: int = 0
    set_at: datetime = Field(default_factory=_now)


class TrackRow(SQLModel, table=True):
    __tablename__ = "monitor_track"

    key: str = Field(primary_key=True, description="JSON of the SignalKey")
    site_id: str = Field(index=True)
    state_json: str = _text()
    updated_at: datetime = Field(default_factory=_now)


class CursorRow(SQLModel, table=True):
    __tablename__ = "monitor_cursor"

    name: str = Field(primary_key=True, description="<detector>/<site>/<model version>")
    value: int = Field(description="Observations seen when the detector last evaluated.")


class IncidentRow(SQLModel, table=True):
    __tablename__ = "monitor_incident"

    incident_id: str = Field(primary_key=True)
    site_id: str = Field(index=True)
    model_version: str | None = None
    kind: str
    metric: str
    camera_id: str | None = None
    opened_at: datetime
    closed_at: datetime | None = None
    close_reason: str | None = None
    degraded_json: str = _text()
    recovered_json: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class SignalRow(SQLModel, table=True):
    __tablename__ = "monitor_signal"

    id: int | None = Field(default=None, primary_key=True)
    site_id: str = Field(index=True)
    model_version: str | None = None
    kind: str = Field(index=True)
    metric: str
    camera_id: str | None = None
    value: float
    baseline: float
    threshold: float
    breached: bool
    within_tolerance: bool
    enough_data: bool
    sample_size: int
    n_positive: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    window_start: datetime
    window_end: datetime
    change_point_at: datetime | None = None
    evidence_json: str = _text()
    evaluated_at: datetime = Field(index=True)


class OutboxRow(SQLModel, table=True):
    __tablename__ = "monitor_outbox"

    event_id: str = Field(primary_key=True)
    topic: str
    event_json: str = _text()
    created_at: datetime = Field(default_factory=_now, index=True)
    published_at: datetime | None = None


TABLES = [
    SQLModel.metadata.tables[str(t.__tablename__)]
    for t in (
        CapturedRow,
        RejectionRow,
        PredictionRow,
        AnnotationRow,
        DeploymentRow,
        BaselineRow,
        TrackRow,
        CursorRow,
        IncidentRow,
        SignalRow,
        OutboxRow,
    )
]


__all__ = [
    "TABLES",
    "AnnotationRow",
    "BaselineRow",
    "CapturedRow",
    "CursorRow",
    "DeploymentRow",
    "IncidentRow",
    "OutboxRow",
    "PredictionRow",
    "RejectionRow",
    "SignalRow",
    "TrackRow",
]
