"""Retraining jobs: the per-site policy, the state machine, and what the trainer remembers.

A job is one retraining of one site, opened by an incident (``metric.degraded``). Its life::

    waiting_for_labels -> snapshotting -> training -> gating -> shadow | deployed | gate_failed
           |                   |             |          |        |
           +-> timed_out       +-> failed    +-> failed +-> failed +-> deployed | rejected
                                                                   +-> awaiting_approval
                                                                        -> deployed | rejected

plus ``ignored`` (a data-quality or, by policy, drift incident: recorded for ops, never trained).
At most one job per site is open (not in a final state); a second incident while one is open is
attached to it. Everything is a row in the trainer's database, so a restarted trainer (even after
``kill -9``) picks each open job up where its state says: a job's model version is derived from
its id and attempt, so a retried step finds what an earlier try already produced.

Tables (prefix ``trainer_``): jobs, the images (from ``image.captured``: digest, blob URI, capture
time), the labels (from ``annotation.completed``), the deployments (the compacted
``model.deployed`` table) and the frozen evaluation assignment of each labelled image. Every write
is idempotent on the event's natural key, so a redelivered event changes nothing. Every method is
blocking (one database round trip): async code calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Column, Text
from sqlalchemy.engine import Engine
from sqlmodel import Field as SQLField
from sqlmodel import Session, SQLModel, col, select

from defectloop.common.errors import ConflictError, NotFoundError
from defectloop.common.events import (
    AnnotationCompleted,
    AnnotationStatus,
    DegradationKind,
    ImageCaptured,
    MetricDegraded,
    ModelDeployed,
    deterministic_id,
)
from defectloop.common.metrics import TRAINING_JOBS
from defectloop.common.translate import sqlalchemy_errors


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    # SQLite hands datetimes back naive; every time stored here is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class RetrainPolicy(BaseModel):
    """What a site's retraining waits for and how its dataset is made (closed-loop R8-R9)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_fresh_labels: int = Field(60, ge=1, description="Fresh non-skipped labels to wait for.")
    min_fresh_defective: int = Field(20, ge=0, description="Of which defective (with boxes).")
    # Gate power: the improvement gate's one-sided exact McNemar needs at least 5 discordant
    # defective eval images in the candidate's favour (and none against) to reach p < 0.05, and
    # only a fraction (eval_fraction) of the fresh labels is frozen for evaluation. 10 lets a
    # recall gain of about 0.5 pass; with eval_fraction 0.2 that is ~50 fresh defective labels.
    min_eval_defective: int = Field(
        10,
        ge=0,
        description="Of the fresh defective labels, how many the frozen eval split must hold.",
    )
    label_wait_timeout_s: float = Field(
        4 * 3600.0, gt=0, description="Give up (timed_out) when labels are still short by then."
    )
    retrain_on_drift: bool = Field(
        False, description="Open a job for data/prediction drift incidents too."
    )
    request_random_share: float = Field(
        0.5, gt=0, le=1, description="Random share asked of annotation-sync while short."
    )
    replay_share: float = Field(
        0.5, ge=0, lt=1, description="Share of replayed earlier data in the training set (R9)."
    )
    # Measured (docs/trainer.md): B's fine-tune with 16 of its champion's images among 47
    # replayed kept 0.81 of B's normal-part recall; with 60 more, 0.94 (champion 0.99).
    champion_replay_share: float = Field(
        0.7,
        ge=0,
        le=1,
        description="Of the replay, the share drawn from the champion's own training data "
        "(when stored); the rest is balanced over the other earlier labels' sites and classes.",
    )
    eval_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of labelled images frozen into a site's eval set."
    )
    max_attempts: int = Field(2, ge=1, description="Training tries before the job fails.")
    shadow_period_s: float = Field(
        7 * 86400.0,
        gt=0,
        le=30 * 86400.0,
        description="Give up on a shadow without a verdict after this (R11: 7 days, cap 30).",
    )
    promote_non_inferior: bool = Field(
        False, description="A non_inferior scorecard promotes too (default: only better)."
    )


class JobState(StrEnum):
    WAITING_FOR_LABELS = "waiting_for_labels"
    SNAPSHOTTING = "snapshotting"
    TRAINING = "training"
    GATING = "gating"
    SHADOW = "shadow"
    AWAITING_APPROVAL = "awaiting_approval"
    DEPLOYED = "deployed"
    GATE_FAILED = "gate_failed"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    FAILED = "failed"
    IGNORED = "ignored"


# A candidate in shadow or awaiting approval still holds its site: a new incident attaches to it.
OPEN_STATES = frozenset(
    {
        JobState.WAITING_FOR_LABELS,
        JobState.SNAPSHOTTING,
        JobState.TRAINING,
        JobState.GATING,
        JobState.SHADOW,
        JobState.AWAITING_APPROVAL,
    }
)

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.WAITING_FOR_LABELS: frozenset({JobState.SNAPSHOTTING, JobState.TIMED_OUT}),
    # training -> snapshotting: a lost run is retried (next attempt) from the stored snapshot.
    JobState.SNAPSHOTTING: frozenset({JobState.TRAINING, JobState.FAILED}),
    JobState.TRAINING: frozenset({JobState.GATING, JobState.SNAPSHOTTING, JobState.FAILED}),
    JobState.GATING: frozenset(
        {JobState.SHADOW, JobState.DEPLOYED, JobState.GATE_FAILED, JobState.FAILED}
    ),
    JobState.SHADOW: frozenset({JobState.AWAITING_APPROVAL, JobState.DEPLOYED, JobState.REJECTED}),
    JobState.AWAITING_APPROVAL: frozenset({JobState.DEPLOYED, JobState.REJECTED}),
}


def check_transition(current: JobState, to: JobState) -> None:
    """Raise ``ConflictError`` unless ``current -> to`` is an edge of the job life cycle."""
    if to not in TRANSITIONS.get(current, frozenset()):
        raise ConflictError(
            f"a job cannot go from {current.value} to {to.value}",
            reason="invalid_job_transition",
        )


def job_id_for(site_id: str, incident_id: str) -> str:
    """The job an incident opens (or the ignored record of one): same incident, same id."""
    return deterministic_id("trainer.job", site_id, incident_id)


def model_version_for(job_id: str, site_id: str, attempt: int) -> str:
    """The model version a job's attempt registers: a retried step finds its earlier result."""
    return f"retrain-{site_id}-{job_id[:8]}-a{attempt}"


def labels_request_id_for(job_id: str) -> str:
    """One ``labels.requested`` per job: a republished request is the same request."""
    return deterministic_id("trainer.labels_requested", job_id)


class Job(SQLModel, table=True):
    __tablename__ = "trainer_job"

    job_id: str = SQLField(primary_key=True, max_length=64)
    site_id: str = SQLField(index=True)
    state: str = SQLField(index=True)
    reason: str = SQLField(default="", description="Why it is in its state (for ops).")
    kind: str = SQLField(description="Kind of the incident that opened it.")
    incident_ids_json: str = SQLField(default="[]", sa_column=Column(Text, nullable=False))
    change_point_at: datetime = SQLField(description="Fresh labels count from here.")
    deadline_at: datetime = SQLField(description="Label wait gives up after this.")
    model_version: str | None = SQLField(default=None, description="Champion when it opened.")
    attempt: int = 1
    fresh_labels: int = 0
    fresh_defective: int = 0
    labels_request_id: str | None = None
    labels_requested_at: datetime | None = None
    snapshot_sha256: str | None = SQLField(default=None, max_length=64)
    run_handle: str | None = None
    candidate_version: str | None = None
    detail_json: str = SQLField(default="{}", sa_column=Column(Text, nullable=False))
    opened_at: datetime = SQLField(default_factory=_now)
    updated_at: datetime = SQLField(default_factory=_now)

    @property
    def job_state(self) -> JobState:
        return JobState(self.state)

    @property
    def incident_ids(self) -> list[str]:
        data: list[str] = json.loads(self.incident_ids_json)
        return data

    @property
    def detail(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.detail_json)
        return data


class ImageRow(SQLModel, table=True):
    __tablename__ = "trainer_image"

    image_id: str = SQLField(primary_key=True)
    site_id: str = SQLField(index=True)
    camera_id: str
    sha256: str = SQLField(max_length=64)
    blob_uri: str
    width: int
    height: int
    captured_at: datetime = SQLField(index=True)


class LabelRow(SQLModel, table=True):
    __tablename__ = "trainer_label"

    annotation_id: str = SQLField(primary_key=True)
    image_id: str = SQLField(index=True)
    site_id: str = SQLField(index=True)
    annotator: str
    status: str
    boxes_json: str = SQLField(sa_column=Column(Text, nullable=False))
    supersedes: str | None = None
    occurred_at: datetime


class DeployedRow(SQLModel, table=True):
    """The compacted ``model.deployed`` table as last seen (one row per site and role)."""

    __tablename__ = "trainer_deployed"

    key: str = SQLField(primary_key=True, description="<site>/<role>")
    site_id: str = SQLField(index=True)
    role: str
    model_version: str
    artifact_uri: str
    sha256: str
    active: bool
    event_id: str


class EvalAssignment(SQLModel, table=True):
    """Frozen both ways: an image put in its site's eval set stays there (training never sees
    it), and one already trained on never moves into an eval set, even if the fraction changes."""

    __tablename__ = "trainer_eval_assignment"

    image_id: str = SQLField(primary_key=True)
    site_id: str = SQLField(index=True)
    in_eval: bool
    assigned_at: datetime = SQLField(default_factory=_now)


def in_eval_set(image_id: str, eval_fraction: float) -> bool:
    """Deterministic by a hash of the image id: any process, any day, the same answer."""
    digest = hashlib.sha256(f"trainer.eval\x1f{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction


@dataclass(frozen=True)
class LabelledImage:
    """One image with the label that counts for it (the latest completed, not superseded)."""

    image_id: str
    site_id: str
    sha256: str
    blob_uri: str
    width: int
    height: int
    captured_at: datetime
    annotation_id: str
    boxes: tuple[dict[str, Any], ...]

    @property
    def defective(self) -> bool:
        return bool(self.boxes)


@dataclass(frozen=True)
class Decision:
    """What an incident does: open a job, attach to the open one, or be recorded as ignored."""

    action: str  # open | attach | ignore | duplicate
    job: Job


def _ignore_reason(
    event: MetricDegraded, policy: RetrainPolicy, champion: DeployedRow | None
) -> str | None:
    kind = event.kind
    if kind == DegradationKind.DATA_QUALITY:
        return "data_quality incidents are an alert for ops (camera/upstream), never a retraining"
    if kind in (DegradationKind.DATA_DRIFT, DegradationKind.PREDICTION_DRIFT) and (
        not policy.retrain_on_drift
    ):
        return f"{kind.value} incidents retrain only where the site's policy allows it"
    if champion is not None and event.model_version not in (None, champion.model_version):
        # A late incident about a retired champion, or about a shadow: the model serving the
        # site is another one, and retraining would answer a question nobody asks any more.
        return (
            f"the incident is about model {event.model_version}, "
            f"not the site's champion {champion.model_version}"
        )
    return None


def chosen_labels(labels: Sequence[LabelRow]) -> dict[str, LabelRow]:
    """Per image, the label that counts: the latest non-superseded annotation.

    A skip counts as the latest word too: an image whose latest annotation is a skip has no
    label (skips never count, activetigger#725).
    """
    superseded = {row.supersedes for row in labels if row.supersedes}
    latest: dict[str, LabelRow] = {}
    for row in labels:
        if row.annotation_id in superseded:
            continue
        current = latest.get(row.image_id)
        rank = (_aware(row.occurred_at), row.annotation_id)
        if current is None or rank > (_aware(current.occurred_at), current.annotation_id):
            latest[row.image_id] = row
    return {k: v for k, v in latest.items() if v.status == AnnotationStatus.COMPLETED.value}


def _job_of(event: MetricDegraded, state: JobState, reason: str, *, deadline_at: datetime) -> Job:
    return Job(
        job_id=job_id_for(event.site_id, event.incident_id),
        site_id=event.site_id,
        state=state.value,
        reason=reason,
        kind=event.kind.value,
        incident_ids_json=json.dumps([event.incident_id]),
        # Without an estimate, the window that showed the degradation is the earliest we know.
        change_point_at=event.change_point_at or event.window_start,
        deadline_at=deadline_at,
        model_version=event.model_version,
        detail_json=json.dumps(
            {
                "metric": event.metric,
                "value": event.value,
                "baseline": event.baseline,
                "sample_size": event.sample_size,
                # What `models why` shows of the incident, even when the monitor is gone.
                "threshold": event.threshold,
                "n_positive": event.n_positive,
                "ci_low": event.ci_low,
                "ci_high": event.ci_high,
                "window_start": event.window_start.isoformat(),
                "window_end": event.window_end.isoformat(),
            },
            sort_keys=True,
        ),
    )


class JobStore:
    """The trainer's jobs and the facts they are decided on."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        SQLModel.metadata.create_all(
            engine,
            tables=[
                t.__table__  # type: ignore[union-attr]  # SQLModel tables have one
                for t in (Job, ImageRow, LabelRow, DeployedRow, EvalAssignment)
            ],
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        with sqlalchemy_errors("trainer jobs"), Session(self.engine, expire_on_commit=False) as s:
            yield s

    # --- facts from events (idempotent) ---------------------------------------------------

    def record_image(self, event: ImageCaptured) -> bool:
        with self.session() as s:
            if s.get(ImageRow, event.image_id) is not None:
                return False
            s.add(
                ImageRow(
                    image_id=event.image_id,
                    site_id=event.site_id,
                    camera_id=event.camera_id,
                    sha256=event.sha256,
                    blob_uri=event.blob_uri,
                    width=event.width,
                    height=event.height,
                    captured_at=event.captured_at,
                )
            )
            s.commit()
            return True

    def record_annotation(self, event: AnnotationCompleted) -> bool:
        with self.session() as s:
            if s.get(LabelRow, event.annotation_id) is not None:
                return False
            s.add(
                LabelRow(
                    annotation_id=event.annotation_id,
                    image_id=event.image_id,
                    site_id=event.site_id,
                    annotator=event.annotator,
                    status=event.status.value,
                    boxes_json=json.dumps([b.model_dump() for b in event.boxes], sort_keys=True),
                    supersedes=event.supersedes,
                    occurred_at=event.occurred_at,
                )
            )
            s.commit()
            return True

    def record_deployment(self, event: ModelDeployed) -> None:
        key = event.key().decode()
        with self.session() as s:
            row = s.get(DeployedRow, key) or DeployedRow(
                key=key,
                site_id=event.site_id,
                role=event.role.value,
                model_version=event.model_version,
                artifact_uri=event.artifact_uri,
                sha256=event.sha256,
                active=event.active,
                event_id=event.event_id,
            )
            row.model_version = event.model_version
            row.artifact_uri = event.artifact_uri
            row.sha256 = event.sha256
            row.active = event.active
            row.event_id = event.event_id
            s.add(row)
            s.commit()

    def forget_deployment(self, key: str) -> None:
        with self.session() as s:
            row = s.get(DeployedRow, key)
            if row is not None:
                s.delete(row)
                s.commit()

    def champion(self, site_id: str) -> DeployedRow | None:
        with self.session() as s:
            return self._champion(s, site_id)

    @staticmethod
    def _champion(s: Session, site_id: str) -> DeployedRow | None:
        row = s.get(DeployedRow, f"{site_id}/champion")
        return row if row is not None and row.active else None

    # --- incidents -> jobs ----------------------------------------------------------------

    def on_incident(self, event: MetricDegraded, policy: RetrainPolicy) -> Decision:
        """Open, attach or ignore; a redelivered incident returns what it did the first time."""
        with self.session() as s:
            own = s.get(Job, job_id_for(event.site_id, event.incident_id))
            if own is not None:
                return Decision("duplicate", own)
            for job in self._site_jobs(s, event.site_id):
                if event.incident_id in job.incident_ids:
                    return Decision("duplicate", job)
            now = _now()
            reason = _ignore_reason(event, policy, self._champion(s, event.site_id))
            if reason is not None:
                job = _job_of(event, JobState.IGNORED, reason, deadline_at=now)
                s.add(job)
                s.commit()
                return Decision("ignore", job)
            open_job = self._open_job(s, event.site_id)
            if open_job is not None:
                open_job.incident_ids_json = json.dumps([*open_job.incident_ids, event.incident_id])
                open_job.updated_at = now
                s.add(open_job)
                s.commit()
                return Decision("attach", open_job)
            job = _job_of(
                event,
                JobState.WAITING_FOR_LABELS,
                "waiting for fresh labels since the change point",
                deadline_at=now + timedelta(seconds=policy.label_wait_timeout_s),
            )
            s.add(job)
            s.commit()
            return Decision("open", job)

    @staticmethod
    def _site_jobs(s: Session, site_id: str) -> list[Job]:
        return list(s.exec(select(Job).where(Job.site_id == site_id)).all())

    @staticmethod
    def _open_job(s: Session, site_id: str) -> Job | None:
        query = select(Job).where(
            Job.site_id == site_id, col(Job.state).in_([st.value for st in OPEN_STATES])
        )
        return s.exec(query).first()

    def open_jobs(self) -> list[Job]:
        with self.session() as s:
            query = select(Job).where(col(Job.state).in_([st.value for st in OPEN_STATES]))
            return list(s.exec(query.order_by(col(Job.opened_at))).all())

    def jobs(self, site_id: str | None = None) -> list[Job]:
        with self.session() as s:
            query = select(Job)
            if site_id is not None:
                query = query.where(Job.site_id == site_id)
            return list(s.exec(query.order_by(col(Job.opened_at))).all())

    def get(self, job_id: str) -> Job:
        with self.session() as s:
            job = s.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"retraining job {job_id} not found")
        return job

    def update(self, job_id: str, *, to: JobState | None = None, **fields: Any) -> Job:
        """Change a job's fields and, when ``to`` is given, its state (checked against the graph)."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"retraining job {job_id} not found")
            ended = False
            if to is not None and to != job.job_state:
                check_transition(job.job_state, to)
                job.state = to.value
                ended = to not in OPEN_STATES
            for name, value in fields.items():
                setattr(job, name, value)
            job.updated_at = _now()
            s.add(job)
            s.commit()
            if ended and to is not None:
                TRAINING_JOBS.labels(job.site_id, to.value).inc()
            return job

    # --- labelled data ----------------------------------------------------------------------

    def labelled_images(self, site_id: str | None = None) -> list[LabelledImage]:
        """Every labelled image whose capture we saw (of ``site_id``), one label each.

        An annotation that arrived before its capture is counted once the capture arrives.
        """
        with self.session() as s:
            query = select(LabelRow, ImageRow).join(
                ImageRow,
                col(LabelRow.image_id) == col(ImageRow.image_id),
            )
            if site_id is not None:
                query = query.where(LabelRow.site_id == site_id)
            rows = list(s.exec(query).all())
        images = {image.image_id: image for _, image in rows}
        labels = chosen_labels([label for label, _ in rows])
        return [
            LabelledImage(
                image_id=image_id,
                site_id=images[image_id].site_id,
                sha256=images[image_id].sha256,
                blob_uri=images[image_id].blob_uri,
                width=images[image_id].width,
                height=images[image_id].height,
                captured_at=_aware(images[image_id].captured_at),
                annotation_id=labels[image_id].annotation_id,
                boxes=tuple(json.loads(labels[image_id].boxes_json)),
            )
            for image_id in sorted(labels)
        ]

    def eval_assignment(self, images: Sequence[LabelledImage], eval_fraction: float) -> set[str]:
        """The ids of ``images`` in their site's frozen eval set; new assignments are stored."""
        with self.session() as s:
            sites = sorted({i.site_id for i in images})
            known = {
                row.image_id: row.in_eval
                for row in s.exec(
                    select(EvalAssignment).where(col(EvalAssignment.site_id).in_(sites))
                ).all()
            }
            for image in images:
                if image.image_id not in known:
                    known[image.image_id] = in_eval_set(image.image_id, eval_fraction)
                    s.add(
                        EvalAssignment(
                            image_id=image.image_id,
                            site_id=image.site_id,
                            in_eval=known[image.image_id],
                        )
                    )
            s.commit()
        wanted = {i.image_id for i in images}
        return {image_id for image_id, in_eval in known.items() if in_eval and image_id in wanted}


@dataclass(frozen=True)
class FreshCounts:
    labels: int
    defective: int
    eval_defective: int = 0


def fresh_counts(
    images: Sequence[LabelledImage], since: datetime, eval_fraction: float = 0.0
) -> FreshCounts:
    """Labelled images captured at or after the change point (skips already left out), and how
    many defective ones the frozen eval split will hold (the same hash the snapshot uses)."""
    fresh = [i for i in images if i.captured_at >= _aware(since)]
    defective = [i for i in fresh if i.defective]
    return FreshCounts(
        labels=len(fresh),
        defective=len(defective),
        eval_defective=sum(1 for i in defective if in_eval_set(i.image_id, eval_fraction)),
    )


def enough(counts: FreshCounts, policy: RetrainPolicy) -> bool:
    return (
        counts.labels >= policy.min_fresh_labels
        and counts.defective >= policy.min_fresh_defective
        and counts.eval_defective >= policy.min_eval_defective
    )
