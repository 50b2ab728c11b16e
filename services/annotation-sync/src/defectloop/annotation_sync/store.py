"""What annotation-sync remembers (SQLModel; SQLite locally, PostgreSQL in production).

- ``annsync_sample``: each sampled image, once per (site, image); its Label Studio task once pushed.
- ``annsync_annotation``: each annotation version we emitted (or are about to): the event is stored
  before it is published and marked published after the broker acknowledged, so a crash in between
  re-publishes the same event (same ``event_id``) instead of losing or inventing one.
- ``annsync_campaign``: a site's campaign target.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import Engine, func
from sqlmodel import Field, Session, SQLModel, col, select


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


def get_sample(engine: Engine, site: str, image_id: str) -> Sample | None:
    with Session(engine) as s:
        return s.get(Sample, f"{site}/{image_id}")


def sample_for_task(engine: Engine, task_id: int, project_id: int) -> Sample | None:
    with Session(engine) as s:
        return s.exec(
            select(Sample).where(Sample.task_id == task_id, Sample.project_id == project_id)
        ).first()


def count_sampled(
    engine: Engine, site: str, *, day: date | None = None, since: datetime | None = None
) -> int:
    with Session(engine) as s:
        q = select(func.count()).select_from(Sample).where(Sample.site_id == site)
        if day is not None:
            q = q.where(Sample.day == day)
        if since is not None:
            q = q.where(col(Sample.created_at) >= since)
        return int(s.exec(q).one())


def unpushed(engine: Engine) -> list[Sample]:
    with Session(engine) as s:
        return list(s.exec(select(Sample).where(col(Sample.task_id).is_(None))))


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
