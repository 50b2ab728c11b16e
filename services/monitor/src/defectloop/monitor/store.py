"""What the monitor remembers (SQLModel; SQLite locally, PostgreSQL in production).

Every consumed event is recorded once, keyed by an id that is stable across redeliveries:
``image_id`` (image.captured), ``event_id`` (image.rejected, model.deployed), ``prediction_id``
(prediction.made, deterministic from image, model version and role) and ``annotation_id``
(annotation.completed). Predictions and annotations are kept side by side and joined at query time
on (site, image), so the join is complete whichever side arrives first.

An annotation that ``supersedes`` another hides it, whichever of the two arrives first. An image's
ground truth is its earliest current *completed* annotation (an overlap task has two; their
agreement is reported, the first one scores); skipped annotations are counted, never scored.

The evaluator's own state lives here too: incident tracks (opaque JSON, owned by ``evaluate.py``),
the incident log, frozen baselines, evaluated signals (the API's series) and an outbox of the
events to publish (stored before publishing, marked after the broker acknowledged, so a crash in
between re-publishes the same event instead of losing it).

Datetimes are timezone-aware UTC in and out (SQLModel's UTC type; SQLite keeps no offset).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import TypeAdapter
from sqlalchemy import Column, Engine, Text, func, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError as SQLIntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

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
    model_for_topic,
)
from defectloop.monitor.performance import LabelledPrediction
from defectloop.monitor.signals import Signal, SignalKey

T = TypeVar("T")
RowT = TypeVar("RowT", bound=SQLModel)
_BOXES = TypeAdapter(tuple[Box, ...])
_SCORED_BOXES = TypeAdapter(tuple[ScoredBox, ...])
RANDOM = "random"


def _aware(dt: datetime) -> datetime:
    """Timezone-aware UTC (a naive value is taken to be UTC already)."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _text() -> Any:
    return Field(default="", sa_column=Column(Text, nullable=False))


# --- tables ---------------------------------------------------------------------------------


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


# --- what queries return --------------------------------------------------------------------


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


# --- the store --------------------------------------------------------------------------------


class MonitorStore:
    """The monitor's database: idempotent, order-independent recording of events plus queries."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        SQLModel.metadata.create_all(engine, tables=TABLES)

    # -- recording --

    def record(self, event: Event) -> None:
        """Record one consumed event; a redelivery (same id) changes nothing."""
        self.record_many([event])

    def record_many(self, events: Sequence[Event]) -> None:
        """Record consumed events in one transaction (a Kafka batch); redeliveries are no-ops."""
        try:
            with Session(self.engine) as s:
                _add_all(s, events)
                s.commit()
        except SQLIntegrityError:
            # A concurrent consumer recorded one of them first: redo one by one, skipping it.
            if len(events) == 1:
                return
            for event in events:
                self.record_many([event])

    def _insert(self, row: SQLModel) -> bool:
        """Insert ``row`` unless its primary key exists; True when it was new."""
        with Session(self.engine) as s:
            if not _add_new(s, row):
                return False
            try:
                s.commit()
            except SQLIntegrityError:  # a concurrent writer won the race: same content
                s.rollback()
                return False
        return True

    # -- deployments and baselines --

    def deployments(self, site_id: str) -> list[Deployment]:
        """Every deployment event of ``site_id``, oldest first (the model history)."""
        with Session(self.engine) as s:
            rows = s.exec(
                select(DeploymentRow)
                .where(DeploymentRow.site_id == site_id)
                .order_by(col(DeploymentRow.occurred_at), col(DeploymentRow.event_id))
            ).all()
        return [_deployment(r) for r in rows]

    def current_models(self, site_id: str) -> dict[ModelRole, Deployment]:
        """The model serving each role of ``site_id`` now (latest event per role, if active)."""
        latest: dict[ModelRole, Deployment] = {}
        for d in self.deployments(site_id):
            latest[d.role] = d
        return {role: d for role, d in latest.items() if d.active}

    def champion_since(self, site_id: str, model_version: str) -> datetime | None:
        """When ``model_version`` last became the champion of ``site_id``."""
        since: datetime | None = None
        for d in self.deployments(site_id):
            if d.role == ModelRole.CHAMPION and d.active:
                same = d.model_version == model_version
                since = (since or d.occurred_at) if same else None
        return since

    def baselines(self, site_id: str, model_version: str) -> dict[str, Baseline]:
        with Session(self.engine) as s:
            rows = s.exec(
                select(BaselineRow).where(
                    BaselineRow.site_id == site_id, BaselineRow.model_version == model_version
                )
            ).all()
        return {
            r.metric: Baseline(
                r.site_id, r.model_version, r.metric, r.value, r.source, r.sample_size, r.n_positive
            )
            for r in rows
        }

    def freeze_baselines(self, baselines: Iterable[Baseline]) -> None:
        """Store baselines once; an existing (site, model, metric) baseline is never changed."""
        for b in baselines:
            self._insert(
                BaselineRow(
                    site_id=b.site_id,
                    model_version=b.model_version,
                    metric=b.metric,
                    value=b.value,
                    source=b.source,
                    sample_size=b.sample_size,
                    n_positive=b.n_positive,
                )
            )

    # -- observation queries --

    def sites(self) -> list[str]:
        """Every site the monitor has heard of."""
        found: set[str] = set()
        with Session(self.engine) as s:
            for table in (DeploymentRow, PredictionRow, CapturedRow, RejectionRow):
                found.update(s.exec(select(table.site_id).distinct()).all())
        return sorted(found)

    def labelled(
        self,
        site_id: str,
        *,
        model_version: str | None = None,
        role: ModelRole | None = ModelRole.CHAMPION,
        sampling_reason: str | None = RANDOM,
        since: datetime | None = None,
        until: datetime | None = None,
        exclude_cameras: Sequence[str] = (),
        camera_id: str | None = None,
        last: int | None = None,
    ) -> list[LabelledPrediction]:
        """Predictions joined with their image's ground truth, oldest capture first.

        ``sampling_reason=None`` returns every stratum; ``last`` keeps the most recent captures
        (the count window) after the time window [since, until) is applied.
        """
        p, a = PredictionRow, AnnotationRow
        names = (
            *("prediction_id", "site_id", "camera_id", "model_version", "role", "image_id"),
            *("defective", "decision_score", "boxes_json", "captured_at"),
        )
        columns = [col(getattr(p, n)) for n in names] + [
            col(a.boxes_json),
            col(a.sampling_reason),
            col(a.labelled_at),
            col(a.annotator),
        ]
        # Plain columns, not ORM entities: the evaluator reads a model's whole history each time.
        q = (
            sa_select(*columns)
            .join(
                a,
                (col(a.site_id) == col(p.site_id)) & (col(a.image_id) == col(p.image_id)),
            )
            .where(
                col(p.site_id) == site_id,
                col(a.superseded).is_(False),
                col(a.status) == AnnotationStatus.COMPLETED.value,
            )
        )
        if model_version is not None:
            q = q.where(col(p.model_version) == model_version)
        if role is not None:
            q = q.where(col(p.role) == role.value)
        if sampling_reason is not None:
            q = q.where(col(a.sampling_reason) == sampling_reason)
        if since is not None:
            q = q.where(col(p.captured_at) >= _aware(since))
        if until is not None:
            q = q.where(col(p.captured_at) < _aware(until))
        if exclude_cameras:
            q = q.where(col(p.camera_id).not_in(list(exclude_cameras)))
        if camera_id is not None:
            q = q.where(col(p.camera_id) == camera_id)
        q = q.order_by(
            col(p.captured_at),
            col(p.prediction_id),
            col(a.labelled_at),
            col(a.annotation_id),
        )
        with Session(self.engine) as s:
            found = s.execute(q).all()
        rows: list[LabelledPrediction] = []
        seen: set[str] = set()
        for r in found:
            if r[0] in seen:  # a second annotator of an overlap task: the first one scores
                continue
            seen.add(r[0])
            truth = _truth_boxes(r[10])
            rows.append(
                LabelledPrediction(
                    site_id=r[1],
                    camera_id=r[2],
                    model_version=r[3],
                    role=ModelRole(r[4]),
                    image_id=r[5],
                    truth_defective=len(truth) > 0,
                    predicted_defective=r[6],
                    decision_score=r[7],
                    truth_boxes=truth,
                    predicted_boxes=_predicted_boxes(r[8]),
                    sampling_reason=r[11],
                    captured_at=_aware(r[9]),
                    labelled_at=_aware(r[12]),
                    annotator=r[13],
                )
            )
        return rows[-last:] if last is not None else rows

    def count_labelled(
        self,
        site_id: str,
        *,
        model_version: str | None = None,
        role: ModelRole | None = ModelRole.CHAMPION,
        sampling_reason: str | None = RANDOM,
        since: datetime | None = None,
    ) -> int:
        """How many distinct predictions have a ground truth (cheap cadence check)."""
        with Session(self.engine) as s:
            q = (
                select(func.count(func.distinct(PredictionRow.prediction_id)))
                .select_from(PredictionRow)
                .join(
                    AnnotationRow,
                    (col(AnnotationRow.site_id) == col(PredictionRow.site_id))
                    & (col(AnnotationRow.image_id) == col(PredictionRow.image_id)),
                )
                .where(
                    PredictionRow.site_id == site_id,
                    col(AnnotationRow.superseded).is_(False),
                    AnnotationRow.status == AnnotationStatus.COMPLETED.value,
                )
            )
            if model_version is not None:
                q = q.where(PredictionRow.model_version == model_version)
            if role is not None:
                q = q.where(PredictionRow.role == role.value)
            if sampling_reason is not None:
                q = q.where(AnnotationRow.sampling_reason == sampling_reason)
            if since is not None:
                q = q.where(col(PredictionRow.captured_at) >= _aware(since))
            return int(s.exec(q).one())

    def paired(
        self,
        site_id: str,
        champion_version: str,
        candidate_version: str,
        *,
        sampling_reason: str | None = RANDOM,
        since: datetime | None = None,
    ) -> list[tuple[LabelledPrediction, LabelledPrediction]]:
        """(champion, candidate) predictions on the same labelled images: the paired sample."""
        champion = {
            r.image_id: r
            for r in self.labelled(
                site_id,
                model_version=champion_version,
                role=None,
                sampling_reason=sampling_reason,
                since=since,
            )
        }
        out: list[tuple[LabelledPrediction, LabelledPrediction]] = []
        for r in self.labelled(
            site_id,
            model_version=candidate_version,
            role=None,
            sampling_reason=sampling_reason,
            since=since,
        ):
            mate = champion.get(r.image_id)
            if mate is not None:
                out.append((mate, r))
        return out

    def annotations(
        self,
        site_id: str,
        *,
        since: datetime | None = None,
        include_superseded: bool = False,
    ) -> list[StoredAnnotation]:
        """Current annotations of ``site_id`` (skips included), oldest first."""
        with Session(self.engine) as s:
            q = select(AnnotationRow).where(AnnotationRow.site_id == site_id)
            if not include_superseded:
                q = q.where(col(AnnotationRow.superseded).is_(False))
            if since is not None:
                q = q.where(col(AnnotationRow.labelled_at) >= _aware(since))
            rows = s.exec(
                q.order_by(col(AnnotationRow.labelled_at), col(AnnotationRow.annotation_id))
            ).all()
        return [_annotation(r) for r in rows]

    def annotation_counts(self, site_id: str, *, since: datetime | None = None) -> dict[str, int]:
        """Current annotations per status (``completed``, ``skipped``)."""
        with Session(self.engine) as s:
            q = (
                select(AnnotationRow.status, func.count())
                .where(AnnotationRow.site_id == site_id, col(AnnotationRow.superseded).is_(False))
                .group_by(AnnotationRow.status)
            )
            if since is not None:
                q = q.where(col(AnnotationRow.labelled_at) >= _aware(since))
            counts = {str(k): int(v) for k, v in s.exec(q).all()}
        return {st.value: counts.get(st.value, 0) for st in AnnotationStatus}

    def captured(
        self,
        site_id: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        camera_id: str | None = None,
        first: int | None = None,
        last: int | None = None,
    ) -> list[CapturedImage]:
        """Accepted images' quality features, oldest capture first (drift and quality windows).

        ``first`` keeps the oldest captures of the window (a reference), ``last`` the newest.
        """
        rows = self._window(
            CapturedRow,
            CapturedRow.captured_at,
            CapturedRow.image_id,
            site_id,
            since=since,
            until=until,
            camera_id=camera_id,
            first=first,
            last=last,
        )
        return [_captured(r) for r in rows]

    def _window(
        self,
        table: type[RowT],
        time: Any,
        tiebreak: Any,
        site_id: str,
        *,
        since: datetime | None,
        until: datetime | None,
        camera_id: str | None,
        first: int | None = None,
        last: int | None = None,
        where: Sequence[Any] = (),
    ) -> list[RowT]:
        """Rows of ``table`` for a site in [since, until), oldest first: the ``first`` oldest or
        the ``last`` newest of them (all without either)."""
        q = select(table).where(
            col(table.site_id) == site_id,  # type: ignore[attr-defined]
            *where,
        )
        if since is not None:
            q = q.where(col(time) >= _aware(since))
        if until is not None:
            q = q.where(col(time) < _aware(until))
        if camera_id is not None:
            q = q.where(col(table.camera_id) == camera_id)  # type: ignore[attr-defined]
        newest_first = first is None
        order = [col(time), col(tiebreak)]
        q = q.order_by(*(c.desc() for c in order) if newest_first else order)
        if first is not None or last is not None:
            q = q.limit(first if first is not None else last)
        with Session(self.engine) as s:
            rows = list(s.exec(q).all())
        if newest_first:
            rows.reverse()
        return rows

    def count_captured(
        self, site_id: str, *, camera_id: str | None = None, since: datetime | None = None
    ) -> int:
        with Session(self.engine) as s:
            q = select(func.count()).select_from(CapturedRow).where(CapturedRow.site_id == site_id)
            if camera_id is not None:
                q = q.where(CapturedRow.camera_id == camera_id)
            if since is not None:
                q = q.where(col(CapturedRow.captured_at) >= _aware(since))
            return int(s.exec(q).one())

    def count_rejected(self, site_id: str, *, camera_id: str | None = None) -> int:
        with Session(self.engine) as s:
            q = (
                select(func.count())
                .select_from(RejectionRow)
                .where(RejectionRow.site_id == site_id)
            )
            if camera_id is not None:
                q = q.where(RejectionRow.camera_id == camera_id)
            return int(s.exec(q).one())

    def cameras(self, site_id: str) -> list[str]:
        """Cameras seen at ``site_id`` (accepted or rejected images)."""
        with Session(self.engine) as s:
            a = s.exec(
                select(CapturedRow.camera_id).where(CapturedRow.site_id == site_id).distinct()
            ).all()
            b = s.exec(
                select(RejectionRow.camera_id).where(RejectionRow.site_id == site_id).distinct()
            ).all()
        return sorted({*a, *b})

    def rejections(
        self,
        site_id: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        camera_id: str | None = None,
        first: int | None = None,
        last: int | None = None,
    ) -> list[Rejection]:
        """Ingest rejections of ``site_id``, oldest first (``first``/``last`` as in captured)."""
        rows = self._window(
            RejectionRow,
            RejectionRow.occurred_at,
            RejectionRow.event_id,
            site_id,
            since=since,
            until=until,
            camera_id=camera_id,
            first=first,
            last=last,
        )
        return [Rejection(r.site_id, r.camera_id, r.reason, _aware(r.occurred_at)) for r in rows]

    def predictions(
        self,
        site_id: str,
        *,
        model_version: str | None = None,
        role: ModelRole | None = ModelRole.CHAMPION,
        since: datetime | None = None,
        until: datetime | None = None,
        camera_id: str | None = None,
        last: int | None = None,
    ) -> list[StoredPrediction]:
        """Predictions, labelled or not, oldest capture first (prediction drift, estimates)."""
        where = []
        if model_version is not None:
            where.append(col(PredictionRow.model_version) == model_version)
        if role is not None:
            where.append(col(PredictionRow.role) == role.value)
        rows = self._window(
            PredictionRow,
            PredictionRow.captured_at,
            PredictionRow.prediction_id,
            site_id,
            since=since,
            until=until,
            camera_id=camera_id,
            last=last,
            where=where,
        )
        return [_stored_prediction(r) for r in rows]

    def count_predictions(
        self,
        site_id: str,
        *,
        model_version: str | None = None,
        role: ModelRole | None = ModelRole.CHAMPION,
    ) -> int:
        with Session(self.engine) as s:
            q = (
                select(func.count())
                .select_from(PredictionRow)
                .where(PredictionRow.site_id == site_id)
            )
            if model_version is not None:
                q = q.where(PredictionRow.model_version == model_version)
            if role is not None:
                q = q.where(PredictionRow.role == role.value)
            return int(s.exec(q).one())

    # -- evaluator state --

    def tracks(self, site_id: str) -> dict[SignalKey, str]:
        """Every stored incident track of ``site_id``: key -> the track's JSON."""
        with Session(self.engine) as s:
            rows = s.exec(select(TrackRow).where(TrackRow.site_id == site_id)).all()
        return {key_from_text(r.key): r.state_json for r in rows}

    def cursor(self, name: str) -> int:
        """How many observations detector ``name`` had seen at its last evaluation (0: never)."""
        with Session(self.engine) as s:
            row = s.get(CursorRow, name)
        return row.value if row is not None else 0

    def cursors(self, site_id: str) -> dict[str, int]:
        """Every detector cursor of ``site_id`` (``<detector>/<site>[/<model version>]``)."""
        with Session(self.engine) as s:
            rows = s.exec(
                select(CursorRow).where(
                    (col(CursorRow.name).like(f"%/{site_id}"))
                    | (col(CursorRow.name).like(f"%/{site_id}/%"))
                )
            ).all()
        return {r.name: r.value for r in rows}

    def save_evaluation(
        self,
        *,
        tracks: dict[SignalKey, str],
        cursors: dict[str, int],
        signals: Sequence[Signal],
        opened: Sequence[MetricDegraded],
        closed: Sequence[MetricRecovered],
        outbox: Sequence[Event],
        evaluated_at: datetime,
    ) -> None:
        """One evaluation's results, atomically: tracks, cursors, signals, incidents, outbox."""
        at = _aware(evaluated_at)
        with Session(self.engine) as s:
            for key, state in tracks.items():
                text = key_text(key)
                row = s.get(TrackRow, text)
                if row is None:
                    row = TrackRow(key=text, site_id=key.site_id)
                row.state_json = state
                row.updated_at = at
                s.add(row)
            for name, value in cursors.items():
                cur = s.get(CursorRow, name) or CursorRow(name=name, value=value)
                cur.value = value
                s.add(cur)
            for sig in signals:
                s.add(_signal_row(sig, at))
            for ev in opened:
                s.add(
                    IncidentRow(
                        incident_id=ev.incident_id,
                        site_id=ev.site_id,
                        model_version=ev.model_version,
                        kind=ev.kind.value,
                        metric=ev.metric,
                        camera_id=ev.camera_id,
                        opened_at=_aware(ev.occurred_at),
                        degraded_json=ev.model_dump_json(),
                    )
                )
            s.flush()
            for rec in closed:
                inc = s.get(IncidentRow, rec.incident_id)
                if inc is None or inc.closed_at is not None:
                    continue
                inc.closed_at = _aware(rec.occurred_at)
                inc.close_reason = rec.reason
                inc.recovered_json = rec.model_dump_json()
                s.add(inc)
            for out in outbox:
                if s.get(OutboxRow, out.event_id) is None:
                    s.add(
                        OutboxRow(
                            event_id=out.event_id,
                            topic=out.topic,
                            event_json=out.model_dump_json(),
                            created_at=at,
                        )
                    )
            s.commit()

    def pending_events(self) -> list[Event]:
        """Events stored for publishing and not yet acknowledged by the broker, oldest first."""
        with Session(self.engine) as s:
            rows = s.exec(
                select(OutboxRow)
                .where(col(OutboxRow.published_at).is_(None))
                .order_by(col(OutboxRow.created_at), col(OutboxRow.event_id))
            ).all()
        return [model_for_topic(r.topic).model_validate_json(r.event_json) for r in rows]

    def mark_published(self, event_id: str) -> None:
        with Session(self.engine) as s:
            row = s.get(OutboxRow, event_id)
            if row is not None and row.published_at is None:
                row.published_at = _now()
                s.add(row)
                s.commit()

    def incidents(
        self,
        site_id: str | None = None,
        *,
        open_only: bool = False,
        kind: DegradationKind | None = None,
    ) -> list[Incident]:
        """Incidents, newest first."""
        with Session(self.engine) as s:
            q = select(IncidentRow)
            if site_id is not None:
                q = q.where(IncidentRow.site_id == site_id)
            if open_only:
                q = q.where(col(IncidentRow.closed_at).is_(None))
            if kind is not None:
                q = q.where(IncidentRow.kind == kind.value)
            rows = s.exec(
                q.order_by(col(IncidentRow.opened_at).desc(), col(IncidentRow.incident_id))
            ).all()
        return [_incident(r) for r in rows]

    def signals(
        self,
        site_id: str,
        *,
        kind: DegradationKind | None = None,
        model_version: str | None = None,
        camera_id: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[StoredSignal]:
        """Evaluated signals (the metric series), oldest first; the newest ``limit`` of them."""
        with Session(self.engine) as s:
            q = select(SignalRow).where(SignalRow.site_id == site_id)
            if kind is not None:
                q = q.where(SignalRow.kind == kind.value)
            if model_version is not None:
                q = q.where(SignalRow.model_version == model_version)
            if camera_id is not None:
                q = q.where(SignalRow.camera_id == camera_id)
            if since is not None:
                q = q.where(col(SignalRow.evaluated_at) >= _aware(since))
            rows = list(
                s.exec(
                    q.order_by(col(SignalRow.evaluated_at).desc(), col(SignalRow.id).desc()).limit(
                        limit
                    )
                ).all()
            )
        rows.reverse()
        return [StoredSignal(_signal(r), _aware(r.evaluated_at)) for r in rows]

    def latest_signals(self, site_id: str) -> list[StoredSignal]:
        """The newest evaluation of every (kind, metric, model, camera) of ``site_id``."""
        with Session(self.engine) as s:
            newest = (
                select(func.max(SignalRow.id))
                .where(SignalRow.site_id == site_id)
                .group_by(
                    col(SignalRow.kind),
                    col(SignalRow.metric),
                    col(SignalRow.model_version),
                    col(SignalRow.camera_id),
                )
            )
            rows = s.exec(
                select(SignalRow)
                .where(col(SignalRow.id).in_(newest))
                .order_by(col(SignalRow.kind), col(SignalRow.metric))
            ).all()
        return [StoredSignal(_signal(r), _aware(r.evaluated_at)) for r in rows]


# --- recording ----------------------------------------------------------------------------


def _add_new(s: Session, row: SQLModel) -> bool:
    """Add ``row`` to the session unless a row with its primary key exists (or is pending)."""
    pk = row.__table__.primary_key.columns  # type: ignore[attr-defined]
    ident = tuple(getattr(row, c.name) for c in pk)
    if s.get(type(row), ident if len(ident) > 1 else ident[0]) is not None:
        return False
    s.add(row)
    s.flush()  # later events of the same batch must see it (dedupe, supersedes)
    return True


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


def _add_all(s: Session, events: Sequence[Event]) -> None:
    """Add the events' rows that are not stored yet: one existence query per table."""
    by_table: dict[type[SQLModel], dict[str, SQLModel]] = {}
    for event in events:
        if isinstance(event, AnnotationCompleted):
            continue
        row = _row(event)
        (pk,) = row.__table__.primary_key.columns  # type: ignore[attr-defined]
        by_table.setdefault(type(row), {}).setdefault(getattr(row, pk.name), row)
    for table, rows in by_table.items():
        (pk,) = table.__table__.primary_key.columns  # type: ignore[attr-defined]
        stored = set(s.execute(sa_select(pk).where(pk.in_(list(rows)))).scalars())
        s.add_all(row for key, row in rows.items() if key not in stored)
    s.flush()
    _add_annotations(s, [e for e in events if isinstance(e, AnnotationCompleted)])


def _add_annotations(s: Session, events: Sequence[AnnotationCompleted]) -> None:
    """Add new annotations; an annotation is superseded once its successor is known, whichever
    of the two arrived (or was batched) first."""
    if not events:
        return
    a = AnnotationRow
    fresh = {e.annotation_id: e for e in events}
    stored = set(
        s.execute(sa_select(col(a.annotation_id)).where(col(a.annotation_id).in_(list(fresh))))
        .scalars()
        .all()
    )
    fresh = {k: e for k, e in fresh.items() if k not in stored}
    successors = {e.supersedes for e in fresh.values() if e.supersedes}
    successors |= set(
        s.execute(sa_select(col(a.supersedes)).where(col(a.supersedes).in_(list(fresh))))
        .scalars()
        .all()
    )
    s.add_all(_annotation_row(e, superseded=k in successors) for k, e in fresh.items())
    replaced = [e.supersedes for e in fresh.values() if e.supersedes]
    if replaced:
        s.execute(update(a).where(col(a.annotation_id).in_(replaced)).values(superseded=True))
    s.flush()


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


__all__ = [
    "RANDOM",
    "Baseline",
    "CapturedImage",
    "Deployment",
    "Incident",
    "MonitorStore",
    "Rejection",
    "StoredAnnotation",
    "StoredPrediction",
    "StoredSignal",
    "key_from_text",
    "key_text",
]
