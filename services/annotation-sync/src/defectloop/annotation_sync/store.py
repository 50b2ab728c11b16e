"""What annotation-sync remembers (SQLModel; SQLite locally, PostgreSQL in production).

- ``annsync_sample``: each sampled image, once per (site, image); its Label Studio task once pushed.
- ``annsync_annotation``: each annotation version we emitted (or are about to): the event is stored
  before it is published and marked published after the broker acknowledged, so a crash in between
  re-publishes the same event (same ``event_id``) instead of losing or inventing one.
- ``annsync_campaign``: a site's campaign target.
- ``annsync_sample_boxes``: the model's boxes of a sampled image, kept until its task is pushed (the
  pre-annotation), so the Kafka handler only records and the pusher pushes later.
- ``annsync_label_request``: ``labels.requested`` from the monitor (once per ``request_id``), and
  ``annsync_request_sample`` the random-stratum samples drawn while each request was active.
- ``annsync_push_attempt``: samples whose task import is (or was, when we crashed) in flight, with
  the batch they went in; the pusher looks only these up in Label Studio before importing again.
  A table of its own rather than a column: ``create_all`` adds it to an existing database.

Every function here is blocking (a database round trip): async code calls them through
``asyncio.to_thread`` (:func:`call`), so no write ever runs on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from typing import ParamSpec, TypeVar

from sqlalchemy import Engine, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from defectloop.common.translate import sqlalchemy_errors

P = ParamSpec("P")
T = TypeVar("T")


async def call(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking store function in a worker thread (keeps the event loop free); database
    errors come out as the project's (a locked or unreachable database is transient)."""

    def run() -> T:
        with sqlalchemy_errors("annotation-sync database"):
            return fn(*args, **kwargs)

    return await asyncio.to_thread(run)


def _now() -> datetime:
    return datetime.now(UTC)


class Sample(SQLModel, table=True):
    __tablename__ = "annsync_sample"

    key: str = Field(primary_key=True, description="<site>/<image_id>")
    site_id: str = Field(index=True)
    image_id: str
    camera_id: str
    prediction_id: str
    reason: str
    annotators: int = 1
    day: date = Field(index=True, description="UTC day of capture (the budget's day).")
    blob_uri: str
    width: int
    height: int
    model_version: str
    predicted_defective: bool
    created_at: datetime = Field(default_factory=_now)
    project_id: int | None = None
    task_id: int | None = Field(default=None, index=True)
    pushed_at: datetime | None = None


class AnnotationRecord(SQLModel, table=True):
    __tablename__ = "annsync_annotation"

    annotation_id: str = Field(primary_key=True)
    ls_annotation_id: int = Field(index=True)
    site_id: str = Field(index=True)
    image_id: str
    task_id: int
    annotator: str
    status: str
    boxes_json: str
    skip_reason: str | None = None
    day: date = Field(index=True)
    updated_at: datetime
    supersedes: str | None = None
    superseded: bool = False
    deleted: bool = False
    event_json: str
    published: bool = False


class Campaign(SQLModel, table=True):
    __tablename__ = "annsync_campaign"

    site_id: str = Field(primary_key=True)
    target: int
    name: str = "default"
    started_at: datetime = Field(default_factory=_now)


class SampleBoxes(SQLModel, table=True):
    __tablename__ = "annsync_sample_boxes"

    key: str = Field(primary_key=True, description="<site>/<image_id> of the sample.")
    boxes_json: str = Field(description="The champion's ScoredBox list (JSON).")


class LabelRequest(SQLModel, table=True):
    __tablename__ = "annsync_label_request"

    request_id: str = Field(primary_key=True)
    site_id: str = Field(index=True)
    reason: str
    incident_id: str | None = None
    random_share: float
    target_labels: int
    expires_at: datetime
    requested_by: str
    received_at: datetime = Field(default_factory=_now)


class RequestSample(SQLModel, table=True):
    __tablename__ = "annsync_request_sample"

    request_id: str = Field(primary_key=True)
    key: str = Field(primary_key=True, description="<site>/<image_id> of a random sample.")
    site_id: str = Field(index=True)
    image_id: str


class PushAttempt(SQLModel, table=True):
    __tablename__ = "annsync_push_attempt"

    key: str = Field(primary_key=True, description="<site>/<image_id> of the sample.")
    batch_id: str = Field(index=True, description="`defectloop_batch` of the imported tasks.")
    project_id: int
    attempted_at: datetime = Field(default_factory=_now)


def as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes: they are UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def get_sample(engine: Engine, site: str, image_id: str) -> Sample | None:
    with Session(engine) as s:
        return s.get(Sample, f"{site}/{image_id}")


def sample_for_task(engine: Engine, task_id: int, project_id: int) -> Sample | None:
    with Session(engine) as s:
        return s.exec(
            select(Sample).where(Sample.task_id == task_id, Sample.project_id == project_id)
        ).first()


def count_sampled(
    engine: Engine,
    site: str,
    *,
    day: date | None = None,
    since: datetime | None = None,
    exclude_reason: str | None = None,
) -> int:
    with Session(engine) as s:
        q = select(func.count()).select_from(Sample).where(Sample.site_id == site)
        if exclude_reason is not None:
            q = q.where(Sample.reason != exclude_reason)
        if day is not None:
            q = q.where(Sample.day == day)
        if since is not None:
            q = q.where(col(Sample.created_at) >= since)
        return int(s.exec(q).one())


def unpushed(engine: Engine, limit: int | None = None) -> list[Sample]:
    """Samples without a task yet, oldest first (the pusher's queue)."""
    with Session(engine) as s:
        q = (
            select(Sample)
            .where(col(Sample.task_id).is_(None))
            .order_by(col(Sample.created_at), col(Sample.key))
        )
        if limit is not None:
            q = q.limit(limit)
        return list(s.exec(q))


def unpushed_counts(engine: Engine) -> dict[str, int]:
    """Samples without a task yet, per site (the backlog ops watches)."""
    with Session(engine) as s:
        rows = s.exec(
            select(Sample.site_id, func.count())
            .where(col(Sample.task_id).is_(None))
            .group_by(col(Sample.site_id))
        )
        return {site: int(n) for site, n in rows}


def push_attempts(engine: Engine, keys: Iterable[str]) -> dict[str, PushAttempt]:
    """The in-flight imports among ``keys`` (a crash or a lost answer left them unrecorded)."""
    wanted = list(keys)
    if not wanted:
        return {}
    with Session(engine) as s:
        rows = s.exec(select(PushAttempt).where(col(PushAttempt.key).in_(wanted)))
        return {r.key: r for r in rows}


def latest_version(engine: Engine, ls_annotation_id: int, site: str) -> AnnotationRecord | None:
    with Session(engine) as s:
        return s.exec(
            select(AnnotationRecord)
            .where(
                AnnotationRecord.ls_annotation_id == ls_annotation_id,
                AnnotationRecord.site_id == site,
            )
            .order_by(col(AnnotationRecord.updated_at).desc())
        ).first()


def unpublished(engine: Engine) -> list[AnnotationRecord]:
    with Session(engine) as s:
        return list(
            s.exec(
                select(AnnotationRecord)
                .where(col(AnnotationRecord.published).is_(False))
                .order_by(col(AnnotationRecord.updated_at))
            )
        )


def current_annotations(engine: Engine, site: str) -> list[AnnotationRecord]:
    """The latest, not-deleted version of each annotation of ``site``."""
    with Session(engine) as s:
        return list(
            s.exec(
                select(AnnotationRecord).where(
                    AnnotationRecord.site_id == site,
                    col(AnnotationRecord.superseded).is_(False),
                    col(AnnotationRecord.deleted).is_(False),
                )
            )
        )


def get_campaign(engine: Engine, site: str, default_target: int) -> Campaign:
    with Session(engine) as s:
        found = s.get(Campaign, site)
        if found is not None:
            return found
        return Campaign(
            site_id=site, target=default_target, started_at=datetime(1970, 1, 1, tzinfo=UTC)
        )


def put_campaign(engine: Engine, site: str, target: int, name: str, restart: bool) -> Campaign:
    with Session(engine) as s:
        found = s.get(Campaign, site)
        if found is None:
            found = Campaign(site_id=site, target=target, name=name)
        else:
            found.target = target
            found.name = name
            if restart:
                found.started_at = _now()
        s.add(found)
        s.commit()
        s.refresh(found)
        return found


def sampled_sites(engine: Engine) -> set[str]:
    with Session(engine) as s:
        return set(s.exec(select(Sample.site_id).distinct()))


# --- writes ----------------------------------------------------------------------------------


def record_sample(
    engine: Engine, sample: Sample, boxes_json: str, request_ids: Iterable[str] = ()
) -> Sample:
    """Insert ``sample`` (pending: no task yet) with its boxes; the existing row if already there.

    One transaction, so a sample never exists without its pre-annotation or request link.
    """
    try:
        with Session(engine) as s:
            s.add(sample)
            s.add(SampleBoxes(key=sample.key, boxes_json=boxes_json))
            for rid in request_ids:
                s.add(
                    RequestSample(
                        request_id=rid,
                        key=sample.key,
                        site_id=sample.site_id,
                        image_id=sample.image_id,
                    )
                )
            s.commit()
            s.refresh(sample)
            return sample
    except IntegrityError:  # sampled before (a redelivery, or a concurrent consumer)
        found = get_sample(engine, sample.site_id, sample.image_id)
        if found is None:
            raise
        return found


def sample_boxes_of(engine: Engine, keys: list[str]) -> dict[str, str]:
    """The kept pre-annotation boxes (JSON) of each sample key that has them."""
    with Session(engine) as s:
        rows = s.exec(select(SampleBoxes).where(col(SampleBoxes.key).in_(keys)))
        return {r.key: r.boxes_json for r in rows}


def task_ids_of(engine: Engine, keys: list[str]) -> dict[str, int | None]:
    """The recorded task id (None while pending) of each sample key."""
    with Session(engine) as s:
        rows = s.exec(select(Sample).where(col(Sample.key).in_(keys)))
        return {r.key: r.task_id for r in rows}


def mark_in_flight(
    engine: Engine, keys: Iterable[str], batch_id: str, project_id: int, at: datetime
) -> None:
    """Record (one transaction) that ``keys`` are about to be imported as batch ``batch_id``."""
    with Session(engine) as s:
        for key in keys:
            row = s.get(PushAttempt, key) or PushAttempt(
                key=key, batch_id=batch_id, project_id=project_id
            )
            row.batch_id, row.project_id, row.attempted_at = batch_id, project_id, at
            s.add(row)
        s.commit()


def mark_pushed_many(
    engine: Engine, task_ids: dict[str, int], project_id: int, at: datetime
) -> list[Sample]:
    """Record the Label Studio task of each sample key in one transaction (its kept boxes and
    in-flight mark go with it); the updated rows, in ``task_ids`` order."""
    with Session(engine) as s:
        rows: list[Sample] = []
        for key, task_id in task_ids.items():
            row = s.get(Sample, key)
            if row is None:
                raise LookupError(f"no sample {key}")
            row.task_id, row.project_id, row.pushed_at = task_id, project_id, at
            s.add(row)
            rows.append(row)
            for extra in (s.get(SampleBoxes, key), s.get(PushAttempt, key)):
                if extra is not None:
                    s.delete(extra)
        s.commit()
        for row in rows:
            s.refresh(row)
        return rows


def record_annotation(engine: Engine, record: AnnotationRecord, supersedes: str | None) -> None:
    """Store an annotation version (unpublished) and mark the version it replaces."""
    with Session(engine) as s:
        s.add(record)
        if supersedes is not None:
            old = s.get(AnnotationRecord, supersedes)
            if old is not None:
                old.superseded = True
                s.add(old)
        s.commit()


def mark_published(engine: Engine, annotation_id: str) -> None:
    with Session(engine) as s:
        row = s.get(AnnotationRecord, annotation_id)
        if row is not None:
            row.published = True
            s.add(row)
            s.commit()


def mark_deleted(engine: Engine, site: str, ls_annotation_ids: Iterable[int]) -> int:
    """Flag the latest version of each annotation as deleted; how many changed."""
    n = 0
    with Session(engine) as s:
        for ls_id in ls_annotation_ids:
            latest = latest_version(engine, ls_id, site)
            if latest is None:
                continue
            row = s.get(AnnotationRecord, latest.annotation_id)
            if row is not None and not row.deleted:
                row.deleted = True
                s.add(row)
                n += 1
        s.commit()
    return n


# --- label requests --------------------------------------------------------------------------


def record_label_request(engine: Engine, request: LabelRequest) -> bool:
    """Store a request once per ``request_id``; False when it was already known."""
    try:
        with Session(engine) as s:
            s.add(request)
            s.commit()
            return True
    except IntegrityError:
        return False


def label_requests(engine: Engine, site: str) -> list[LabelRequest]:
    with Session(engine) as s:
        return list(
            s.exec(
                select(LabelRequest)
                .where(LabelRequest.site_id == site)
                .order_by(col(LabelRequest.received_at))
            )
        )


def request_labels_done(engine: Engine, request_id: str) -> int:
    """Images of the request's random samples with a current, completed annotation."""
    with Session(engine) as s:
        q = (
            select(func.count(func.distinct(AnnotationRecord.image_id)))
            .select_from(AnnotationRecord)
            .join(
                RequestSample,
                (col(RequestSample.site_id) == col(AnnotationRecord.site_id))
                & (col(RequestSample.image_id) == col(AnnotationRecord.image_id)),
            )
            .where(
                RequestSample.request_id == request_id,
                AnnotationRecord.status == "completed",
                col(AnnotationRecord.superseded).is_(False),
                col(AnnotationRecord.deleted).is_(False),
            )
        )
        return int(s.exec(q).one())
