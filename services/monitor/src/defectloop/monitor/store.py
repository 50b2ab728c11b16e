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

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, func
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError as SQLIntegrityError
from sqlmodel import Session, SQLModel, col, select

from defectloop.common.events import (
    AnnotationStatus,
    DegradationKind,
    Event,
    MetricDegraded,
    MetricRecovered,
    ModelRole,
    model_for_topic,
)
from defectloop.monitor.performance import LabelledPrediction
from defectloop.monitor.recording import _add_all, _add_new
from defectloop.monitor.records import (
    Baseline,
    CapturedImage,
    Deployment,
    Incident,
    Rejection,
    StoredAnnotation,
    StoredPrediction,
    StoredSignal,
    _annotation,
    _aware,
    _captured,
    _deployment,
    _incident,
    _predicted_boxes,
    _signal,
    _signal_row,
    _stored_prediction,
    _truth_boxes,
    key_from_text,
    key_text,
)
from defectloop.monitor.signals import Signal, SignalKey
from defectloop.monitor.tables import (
    TABLES,
    AnnotationRow,
    BaselineRow,
    CapturedRow,
    CursorRow,
    DeploymentRow,
    IncidentRow,
    OutboxRow,
    PredictionRow,
    RejectionRow,
    SignalRow,
    TrackRow,
    _now,
)

RowT = TypeVar("RowT", bound=SQLModel)
RANDOM = "random"


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


__all__ = ["RANDOM", "MonitorStore"]
